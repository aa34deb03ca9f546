"""Value-for-value parity of ``fastint.sample`` with the peers (k-diffusion 0.1.1.post1, diffusers), injected noise.

Every run uses fresh seeded random inputs, a GaussianMixture target (2-D and a (3, 4, 4) event shape) and the SAME
standard-normal tensor for step i on both sides (``peers.StepNoise``, keyed by the step's sigmas, which also records
which steps asked for noise: both sides must ask for the same ones).

k-diffusion: the mixture is the VE denoiser; float64 Karras sigmas; float64 everywhere, so the final samples, the
state before every step and the denoised values seen by the callback agree to ~1e-12 (asserted: 1e-9 relative).
k-diffusion's churn draws ``torch.randn`` (not injectable), so Euler and Heun are compared without churn.

diffusers: a discrete VP model (``scaled_linear`` betas 0.00085..0.012, 1000 steps) whose eps network is exact for
the mixture (``peers.DiscreteVPEpsModel``); fastint samples the same network converted to a VE denoiser
(``peers.VEDenoiserFromDiscreteEps``) on sigma~ = sqrt((1 - ab)/ab) at diffusers' timesteps, from x~ = x_T / alpha_T,
and its result is compared in VE coordinates (x~ = x_vp / alpha). ``z`` of diffusers' step i is fastint's noise of
step i: DPM-Solver++ SDE's VP noise term sigma_t sqrt(1 - e^{-2h}) z is sigma~_t sqrt(1 - e^{-2h}) z in VE, and
DDIM's sig z is (sig / sqrt(ab_prev)) z = sigma_up z (docs/solvers.md).
Precision: ``DDIMScheduler`` computes in the sample's dtype with float32 alphas_cumprod; we hand it the same
alphas_cumprod values as float64 (same method, no float32 coefficient rounding), so DDIM agrees to 1e-9.
``DPMSolverMultistepScheduler.step`` casts the sample and the noise to float32 on every step (hard-coded
``sample.to(torch.float32)``), so there agreement is at float32 level: the noise is drawn float32-representable,
the scheduler's sigmas are replaced by the same values in float64 (diffusers stores them as float32), and the
tolerance is DPM_RTOL; each such test also checks that a neighbouring method differs from diffusers by far more than
that tolerance, so it can fail.

Configurations where diffusers' method is NOT fastint's (k-diffusion's) method, hence excluded:
- ``DPMSolverMultistepScheduler`` solver_order=3 with ``lower_order_final=True`` and fewer than 15 steps: diffusers
  takes a 2nd-order step at step n-2; k-diffusion / fastint 3M stay 3rd order until the step to sigma = 0. Tested
  with ``lower_order_final=False`` (10 steps) and with 20 steps (the flag is inert at >= 15 steps).
- solver_order=3 with ``solver_type="midpoint"`` (diffusers' default): diffusers' 2nd (warm-up) step uses the
  midpoint coefficient 0.5 (1 - e^{-h}) / r, k-diffusion's 3M uses phi_2 = expm1(-h)/h + 1 (diffusers' "heun").
  Tested with ``solver_type="heun"``.
- A step to sigma = 0: diffusers forces first order (``final_sigmas_type="zero"``), which returns D, as fastint does.
- ``use_karras_sigmas`` etc.: diffusers evaluates the model at rounded timesteps whose sigma is not the step's sigma.
- ``DDIMScheduler`` with ``timestep_spacing="linspace"``: it steps to t - 1000 // n, which is not the next timestep
  of its own schedule (not a single sigma grid); "leading" and "trailing" are tested.
Peer defect (documented and asserted): diffusers' ``sde-dpmsolver++`` 3rd-order update uses the D2 coefficient
alpha_t ((1 - e^{-2h} - 2h)/(2h)^2 - 0.5), which tends to -1 as h -> 0; k-diffusion (and docs/solvers.md) use -phi_3 =
alpha_t ((1 - e^{-2h} - 2h)/(2h)^2 + 0.5) = O(h): the sign of the 0.5 is wrong, an O(1) weight on D2 (diffusers'
deterministic 3rd-order update has the right sign). fastint follows k-diffusion; with diffusers' coefficient
corrected by +alpha_t D2 the runs agree at float32 level.
"""

import inspect
import math
import os

import pytest
import torch

import fastint
from fastint.models import GaussianMixture, default_mixture

import peers

REQUIRE_PEERS = os.environ.get("FASTINT_REQUIRE_PEERS") == "1"
KD_MISSING = peers.k_diffusion_missing()
try:
    import diffusers
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    DIFFUSERS_MISSING = None
except ImportError as exc:  # pragma: no cover - CI installs it
    DIFFUSERS_MISSING = f"{type(exc).__name__}: {exc}"

if REQUIRE_PEERS and (KD_MISSING or DIFFUSERS_MISSING):
    pytest.fail(f"FASTINT_REQUIRE_PEERS=1 but a peer is missing: k-diffusion: {KD_MISSING or 'ok'}; "
                f"diffusers: {DIFFUSERS_MISSING or 'ok'}", pytrace=False)

needs_kd = pytest.mark.skipif(KD_MISSING is not None, reason=f"k-diffusion not loadable: {KD_MISSING}")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2
needs_diffusers = pytest.mark.skipif(DIFFUSERS_MISSING is not None, reason=f"diffusers missing: {DIFFUSERS_MISSING}")

F64_RTOL = 1e-9
DPM_RTOL = 1e-6   # diffusers' DPMSolverMultistepScheduler rounds the state to float32 on every step
SHAPES = {"2d": (2,), "3x4x4": (3, 4, 4)}
BATCH = 5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _mixture(event_shape) -> GaussianMixture:
    return default_mixture(math.prod(event_shape))


def _noises(n, shape, gen, float32_representable=False):
    return [torch.randn(shape, generator=gen, dtype=torch.float32 if float32_representable else torch.float64)
            .to(torch.float64) for _ in range(n)]


class Recorder:
    """k-diffusion-style callback recording (i, sigma, x, denoised), cloned (fastint reuses its state buffer)."""

    def __init__(self):
        self.steps = []

    def __call__(self, info):
        self.steps.append((info["i"], float(info["sigma"]), info["x"].clone(), info["denoised"].clone()))


# -- k-diffusion -------------------------------------------------------------------------------------------------------

KD_CASES = [
    # (k-diffusion sampler, its kwargs, fastint solver, fastint options)
    ("sample_euler", {}, "euler", {}),
    ("sample_heun", {}, "heun", {}),
    ("sample_euler_ancestral", {}, "euler_ancestral", {}),
    ("sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.9}, "euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("sample_euler_ancestral", {"eta": 2.5}, "euler_ancestral", {"eta": 2.5}),  # sigma_up clamped to sigma_t
    ("sample_dpmpp_2m", {}, "dpmpp_2m", {}),
    ("sample_dpmpp_2m_sde", {}, "dpmpp_2m_sde", {}),
    ("sample_dpmpp_2m_sde", {"eta": 0.5}, "dpmpp_2m_sde", {"eta": 0.5}),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun"}, "dpmpp_2m_sde", {"solver_type": "heun"}),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5, "s_noise": 1.1},
     "dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5, "s_noise": 1.1}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0}, "dpmpp_2m_sde", {"eta": 0.0}),
    ("sample_dpmpp_3m_sde", {}, "dpmpp_3m_sde", {}),
    ("sample_dpmpp_3m_sde", {"eta": 0.5}, "dpmpp_3m_sde", {"eta": 0.5}),
    ("sample_dpmpp_3m_sde", {"eta": 0.0}, "dpmpp_3m_sde", {"eta": 0.0}),
    ("sample_dpmpp_3m_sde", {"eta": 0.0}, "dpmpp_3m", {}),
]


def _kd_id(case):
    name, kw, solver, opts = case
    return f"{name[7:]}[{','.join(f'{k}={v}' for k, v in kw.items())}]->{solver}"


def _run_kd_and_fastint(case, event_shape, seed, steps=12):
    name, kd_kwargs, solver, options = case
    gen = torch.Generator().manual_seed(seed)
    mixture = _mixture(event_shape)
    sigmas = peers.karras_sigmas(steps, 0.02, 80.0)
    shape = (BATCH, *event_shape)
    x0 = torch.randn(shape, generator=gen, dtype=torch.float64) * sigmas[0]
    zs = _noises(steps, shape, gen)
    kd_noise, fi_noise = peers.StepNoise(sigmas, zs), peers.StepNoise(sigmas, zs)
    kd_rec, fi_rec = Recorder(), Recorder()
    sampler = getattr(peers.k_sampling(), name)
    extra = {"noise_sampler": kd_noise} if "noise_sampler" in inspect.signature(sampler).parameters else {}
    kd_out = sampler(mixture, x0.clone(), sigmas, callback=kd_rec, disable=True, **extra, **kd_kwargs)
    fi_out = fastint.sample(mixture, x0, sigmas, solver, noise_sampler=fi_noise, callback=fi_rec,
                            backend="eager", **options)
    return kd_out, fi_out, kd_rec, fi_rec, kd_noise, fi_noise


@needs_kd
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("case", KD_CASES, ids=_kd_id)
def test_k_diffusion_parity(case, shape_name):
    kd_out, fi_out, kd_rec, fi_rec, kd_noise, fi_noise = _run_kd_and_fastint(case, SHAPES[shape_name], seed=1000)
    assert fi_out.dtype == torch.float64 and fi_out.shape == kd_out.shape
    assert torch.isfinite(kd_out).all() and kd_out.abs().max() > 0.5
    # both asked for the noise of the same steps, in the same order
    assert fi_noise.calls == kd_noise.calls
    stochastic = case[1].get("eta", 1.0) != 0 and case[0] in {"sample_euler_ancestral", "sample_dpmpp_2m_sde",
                                                                 "sample_dpmpp_3m_sde"}
    assert (len(kd_noise.calls) == len(kd_rec.steps) - 1) if stochastic else not kd_noise.calls
    # the callback saw the same steps, states and denoised values
    assert [s[:2] for s in fi_rec.steps] == [(i, pytest.approx(sig, rel=1e-15)) for i, sig in
                                             ((s[0], s[1]) for s in kd_rec.steps)]
    for (i, _, kx, kd), (_, _, fx, fd) in zip(kd_rec.steps, fi_rec.steps):
        assert _rel(fx, kx) < F64_RTOL, f"state before step {i}: {_rel(fx, kx):.3e}"
        assert _rel(fd, kd) < F64_RTOL, f"denoised at step {i}: {_rel(fd, kd):.3e}"
    assert _rel(fi_out, kd_out) < F64_RTOL, f"final sample: relative difference {_rel(fi_out, kd_out):.3e}"


@needs_kd
def test_k_diffusion_parity_detects_a_different_method():
    """The comparison is sharp: methods that differ only in a 2nd- or 3rd-order coefficient or in the noise are
    told apart by many orders of magnitude more than F64_RTOL."""
    kd_out = _run_kd_and_fastint(("sample_dpmpp_3m_sde", {"eta": 0.0}, "dpmpp_3m", {}), (2,), seed=7)[0]
    exact = _run_kd_and_fastint(("sample_dpmpp_3m_sde", {"eta": 0.0}, "dpmpp_3m", {"third_order": "exact"}),
                                (2,), seed=7)[1]
    assert _rel(exact, kd_out) > 1e4 * F64_RTOL
    kd_mid = _run_kd_and_fastint(("sample_dpmpp_2m_sde", {}, "dpmpp_2m_sde", {}), (2,), seed=7)[0]
    fi_heun = _run_kd_and_fastint(("sample_dpmpp_2m_sde", {}, "dpmpp_2m_sde", {"solver_type": "heun"}),
                                  (2,), seed=7)[1]
    assert _rel(fi_heun, kd_mid) > 1e4 * F64_RTOL
    other_seed = _run_kd_and_fastint(("sample_dpmpp_2m_sde", {}, "dpmpp_2m_sde", {}), (2,), seed=8)[1]
    assert _rel(other_seed, kd_mid) > 1e-2


# -- diffusers ---------------------------------------------------------------------------------------------------------

def _dpm_scheduler(cls=None, **config):
    cls = cls or DPMSolverMultistepScheduler
    return cls(**peers.SD_BETAS, **config)


class CorrectedSDE3Scheduler(DPMSolverMultistepScheduler if DIFFUSERS_MISSING is None else object):
    """diffusers' scheduler with the sde-dpmsolver++ 3rd-order D2 coefficient corrected to k-diffusion's:
    diffusers' coefficient alpha_t ((1 - e^{-2h} - 2h)/(2h)^2 - 0.5) plus alpha_t."""

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kw):
        x_t = super().multistep_dpm_solver_third_order_update(model_output_list, *args, sample=sample,
                                                              noise=noise, **kw)
        if self.config.algorithm_type != "sde-dpmsolver++":
            return x_t
        i = self.step_index
        lam = []
        for sig in (self.sigmas[i + 1], self.sigmas[i], self.sigmas[i - 1], self.sigmas[i - 2]):
            alpha, sigma = self._sigma_to_alpha_sigma_t(sig)
            lam.append(torch.log(alpha) - torch.log(sigma))
        alpha_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])[0]
        h, h_0, h_1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
        r0, r1 = h_0 / h, h_1 / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = ((m0 - m1) / r0 - (m1 - m2) / r1) / (r0 + r1)
        return x_t + alpha_t * d2


def _diffusers_setup(event_shape, seed, n):
    gen = torch.Generator().manual_seed(seed)
    mixture = _mixture(event_shape)
    alphas_cumprod = peers.scaled_linear_alphas_cumprod()
    eps_model = peers.DiscreteVPEpsModel(mixture, alphas_cumprod)
    shape = (BATCH, *event_shape)
    x_T = torch.randn(shape, generator=gen, dtype=torch.float32).to(torch.float64)
    zs = _noises(n, shape, gen, float32_representable=True)
    return eps_model, x_T, zs


def _run_dpm(scheduler, eps_model, x_T, zs, n):
    """diffusers' loop; returns (VE sigmas incl. the final one, VE states before each step, final VE sample)."""
    scheduler.set_timesteps(n)
    timesteps = scheduler.timesteps.tolist()
    ve_sigmas = eps_model.sigmas[timesteps].tolist()
    final = scheduler.sigmas[-1].item()
    if final != 0:  # final_sigmas_type="sigma_min": sigma~ of timestep 0
        assert final == pytest.approx(eps_model.sigmas[0].item(), rel=1e-6)
        final = eps_model.sigmas[0].item()
    ve_sigmas.append(final)
    assert torch.allclose(scheduler.sigmas.double(), torch.tensor(ve_sigmas, dtype=torch.float64), rtol=1e-6)
    scheduler.sigmas = torch.tensor(ve_sigmas, dtype=torch.float64)  # the same values, without float32 rounding
    x = x_T * scheduler.init_noise_sigma
    states = []
    for i, t in enumerate(timesteps):
        states.append(x * math.sqrt(1 + ve_sigmas[i] ** 2))
        eps = eps_model(x, t)
        x = scheduler.step(eps, t, x, variance_noise=zs[i]).prev_sample
    return ve_sigmas, states, x * math.sqrt(1 + ve_sigmas[-1] ** 2)


def _ve_denoiser(eps_model):
    """fastint's own adapter (fastint.models.DiscreteVPDenoiser, nearest-timestep quantisation, exact sigma~) when it
    exists, else the test's conversion; test_discrete_vp_conversions_agree checks that the two agree."""
    adapter = getattr(fastint.models, "DiscreteVPDenoiser", None)
    if adapter is None:
        return peers.VEDenoiserFromDiscreteEps(eps_model)
    return adapter(eps_model, eps_model.alphas_cumprod, prediction_type="epsilon")


def _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, solver, options):
    denoiser = _ve_denoiser(eps_model)
    noise = peers.StepNoise(ve_sigmas, zs)
    rec = Recorder()
    x = x_T * math.sqrt(1 + ve_sigmas[0] ** 2)  # x~ = x_vp / alpha
    out = fastint.sample(denoiser, x, torch.tensor(ve_sigmas, dtype=torch.float64), solver, noise_sampler=noise,
                         callback=rec, backend="eager", **options)
    return out, rec, noise


DPM_CASES = [
    # (scheduler config, steps, fastint solver, options, a neighbouring method that must NOT match)
    ({"algorithm_type": "dpmsolver++", "solver_order": 1}, 10, "euler", {}, ("dpmpp_2m", {})),
    ({"algorithm_type": "dpmsolver++", "solver_order": 2}, 10, "dpmpp_2m", {}, ("euler", {})),
    ({"algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": "trailing"}, 20, "dpmpp_2m", {},
     ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"})),
    ({"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "sigma_min"}, 20, "dpmpp_2m", {},
     ("dpmpp_3m", {})),
    ({"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "heun"}, 10,
     "dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, ("dpmpp_2m", {})),
    ({"algorithm_type": "dpmsolver++", "solver_order": 3, "solver_type": "heun", "lower_order_final": False}, 10,
     "dpmpp_3m", {}, ("dpmpp_3m", {"third_order": "exact"})),
    ({"algorithm_type": "dpmsolver++", "solver_order": 3, "solver_type": "heun"}, 20, "dpmpp_3m", {},
     ("dpmpp_3m", {"third_order": "exact"})),
    ({"algorithm_type": "dpmsolver++", "solver_order": 3, "solver_type": "heun", "timestep_spacing": "trailing"}, 20,
     "dpmpp_3m_sde", {"eta": 0.0}, ("dpmpp_2m", {})),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 1}, 10, "seeds_1", {}, ("dpmpp_2m_sde", {})),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, 10, "dpmpp_2m_sde", {},
     ("dpmpp_2m_sde", {"solver_type": "heun"})),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}, 20,
     "dpmpp_2m_sde", {"solver_type": "heun"}, ("seeds_1", {})),
    # sde 3rd order: diffusers' D2 coefficient corrected (see the module docstring and the test below)
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun", "corrected": True}, 20,
     "dpmpp_3m_sde", {}, ("dpmpp_2m_sde", {"solver_type": "heun"})),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun", "lower_order_final": False,
      "corrected": True}, 10, "dpmpp_3m_sde", {}, ("dpmpp_3m_sde", {"third_order": "exact"})),
]


def _dpm_id(case):
    config, n, solver, options, _ = case
    return "-".join([config["algorithm_type"], f"o{config['solver_order']}", f"n{n}"] +
                    [f"{k}={v}" for k, v in config.items() if k not in ("algorithm_type", "solver_order")]) + \
        f"->{solver}" + "".join(f",{k}={v}" for k, v in options.items())


@needs_diffusers
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("case", DPM_CASES, ids=_dpm_id)
def test_diffusers_dpmsolver_parity(case, shape_name):
    config, n, solver, options, (other_solver, other_options) = case
    config = dict(config)
    cls = CorrectedSDE3Scheduler if config.pop("corrected", False) else None
    eps_model, x_T, zs = _diffusers_setup(SHAPES[shape_name], seed=2000 + n, n=n)
    ve_sigmas, states, d_out = _run_dpm(_dpm_scheduler(cls, **config), eps_model, x_T, zs, n)
    fi_out, rec, noise = _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, solver, options)
    assert torch.isfinite(d_out).all() and d_out.abs().max() > 0.5
    stochastic = config["algorithm_type"].startswith("sde")
    assert noise.calls == (list(range(n - 1)) if stochastic and ve_sigmas[-1] == 0 else
                           list(range(n)) if stochastic else [])
    assert len(rec.steps) == n
    for (i, sigma, fx, _), dx in zip(rec.steps, states):
        assert sigma == ve_sigmas[i]
        assert _rel(fx, dx) < DPM_RTOL, f"state before step {i}: {_rel(fx, dx):.3e}"
    err = _rel(fi_out, d_out)
    assert err < DPM_RTOL, f"final sample: relative difference {err:.3e}"
    # a neighbouring method is told apart by far more than the tolerance
    other = _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, other_solver, other_options)[0]
    assert _rel(other, d_out) > 20 * DPM_RTOL, f"{other_solver} {other_options} is within {_rel(other, d_out):.2e}"


@needs_diffusers
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_diffusers_sde_dpmsolver_3rd_order_d2_coefficient_defect(shape_name):
    """diffusers' sde-dpmsolver++ 3rd-order update weights D2 by alpha_t ((1 - e^{-2h} - 2h)/(2h)^2 - 0.5) -> -1
    as h -> 0, where k-diffusion's sample_dpmpp_3m_sde (and docs/solvers.md) have -phi_3 = ... + 0.5 = O(h). fastint follows
    k-diffusion: it differs from unmodified diffusers by far more than float32 rounding, and agrees with diffusers
    once the coefficient is corrected (CorrectedSDE3Scheduler adds alpha_t D2)."""
    n = 20
    eps_model, x_T, zs = _diffusers_setup(SHAPES[shape_name], seed=3000, n=n)
    config = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"}
    ve_sigmas, _, d_out = _run_dpm(_dpm_scheduler(**config), eps_model, x_T, zs, n)
    _, _, fixed_out = _run_dpm(_dpm_scheduler(CorrectedSDE3Scheduler, **config), eps_model, x_T, zs, n)
    fi_out = _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, "dpmpp_3m_sde", {})[0]
    assert _rel(fi_out, fixed_out) < DPM_RTOL
    assert _rel(fi_out, d_out) > 1000 * DPM_RTOL, f"unmodified diffusers within {_rel(fi_out, d_out):.2e}"
    # the coefficients themselves, at a small step: diffusers' tends to -1, k-diffusion's -phi_3 to h/3
    h = torch.tensor(1e-3, dtype=torch.float64)
    diffusers_c = (1 - torch.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5
    phi_2 = torch.expm1(-2 * h) / (2 * h) + 1
    k_c = -(phi_2 / (2 * h) - 0.5)
    assert diffusers_c.item() == pytest.approx(-1 + h.item() / 3, rel=1e-5)
    assert k_c.item() == pytest.approx(h.item() / 3, rel=1e-3)
    assert (k_c - diffusers_c).item() == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_discrete_vp_conversions_agree(shape_name):
    """The VE denoiser of the exact discrete eps network is the mixture's denoiser at every training sigma, through
    the test's conversion and through fastint.models.DiscreteVPDenoiser (when present)."""
    event_shape = SHAPES[shape_name]
    mixture = _mixture(event_shape)
    eps_model = peers.DiscreteVPEpsModel(mixture, peers.scaled_linear_alphas_cumprod())
    gen = torch.Generator().manual_seed(6000)
    denoisers = [peers.VEDenoiserFromDiscreteEps(eps_model), _ve_denoiser(eps_model)]
    for t in (0, 1, 37, 500, 998, 999):
        sigma = eps_model.sigmas[t].item()
        x = mixture.sample(BATCH, sigma, generator=gen).reshape(BATCH, *event_shape)
        want = mixture.denoise(x, sigma)
        for denoiser in denoisers:
            got = denoiser(x, torch.full((BATCH,), sigma, dtype=torch.float64))
            assert eps_model.calls[-1] == t
            assert _rel(got, want) < 1e-12, f"{type(denoiser).__name__} at t={t}: {_rel(got, want):.2e}"
    with pytest.raises(AssertionError):
        peers.VEDenoiserFromDiscreteEps(eps_model)(x, torch.full((BATCH,), 1.5 * sigma, dtype=torch.float64))


DDIM_CASES = [
    # (eta, steps, timestep_spacing, set_alpha_to_one)
    (0.0, 10, "leading", True), (0.5, 10, "leading", True), (1.0, 10, "leading", True),
    (0.0, 20, "trailing", True), (0.5, 20, "trailing", True), (1.0, 20, "trailing", True),
    (0.5, 10, "trailing", False),
]


@needs_diffusers
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("eta,n,spacing,alpha_to_one", DDIM_CASES,
                         ids=[f"eta{e}-n{n}-{s}-alpha1={a}" for e, n, s, a in DDIM_CASES])
def test_diffusers_ddim_parity(eta, n, spacing, alpha_to_one, shape_name):
    eps_model, x_T, zs = _diffusers_setup(SHAPES[shape_name], seed=4000 + n, n=n)
    scheduler = DDIMScheduler(**peers.SD_BETAS, clip_sample=False, timestep_spacing=spacing,
                              set_alpha_to_one=alpha_to_one)
    # the same alphas_cumprod values in float64: DDIM then computes in float64 (the sample's dtype)
    assert torch.equal(scheduler.alphas_cumprod.double(), eps_model.alphas_cumprod)
    scheduler.alphas_cumprod = eps_model.alphas_cumprod.clone()
    scheduler.final_alpha_cumprod = torch.tensor(1.0 if alpha_to_one else eps_model.alphas_cumprod[0].item(),
                                                 dtype=torch.float64)
    scheduler.set_timesteps(n)
    timesteps = scheduler.timesteps.tolist()
    ratio = 1000 // n
    assert all(a - b == ratio for a, b in zip(timesteps, timesteps[1:])) and timesteps[-1] - ratio < 0
    ab_final = scheduler.final_alpha_cumprod.item()
    ve_sigmas = eps_model.sigmas[timesteps].tolist() + [math.sqrt((1 - ab_final) / ab_final)]
    x = x_T * scheduler.init_noise_sigma
    states = []
    for i, t in enumerate(timesteps):
        states.append(x * math.sqrt(1 + ve_sigmas[i] ** 2))
        kwargs = {"variance_noise": zs[i]} if eta > 0 else {}
        x = scheduler.step(eps_model(x, t), t, x, eta=eta, **kwargs).prev_sample
    assert x.dtype == torch.float64
    d_out = x * math.sqrt(1 + ve_sigmas[-1] ** 2)
    assert torch.isfinite(d_out).all() and d_out.abs().max() > 0.5
    fi_out, rec, noise = _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, "ddim", {"eta": eta})
    steps_with_noise = [i for i in range(n) if ve_sigmas[i + 1] > 0] if eta > 0 else []
    assert noise.calls == steps_with_noise
    for (i, _, fx, _), dx in zip(rec.steps, states):
        assert _rel(fx, dx) < F64_RTOL, f"state before step {i}: {_rel(fx, dx):.3e}"
    assert _rel(fi_out, d_out) < F64_RTOL, f"final sample: relative difference {_rel(fi_out, d_out):.3e}"
    if eta == 0:
        euler = _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, "euler", {})[0]
        assert _rel(euler, d_out) < F64_RTOL
    else:  # the noise is really used: without it the result moves far away
        quiet = _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, "ddim", {"eta": eta, "s_noise": 0.0})[0]
        assert _rel(quiet, d_out) > 1e-3


@needs_diffusers
@pytest.mark.parametrize("config,n", [
    ({"solver_type": "midpoint", "lower_order_final": False}, 10),  # midpoint warm-up step (diffusers' default)
    ({"solver_type": "heun", "lower_order_final": True}, 10),       # 2nd-order step at n-2 (< 15 steps)
], ids=["midpoint-n10", "lower_order_final-n10"])
def test_diffusers_excluded_3rd_order_configurations_are_other_methods(config, n):
    """The exclusions of the module docstring are real: these diffusers configurations are not k-diffusion's 3M."""
    eps_model, x_T, zs = _diffusers_setup((2,), seed=5000 + n, n=n)
    ve_sigmas, _, d_out = _run_dpm(_dpm_scheduler(algorithm_type="dpmsolver++", solver_order=3, **config),
                                   eps_model, x_T, zs, n)
    fi_out = _run_fastint_vp(eps_model, x_T, zs, ve_sigmas, "dpmpp_3m", {})[0]
    assert _rel(fi_out, d_out) > 20 * DPM_RTOL, f"within {_rel(fi_out, d_out):.2e}"
