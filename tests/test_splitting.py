"""Guided splitting (lie_trotter, strang) and the plms baseline: parity with the independent reference written in the
paper's VP variables (tests/reference_splitting.py), measured splitting orders, the step ratio at high guidance
scale, and bad input."""

import math
import zlib

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import fastint
from fastint.models import GaussianMixture, default_mixture
from fastint.schedules import karras
from fastint.solvers.guidance import mixture_class_guidance

from reference_splitting import guided_sample, rk4_flow, split_exact, stsp_sample

CASES = [("plms", "plms", {}), ("plms", "plms", {"order": 2}), ("plms", "plms", {"guidance_scale": 0.0}),
         ("lie_trotter", "ltsp", {}), ("lie_trotter", "ltsp", {"order": 2}),
         ("strang", "stsp", {}), ("strang", "stsp", {"order": 2, "guidance_scale": 5.0}), ("strang", "stsp", {"order": 3}),
         ("strang", "stsp", {"diffusion_solver": "heun"}), ("lie_trotter", "ltsp", {"diffusion_solver": "heun"}),
         ("strang", "stsp", {"second_half": "endpoint"}),
         ("strang", "stsp", {"second_half": "endpoint", "diffusion_solver": "heun"})]


def _fresh_seed():
    return int(torch.randint(0, 2 ** 31, (1,)))


@pytest.mark.parametrize("name,method,opts", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_float64_matches_reference(name, method, opts):
    seed = _fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    gm = default_mixture()
    sigmas = karras(12, 0.01, 20.0)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64) * 20.0
    labels = torch.randint(0, 8, (6,), generator=gen)
    guidance = mixture_class_guidance(gm, labels)
    w = opts.get("guidance_scale", 2.0)
    expected, n_model, n_grad = guided_sample(gm, x.clone(), sigmas.tolist(), method, guidance, w,
                                              opts.get("order", 4), opts.get("diffusion_solver", "plms"),
                                              opts.get("second_half", "authors"))
    calls = []
    got = fastint.sample(lambda xx, s: calls.append(1) or gm(xx, s), x, sigmas, name, guidance=guidance,
                         backend="eager", **{"guidance_scale": w, **opts})
    assert ((got - expected).norm() / expected.norm()).item() < 1e-10, f"seed {seed}"
    steps = len(sigmas) - 1
    assert len(calls) == n_model == (2 * steps - 1 if opts.get("diffusion_solver") == "heun" else steps)


STRANG_STEPS = (1, 5, 10, 20)


@pytest.mark.parametrize("order", [2, 4])
@pytest.mark.parametrize("w", [1.0, 3.0, 8.0])
def test_strang_equals_the_authors_stsp(order, w):
    """``strang`` (default ``second_half="authors"``) against the independent VP-state reference of the authors'
    Strang splitting (split-diffusion's ``stsp_sample`` with PLMS ``order``), on grids that end with a step to sigma
    = 0: equal to rounding (1e-11 relative; the few-step runs at w = 8 amplify rounding to 8e-13, where the earlier
    form differs by 1e-3 to 1), one model call and two guidance gradients per step (2K, the last step included)."""
    gm = default_mixture()
    for steps in STRANG_STEPS:
        gen = torch.Generator().manual_seed(1000 * order + 10 * int(w) + steps)
        sigmas = karras(steps, 0.02, 40.0)
        assert sigmas[-1] == 0 and len(sigmas) == steps + 1
        x = torch.randn(8, 2, generator=gen, dtype=torch.float64) * 40.0
        guidance = mixture_class_guidance(gm, torch.randint(0, 8, (8,), generator=gen))
        expected, n_model, n_grad = stsp_sample(gm, x.clone(), sigmas.tolist(), guidance, w, order)
        calls = {"model": 0, "gradient": 0, "gradient_sigmas": []}

        def model(xx, s):
            calls["model"] += 1
            return gm(xx, s)

        def counted_guidance(xx, s):
            calls["gradient"] += 1
            calls["gradient_sigmas"].append(float(s[0]))
            return guidance(xx, s)

        got = fastint.sample(model, x, sigmas, "strang", guidance=counted_guidance, guidance_scale=w, order=order,
                             backend="eager")
        err = ((got - expected).norm() / expected.norm()).item()
        assert err < 1e-11, f"steps {steps}: relative difference {err:.3e}"  # measured <= 8e-13 (5 steps, w = 8)
        assert calls["model"] == n_model == steps
        assert calls["gradient"] == n_grad == 2 * steps
        assert calls["gradient_sigmas"][-1] == 0.0  # the last second half step asks the classifier at sigma = 0


def test_strang_second_half_coefficient():
    """The issue's numbers: at g 3.98 -> 2.9753 the authors' second half coefficient is 3.0166 (fastint's earlier
    form, now ``second_half="endpoint"``, used g_t = 2.9753); on a last step to 0 it is g_m / sqrt(1 + g_m^2)."""
    authors = fastint.solvers.get_solver("strang", guidance=lambda x, s: x)
    endpoint = fastint.solvers.get_solver("strang", guidance=lambda x, s: x, second_half="endpoint")
    assert abs(authors.second_half_coefficient(3.98, 2.9753) - 3.0166) < 5e-5
    assert endpoint.second_half_coefficient(3.98, 2.9753) == 2.9753
    assert abs(authors.second_half_coefficient(0.5, 0.0) - 0.25 / math.sqrt(1.0625)) < 1e-15
    assert endpoint.second_half_coefficient(0.5, 0.0) == 0.0


def test_strang_endpoint_form_skips_the_last_half_step():
    """``second_half="endpoint"``: its second half term vanishes at sigma = 0, so K steps to 0 make 2K - 1
    gradient calls; equal to the reference's endpoint form."""
    gm = default_mixture()
    gen = torch.Generator().manual_seed(77)
    sigmas = karras(6, 0.02, 40.0)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64) * 40.0
    guidance = mixture_class_guidance(gm, torch.randint(0, 8, (5,), generator=gen))
    expected, _, n_grad = stsp_sample(gm, x.clone(), sigmas.tolist(), guidance, 3.0, 4, second_half="endpoint")
    count = [0]
    got = fastint.sample(gm, x, sigmas, "strang", guidance=lambda xx, s: count.__setitem__(0, count[0] + 1)
                         or guidance(xx, s), guidance_scale=3.0, second_half="endpoint", backend="eager")
    assert ((got - expected).norm() / expected.norm()).item() < 1e-13
    assert count[0] == n_grad == 2 * 6 - 1


def test_float32_state_and_classifier_by_autograd():
    """classifier = the mixture's component log-posterior: autograd gives the analytic gradient."""
    gm = default_mixture()
    sigmas = karras(10, 0.01, 20.0)
    x = torch.randn(5, 2, dtype=torch.float64) * 20.0
    labels = torch.tensor([0, 3, 5, 7, 1])
    expected, _, _ = guided_sample(gm, x.clone(), sigmas.tolist(), "stsp", mixture_class_guidance(gm, labels), 3.0)
    got = fastint.sample(gm, x, sigmas, "strang", classifier=gm.component_log_posterior, labels=labels,
                         guidance_scale=3.0, backend="eager")
    assert ((got - expected).norm() / expected.norm()).item() < 1e-10
    got32 = fastint.sample(gm, x.float(), sigmas, "strang", classifier=gm.component_log_posterior, labels=labels,
                           guidance_scale=3.0, backend="eager")
    assert got32.dtype == torch.float32
    assert ((got32.double() - expected).norm() / expected.norm()).item() < 1e-5


def _order(steps, errors):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


def test_splitting_orders_with_exact_sub_solves():
    """Exact sub-flows (RK4 with fine sub-steps) on a 2-component mixture guided towards a component at w = 3:
    only the splitting error remains. Lie-Trotter 1, Strang 2."""
    gm = GaussianMixture([[-1.0, 0.5], [1.5, -0.5]], [[0.8, 0.6], [0.5, 0.9]], [1.0, 2.0])
    guidance = mixture_class_guidance(gm, 0)
    w, g_hi, g_lo = 3.0, 3.0, 0.3

    def rhs_a(x, g):
        return (x - gm(x, torch.full((x.shape[0],), g, dtype=x.dtype))) / g

    def rhs_b(x, g):
        return -g * w * guidance(x, torch.full((x.shape[0],), g, dtype=x.dtype))

    x0 = torch.randn(12, 2, dtype=torch.float64) * g_hi
    sol = solve_ivp(lambda g, y: (rhs_a(torch.from_numpy(y).reshape(x0.shape), g)
                                  + rhs_b(torch.from_numpy(y).reshape(x0.shape), g)).reshape(-1).numpy(),
                    (g_hi, g_lo), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12)
    exact = torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)
    flow_a, flow_b = rk4_flow(rhs_a, 4), rk4_flow(rhs_b, 4)
    steps = (8, 16, 32)
    for kind, order in (("lie_trotter", 1), ("strang", 2)):
        errors = [(split_exact(kind, flow_a, flow_b, x0, karras(n, g_lo, g_hi)[:-1].tolist()) - exact)
                  .abs().mean().item() for n in steps]
        measured = _order(steps, errors)
        assert abs(measured - order) < 0.2, f"{kind}: measured order {measured:.3f}, errors {errors}"


def test_fastint_orders_on_a_linear_classifier():
    """fastint's own solvers on a Gaussian target with a linear classifier (grad log p(y|x) = a): the guidance term
    is linear in g, so Strang's two Euler half steps with the endpoint coefficients (g_s, then g_t:
    ``second_half="endpoint"``) integrate it exactly. With the self-starting Heun diffusion part: Lie-Trotter 1,
    Strang-endpoint 2, Strang-authors 1 (its second half coefficient tends to g_m, not g_t, at small g: an O(dg^2)
    local error of the guidance part). With PLMS (the reference) all are first order: the eps history was taken off
    the current diffusion sub-flow by the guidance steps. Exact solution in closed form:
    u = x - m, u(g) = c sqrt(s^2 + g^2) - w a (s^2 + g^2)."""
    m, s2 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.4, 1.5], dtype=torch.float64) ** 2
    gm = GaussianMixture(m[None], s2.sqrt()[None])
    a, w, g_hi, g_lo = torch.tensor([1.0, -0.7], dtype=torch.float64), 2.0, 4.0, 0.5

    def guidance(x, sigma):
        return a.expand_as(x).clone()

    x0 = torch.randn(16, 2, dtype=torch.float64) * g_hi
    c = (x0 - m + w * a * (s2 + g_hi ** 2)) / (s2 + g_hi ** 2).sqrt()
    exact = m + c * (s2 + g_lo ** 2).sqrt() - w * a * (s2 + g_lo ** 2)
    steps = (16, 32, 64)
    for name, diffusion, opts, order in (("lie_trotter", "heun", {}, 1),
                                         ("strang", "heun", {"second_half": "endpoint"}, 2),
                                         ("strang", "heun", {"second_half": "authors"}, 1),
                                         ("lie_trotter", "plms", {}, 1), ("strang", "plms", {}, 1),
                                         ("strang", "plms", {"second_half": "endpoint"}, 1)):
        errors = [(fastint.sample(gm, x0, torch.linspace(g_hi, g_lo, n + 1, dtype=torch.float64), name,
                                  guidance=guidance, guidance_scale=w, diffusion_solver=diffusion, backend="eager",
                                  **opts)
                   - exact).abs().mean().item() for n in steps]
        measured = _order(steps, errors)
        assert abs(measured - order) < 0.2, f"{name} {diffusion} {opts}: measured order {measured:.3f}, {errors}"


def test_strang_beats_plms_at_few_steps_and_high_guidance():
    """The regime of the paper's claim: at guidance scale 8, Strang with 10 steps is closer to the exact guided ODE
    solution than plms with 15 steps (measured ratio of steps at equal error about 1.8; docs/restart_and_splitting.md).
    Reference: the guided probability-flow ODE integrated by DOP853. plms's error at 15 steps is heavy-tailed over
    the samples (a few diverge): over 16 seeds at batch 48 it ranged 0.30-4.7 and strang10 / plms15 reached 0.50;
    at batch 160, over seeds 0-249, strang10 = 0.16-0.24 (authors' form), plms15 = 0.39-2.6, strang10 / plms15 =
    0.06-0.44 and lie_trotter10 <= 0.40; a rare draw without a diverging sample gives more (0.204 / 0.210 was seen
    once), so the seed is fixed, from a stable hash (this one: 0.156 / 2.50)."""
    gm = default_mixture()
    gen = torch.Generator().manual_seed(zlib.crc32(b"strang-beats-plms-at-few-steps") & 0x7FFFFFFF)
    batch, s_max, s_min, w = 160, 80.0, 0.002, 8.0
    x0 = torch.randn(batch, 2, generator=gen, dtype=torch.float64) * s_max
    guidance = mixture_class_guidance(gm, torch.randint(0, 8, (batch,), generator=gen))

    def rhs(u, y):
        g = math.exp(u)
        x = torch.from_numpy(y).reshape(x0.shape)
        sb = torch.full((batch,), g, dtype=torch.float64)
        return (x - gm(x, sb) - g * g * w * guidance(x, sb)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(s_max), math.log(s_min)), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-10,
                    atol=1e-10)
    exact = torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)

    def error(name, n):
        out = fastint.sample(gm, x0, karras(n + 1, s_min, s_max)[:-1], name, guidance=guidance, guidance_scale=w,
                             backend="eager")
        return (out - exact).abs().mean().item()

    strang10, plms15 = error("strang", 10), error("plms", 15)
    assert strang10 < 0.5 * plms15, (strang10, plms15)
    assert error("lie_trotter", 10) < plms15


def test_bad_guidance_is_named():
    gm = default_mixture()
    sigmas = karras(5, 0.05, 10.0)
    x = torch.randn(4, 2) * 10
    with pytest.raises(ValueError, match=r"guidance function returned \(4, 3\).*expected grad_x log p"):
        fastint.sample(gm, x, sigmas, "strang", guidance=lambda xx, s: torch.ones(4, 3), backend="eager")
    with pytest.raises(TypeError, match="guidance function returned tuple"):
        fastint.sample(gm, x, sigmas, "lie_trotter", guidance=lambda xx, s: (xx,), backend="eager")
    with pytest.raises(ValueError, match="needs guidance=fn"):
        fastint.sample(gm, x, sigmas, "strang", backend="eager")
    with pytest.raises(ValueError, match="not both"):
        fastint.sample(gm, x, sigmas, "plms", guidance=lambda xx, s: xx, classifier=gm.component_log_posterior,
                       labels=0, backend="eager")
    with pytest.raises(ValueError, match="classifier and labels go together"):
        fastint.sample(gm, x, sigmas, "plms", classifier=gm.component_log_posterior, backend="eager")
    with pytest.raises(ValueError, match="one class index per sample"):
        fastint.sample(gm, x, sigmas, "strang", classifier=gm.component_log_posterior, labels=[0, 1],
                       backend="eager")
    with pytest.raises(ValueError, match="classifier returned"):
        fastint.sample(gm, x, sigmas, "strang", classifier=lambda xx, s: xx.sum(), labels=0, backend="eager")
    with pytest.raises(ValueError, match="order=5 is invalid"):
        fastint.sample(gm, x, sigmas, "plms", order=5, backend="eager")
    with pytest.raises(ValueError, match="second_half='trapezoid' is invalid"):
        fastint.sample(gm, x, sigmas, "strang", guidance=lambda xx, s: xx, second_half="trapezoid", backend="eager")
    with pytest.raises(TypeError, match="unknown option.*second_half"):
        fastint.sample(gm, x, sigmas, "lie_trotter", guidance=lambda xx, s: xx, second_half="authors",
                       backend="eager")
    with pytest.raises(ValueError, match="guidance=3 is invalid"):
        fastint.sample(gm, x, sigmas, "strang", guidance=3, backend="eager")
