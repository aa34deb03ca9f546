"""fastint.models adapters: with a Gaussian data distribution N(mu, diag(s^2)) every model prediction (eps, v, x0,
flow velocity) has a closed form in the model's own coordinates x = alpha x0 + sigma eps:

    E[x0 | x]  = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x - alpha mu)
    E[eps | x] = sigma / (alpha^2 s^2 + sigma^2) (x - alpha mu)
    v = alpha eps - sigma x0,   flow velocity = eps - x0,

and every adapter must return the exact VE denoiser D(x~, sigma~) = mu + s^2 / (s^2 + sigma~^2) (x~ - mu).
"""

import math
import types

import pytest
import torch

from fastint import schedules
from fastint.models import (ContinuousVPDenoiser, DiscreteVPDenoiser, FlowDenoiser, VEDenoiser, to_denoised)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TYPES = ["epsilon", "v_prediction", "sample"]
F64 = torch.float64


class Gaussian:
    def __init__(self, gen, shape=(3, 4)):
        self.shape = shape
        self.mu = torch.randn(shape, generator=gen, dtype=F64)
        self.s = 0.3 + torch.rand(shape, generator=gen, dtype=F64)

    def x(self, gen, batch, sigma_ve):  # a VE sample x~ = x0 + sigma~ z
        x0 = self.mu + self.s * torch.randn((batch,) + self.shape, generator=gen, dtype=F64)
        return x0 + sigma_ve.view(-1, 1, 1) * torch.randn((batch,) + self.shape, generator=gen, dtype=F64)

    def denoiser(self, x, sigma_ve):
        s2, sv2 = self.s ** 2, sigma_ve.view(-1, 1, 1) ** 2
        return self.mu + s2 / (s2 + sv2) * (x - self.mu)

    def predict(self, x, alpha, sigma, kind):
        """Exact prediction at model input x (model coordinates), alpha and sigma of shape (batch,)."""
        a, g = alpha.view(-1, 1, 1), sigma.view(-1, 1, 1)
        den = a * a * self.s ** 2 + g * g
        x0 = self.mu + a * self.s ** 2 / den * (x - a * self.mu)
        eps = g / den * (x - a * self.mu)
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - g * x0, "flow": eps - x0}[kind]


def _ab():
    return schedules.alphas_cumprod_from_betas(schedules.betas_scaled_linear(dtype=F64))


class DiscreteModel:
    """A 'UNet' indexed by training timestep: integer t -> alphas_cumprod[t]; fractional t -> log-sigma
    interpolated between the neighbouring training steps (the exact inverse of the unquantized adapter)."""

    def __init__(self, g, ab, kind, wrap=None):
        self.g, self.kind, self.wrap = g, kind, wrap
        self.log_sigmas = ((1 - ab) / ab).sqrt().log()
        self.calls = []

    def __call__(self, x, t, **kw):
        self.calls.append((t.clone(), kw))
        if t.dtype == torch.int64:
            ls = self.log_sigmas[t]
        else:
            lo = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
            w = t - lo
            ls = (1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]
        sv = ls.exp()
        alpha = 1 / (1 + sv * sv).sqrt()
        out = self.g.predict(x, alpha, sv * alpha, self.kind)
        return {"obj": types.SimpleNamespace(sample=out), "tuple": (out,)}.get(self.wrap, out)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("wrap", [None, "obj", "tuple"])
def test_discrete_quantized_exact_on_training_sigmas(kind, wrap):
    gen = torch.Generator().manual_seed(1 + TYPES.index(kind))
    g, ab = Gaussian(gen), _ab()
    model = DiscreteModel(g, ab, kind, wrap)
    den = DiscreteVPDenoiser(model, ab, prediction_type=kind)
    t = torch.randint(0, 1000, (6,), generator=gen)
    sv = den.model_sigmas[t]
    x = g.x(gen, 6, sv)
    out = den(x, sv, cond="c")
    torch.testing.assert_close(out, g.denoiser(x, sv), rtol=0, atol=1e-10)
    t_seen, kw = model.calls[-1]
    assert t_seen.dtype == torch.int64 and torch.equal(t_seen, t) and kw == {"cond": "c"}


def _quantized(seed: int, n: int):
    """gen, an eps DiscreteModel, its quantizing adapter and n sigmas spanning the training range and beyond it."""
    gen = torch.Generator().manual_seed(seed)
    ab = _ab()
    model = DiscreteModel(Gaussian(gen), ab, "epsilon")
    den = DiscreteVPDenoiser(model, ab)
    ls = den.log_sigmas
    sv = torch.empty(n, dtype=F64).uniform_(ls[0].item() - 1, ls[-1].item() + 1, generator=gen).exp()
    return gen, model, den, sv


def test_discrete_quantize_picks_nearest_log_sigma():
    gen, model, den, sv = _quantized(7, 64)
    ls = den.log_sigmas
    t = den.sigma_to_t(sv)
    ref = (sv.log()[None, :] - ls[:, None]).abs().argmin(dim=0)  # k-diffusion's quantize
    assert torch.equal(t, ref) and t.min() == 0 and t.max() == 999
    # the model is called at the quantized step but with the exact sigma~ in c_in / c_out (k-diffusion semantics)
    x = torch.randn(64, 3, 4, generator=gen, dtype=F64)
    out = den(x, sv)
    alpha = (1 / (1 + sv * sv).sqrt()).view(-1, 1, 1)
    ab = den.alphas_cumprod
    eps = model.g.predict(alpha * x, ab[t].sqrt(), (1 - ab[t]).sqrt(), "epsilon")
    torch.testing.assert_close(out, x - sv.view(-1, 1, 1) * eps, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", TYPES)
def test_discrete_interpolated_exact_anywhere(kind):
    gen = torch.Generator().manual_seed(11 + TYPES.index(kind))
    g, ab = Gaussian(gen), _ab()
    den = DiscreteVPDenoiser(DiscreteModel(g, ab, kind), ab, prediction_type=kind, quantize=False)
    sv = torch.empty(8, dtype=F64).uniform_(den.log_sigmas[0].item(), den.log_sigmas[-1].item(),
                                            generator=gen).exp()
    x = g.x(gen, 8, sv)
    torch.testing.assert_close(den(x, sv), g.denoiser(x, sv), rtol=0, atol=1e-10)
    t = den.sigma_to_t(sv)
    assert t.dtype == F64 and (t > 0).all() and (t < 999).all() and not torch.equal(t, t.round())
    # out of range: clamped to the first / last training step
    assert den.sigma_to_t(torch.tensor([1e-9, 1e9], dtype=F64)).tolist() == [0.0, 999.0]


def test_discrete_on_a_diffusers_unet():
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    ab = schedules.alphas_cumprod_from_betas(schedules.betas_linear())
    den = DiscreteVPDenoiser(unet, ab)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=gen) * 5
    sv = torch.tensor([4.0, 0.3])
    with torch.no_grad():
        out = den(x, sv)
        t = den.sigma_to_t(sv)
        alpha = (1 / (1 + sv * sv).sqrt()).view(-1, 1, 1, 1)
        ref = x - sv.view(-1, 1, 1, 1) * unet(alpha * x, t).sample
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- continuous time
B_MIN, B_D = 0.1, 19.9


def _vpsde_alpha(t):
    return torch.exp(-0.25 * t * t * B_D - 0.5 * t * B_MIN)


@pytest.mark.parametrize("kind", TYPES + ["flow"])
@pytest.mark.parametrize("explicit", [False, True])
def test_continuous_vp_sde_exact(kind, explicit):
    gen = torch.Generator().manual_seed(20 + 2 * (TYPES + ["flow"]).index(kind) + explicit)
    g = Gaussian(gen)
    seen = []

    def model(x, t):  # a model that knows only its own time variable
        seen.append(t)
        a = _vpsde_alpha(t)
        return g.predict(x, a, (1 - a * a).sqrt(), kind)

    def sigma_to_t(s):
        return ((B_MIN ** 2 + 2 * B_D * torch.log1p(s * s)).sqrt() - B_MIN) / B_D

    fns = dict(alpha_fn=_vpsde_alpha, sigma_fn=lambda t: (1 - _vpsde_alpha(t) ** 2).sqrt()) if explicit else {}
    den = ContinuousVPDenoiser(model, sigma_to_t, prediction_type=kind, **fns)
    sv = torch.empty(5, dtype=F64).uniform_(-5, 4.4, generator=gen).exp()
    x = g.x(gen, 5, sv)
    torch.testing.assert_close(den(x, sv), g.denoiser(x, sv), rtol=0, atol=1e-10)
    assert (seen[-1] > 0).all() and (seen[-1] <= 1 + 1e-12).all()


@pytest.mark.parametrize("kind", TYPES + ["flow"])
def test_continuous_non_vp_exact(kind):
    """alpha(t) = 1 - t/2, sigma(t) = t (not variance preserving): sigma~ = t / (1 - t/2)."""
    gen = torch.Generator().manual_seed(40 + (TYPES + ["flow"]).index(kind))
    g = Gaussian(gen)
    den = ContinuousVPDenoiser(lambda x, t: g.predict(x, 1 - t / 2, t, kind), lambda s: s / (1 + s / 2),
                               alpha_fn=lambda t: 1 - t / 2, sigma_fn=lambda t: t, prediction_type=kind)
    sv = torch.empty(5, dtype=F64).uniform_(0.01, 50, generator=gen)
    x = g.x(gen, 5, sv)
    torch.testing.assert_close(den(x, sv), g.denoiser(x, sv), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["sample", "epsilon", "eps", "x0"])
def test_ve_exact(kind):
    gen = torch.Generator().manual_seed(50 + len(kind))
    g = Gaussian(gen)
    k = {"eps": "epsilon", "x0": "sample"}.get(kind, kind)
    den = VEDenoiser(lambda x, s: g.predict(x, torch.ones_like(s), s, k), prediction_type=kind)
    sv = torch.empty(5, dtype=F64).uniform_(0.002, 80, generator=gen)
    x = g.x(gen, 5, sv)
    torch.testing.assert_close(den(x, sv), g.denoiser(x, sv), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["flow", "epsilon", "sample"])
@pytest.mark.parametrize("scale", [1000.0, 1.0])
def test_flow_exact(kind, scale):
    gen = torch.Generator().manual_seed(60 + int(scale) + len(kind))
    g = Gaussian(gen)
    seen = []

    def model(x, timestep):
        seen.append(timestep)
        t = timestep / scale
        return g.predict(x, 1 - t, t, kind)

    den = FlowDenoiser(model, timestep_scale=scale, prediction_type=kind)
    sv = torch.cat([schedules.flow(6, 3.0)[:-1], torch.empty(3, dtype=F64).uniform_(0.01, 5, generator=gen)])
    x = g.x(gen, len(sv), sv)
    torch.testing.assert_close(den(x, sv), g.denoiser(x, sv), rtol=0, atol=1e-10)
    torch.testing.assert_close(seen[-1], scale * sv / (1 + sv), rtol=1e-15, atol=0)


def test_to_denoised_agrees_across_prediction_types():
    gen = torch.Generator().manual_seed(70)
    g = Gaussian(gen)
    alpha, sigma = torch.rand(4, generator=gen, dtype=F64) + 0.1, torch.rand(4, generator=gen, dtype=F64) + 0.1
    sv = sigma / alpha
    x = g.x(gen, 4, sv)
    want = g.denoiser(x, sv)
    for kind in ["epsilon", "v_prediction", "sample", "flow"]:
        out = g.predict(alpha.view(-1, 1, 1) * x, alpha, sigma, kind)
        got = to_denoised(out, x, alpha.view(-1, 1, 1), sigma.view(-1, 1, 1), kind)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------- dtype, sync, errors
def test_low_precision_inputs_and_scalar_sigma():
    gen = torch.Generator().manual_seed(80)
    g, ab = Gaussian(gen), _ab()
    model = DiscreteModel(g, ab, "v_prediction")
    den64 = DiscreteVPDenoiser(model, ab, prediction_type="v", quantize=False)
    x = g.x(gen, 3, torch.full((3,), 2.5, dtype=F64))
    want = den64(x, torch.tensor(2.5, dtype=F64))  # 0-d sigma broadcast over the batch
    torch.testing.assert_close(want, g.denoiser(x, torch.full((3,), 2.5, dtype=F64)), rtol=0, atol=1e-10)
    f32 = lambda x32, t: model(x32.double(), t.double()).float()  # noqa: E731
    out = DiscreteVPDenoiser(f32, ab, prediction_type="v", quantize=False)(x.float(), 2.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda m: DiscreteVPDenoiser(m, _ab()),
    lambda m: DiscreteVPDenoiser(m, _ab(), quantize=False),
    lambda m: ContinuousVPDenoiser(m, lambda s: s.log(), alpha_fn=lambda t: 1 / (1 + t.exp() ** 2).sqrt(),
                                   sigma_fn=lambda t: t.exp() / (1 + t.exp() ** 2).sqrt(), prediction_type="v"),
    lambda m: VEDenoiser(m, "epsilon"),
    lambda m: FlowDenoiser(m),
])
def test_no_host_sync_meta_tensors(make):
    """Meta tensors have no data: any .item() / bool(tensor) / data-dependent branch in the adapter raises."""
    den = make(lambda x, t: torch.empty_like(x))
    x = torch.empty(3, 4, 5, device="meta")
    out = den(x, torch.empty(3, device="meta"))
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.parametrize("make", [
    lambda m, k: DiscreteVPDenoiser(m, _ab(), prediction_type=k),
    lambda m, k: ContinuousVPDenoiser(m, lambda s: s, prediction_type=k),
    lambda m, k: VEDenoiser(m, k),
    lambda m, k: FlowDenoiser(m, prediction_type=k),
])
def test_unknown_prediction_type(make):
    with pytest.raises(ValueError, match="unknown prediction_type 'score'.*'sample'"):
        make(lambda x, t: x, "score")


def test_prediction_types_not_meaningful_for_an_adapter():
    with pytest.raises(ValueError, match="'flow'"):
        FlowDenoiser(lambda x, t: x, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        DiscreteVPDenoiser(lambda x, t: x, _ab(), prediction_type="flow")
    with pytest.raises(ValueError, match="unknown prediction_type 'v_prediction'"):
        VEDenoiser(lambda x, t: x, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="unknown prediction_type"):
        to_denoised(torch.ones(1), torch.ones(1), torch.ones(1), torch.ones(1), "velocity")


def test_bad_model_outputs_and_inputs():
    gen = torch.Generator().manual_seed(90)
    x = torch.randn(2, 3, 4, generator=gen, dtype=F64)
    sv = torch.rand(2, generator=gen, dtype=F64) + 0.5
    doubled = DiscreteVPDenoiser(lambda x, t: torch.cat([x, x], 1), _ab())  # learned-variance output
    with pytest.raises(ValueError, match=r"shape \(2, 6, 4\) but x has shape \(2, 3, 4\)"):
        doubled(x, sv)
    with pytest.raises(TypeError, match="returned dict"):
        VEDenoiser(lambda x, s: {"x": x})(x, sv)
    den = FlowDenoiser(lambda x, t: x)
    with pytest.raises(ValueError, match=r"shape \(batch,\) = \(2,\)"):
        den(x, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        den(x, torch.ones(2, 1, dtype=F64))
    with pytest.raises(TypeError, match="floating-point"):
        den(torch.ones(2, 3, dtype=torch.int64), sv)
    with pytest.raises(TypeError, match="callable"):
        FlowDenoiser(3)
    for bad in (0.0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="timestep_scale"):
            FlowDenoiser(lambda x, t: x, timestep_scale=bad)
    with pytest.raises(ValueError, match="both alpha_fn and sigma_fn"):
        ContinuousVPDenoiser(lambda x, t: x, lambda s: s, alpha_fn=lambda t: t)
    with pytest.raises(TypeError, match="sigma_to_t"):
        ContinuousVPDenoiser(lambda x, t: x, None)


def test_bad_alphas_cumprod():
    ab = _ab()
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteVPDenoiser(lambda x, t: x, ab.flip(0))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DiscreteVPDenoiser(lambda x, t: x, torch.cat([ab[:-1], ab.new_zeros(1)]))
    with pytest.raises(ValueError, match="1-D"):
        DiscreteVPDenoiser(lambda x, t: x, ab[None])
    den = DiscreteVPDenoiser(lambda x, t: x, ab.tolist())  # any 1-D sequence
    assert den.sigma_min == pytest.approx(((1 - ab[0]) / ab[0]).sqrt().item(), rel=1e-14)
    assert den.sigma_max == pytest.approx(((1 - ab[-1]) / ab[-1]).sqrt().item(), rel=1e-14)


# ------------------------------------------------------------------------------- the host-float path (denoise_at)
def _adapters_for(g, ab, kind):
    """(name, adapter) for every adapter that supports prediction type ``kind``."""
    out = []
    if kind != "flow":
        out.append(("discrete", DiscreteVPDenoiser(DiscreteModel(g, ab, kind), ab, prediction_type=kind,
                                                   quantize=False)))
    if kind in ("epsilon", "sample"):
        out.append(("ve", VEDenoiser(lambda x, s: g.predict(x, torch.ones_like(s), s, kind), prediction_type=kind)))
    if kind != "v_prediction":
        out.append(("flow", FlowDenoiser(lambda x, ts: g.predict(x, 1 - ts / 1000, ts / 1000, kind),
                                         prediction_type=kind)))
    out.append(("continuous", ContinuousVPDenoiser(
        lambda x, t: g.predict(x, _vpsde_alpha(t), (1 - _vpsde_alpha(t) ** 2).sqrt(), kind),
        sigma_to_t=lambda s: ((0.1 ** 2 + 2 * 19.9 * torch.log1p(s ** 2)).sqrt() - 0.1) / 19.9, prediction_type=kind)))
    return out


@pytest.mark.parametrize("kind", TYPES)
def test_denoise_at_is_the_exact_denoiser_and_matches_the_tensor_path(kind):
    """``denoise_at(x, float)`` (host coefficients, the sampling loop's path) gives the exact VE denoiser in float64
    and the tensor path's values, for every adapter; the discrete model sees the same timestep."""
    gen = torch.Generator().manual_seed(90 + TYPES.index(kind))
    g, ab = Gaussian(gen), _ab()
    for sigma in (0.05, 1.7, 14.0):
        sv = torch.full((5,), sigma, dtype=F64)
        x = g.x(gen, 5, sv)
        for name, den in _adapters_for(g, ab, kind):
            got = den.denoise_at(x, sigma)
            torch.testing.assert_close(got, g.denoiser(x, sv), rtol=0, atol=1e-10, msg=f"{name} {kind} {sigma}")
            torch.testing.assert_close(got, den(x, sv), rtol=0, atol=1e-12, msg=f"{name} {kind} {sigma}")
            assert got.dtype == F64


def test_denoise_at_quantized_timestep_equals_the_tensor_path():
    gen, model, den, sigmas = _quantized(95, 200)
    x = torch.randn(2, 3, 4, generator=gen, dtype=F64)
    for s in sigmas.tolist() + den.model_sigmas[::97].tolist():
        den.denoise_at(x, s)
        t_host = model.calls[-1][0]
        assert t_host.dtype == torch.int64 and t_host.shape == (2,)
        assert t_host.tolist() == den.sigma_to_t(torch.full((2,), s, dtype=F64)).tolist(), s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", TYPES + ["flow"])
def test_denoise_at_low_precision_agrees_with_float64(kind, dtype):
    gen = torch.Generator().manual_seed(97 + len(kind))
    g, ab = Gaussian(gen), _ab()
    adapters = _adapters_for(g, ab, kind)
    x = g.x(gen, 4, torch.full((4,), 0.8, dtype=F64))
    want = g.denoiser(x, torch.full((4,), 0.8, dtype=F64))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for name, den in adapters:
        low = type(den).__new__(type(den))
        low.__dict__.update(den.__dict__)
        low.inner_model = lambda xm, t, _m=den.inner_model: _m(xm.double(), t.double()).to(dtype)
        got = low.denoise_at(x.to(dtype), 0.8)
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=f"{name} {kind} {dtype}")


@pytest.mark.parametrize("sigma", [float("nan"), float("inf"), -1.0, "1.0", torch.tensor(1.0), True, None])
def test_denoise_at_rejects_a_bad_sigma(sigma):
    gen = torch.Generator().manual_seed(99)
    ab = _ab()
    den = DiscreteVPDenoiser(DiscreteModel(Gaussian(gen), ab, "epsilon"), ab)
    with pytest.raises(ValueError, match="sigma must be a finite number"):
        den.denoise_at(torch.randn(2, 3, 4, generator=gen, dtype=F64), sigma)


def test_denoise_at_rejects_a_bad_x_and_wrong_model_output():
    gen = torch.Generator().manual_seed(98)
    ab = _ab()
    den = DiscreteVPDenoiser(DiscreteModel(Gaussian(gen), ab, "epsilon"), ab)
    with pytest.raises(TypeError, match="floating-point tensor"):
        den.denoise_at(torch.ones(2, 3, dtype=torch.int64), 1.0)
    bad = VEDenoiser(lambda x, s: x[:1], prediction_type="sample")
    with pytest.raises(ValueError, match="output has shape"):
        bad.denoise_at(torch.randn(2, 3, generator=gen), 1.0)
