"""The splitting and conjugate-splitting samplers against an independent float64 reference (value for value)."""

import os
import sys

import pytest
import torch

from fastint.augmented import CLD, PSLD, AugmentedTarget, ScoreFunction, sample_augmented, time_grid
from fastint.models.gaussian_mixture import default_mixture

sys.path.insert(0, os.path.dirname(__file__))
from reference_augmented_splitting import SplittingRef  # noqa: E402
from seeding import stable_seed  # noqa: E402

CASES = [(PSLD(), SplittingRef("PSLD", 8.0, 0.0)), (PSLD.from_config(1.0, 12.0), SplittingRef("PSLD", 1.0, 11.0)),
         (CLD(), SplittingRef("CLD", 4.0, 0.0)), (CLD(b0=0.5, b1=7.0), SplittingRef("CLD", 0.5, 7.0))]


METHODS = [("reduced_splitting", {}), ("naive_splitting", {}), ("conjugate_splitting", {}),
           ("conjugate_residual", {}), ("reduced_splitting", {"eta": 0.6}), ("naive_splitting", {"eta": 0.3}),
           ("conjugate_splitting", {"eta": 0.5}), ("conjugate", {}), ("conjugate", {"lam": -0.7}),
           ("conjugate", {"lam": 0.6, "lam_matrix": "ones"})]


def _reference_options(options):
    out = {k: v for k, v in options.items() if k != "lam_matrix"}
    out["ones"] = options.get("lam_matrix") == "ones"
    return out


@pytest.mark.parametrize("method,options", METHODS,
                         ids=[m + "".join(f"-{k}={v}" for k, v in o.items()) for m, o in METHODS])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].name}-b1={c[0].b1}")
def test_splitting_parity_with_injected_noise(case, method, options):
    proc, ref = case
    gen = torch.Generator().manual_seed(stable_seed("splitting parity", proc.name, proc.b1, method,
                                                    sorted(options.items())))
    tgt = AugmentedTarget(default_mixture(), proc)
    n = 5
    ts = time_grid(n, 1e-3, "quadratic" if proc.b1 else "linear")
    x, v = tgt.sample(6, 1.0, gen)
    x, v = x[:, :1].contiguous(), v[:, :1].contiguous()  # one coordinate: the reference works row by row

    def score(xx, vv, t):  # the exact score of the target's first coordinate is not separable; use a fixed
        full_x = torch.cat([xx, torch.zeros_like(xx)], 1)  # second coordinate (0) of the 2-D mixture
        full_v = torch.cat([vv, torch.zeros_like(vv)], 1)
        sx, sv = tgt.score(full_x, full_v, t)
        return sx[:, :1], sv[:, :1]

    model = ScoreFunction(lambda xx, vv, tb: score(xx, vv, float(tb[0])), proc)
    noises = [torch.randn(6, 1, generator=gen, dtype=torch.float64) for _ in range(2 * n)]
    it1, it2 = iter(noises), iter(noises)
    out = sample_augmented(proc, model, x, v, ts, method, noise_sampler=lambda a, b: next(it1), backend="eager",
                           **options)
    expect = ref.sample(method, score, x, v, ts, lambda a, b: next(it2), **_reference_options(options))
    err = (torch.cat(out, 1) - expect).abs().max().item()
    assert err < 1e-10 * max(1.0, expect.abs().max().item()), err
