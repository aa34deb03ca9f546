"""The papers' claims on the analytic augmented target (docs/augmented.md has the full measured tables)."""

import math

import pytest
import torch

from fastint.augmented import CLD, PSLD, AugmentedTarget, ExactScore, nfe_per_step, sample_augmented
from fastint.metrics import random_directions, sliced_wasserstein
from fastint.models.gaussian_mixture import default_mixture

N = 4000


def _distances(proc, methods, budgets, seeds=2, n=N, n_ref=None, **options):
    """``{(method, nfe): [sliced W2 per noise seed]}``; ``options`` maps a method to its extra keyword arguments.
    Every method starts from the same samples and draws the same noise seeds (common random numbers: EM and the
    splitting methods then see the same normals at every step, which keeps the noise out of their comparison)."""
    mix = default_mixture()
    tgt = AugmentedTarget(mix, proc)
    model = ExactScore(tgt)
    ref = mix.sample(n_ref or n, generator=torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, (1,)))))
    dirs = random_directions(64, 2)
    x0, v0 = tgt.sample(n, 1.0, torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, (1,)))),
                        dtype=torch.float32)
    noise_seeds = [int(torch.randint(0, 2 ** 40, (1,))) for _ in range(seeds)]
    out = {}
    for m in methods:
        for nfe in budgets:
            steps = (nfe - 1) // nfe_per_step(m)
            vals = []
            for seed in noise_seeds:
                x, _ = sample_augmented(proc, model, x0, v0, steps=steps, method=m, seed=seed, **options.get(m, {}))
                vals.append(sliced_wasserstein(x.double(), ref, projections=dirs))
            out[m, nfe] = vals
    return out


@pytest.mark.parametrize("timing", ["reference", "midpoint"])
def test_sscs_beats_em_at_low_nfe_on_cld(timing):
    # the published SSCS timing (default) wins at NFE 6 by 10x and at NFE 20 by 0.13 (200000-sample table in
    # docs/augmented.md; at 10 and 40 by < 0.03, not resolved at test size); the midpoint timing wins at 6 and 20
    # only: its NFE-20 gap is ~0.04, whose margin over 8 fresh runs went down to 0.003 with 10000 samples and
    # stayed at 0.028-0.044 with 40000
    d = _distances(CLD(), ["em", "sscs"], [6, 20], n=40000, sscs={"timing": timing})
    for nfe in (6, 20):
        assert max(d["sscs", nfe]) < min(d["em", nfe]), (nfe, d)


def test_reduced_splitting_beats_em_on_psld():
    # it does not beat PSLD's published SSCS (timing 'reference': 0.50 vs 0.95 at NFE 6, a tie at 20)
    d = _distances(PSLD(), ["em", "reduced_splitting"], [6, 20], n=20000)
    for nfe, bound in ((6, 0.3), (20, 0.8)):
        assert max(d["reduced_splitting", nfe]) < bound * min(d["em", nfe]), (nfe, d)


# the 2310.07894 hybrid claim (conjugate + splitting beats PSLD's EM and SSCS at equal NFE). Against the better of EM
# and the published SSCS, docs/augmented.md (200000 samples) has ratios 0.90, 0.31, 0.60, 0.66 at NFE 6, 10, 20, 40;
# its deterministic conjugate step alone (conjugate_residual) loses to SSCS at NFE 6 and wins from NFE 10.
# NFE 40: distances of 0.09-0.14 against a metric noise of ~0.05 at 40000 samples, hence 100000 samples, a
# 300000-sample reference and one noise seed there.
def test_conjugate_splitting_hybrid_beats_em_and_sscs_on_psld():
    methods = ["em", "sscs", "conjugate_splitting", "conjugate_residual"]
    d = _distances(PSLD(), methods, [6, 10, 20], n=40000)
    d.update(_distances(PSLD(), methods, [40], seeds=1, n=100000, n_ref=300000))
    for nfe, bound in ((6, 1.0), (10, 0.5), (20, 0.8), (40, 0.9)):
        assert max(d["conjugate_splitting", nfe]) < bound * min(d["em", nfe] + d["sscs", nfe]), (nfe, d)
    for nfe, bound in ((10, 0.5), (20, 0.8), (40, 0.9)):
        assert max(d["conjugate_residual", nfe]) < bound * min(d["em", nfe] + d["sscs", nfe]), (nfe, d)


_EXACT = {}


@pytest.mark.parametrize("method,order,options", [
    ("pf_euler", 1, {}), ("pf_heun", 2, {}), ("conjugate", 1, {}), ("conjugate", 1, {"lam": -0.5}),
    ("conjugate", 1, {"lam": 0.5, "lam_matrix": "ones"}), ("conjugate_residual", 1, {})],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v))
@pytest.mark.parametrize("proc", [CLD(), PSLD.from_config(1.0, 12.0)], ids=lambda p: p.name)
def test_deterministic_order(proc, method, order, options):
    tgt = AugmentedTarget(default_mixture(), proc)
    model = ExactScore(tgt)
    if proc not in _EXACT:  # one fresh start and its fine solution per process
        _EXACT[proc] = tgt.sample(8, 1.0, torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, (1,)))))
    x0, v0 = _EXACT[proc][:2]
    t_end = 0.5

    def solve(method, steps, **options):
        ts = torch.linspace(1.0, t_end, steps + 1, dtype=torch.float64).tolist()
        return torch.cat(sample_augmented(proc, model, x0, v0, ts, method, denoise=False, backend="eager",
                                          **options), 1)

    if len(_EXACT[proc]) == 2:
        _EXACT[proc] = (x0, v0, solve("pf_heun", 2048))
    exact = _EXACT[proc][2]
    errs = [float((solve(method, n, **options) - exact).abs().mean()) for n in (64, 128, 256)]
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert abs(slopes[-1] - order) < 0.2, (errs, slopes)
