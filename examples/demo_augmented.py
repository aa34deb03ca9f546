"""Demo rows for the augmented samplers: ``register()`` adds them to ``demo`` (section "augmented").

The demo hands every runner ``x ~ N(0, 80^2 I)``; an augmented run starts from its own prior instead: ``x / 80``
(exactly N(0, I), the CLD/PSLD prior for x) and ``v ~ N(0, M I)`` from a generator seeded with the demo seed. The
score is the exact score of the demo's mixture pushed through the process (``ExactScore``), through the demo's
counting VE denoiser, so the NFE column counts real evaluations (steps + 1 for the final denoising step).
"""

import math

import torch

from fastint.augmented.adapters import ExactScore
from fastint.augmented.processes import CLD, PSLD
from fastint.augmented.samplers import nfe_per_step, sample_augmented
from fastint.augmented.target import AugmentedTarget

ENTRIES = [("cld_em", CLD, "em"), ("cld_sscs", CLD, "sscs"), ("cld_pf_heun", CLD, "pf_heun"),
           ("psld_em", PSLD, "em"), ("psld_sscs", PSLD, "sscs"), ("psld_reduced_splitting", PSLD, "reduced_splitting"),
           ("psld_conjugate", PSLD, "conjugate"), ("psld_conjugate_splitting", PSLD, "conjugate_splitting")]


def _runner(process_cls, method):
    def run(setup, model, x, steps):
        proc = process_cls()
        tgt = AugmentedTarget(setup.target, proc)
        gen = torch.Generator().manual_seed(setup.seed + 7)
        v = (math.sqrt(proc.M) * torch.randn(x.shape, generator=gen, dtype=torch.float64)).to(x.dtype)
        out, _ = sample_augmented(proc, ExactScore(tgt, denoiser=model), x / setup.sigma_max, v, steps=steps,
                                  method=method, seed=setup.seed, backend=setup.backend)
        return out
    return run


NOTES = {"pf_heun": "Heun on the probability-flow ODE of the augmented process, on the reference code's linear time "
                   "grid from t = 1, is far from converged with fewer than about 10 steps, then converges fast "
                   "(second order)",
         "conjugate": "lambda-DDIM freezes eps and takes the stiff part of the drift explicitly, so a few large steps "
                      "overshoot (docs/augmented.md)"}


def entries():
    from .demo import DemoEntry
    return [DemoEntry(name, (lambda per: (lambda steps: per * steps + 1))(nfe_per_step(method)),
                      _runner(cls, method), section="augmented", note=NOTES.get(method, ""),
                      description=f"{cls.name} {method} (fastint.augmented)") for name, cls, method in ENTRIES]


def register():
    """Add the augmented rows to the demo (``demo.register_entry``)."""
    from .demo import register_entry
    for e in entries():
        register_entry(e)
