"""The sampling loop's fast path with a fastint adapter (``Denoise(fuse=True)`` in ``fastint.executor``).

With an adapter that has a host path, Euler and the DPM-Solver++ multistep solvers never materialise D: each step
reads ``D = c_skip x + c_out F`` as the parts (x, F) and the same fused call writes the next network input
``c_in x_t``; CPU timestep batches are cached. Everything here compares that path with the plain path (the same
adapter called as an ordinary ``model(x, sigma_batch)``, which computes D with tensor ops) and checks that nothing a
caller or the network can hold is overwritten.
"""

import pytest
import torch

import fastint
from fastint.models import DiscreteVPDenoiser, FlowDenoiser, VEDenoiser
from fastint.schedules import alphas_cumprod_from_betas, vp_discrete
from seeding import stable_seed

F64 = torch.float64
FAST_SOLVERS = [("euler", {}), ("euler", {"s_churn": 1.0}), ("dpmpp_2m", {}), ("dpmpp_2m_sde", {"eta": 1.0}),
                ("dpmpp_3m", {}), ("dpmpp_3m_sde", {"eta": 1.0})]


def _ab():
    return alphas_cumprod_from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=F64))


class Network:
    """A smooth nonlinear stand-in for a network ``net(x_model, t)`` that records what it was given."""

    def __init__(self, keep_inputs=False, scale_t=1000.0):
        self.weight = torch.linspace(-0.4, 0.6, 7, dtype=F64)
        self.scale_t, self.keep_inputs = scale_t, keep_inputs
        self.inputs, self.copies, self.timesteps = [], [], []

    def __call__(self, x, t):
        self.timesteps.append(t.clone())
        if self.keep_inputs:
            self.inputs.append(x)
            self.copies.append(x.clone())
        w = self.weight.to(x.dtype)[: x.shape[-1]]
        return torch.tanh(x * w) + (t.to(x.dtype) / self.scale_t).view(-1, *([1] * (x.dim() - 1)))


def _adapters(net):
    ab = _ab()
    return {"discrete_eps": DiscreteVPDenoiser(net, ab, prediction_type="epsilon"),
            "discrete_v": DiscreteVPDenoiser(net, ab, prediction_type="v_prediction", quantize=False),
            "discrete_x0": DiscreteVPDenoiser(net, ab, prediction_type="sample"),
            "ve_eps": VEDenoiser(lambda x, s: net(x, s * 1000), prediction_type="epsilon"),
            "flow": FlowDenoiser(net)}


def _plain(adapter):
    """The adapter as an ordinary model: no ``denoise_at`` / ``host_plan``, so D comes from tensor ops."""
    return lambda x, sigma: adapter(x, sigma)


def _setup(dtype, seed=0):
    sigmas = vp_discrete(_ab(), 8, spacing="linspace").sigmas
    x = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype) * sigmas[0]
    return x, sigmas


@pytest.mark.parametrize("solver,opts", FAST_SOLVERS)
@pytest.mark.parametrize("name", ["discrete_eps", "discrete_v", "discrete_x0", "ve_eps", "flow"])
def test_float64_fast_path_equals_the_plain_path(solver, opts, name):
    """float64 (eager backend): the fused path agrees with materialised D to float64 rounding."""
    x, sigmas = _setup(F64)
    adapter = _adapters(Network())[name]
    got = fastint.sample(adapter, x, sigmas, solver, seed=3, backend="eager", **opts)
    want = fastint.sample(_plain(adapter), x, sigmas, solver, seed=3, backend="eager", **opts)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("solver,opts", FAST_SOLVERS)
def test_float32_fast_path_on_every_cpu_backend(solver, opts):
    """float32 on the compiled kernel (when built) and eager: the same samples as the plain path up to fp32
    rounding, and the same as a float64 run."""
    x, sigmas = _setup(torch.float32)
    adapter = _adapters(Network())["discrete_eps"]
    exact = fastint.sample(_plain(adapter), x.double(), sigmas, solver, seed=3, backend="eager", **opts)
    scale = exact.abs().max()
    for backend in [b["name"] for b in fastint.list_backends() if b["available"] and b["name"] in ("cpp", "eager")]:
        got = fastint.sample(adapter, x, sigmas, solver, seed=3, backend=backend, **opts)
        want = fastint.sample(_plain(adapter), x, sigmas, solver, seed=3, backend=backend, **opts)
        assert (got.double() - want.double()).abs().max() <= 2e-5 * scale, backend
        assert (got.double() - exact).abs().max() <= 2e-5 * scale, backend


@pytest.mark.parametrize("solver,opts", FAST_SOLVERS)
def test_network_inputs_are_c_in_x_and_never_overwritten(solver, opts):
    """The network sees alpha x (the fused step's second output) at the plain path's timesteps; a network that
    keeps its inputs finds them unchanged after the run (every step writes the next input into a fresh buffer)."""
    x, sigmas = _setup(torch.float32)
    fast_net, plain_net = Network(keep_inputs=True), Network(keep_inputs=True)
    fastint.sample(_adapters(fast_net)["discrete_eps"], x, sigmas, solver, seed=3, **opts)
    fastint.sample(_plain(_adapters(plain_net)["discrete_eps"]), x, sigmas, solver, seed=3, **opts)
    assert len(fast_net.inputs) == len(plain_net.inputs)
    for kept, copy in zip(fast_net.inputs, fast_net.copies):
        assert torch.equal(kept, copy)
    for a, b in zip(fast_net.inputs, plain_net.inputs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    for a, b in zip(fast_net.timesteps, plain_net.timesteps):
        assert torch.equal(a, b)


def test_a_network_that_returns_its_input_is_handled():
    """F aliasing the network input (kept in the multistep history) must not be overwritten by the next step."""
    x, sigmas = _setup(F64)
    adapter = DiscreteVPDenoiser(lambda x, t: x, _ab(), prediction_type="v_prediction")
    for solver in ("euler", "dpmpp_2m", "dpmpp_3m"):
        got = fastint.sample(adapter, x, sigmas, solver, backend="eager")
        want = fastint.sample(_plain(adapter), x, sigmas, solver, backend="eager")
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_cached_timesteps_survive_a_network_that_writes_into_them():
    """A CPU timestep batch is reused across calls only while unmodified: a network that adds to it in place gets
    the right timestep on the next call and the next run."""
    seen = []

    def net(x, t):
        seen.append(t.clone())
        t.add_(1000)
        return torch.zeros_like(x)

    adapter = DiscreteVPDenoiser(net, _ab())
    x, sigmas = _setup(torch.float32)
    for _ in range(2):
        fastint.sample(adapter, x, sigmas, "euler")
    want = [adapter._host_timestep(s) for s in sigmas[:-1].tolist()]
    assert [int(t[0]) for t in seen] == want * 2
    assert all(torch.equal(t, t[:1].expand_as(t)) for t in seen)


def test_callback_denoised_and_injected_noise_match_the_plain_path():
    """The callback gets D as a tensor; 3M SDE with injected noise (too many inputs to defer D) is unchanged."""
    x, sigmas = _setup(F64)
    adapter = _adapters(Network())["discrete_eps"]
    fast, plain = [], []
    fastint.sample(adapter, x, sigmas, "dpmpp_2m", backend="eager", callback=lambda d: fast.append(d["denoised"]))
    fastint.sample(_plain(adapter), x, sigmas, "dpmpp_2m", backend="eager",
                   callback=lambda d: plain.append(d["denoised"]))
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)

    def noise(sigma, sigma_next):
        return torch.randn(x.shape, generator=torch.Generator().manual_seed(int(sigma * 1000)), dtype=F64)

    got = fastint.sample(adapter, x, sigmas, "dpmpp_3m_sde", noise_sampler=noise, backend="eager")
    want = fastint.sample(_plain(adapter), x, sigmas, "dpmpp_3m_sde", noise_sampler=noise, backend="eager")
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_nan_from_the_network_is_still_reported():
    adapter = DiscreteVPDenoiser(lambda x, t: torch.full_like(x, float("nan")), _ab())
    x, sigmas = _setup(torch.float32)
    for check in ("end", "step"):
        with pytest.raises(FloatingPointError):
            fastint.sample(adapter, x, sigmas, "dpmpp_2m", check_finite=check)


@pytest.mark.parametrize("solver,opts", [s for s in FAST_SOLVERS if not s[1].get("s_churn")])
def test_planned_loop_equals_the_generic_deferred_loop(solver, opts):
    """With and without a callback (the executor then also materialises D for it): the same samples, for every
    prediction type."""
    x, sigmas = _setup(F64)
    for name, adapter in _adapters(Network()).items():
        planned = fastint.sample(adapter, x, sigmas, solver, seed=3, backend="eager", **opts)
        generic = fastint.sample(adapter, x, sigmas, solver, seed=3, backend="eager", callback=lambda d: None,
                                 **opts)
        torch.testing.assert_close(planned, generic, rtol=1e-11, atol=1e-11, msg=name)


def test_planned_loop_memo_follows_the_sigmas_the_options_and_the_adapter():
    """The steps and coefficients memoised per (solver, options, sigmas) and adapter never leak into another run."""
    x, _ = _setup(F64)
    ab = _ab()
    for n in (8, 5, 8):
        sigmas = vp_discrete(ab, n, spacing="linspace").sigmas
        for eta in (1.0, 0.5):
            for kind in ("epsilon", "v_prediction"):
                adapter = DiscreteVPDenoiser(Network(), ab, prediction_type=kind, quantize=False)
                got = fastint.sample(adapter, x, sigmas, "dpmpp_2m_sde", seed=1, eta=eta, backend="eager")
                want = fastint.sample(_plain(adapter), x, sigmas, "dpmpp_2m_sde", seed=1, eta=eta, backend="eager")
                torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_planned_loop_with_odd_layouts_and_dtypes():
    """A non-contiguous initial state, a non-contiguous network output, and network outputs in float64 or float16
    for a float32 state: the same samples as the plain path (which converts D to the state's dtype), also where the
    compiled op sees the output first (it refuses float64 and strided tensors; the loop then converts them)."""
    _, sigmas = _setup(torch.float32)
    x = (torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])).permute(2, 1, 0)
    net = Network()
    layouts = {"transposed": lambda x, t: net(x, t).transpose(0, 2).contiguous().transpose(0, 2),
               "float64": lambda x, t: net(x.double(), t),
               "float16": lambda x, t: net(x, t).half()}
    backends = [b["name"] for b in fastint.list_backends() if b["available"] and b["name"] in ("cpp", "eager")]
    for backend in backends:
        _warm_up(x, sigmas, "dpmpp_2m", backend)
    for name, fn in layouts.items():
        adapter = DiscreteVPDenoiser(fn, _ab())
        want = fastint.sample(_plain(adapter), x.contiguous(), sigmas, "dpmpp_2m", backend="eager")
        for backend in backends:
            got = fastint.sample(adapter, x, sigmas, "dpmpp_2m", backend=backend)
            assert got.dtype == torch.float32 and got.is_contiguous()
            tol = 2e-3 if name == "float16" else 2e-5
            assert (got - want).abs().max() <= tol * want.abs().max(), (name, backend)


@pytest.mark.parametrize("with_callback", [False, True], ids=["planned", "generic"])
@pytest.mark.parametrize("solver,options", [("dpmpp_2m", {}), ("dpmpp_3m_sde", {"eta": 1.0})])
def test_network_returning_a_view_of_its_input(solver, options, with_callback):
    # an output that is a view of the network's input (an identity-like network) stays in the multistep history:
    # the step that writes the next network input must not write it there
    x, sigmas = _setup(torch.float32, seed=stable_seed("view of input", solver, options, with_callback))
    ab = _ab()
    outputs = {}
    for name, net in (("view", lambda u, t: u[:, :]), ("copy", lambda u, t: u.clone())):
        callback = (lambda info: None) if with_callback else None
        outputs[name] = fastint.sample(DiscreteVPDenoiser(net, ab), x, sigmas, solver=solver, seed=5,
                                       callback=callback, backend="cpp", **options)
    assert torch.equal(outputs["view"], outputs["copy"])


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_setting_an_adapter_attribute_takes_effect(solver):
    # host plans, timestep batches and the lowered runs are memoised per adapter; a changed option must not reuse them
    x, sigmas = _setup(torch.float64, seed=stable_seed("adapter attribute", solver))
    net = Network()
    adapter = DiscreteVPDenoiser(net, _ab(), prediction_type="epsilon", quantize=True)
    first = fastint.sample(adapter, x, sigmas, solver=solver, backend="eager")
    adapter.quantize, adapter.prediction_type = False, "v_prediction"
    changed = fastint.sample(adapter, x, sigmas, solver=solver, backend="eager")
    fresh = fastint.sample(DiscreteVPDenoiser(net, _ab(), prediction_type="v_prediction", quantize=False), x, sigmas,
                           solver=solver, backend="eager")
    assert torch.equal(changed, fresh) and not torch.allclose(changed, first)


def _warm_up(x, sigmas, solver, backend):
    """A run with a well-behaved network, so that later planned runs of this kind find their ops remembered: with
    the compiled backend (whose op checks its tensors itself) they hand each network output straight to the op."""
    from fastint.ops import registry
    fastint.sample(_adapters(Network())["discrete_eps"], x, sigmas, solver, backend=backend)
    memo = registry.op_memo(registry.choice_key((x.dtype, x.device.type), backend))
    assert memo and all(entry[0].raw_checks == (backend == "cpp") for entry in memo.values()), memo


def test_planned_loop_reports_a_bad_network_output_by_name():
    """The replay checks every network output before an op reads it, also once the ops of the compiled backend
    are remembered; whatever is wrong, the error names the network output, and the caller's x is untouched."""
    x, sigmas = _setup(torch.float32, seed=stable_seed("bad network output"))
    x_before = x.clone()
    ab = _ab()
    bad = {"shape": (lambda u, t: u[:, :1], ValueError, "shape"),
           "integer": (lambda u, t: u.to(torch.int32), ValueError, "floating point"),
           "device": (lambda u, t: torch.empty(u.shape, device="meta"), ValueError, "on meta"),
           "not a tensor": (lambda u, t: "noise", TypeError, "str")}
    backends = [b["name"] for b in fastint.list_backends() if b["available"] and b["name"] in ("cpp", "eager")]
    for solver in ("euler", "dpmpp_2m"):
        for backend in backends:
            _warm_up(x, sigmas, solver, backend)
    for name, (net, exc, match) in bad.items():
        for solver in ("euler", "dpmpp_2m"):
            for backend in backends:
                with pytest.raises(exc, match=match):
                    fastint.sample(DiscreteVPDenoiser(net, ab), x, sigmas, solver, backend=backend)
                assert torch.equal(x, x_before), (name, backend)


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_planned_loop_names_the_evaluation_of_a_nan(solver):
    """check_finite='step' in the replay: the error names the first evaluation with a NaN."""
    x, sigmas = _setup(torch.float32)
    net, calls = Network(), []

    def poisoned(u, t):
        calls.append(1)
        out = net(u, t)
        return out.fill_(float("nan")) if len(calls) == 4 else out

    with pytest.raises(FloatingPointError, match="evaluation 4"):
        fastint.sample(DiscreteVPDenoiser(poisoned, _ab()), x, sigmas, solver, check_finite="step")


@pytest.mark.parametrize("solver,opts", [s for s in FAST_SOLVERS if not s[1].get("s_churn")])
def test_planned_loop_allocating_per_step_equals_preallocating(solver, opts, monkeypatch):
    """Above ``_PREALLOCATED_BYTES`` the replay allocates each network input when it is written instead of all
    before the first call: the same samples, and the network's kept inputs are untouched either way."""
    from fastint import executor
    x, sigmas = _setup(torch.float32, seed=stable_seed("allocating per step", solver, opts))
    results = []
    for limit in (executor._PREALLOCATED_BYTES, 0):
        monkeypatch.setattr(executor, "_PREALLOCATED_BYTES", limit)
        net = Network(keep_inputs=True)
        results.append(fastint.sample(_adapters(net)["discrete_v"], x, sigmas, solver, seed=7, **opts))
        assert len({t.data_ptr() for t in net.inputs}) == len(net.inputs)
        for kept, copy in zip(net.inputs, net.copies):
            assert torch.equal(kept, copy)
    assert torch.equal(results[0], results[1])


def test_planned_loop_remembers_ops_per_backend_and_forgets_them_on_register(monkeypatch):
    """The replay keeps the raw op of each kind of step per (dtype, device, requested backend, backend in
    force); a run under another backend (``use_backend``) gets its own ops and runs on that backend, and registering
    a backend forgets them all."""
    from fastint.ops import registry
    monkeypatch.setattr(registry, "_OP_MEMOS", {})
    monkeypatch.setattr(registry, "_CHOICES", {})
    x, sigmas = _setup(torch.float32)
    adapter = _adapters(Network())["discrete_eps"]
    names = [b["name"] for b in fastint.list_backends() if b["available"] and b["name"] in ("cpp", "eager")]
    results = {}
    for name in names:
        with fastint.use_backend(name):  # backend='auto' (the default) defers to the backend in force
            results[name] = fastint.sample(adapter, x, sigmas, "dpmpp_2m")
            assert registry._OP_MEMOS[registry.choice_key((torch.float32, "cpu"), "auto")], name
        chosen = {choice[0].name for choice in registry._CHOICES.values()}
        assert chosen == {name}, chosen
        registry._CHOICES.clear()
    assert len(registry._OP_MEMOS) == len(names)
    for name in names[1:]:
        torch.testing.assert_close(results[name], results[names[0]], rtol=1e-5, atol=1e-5)
    registry.register(registry.get(names[0]))
    assert registry._OP_MEMOS == {}
    torch.testing.assert_close(fastint.sample(adapter, x, sigmas, "dpmpp_2m", backend=names[0]),
                               results[names[0]], rtol=0, atol=0)


def test_planned_loop_unwraps_tuples_lists_and_sample_objects():
    """A network may return its output in a tuple, a list or an object with ``.sample`` (diffusers' UNets): the
    replay unwraps each of them, on the compiled backend after its ops are remembered too, to the same
    samples as a network that returns the tensor itself."""
    x, sigmas = _setup(torch.float32, seed=stable_seed("unwraps outputs"))
    net = Network()

    class Output:
        def __init__(self, sample):
            self.sample = sample

    wrappers = {"tuple": lambda out: (out, None), "list": lambda out: [out], "sample": Output}
    backends = [b["name"] for b in fastint.list_backends() if b["available"] and b["name"] in ("cpp", "eager")]
    for solver in ("euler", "dpmpp_2m"):
        for backend in backends:
            _warm_up(x, sigmas, solver, backend)
            want = fastint.sample(DiscreteVPDenoiser(net, _ab()), x, sigmas, solver, backend=backend)
            for name, wrap in wrappers.items():
                got = fastint.sample(DiscreteVPDenoiser(lambda u, t, wrap=wrap: wrap(net(u, t)), _ab()), x, sigmas,
                                     solver, backend=backend)
                assert torch.equal(got, want), (solver, backend, name)
