"""fastint.schedules against k-diffusion's formulas (written out here in numpy) and diffusers' schedulers."""

import math

import numpy as np
import pytest
import torch

from fastint import schedules

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy-2 copy= notice inside diffusers


def _common(s: torch.Tensor, n: int):
    assert s.dtype == torch.float64 and s.device.type == "cpu" and s.shape == (n + 1,)
    assert s[-1] == 0 and (s[:-1] > 0).all() and (s[1:] < s[:-1]).all()


@pytest.mark.parametrize("seed", range(4))
def test_karras_matches_formula(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    smin = float(rng.uniform(0.002, 0.5))
    smax = float(rng.uniform(1.0, 120.0))
    rho = float(rng.uniform(1.0, 9.0))
    s = schedules.karras(n, smin, smax, rho)
    _common(s, n)
    i = np.arange(n) / (n - 1)
    ref = (smax ** (1 / rho) + i * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(s[:-1].numpy(), ref, rtol=1e-14)
    assert s[0].item() == smax and s[-2].item() == smin  # end points exact
    # k-diffusion's float32 get_sigmas_karras, value for value up to float32 rounding
    ramp = torch.linspace(0, 1, n)
    kd = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(s[:-1].float(), kd, rtol=3e-6, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_exponential_matches_formula(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 60))
    smin, smax = float(rng.uniform(0.002, 0.5)), float(rng.uniform(1.0, 120.0))
    s = schedules.exponential(n, smin, smax)
    _common(s, n)
    ref = np.exp(np.log(smax) + np.arange(n) / (n - 1) * (np.log(smin) - np.log(smax)))
    np.testing.assert_allclose(s[:-1].numpy(), ref, rtol=1e-14)
    assert s[0].item() == smax and s[-2].item() == smin
    # constant ratio between consecutive sigmas: the defining property
    r = (s[1:-1] / s[:-2]).numpy()
    np.testing.assert_allclose(r, np.full_like(r, (smin / smax) ** (1 / (n - 1))), rtol=1e-12)


def test_single_step_schedules():
    assert schedules.karras(1, 0.1, 10.0).tolist() == [10.0, 0.0]
    assert schedules.exponential(1, 0.1, 10.0).tolist() == [10.0, 0.0]
    ab = schedules.alphas_cumprod_from_betas(schedules.betas_linear())
    r = schedules.vp_discrete(ab, 1, "trailing")
    assert r.timesteps.tolist() == [999] and r.sigmas.shape == (2,)


def test_betas_helpers_match_diffusers():
    ddim = DDIMScheduler()  # linear, 1e-4 .. 0.02
    assert torch.equal(schedules.betas_linear(), ddim.betas)
    assert torch.equal(schedules.alphas_cumprod_from_betas(schedules.betas_linear()), ddim.alphas_cumprod)
    sd = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.equal(schedules.betas_scaled_linear(), sd.betas)
    assert torch.equal(schedules.alphas_cumprod_from_betas(schedules.betas_scaled_linear()), sd.alphas_cumprod)
    b64 = schedules.betas_scaled_linear(dtype=torch.float64)
    assert b64.dtype == torch.float64
    torch.testing.assert_close(b64.float(), sd.betas, rtol=1e-6, atol=0)


STEPS = [1, 2, 3, 7, 10, 20, 25, 50, 100]


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_vp_discrete_matches_dpmsolver(spacing, steps_offset):
    ab = schedules.alphas_cumprod_from_betas(schedules.betas_scaled_linear())
    ref = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                      timestep_spacing=spacing, steps_offset=steps_offset)
    for n in STEPS:
        ref.set_timesteps(n)
        got = schedules.vp_discrete(ab, n, spacing, steps_offset)
        assert isinstance(got, schedules.DiscreteSchedule)
        assert got.timesteps.dtype == torch.int64
        assert torch.equal(got.timesteps, ref.timesteps), (n, got.timesteps, ref.timesteps)
        _common(got.sigmas, len(got.timesteps))
        torch.testing.assert_close(got.sigmas.float(), ref.sigmas, rtol=2e-6, atol=0)
        abt = ab.double()[got.timesteps]
        torch.testing.assert_close(got.sigmas[:-1], ((1 - abt) / abt).sqrt(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_vp_discrete_matches_ddim(spacing, steps_offset):
    ab = schedules.alphas_cumprod_from_betas(schedules.betas_linear())
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    for n in STEPS:
        ref.set_timesteps(n)
        got = schedules.vp_discrete(ab, n, spacing, steps_offset, convention="ddim")
        assert torch.equal(got.timesteps, ref.timesteps), (n, got.timesteps, ref.timesteps)
        _common(got.sigmas, n)
        abt = ref.alphas_cumprod.double()[ref.timesteps]
        torch.testing.assert_close(got.sigmas[:-1], ((1 - abt) / abt).sqrt(), rtol=1e-15, atol=0)


def test_vp_discrete_conventions_differ():
    ab = schedules.alphas_cumprod_from_betas(schedules.betas_linear())
    a = schedules.vp_discrete(ab, 10, "linspace").timesteps
    b = schedules.vp_discrete(ab, 10, "linspace", convention="ddim").timesteps
    assert a.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]  # linspace(0, 999, 11), 0 dropped
    assert b.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]  # linspace(0, 999, 10)


def test_vp_discrete_lambda_min_clipped_matches_dpmsolver():
    ref = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                      timestep_spacing="linspace")
    for n in (5, 20):
        ref.set_timesteps(n)
        got = schedules.vp_discrete(ref.alphas_cumprod, n, "linspace", lambda_min_clipped=-5.1)
        assert torch.equal(got.timesteps, ref.timesteps)
        unclipped = schedules.vp_discrete(ref.alphas_cumprod, n, "linspace")
        assert got.timesteps[0] < unclipped.timesteps[0]


@pytest.mark.parametrize("shift,dynamic", [(1.0, False), (3.0, False), (3.0, True), (0.5, False)])
def test_flow_matches_flow_match_euler(shift, dynamic):
    rng = np.random.default_rng(int(shift * 10) + dynamic)
    for n in [int(v) for v in rng.integers(2, 60, 3)] + [1, 28]:
        if dynamic:
            ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
            ref.set_timesteps(n, mu=math.log(shift))
        else:
            ref = FlowMatchEulerDiscreteScheduler(shift=shift)
            ref.set_timesteps(n)
        s = schedules.flow(n, shift, dynamic_shifting=dynamic)
        _common(s, n)
        t = s / (1 + s)  # back to flow time
        assert ref.sigmas[0] == 1.0  # diffusers starts at t = 1 (infinite VE sigma)
        t_max = shift * 0.999 / (1 + (shift - 1) * 0.999)
        assert t[0].item() == pytest.approx(t_max, rel=1e-14)
        assert s[0].item() == pytest.approx(shift * 999, rel=1e-12)
        torch.testing.assert_close(t[1:].float(), ref.sigmas[1:], rtol=2e-6, atol=1e-7)


def test_flow_shift_scales_ve_sigmas_and_t_max():
    base = schedules.flow(12, 1.0)
    # static shift: u = linspace(1, shifted(1/T), n) and sigma~ = shift * u / (1 - u)
    u = torch.linspace(1, 2.5e-3 / (1 + 1.5e-3), 12, dtype=torch.float64)[1:]
    torch.testing.assert_close(schedules.flow(12, 2.5)[1:-1], 2.5 * u / (1 - u), rtol=1e-13, atol=0)
    # dynamic shifting: the unshifted grid ends at 1/T, so the VE sigmas are exactly shift * u / (1 - u)
    u = torch.linspace(1, 1e-3, 12, dtype=torch.float64)[1:]
    torch.testing.assert_close(schedules.flow(12, 2.5, dynamic_shifting=True)[1:-1], 2.5 * u / (1 - u),
                               rtol=1e-13, atol=0)
    s = schedules.flow(12, 1.0, t_max=0.99)
    assert s[0].item() == pytest.approx(99.0, rel=1e-13) and torch.equal(s[1:], base[1:])


BAD = [
    (schedules.karras, (0, 0.1, 10.0), ValueError, "n must be >= 1"),
    (schedules.karras, (2.0, 0.1, 10.0), TypeError, "n must be an int"),
    (schedules.karras, (True, 0.1, 10.0), TypeError, "n must be an int"),
    (schedules.karras, (5, 10.0, 0.1), ValueError, "sigma_min < sigma_max"),
    (schedules.karras, (5, 0.0, 1.0), ValueError, "0 < sigma_min"),
    (schedules.karras, (5, 0.1, math.inf), ValueError, "finite"),
    (schedules.karras, (5, 0.1, math.nan), ValueError, "finite"),
    (schedules.karras, (5, 0.1, 10.0, -1.0), ValueError, "rho"),
    (schedules.karras, (5, "a", 10.0), TypeError, "sigma_min"),
    (schedules.exponential, (5, 1.0, 1.0), ValueError, "sigma_min < sigma_max"),
    (schedules.exponential, (-3, 0.1, 1.0), ValueError, "n must be >= 1"),
    (schedules.flow, (0,), ValueError, "n must be >= 1"),
    (schedules.flow, (5, 0.0), ValueError, "shift"),
    (schedules.flow, (5, math.inf), ValueError, "finite"),
    (schedules.betas_linear, (1000, 0.02, 0.0001), ValueError, "beta_start <= beta_end"),
    (schedules.betas_scaled_linear, (1000, 0.0, 0.01), ValueError, "0 < beta_start"),
    (schedules.alphas_cumprod_from_betas, ([0.1, 1.0],), ValueError, "in \\(0, 1\\)"),
    (schedules.alphas_cumprod_from_betas, ([[0.1, 0.2]],), ValueError, "1-D"),
]


@pytest.mark.parametrize("fn,args,exc,match", BAD)
def test_bad_inputs(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_flow_bad_t_max():
    with pytest.raises(ValueError, match="t_max"):
        schedules.flow(5, t_max=1.0)
    with pytest.raises(ValueError, match="t_max"):
        schedules.flow(5, t_max=0.5)  # below t_1 = 0.75...
    with pytest.raises(ValueError, match="pass t_max explicitly"):
        schedules.flow(1000)
    assert schedules.flow(1000, t_max=0.9995)[0].item() == pytest.approx(1999.0, rel=1e-9)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        schedules.flow(5, num_train_timesteps=1)


def test_vp_discrete_bad_inputs():
    ab = schedules.alphas_cumprod_from_betas(schedules.betas_linear(dtype=torch.float64))
    with pytest.raises(ValueError, match="'leading', 'linspace', 'trailing'"):
        schedules.vp_discrete(ab, 10, "karras")
    with pytest.raises(ValueError, match="'dpmsolver', 'ddim'"):
        schedules.vp_discrete(ab, 10, convention="euler")
    with pytest.raises(ValueError, match="strictly decreasing"):
        schedules.vp_discrete(ab.flip(0), 10)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        schedules.vp_discrete(torch.cat([ab[:-1], ab.new_zeros(1)]), 10)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        schedules.vp_discrete(ab * 1.5, 10)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        schedules.vp_discrete(torch.cat([ab[:3], ab.new_full((1,), math.nan)]), 2)
    with pytest.raises(ValueError, match="1-D"):
        schedules.vp_discrete(ab[None], 10)
    with pytest.raises(ValueError, match="exceed"):
        schedules.vp_discrete(ab, 1001)
    with pytest.raises(ValueError, match="steps_offset"):
        schedules.vp_discrete(ab, 10, steps_offset=-1)
    with pytest.raises(ValueError, match="invalid timesteps"):
        schedules.vp_discrete(ab, 1000, "leading")  # step ratio 1000 // 1001 = 0: all timesteps 0
    with pytest.raises(ValueError, match="invalid timesteps"):
        schedules.vp_discrete(ab, 999, "leading", steps_offset=1)  # 999 + 1 is out of range
    with pytest.raises(TypeError, match="alphas_cumprod"):
        schedules.vp_discrete(["a", "b"], 1)


def test_vp_discrete_revalidates_alphas_modified_in_place_and_returns_fresh_tensors():
    """A float64 alphas_cumprod that passed is not checked again while unmodified; an in-place write (version
    counter) makes the next call check it again. Every call returns tensors of its own."""
    ab = schedules.alphas_cumprod_from_betas(schedules.betas_linear(dtype=torch.float64))
    first = schedules.vp_discrete(ab, 10, "linspace")
    second = schedules.vp_discrete(ab, 10, "linspace")
    assert torch.equal(first.sigmas, second.sigmas) and torch.equal(first.timesteps, second.timesteps)
    second.sigmas.mul_(2)
    second.timesteps.add_(1)
    third = schedules.vp_discrete(ab, 10, "linspace")
    assert torch.equal(third.sigmas, first.sigmas) and torch.equal(third.timesteps, first.timesteps)
    ab[5] = 2.0
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        schedules.vp_discrete(ab, 10, "linspace")
    with torch.inference_mode():  # an inference tensor has no version counter: checked every time
        frozen = schedules.alphas_cumprod_from_betas(schedules.betas_linear(dtype=torch.float64))
        schedules.vp_discrete(frozen, 10)
        frozen[3] = math.nan
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            schedules.vp_discrete(frozen, 10)


def test_vp_discrete_memo_answers_only_the_same_call():
    """Repeated calls are answered from a memo keyed by the alphas (identity and version) and every option with its
    type: each answer equals a computation on a fresh copy of the alphas, and bad options are refused even after
    the same values passed as other types."""
    gen = torch.Generator().manual_seed(11)
    betas = torch.sort(torch.rand(300, generator=gen) * 0.02 + 1e-4).values
    for dtype in (torch.float32, torch.float64):
        ab = schedules.alphas_cumprod_from_betas(betas.to(dtype))
        calls = [(12, "linspace", 0, "dpmsolver"), (12, "leading", 1, "dpmsolver"), (13, "trailing", 0, "ddim"),
                 (12, "linspace", 0, "ddim")]
        for _ in range(2):
            for n, spacing, offset, convention in calls:
                got = schedules.vp_discrete(ab, n, spacing, offset, convention=convention)
                want = schedules.vp_discrete(ab.clone(), n, spacing, offset, convention=convention)
                assert torch.equal(got.sigmas, want.sigmas) and torch.equal(got.timesteps, want.timesteps)
        with pytest.raises(TypeError, match="n must be an int"):
            schedules.vp_discrete(ab, 12.0, "linspace")
        schedules.vp_discrete(ab, 1)
        with pytest.raises(TypeError, match="n must be an int"):
            schedules.vp_discrete(ab, True)
        with pytest.raises(ValueError, match="steps_offset"):
            schedules.vp_discrete(ab, 12, "leading", True)
