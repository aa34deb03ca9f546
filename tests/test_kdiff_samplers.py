"""k-diffusion's remaining samplers in fastint: dpm_2, dpm_2_ancestral, lms, dpmpp_2s_ancestral, dpmpp_sde (general
solvers) and the drop-ins sample_dpm_fast, sample_dpm_adaptive.

- Parity with k-diffusion 0.1.1.post1 (the peer itself, float64, the same injected noise on both sides: a noise
  sampler keyed by the interval, which also records the intervals asked): final samples, the state and denoised
  value the callback sees at every step, and the noise intervals asked, to F64_RTOL. LMS: k-diffusion integrates
  the Lagrange polynomials with ``scipy.integrate.quad`` (21-point Gauss-Kronrod, exact for polynomials of degree
  <= 31 up to rounding; ours are of degree <= 4), fastint integrates them exactly, so LMS is held to the same
  tolerance. dpm_fast / dpm_adaptive: k-diffusion builds its lambda grid from ``torch.tensor(sigma)`` in the default
  dtype, so it runs under ``torch.set_default_dtype(torch.float64)`` (else its grid is float32).
- dpm_2's churn noise is k-diffusion's ``torch.randn_like`` (drawn on every step, used when gamma > 0): replayed
  into fastint through its churn noise sampler.
- fastint's in-kernel noise follows docs/noise.md: k-diffusion run with a noise sampler rebuilt from the Philox
  addressing (counter = step, or accepted attempt for dpm_adaptive; dpmpp_sde's (s, t) draw = a z_0 + b z_1).
- Measured orders on the analytic target, signatures against k-diffusion's, bad inputs.
"""

import inspect
import math

import numpy as np
import pytest
import torch

import fastint
from fastint import k_diffusion as fk
from fastint.models import default_mixture
from fastint.ops.philox import normals
from fastint.schedules import karras
from fastint.solvers.lms import lagrange_integrals

import peers
from injected_noise import KeyedNoise
from ode_reference import probability_flow_end

KD_MISSING = peers.k_diffusion_missing()
needs_kd = pytest.mark.skipif(KD_MISSING is not None, reason=f"k-diffusion not loadable: {KD_MISSING}")
F64_RTOL = 1e-10
BATCH = 5


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


class RecordingNoise(KeyedNoise):
    """KeyedNoise that records the intervals asked, rounded."""

    def __init__(self, shape, seed):
        super().__init__(shape, seed)
        self.asked = []

    def __call__(self, sigma_a, sigma_b):
        self.asked.append((round(float(sigma_a), 9), round(float(sigma_b), 9)))
        return super().__call__(sigma_a, sigma_b)


class CallOrderNoise:
    """The k-th call gets the k-th of a seeded sequence of normals, whatever the interval (dpm_adaptive: its
    intervals follow the step-size control and so differ at rounding level between two implementations, which an
    interval-keyed sampler would turn into different noise); records the intervals asked."""

    def __init__(self, shape, seed):
        self.shape, self.generator, self.asked = shape, torch.Generator().manual_seed(seed), []

    def __call__(self, sigma_a, sigma_b):
        self.asked.append((float(sigma_a), float(sigma_b)))
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float64)


class Recorder:
    def __init__(self):
        self.steps = []

    def __call__(self, info):
        self.steps.append((info["i"], float(info["sigma"]), info["x"].clone(), info["denoised"].clone()))


class float64_default:
    def __enter__(self):
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)


def _start(seed, event_shape=(2,), sigma_max=80.0):
    gen = torch.Generator().manual_seed(seed)
    mixture = default_mixture(math.prod(event_shape))
    x = torch.randn((BATCH, *event_shape), generator=gen, dtype=torch.float64) * sigma_max
    return mixture, x


def _compare_runs(kd, fi, noisy):
    (kd_out, kd_rec, kd_noise), (fi_out, fi_rec, fi_noise) = kd, fi
    assert torch.isfinite(kd_out).all() and kd_out.abs().max() > 0.5
    if noisy:
        assert fi_noise.asked == kd_noise.asked and fi_noise.asked
    assert [(i, pytest.approx(s, rel=1e-12)) for i, s, _, _ in kd_rec.steps] == [(i, s) for i, s, _, _ in
                                                                                 fi_rec.steps]
    for (i, _, kx, kd_d), (_, _, fx, fd) in zip(kd_rec.steps, fi_rec.steps):
        assert _rel(fx, kx) < F64_RTOL, f"state before step {i}: {_rel(fx, kx):.3e}"
        assert _rel(fd, kd_d) < F64_RTOL, f"denoised at step {i}: {_rel(fd, kd_d):.3e}"
    assert _rel(fi_out, kd_out) < F64_RTOL, f"final sample: {_rel(fi_out, kd_out):.3e}"


# -- parity: the general solvers ----------------------------------------------------------------------------------

CASES = [
    ("dpm_2", {}), ("dpm_2_ancestral", {}), ("dpm_2_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("dpm_2_ancestral", {"eta": 1.2}),  # sigma_down = 0 after the first step: Euler, no noise (k-diffusion's branch)
    ("dpm_2_ancestral", {"eta": 0.0}),
    ("lms", {}), ("lms", {"order": 1}), ("lms", {"order": 2}), ("lms", {"order": 5}),
    ("dpmpp_2s_ancestral", {}), ("dpmpp_2s_ancestral", {"eta": 0.7, "s_noise": 1.1}),
    ("dpmpp_2s_ancestral", {"eta": 1.2}), ("dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_sde", {}), ("dpmpp_sde", {"r": 0.3, "eta": 0.6, "s_noise": 0.9}), ("dpmpp_sde", {"eta": 0.0}),
]


def _run_pair(name, options, seed, event_shape=(2,), steps=10):
    mixture, x = _start(seed, event_shape)
    sigmas = peers.karras_sigmas(steps, 0.02, 80.0)
    x = x / 80.0 * sigmas[0]
    runs = []
    for side in ("kd", "fi"):
        noise, rec = RecordingNoise(x.shape, seed), Recorder()
        if side == "kd":
            sampler = getattr(peers.k_sampling(), "sample_" + name)
            extra = {"noise_sampler": noise} if "noise_sampler" in inspect.signature(sampler).parameters else {}
            out = sampler(mixture, x.clone(), sigmas, callback=rec, disable=True, **extra, **options)
        else:
            out = fastint.sample(mixture, x, sigmas, name, noise_sampler=noise, callback=rec, backend="eager",
                                 **options)
        runs.append((out, rec, noise))
    return runs


@needs_kd
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_k_diffusion_parity(name, options):
    kd, fi = _run_pair(name, options, seed=100 + len(options))
    _compare_runs(kd, fi, noisy=name != "dpm_2" and name != "lms" and options.get("eta", 1.0) > 0)


@needs_kd
def test_k_diffusion_parity_image_shaped():
    kd, fi = _run_pair("dpmpp_sde", {"eta": 0.8}, seed=7, event_shape=(3, 4, 4), steps=6)
    _compare_runs(kd, fi, noisy=True)


@needs_kd
def test_dpm_2_churn_replays_k_diffusions_draws():
    """k-diffusion's sample_dpm_2 draws ``randn_like(x) * s_noise`` on every step (used when gamma > 0); the same
    draws, handed to fastint's churn noise (asked as (s_hat, s) of the step), give k-diffusion's result."""
    mixture, x = _start(31)
    sigmas = peers.karras_sigmas(8, 0.02, 80.0)
    x = x / 80.0 * sigmas[0]
    options = {"s_churn": 4.0, "s_tmin": 0.05, "s_tmax": 20.0, "s_noise": 1.007}
    torch.manual_seed(5)
    draws = [torch.randn_like(x) for _ in range(len(sigmas) - 1)]
    torch.manual_seed(5)
    kd_out = peers.k_sampling().sample_dpm_2(mixture, x.clone(), sigmas, disable=True, **options)
    levels = sigmas.tolist()

    def replay(s_hat, s):
        return draws[min(range(len(levels)), key=lambda i: abs(levels[i] - float(s)))]

    fi_out = fastint.sample(mixture, x, sigmas, "dpm_2", noise_sampler=replay, backend="eager", **options)
    assert _rel(fi_out, kd_out) < F64_RTOL
    plain = fastint.sample(mixture, x, sigmas, "dpm_2", backend="eager")
    assert _rel(plain, kd_out) > 1e-3     # the churn matters on this grid


# -- parity: dpm_fast and dpm_adaptive --------------------------------------------------------------------------

FAST_CASES = [(1, 0.0), (5, 0.0), (6, 0.0), (7, 0.6), (9, 1.0)]


@needs_kd
@pytest.mark.parametrize("n,eta", FAST_CASES)
def test_dpm_fast_parity(n, eta):
    mixture, x = _start(200 + n)
    runs = []
    with float64_default():
        for module in (peers.k_sampling(), fk):
            noise, rec = RecordingNoise(x.shape, 3), Recorder()
            out = module.sample_dpm_fast(mixture, x.clone(), 0.02, 80.0, n, callback=rec, disable=True, eta=eta,
                                         noise_sampler=noise)
            runs.append((out, rec, noise))
    kd, fi = runs
    if eta > 0:   # k-diffusion also asks on the last step, whose noise coefficient is 0 (fastint does not ask)
        kd[2].asked.pop()
    _compare_runs(kd, fi, noisy=eta > 0 and n > 3)


ADAPTIVE_CASES = [(2, 0.0, {}), (3, 0.0, {}), (3, 0.5, {"s_noise": 0.9}),
                  (3, 0.0, {"rtol": 0.01, "pcoeff": 0.1, "dcoeff": 0.05, "h_init": 0.2})]


@needs_kd
@pytest.mark.parametrize("order,eta,options", ADAPTIVE_CASES)
def test_dpm_adaptive_parity(order, eta, options):
    mixture, x = _start(300 + order)
    runs = []
    with float64_default():
        for module in (peers.k_sampling(), fk):
            noise, rec = CallOrderNoise(x.shape, 4), Recorder()
            out, info = module.sample_dpm_adaptive(mixture, x.clone(), 0.02, 80.0, callback=rec, disable=True,
                                                   order=order, eta=eta, noise_sampler=noise, return_info=True,
                                                   **options)
            runs.append((out, info, rec, noise))
    (kd_out, kd_info, kd_rec, kd_noise), (fi_out, fi_info, fi_rec, fi_noise) = runs
    assert fi_info == kd_info and kd_info["n_reject"] > 0 and kd_info["nfe"] == order * kd_info["steps"]
    if eta > 0:   # asked on every accepted attempt; the last one's coefficient is 0 and fastint does not ask
        assert len(kd_noise.asked) == kd_info["n_accept"] and len(fi_noise.asked) == kd_info["n_accept"] - 1
        assert np.allclose(fi_noise.asked, kd_noise.asked[:-1], rtol=1e-9, atol=0)
    assert len(fi_rec.steps) == len(kd_rec.steps) == kd_info["steps"]
    # the step sizes follow the error estimate, a difference of two nearly equal states: its rounding (~1e-12
    # relative here) carries into the sigmas, hence 1e-9 on them
    for (i, ks, kx, kd_d), (j, fs, fx, fd) in zip(kd_rec.steps, fi_rec.steps):
        assert i == j and fs == pytest.approx(ks, rel=1e-9)
        assert _rel(fx, kx) < F64_RTOL and _rel(fd, kd_d) < F64_RTOL
    assert _rel(fi_out, kd_out) < F64_RTOL


# -- in-kernel noise: the documented addressing -----------------------------------------------------------------

class PhiloxReplay:
    """A k-diffusion noise sampler that returns fastint's in-kernel noise (docs/noise.md): counter = the step whose
    sigma the interval starts at (or, ``by_call``, the number of earlier calls); stream 0, except dpmpp_sde's
    (s, t) draw, ``a z_0 + b z_1`` with a = sqrt((s - s_mid) / (s - t)) (``mid``: s -> s_mid of the step)."""

    def __init__(self, seeds, shape, sigmas=None, mid=None):
        self.seeds, self.shape, self.sigmas, self.mid, self.calls = seeds, shape, sigmas, mid, 0

    def _z(self, counter, stream):
        return normals(self.seeds, counter, stream, math.prod(self.shape[1:])).reshape(self.shape).double()

    def __call__(self, sigma_a, sigma_b):
        a, b = float(sigma_a), float(sigma_b)
        if self.sigmas is None:
            self.calls += 1
            return self._z(self.calls - 1, 0)
        i = min(range(len(self.sigmas)), key=lambda k: abs(self.sigmas[k] - a))
        if self.mid is None or abs(b - self.sigmas[i + 1]) > 1e-9 * a:
            return self._z(i, 0)
        s_mid = self.mid(i)
        w = math.sqrt((a - s_mid) / (a - b))
        return w * self._z(i, 0) + math.sqrt(1 - w * w) * self._z(i, 1)


SEEDS = torch.tensor([11, -5, 2 ** 40 + 3], dtype=torch.int64)


@needs_kd
@pytest.mark.parametrize("name,options", [("dpm_2_ancestral", {}), ("dpmpp_2s_ancestral", {"eta": 0.8}),
                                          ("dpmpp_sde", {}), ("dpmpp_sde", {"r": 0.3, "eta": 0.5})])
def test_in_kernel_noise_follows_the_documented_addressing(name, options):
    mixture, x = _start(400, (2,))
    x = x[:3]
    sigmas = peers.karras_sigmas(8, 0.02, 80.0)
    levels = sigmas.tolist()
    r = options.get("r", 0.5)
    mid = (lambda i: levels[i] * (levels[i + 1] / levels[i]) ** r) if name == "dpmpp_sde" else None
    replay = PhiloxReplay(SEEDS, x.shape, levels, mid)
    expected = getattr(peers.k_sampling(), "sample_" + name)(mixture, x.clone(), sigmas, disable=True,
                                                             noise_sampler=replay, **options)
    got = fastint.sample(mixture, x, sigmas, name, seed=SEEDS, backend="eager", **options)
    assert _rel(got, expected) < F64_RTOL
    if name == "dpmpp_sde":   # the (s, t) draw is really correlated with (s, s_mid): independent z_1 is not it
        independent = PhiloxReplay(SEEDS, x.shape, levels, None)
        other = getattr(peers.k_sampling(), "sample_" + name)(mixture, x.clone(), sigmas, disable=True,
                                                              noise_sampler=independent, **options)
        assert _rel(got, other) > 1e-3


@needs_kd
@pytest.mark.parametrize("sampler", ["sample_dpm_fast", "sample_dpm_adaptive"])
def test_in_kernel_noise_of_the_dpm_solver_dropins(sampler):
    mixture, x = _start(500, (2,))
    x = x[:3]
    args = (0.05, 50.0, 10) if sampler == "sample_dpm_fast" else (0.05, 50.0)
    with float64_default():
        expected = getattr(peers.k_sampling(), sampler)(mixture, x.clone(), *args, disable=True, eta=0.7,
                                                        noise_sampler=PhiloxReplay(SEEDS, x.shape))
        got = getattr(fk, sampler)(mixture, x.clone(), *args, disable=True, eta=0.7, seed=SEEDS)
        quiet = getattr(fk, sampler)(mixture, x.clone(), *args, disable=True, eta=0.7, s_noise=0.0)
    assert _rel(got, expected) < F64_RTOL
    assert _rel(quiet, expected) > 1e-3


# -- measured orders on the analytic target -----------------------------------------------------------------------

SIGMA_MIN, SIGMA_MAX = 0.2, 80.0


@pytest.fixture(scope="module")
def ode_solution():
    """The probability-flow ODE from SIGMA_MAX to SIGMA_MIN (DOP853, 1e-13) for 16 2-D samples: (model, x0,
    x(SIGMA_MIN), D(x(SIGMA_MIN), SIGMA_MIN))."""
    return probability_flow_end(16, 2024, SIGMA_MAX, SIGMA_MIN)


def _order(errors, counts):
    return -np.polyfit(np.log(counts), np.log(errors), 1)[0]


ORDERS = [  # (solver, options, step counts, expected order); ancestral / SDE forms with eta = 0
    ("dpm_2", {}, (32, 64, 128), 2), ("dpm_2_ancestral", {"eta": 0.0}, (32, 64, 128), 2),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, (32, 64, 128), 2), ("dpmpp_sde", {"eta": 0.0}, (32, 64, 128), 2),
]


@pytest.mark.parametrize("name,options,counts,order", ORDERS, ids=[f"{n}-{o}" for n, o, _, _ in ORDERS])
def test_measured_order_to_zero(ode_solution, name, options, counts, order):
    """Karras grids ending in 0: the last step returns D(x, SIGMA_MIN), which the reference is."""
    gm, x0, _, reference = ode_solution
    errors = [(fastint.sample(gm, x0, karras(n, SIGMA_MIN, SIGMA_MAX), name, backend="eager", **options)
               - reference).abs().mean().item() for n in counts]
    assert abs(_order(errors, counts) - order) < 0.2, errors


@pytest.mark.parametrize("lms_order,expected", [(2, 2), (4, 4)])
def test_lms_measured_order(ode_solution, lms_order, expected):
    """LMS on Karras grids ending at SIGMA_MIN (its last step to 0 extrapolates the derivative polynomial over the
    fixed step SIGMA_MIN -> 0, which does not shrink as the grid is refined, so grids ending in 0 do not show the
    order; the other solvers' last step is D)."""
    gm, x0, x_end, _ = ode_solution
    counts = (128, 256)
    errors = [(fastint.sample(gm, x0, karras(n, SIGMA_MIN, SIGMA_MAX)[:-1], "lms", order=lms_order,
                              backend="eager") - x_end).abs().mean().item() for n in counts]
    assert abs(_order(errors, counts) - expected) < 0.25, errors


@pytest.mark.parametrize("budgets,expected", [((47, 95), 3), ((46, 94), 2)])
def test_dpm_fast_measured_order_in_the_budget(ode_solution, budgets, expected):
    """DPM-Solver-fast in its NFE budget n: 3 when n % 3 == 2 (last step DPM-Solver-2), 2 when n % 3 == 1 (or 0):
    its last step is DPM-Solver-1, whose local error O(h^2) bounds the global order."""
    gm, x0, x_end, _ = ode_solution
    errors = [(fk.sample_dpm_fast(gm, x0, SIGMA_MIN, SIGMA_MAX, n, disable=True) - x_end).abs().mean().item()
              for n in budgets]
    assert abs(_order(errors, budgets) - expected) < 0.25, errors


def test_dpm_adaptive_error_follows_the_tolerance(ode_solution):
    """Tighter rtol: more evaluations and a smaller error (no fixed order)."""
    gm, x0, x_end, _ = ode_solution
    loose, info_loose = fk.sample_dpm_adaptive(gm, x0, SIGMA_MIN, SIGMA_MAX, disable=True, rtol=0.05,
                                               return_info=True)
    tight, info_tight = fk.sample_dpm_adaptive(gm, x0, SIGMA_MIN, SIGMA_MAX, disable=True, rtol=0.002, atol=1e-4,
                                               return_info=True)
    assert info_tight["nfe"] > info_loose["nfe"]
    assert (tight - x_end).abs().mean() < 0.2 * (loose - x_end).abs().mean()


def test_lagrange_integrals_are_exact():
    """Integrals of the Lagrange basis reproduce int_a^b p for polynomials p of the nodes' degree (exact in
    float64 to rounding): with nodes 3.1, 2.0, 1.2, 0.7 and p(tau) = tau^3 - 2 tau, int_{0.7}^{0.1} p."""
    nodes, a, b = [3.1, 2.0, 1.2, 0.7], 0.7, 0.1
    weights = lagrange_integrals(nodes, a, b)
    p = lambda v: v ** 3 - 2 * v                  # noqa: E731
    exact = (b ** 4 / 4 - b ** 2) - (a ** 4 / 4 - a ** 2)
    assert sum(w * p(n) for w, n in zip(weights, nodes)) == pytest.approx(exact, rel=1e-13)
    assert sum(weights) == pytest.approx(b - a, rel=1e-14)


# -- signatures: every k-diffusion sampler ------------------------------------------------------------------------

def _kd_samplers():
    if KD_MISSING is not None:
        return []
    return sorted(n for n, f in vars(peers.k_sampling()).items() if n.startswith("sample_") and callable(f))


@needs_kd
def test_no_k_diffusion_sampler_is_missing():
    names = _kd_samplers()
    assert len(names) == 13
    missing = [n for n in names if not hasattr(fk, n)]
    assert not missing, f"fastint.k_diffusion lacks {missing}"
    assert set(names) <= set(fk.__all__)


@needs_kd
@pytest.mark.parametrize("name", _kd_samplers() or ["sample_euler"])
def test_signature_extends_k_diffusions(name):
    """k-diffusion's parameters, in its order, kinds and defaults, are a prefix of fastint's; fastint's extra
    parameters have defaults (positional ones after k-diffusion's) or are keyword-only."""
    theirs = list(inspect.signature(getattr(peers.k_sampling(), name)).parameters.values())
    ours = list(inspect.signature(getattr(fk, name)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == \
        [(p.name, p.kind, p.default) for p in theirs]
    for p in ours[len(theirs):]:
        assert p.default is not inspect.Parameter.empty, p.name
        assert p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY), p.name


def test_list_solvers_has_the_general_ones():
    listed = {s["name"]: s for s in fastint.list_solvers()}
    for name, nfe_10 in (("dpm_2", 19), ("dpm_2_ancestral", 19), ("lms", 10), ("dpmpp_2s_ancestral", 19),
                         ("dpmpp_sde", 19)):
        assert listed[name]["nfe"](10) == nfe_10, name
        assert hasattr(fk, "sample_" + name)
    assert "dpm_fast" not in listed and "dpm_adaptive" not in listed


# -- bad inputs ---------------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("lms", {"order": 0}, "order"), ("lms", {"order": 6}, "order"), ("lms", {"order": 2.0}, "order"),
    ("lms", {"order": True}, "order"), ("dpmpp_sde", {"r": 1.0}, "r="), ("dpmpp_sde", {"r": 0}, "r="),
    ("dpmpp_sde", {"eta": -0.1}, "eta"), ("dpm_2", {"s_churn": -1.0}, "s_churn"),
    ("dpm_2_ancestral", {"eta": float("nan")}, "eta"), ("dpmpp_2s_ancestral", {"s_noise": -1.0}, "s_noise"),
]


@pytest.mark.parametrize("name,options,word", BAD_OPTIONS, ids=[f"{n}-{o}" for n, o, _ in BAD_OPTIONS])
def test_invalid_options_are_named(name, options, word):
    gm, x = _start(1)
    with pytest.raises(ValueError, match=word):
        fastint.sample(gm, x, karras(4, 0.1, 80.0), name, **options)
    with pytest.raises(ValueError, match=word):
        getattr(fk, "sample_" + name)(gm, x, karras(4, 0.1, 80.0), **options)


@pytest.mark.parametrize("name", ["dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde"])
def test_bad_sigmas_and_untouched_inputs(name):
    gm, x = _start(2)
    with pytest.raises(ValueError, match="decreasing"):
        getattr(fk, "sample_" + name)(gm, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="positive"):
        getattr(fk, "sample_" + name)(gm, x, torch.tensor([1.0, -0.5]))
    before = x.clone()
    sigmas = karras(4, 0.1, 80.0)
    getattr(fk, "sample_" + name)(gm, x, sigmas, extra_args={"seed": 1})
    assert torch.equal(x, before) and torch.equal(sigmas, karras(4, 0.1, 80.0))


FAST_BAD = [((0.0, 80.0, 5), {}, ValueError, "sigma_min"), ((0.1, float("inf"), 5), {}, ValueError, "sigma_max"),
            ((80.0, 0.1, 5), {}, ValueError, "below sigma_max"), ((0.1, 80.0, 0), {}, ValueError, "n "),
            ((0.1, 80.0, 2.5), {}, ValueError, "n "), ((0.1, 80.0, 5), {"eta": -1.0}, ValueError, "eta"),
            ((torch.tensor([0.1, 0.2]), 80.0, 5), {}, ValueError, "sigma_min"),
            ((0.1, "80", 5), {}, TypeError, "sigma_max"), ((0.1, 80.0, 5), {"extra_args": [1]}, TypeError,
                                                           "extra_args")]


@pytest.mark.parametrize("args,kwargs,error,word", FAST_BAD)
def test_dpm_fast_bad_inputs(args, kwargs, error, word):
    gm, x = _start(3)
    with pytest.raises(error, match=word):
        fk.sample_dpm_fast(gm, x, *args, **kwargs)


ADAPTIVE_BAD = [({"order": 4}, "order"), ({"order": 1}, "order"), ({"rtol": -0.1}, "rtol"),
                ({"rtol": 0.0, "atol": 0.0}, "not both 0"), ({"h_init": 0.0}, "h_init"),
                ({"atol": float("nan")}, "atol"), ({"accept_safety": float("inf")}, "accept_safety"),
                ({"icoeff": 0.0}, "pcoeff \\+ icoeff"), ({"s_noise": -1.0}, "s_noise"),
                ({"noise_sampler": 3}, "noise_sampler")]


@pytest.mark.parametrize("kwargs,word", ADAPTIVE_BAD, ids=[str(k) for k, _ in ADAPTIVE_BAD])
def test_dpm_adaptive_bad_inputs(kwargs, word):
    gm, x = _start(4)
    with pytest.raises((ValueError, TypeError), match=word):
        fk.sample_dpm_adaptive(gm, x, 0.1, 80.0, **kwargs)


def test_dpm_dropins_leave_inputs_untouched_and_refuse_bad_states():
    gm, x = _start(5)
    before = x.clone()
    fk.sample_dpm_fast(gm, x, 0.1, 80.0, 7, eta=0.5, extra_args={"seed": 3})
    fk.sample_dpm_adaptive(gm, x, 0.1, 80.0, eta=0.5, extra_args={"seed": 3})
    assert torch.equal(x, before)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fk.sample_dpm_adaptive(gm, bad, 0.1, 80.0)
    with pytest.raises(ValueError, match="NaN"):
        fk.sample_dpm_fast(gm, bad, 0.1, 80.0, 4)

    def broken(x, sigma):
        return torch.full_like(x, float("nan"))

    with pytest.raises(FloatingPointError, match="error estimate"):
        fk.sample_dpm_adaptive(broken, x, 0.1, 80.0)


# -- through a fastint adapter (D kept as c_skip x + c_out F, the next network input staged) -------------------

def _flow_network(mixture):
    """A rectified-flow velocity network exact for ``mixture``: v = eps - x0 at x_flow = x~ / (1 + sigma~)."""
    def net(x_flow, timestep):
        t = (timestep / 1000.0).reshape(-1, 1)
        sigma = t / (1 - t)
        x = x_flow * (1 + sigma)
        denoised = mixture.denoise(x, sigma.reshape(-1)[0].item())
        return (x - denoised) / sigma - denoised
    return net


@pytest.mark.parametrize("name,options", [("dpm_2", {"s_churn": 2.0}), ("dpm_2_ancestral", {}), ("lms", {}),
                                          ("dpmpp_2s_ancestral", {}), ("dpmpp_sde", {"r": 0.3})])
def test_adapter_path_equals_the_plain_denoiser(name, options):
    """With a fastint adapter the executor fuses D = c_skip x + c_out F into the combinations (c_in != 1 here, so
    the updates also write the next network input): the same samples as the plain denoiser, in-kernel noise."""
    mixture, x = _start(600)
    flow = fastint.models.FlowDenoiser(_flow_network(mixture))
    sigmas = karras(6, 0.05, 40.0)
    x = x / 80.0 * 40.0
    got = fastint.sample(flow, x, sigmas, name, seed=5, backend="eager", **options)
    want = fastint.sample(mixture, x, sigmas, name, seed=5, backend="eager", **options)
    assert _rel(got, want) < F64_RTOL


def test_dpm_dropins_through_an_adapter():
    mixture, x = _start(601)
    flow = fastint.models.FlowDenoiser(_flow_network(mixture))
    x = x / 80.0 * 40.0
    for sampler, args in ((fk.sample_dpm_fast, (0.05, 40.0, 8)), (fk.sample_dpm_adaptive, (0.05, 40.0))):
        got = sampler(flow, x, *args, eta=0.5, seed=2, disable=True)
        want = sampler(mixture, x, *args, eta=0.5, seed=2, disable=True)
        assert _rel(got, want) < F64_RTOL


# -- float32 states (the kernels) against the float64 run -------------------------------------------------------

@pytest.mark.parametrize("name,options", [("dpm_2", {"s_churn": 2.0}), ("dpm_2_ancestral", {}), ("lms", {}),
                                          ("dpmpp_2s_ancestral", {}), ("dpmpp_sde", {"r": 0.3})])
def test_float32_state_with_in_kernel_noise_matches_float64(name, options):
    """float32 state on the automatic backend (the C++ kernel when built), in-kernel noise, against the float64
    eager run with the same seeds: 1e-5 relative (the kernels compute in float32)."""
    mixture, x = _start(700, (6,))
    sigmas = karras(8, 0.05, 40.0)
    x = x / 80.0 * 40.0
    got = fastint.sample(mixture, x.float(), sigmas, name, seed=5, **options)
    want = fastint.sample(mixture, x, sigmas, name, seed=5, backend="eager", **options)
    assert got.dtype == torch.float32 and _rel(got.double(), want) < 1e-5


def test_float32_dpm_dropins_match_float64():
    mixture, x = _start(701, (6,))
    x = x / 80.0 * 40.0
    for sampler, args in ((fk.sample_dpm_fast, (0.05, 40.0, 8)), (fk.sample_dpm_adaptive, (0.05, 40.0))):
        got = sampler(mixture, x.float(), *args, eta=0.5, seed=2, disable=True)
        want = sampler(mixture, x, *args, eta=0.5, seed=2, disable=True, backend="eager")
        assert got.dtype == torch.float32 and _rel(got.double(), want) < 1e-5


def test_sample_takes_a_configured_solver_instance_without_options():
    from fastint.solvers.dpm_solver import DPMSolverFast, fast_sigmas
    gm, x = _start(8)
    solver = DPMSolverFast(nfe=7)
    sigmas = fast_sigmas(0.1, 80.0, 7)
    assert torch.equal(fastint.sample(gm, x, sigmas, solver), fk.sample_dpm_fast(gm, x, 0.1, 80.0, 7))
    with pytest.raises(TypeError, match="configured solver instance"):
        fastint.sample(gm, x, sigmas, solver, eta=0.5)
    with pytest.raises(ValueError, match="takes 3 steps"):
        fastint.sample(gm, x, fast_sigmas(0.1, 80.0, 10), solver)


@needs_kd
def test_the_mixing_is_the_brownian_trees_correlation():
    """The a of dpmpp_sde's in-kernel mixing is the correlation of k-diffusion's default noise draws (a
    BrownianTreeNoiseSampler over sigma) for (s, s_mid) and (s, t): measured over 20000 independent elements of
    one tree."""
    pytest.importorskip("torchsde")
    x = torch.zeros(20000, dtype=torch.float64)
    sampler = peers.k_sampling().BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=1234)
    s, s_mid, t = 5.0, 3.0, 1.0
    first = sampler(torch.tensor(s), torch.tensor(s_mid))
    second = sampler(torch.tensor(s), torch.tensor(t))
    correlation = torch.corrcoef(torch.stack([first.reshape(-1), second.reshape(-1)]))[0, 1].item()
    assert correlation == pytest.approx(math.sqrt((s - s_mid) / (s - t)), abs=0.03)   # 0.707; 0 if independent
