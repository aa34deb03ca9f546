"""The executor's steps replayed in C++ (``fastint._C.step_tape`` / ``replay_steps``, csrc/step_replay.cpp): a run
of ``fastint.sample`` without callback runs its staged steps there, with exactly the samples of the Python replay
(the same run with a callback); a step the C++ loop cannot finish as the Python replay would is handed back with
its network output, and the run goes on in Python with the same result, the same error or the same gradients."""

import types
import weakref

import pytest
import torch

import fastint
from fastint import executor
from fastint.models import DiscreteVPDenoiser
from fastint.ops import extension
from fastint.schedules import alphas_cumprod_from_betas, betas_linear, vp_discrete
from seeding import stable_seed

pytestmark = pytest.mark.skipif(extension.load() is not None, reason="needs the compiled extension")

TAPED = ["euler", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde"]
HAND_BACK_AT = 3     # the network call after which the odd outputs start


@pytest.fixture
def recorder(monkeypatch):
    """Records each tape's length and where each ``replay_steps`` call stopped."""
    fused_step, step_tape, replay_steps = executor._compiled_step_replay()
    record = types.SimpleNamespace(lengths=[], stops=[])

    def taped(rows):
        record.lengths.append(len(rows))
        return step_tape(rows)

    def replayed(tape, values, network, batches):
        stopped, output = replay_steps(tape, values, network, batches)
        record.stops.append(stopped)
        return stopped, output

    monkeypatch.setattr(executor, "_compiled_step_replay", lambda: (fused_step, taped, replayed))
    return record


def _eps(x, t):
    return torch.tanh(0.3 * x) + 1e-4 * t.view(-1, 1, 1, 1).to(x.dtype)


def _network(kind: str):
    """``_eps``, and from call HAND_BACK_AT + 1 on an output of the given kind."""
    calls = [0]

    def net(x, t):
        calls[0] += 1
        eps = _eps(x, t)
        if calls[0] <= HAND_BACK_AT or kind == "plain":
            return eps
        if kind in ("float64", "float16"):
            return eps.to(getattr(torch, kind))
        if kind == "strided":    # (its own memory, laid out as a transpose: not a view the executor would copy)
            return torch.empty_strided(eps.shape, (32, 16, 1, 4), dtype=eps.dtype).copy_(eps)
        if kind == "tuple":
            return (eps,)
        if kind == "sample":
            return types.SimpleNamespace(sample=eps)
        if kind == "shape":
            return eps[:, :, :-1]
        if kind == "text":
            return "not a tensor"
        raise RuntimeError(f"network failed at call {calls[0]}")
    return net


def _setup(solver):
    ab = alphas_cumprod_from_betas(betas_linear(1000, 1e-4, 0.02))
    sigmas = vp_discrete(ab, 8, spacing="linspace").sigmas
    gen = torch.Generator().manual_seed(stable_seed("step-replay", solver))
    x = torch.randn(3, 2, 4, 4, generator=gen) * sigmas[0]
    return ab, sigmas, x


def _sample(ab, kind, x, sigmas, solver, python=False, **kw):
    """One run (``python``: with a callback, which keeps every step in the Python replay)."""
    callback = (lambda d: None) if python else None
    return fastint.sample(DiscreteVPDenoiser(_network(kind), ab), x, sigmas, solver, seed=stable_seed("noise", solver),
                          callback=callback, **kw)


@pytest.mark.parametrize("solver", TAPED)
def test_staged_steps_run_in_cxx_with_the_python_replays_samples(solver, recorder):
    ab, sigmas, x = _setup(solver)
    _sample(ab, "plain", x, sigmas, solver)        # the first call of each kind picks its backend in Python
    recorder.lengths.clear()
    recorder.stops.clear()
    out = _sample(ab, "plain", x, sigmas, solver)
    assert recorder.lengths and recorder.stops == recorder.lengths     # every taped step ran in C++
    assert sum(recorder.lengths) >= len(sigmas) - 2                     # all but the first step (its input: c_in x)
    assert torch.equal(out, _sample(ab, "plain", x, sigmas, solver, python=True))


@pytest.mark.parametrize("python", [False, True])
@pytest.mark.parametrize("solver,history", [("euler", 0), ("dpmpp_2m", 1), ("dpmpp_3m_sde", 2), ("heun", 0)])
def test_a_run_holds_only_the_outputs_its_solver_still_reads(solver, history, python, recorder):
    """At each network call, how many earlier outputs are alive: the multistep history, not every output of the
    run (in the C++ replay and in the Python one)."""
    ab, sigmas, x = _setup(solver)
    outputs, alive = [], []

    def net(x, t):
        alive.append(sum(ref() is not None for ref in outputs))
        eps = _eps(x, t)
        outputs.append(weakref.ref(eps))
        return eps
    for _ in range(2):
        outputs.clear()
        alive.clear()
        fastint.sample(DiscreteVPDenoiser(net, ab), x, sigmas, solver, seed=stable_seed("noise", solver),
                       callback=(lambda d: None) if python else None)
    assert recorder.stops == recorder.lengths and bool(recorder.lengths) == (not python and solver != "heun")
    assert max(alive) == history


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "dpmpp_2m_sde"])
@pytest.mark.parametrize("kind,handed_back", [("float64", True), ("float16", True), ("strided", True), ("tuple", False),
                                              ("sample", False)])
def test_outputs_the_loop_cannot_take_go_back_to_python(solver, kind, handed_back, recorder):
    ab, sigmas, x = _setup(solver)
    _sample(ab, "plain", x, sigmas, solver)
    recorder.lengths.clear()
    recorder.stops.clear()
    out = _sample(ab, kind, x, sigmas, solver)
    # the tape starts at the second step (the first network call): call HAND_BACK_AT + 1 is its step HAND_BACK_AT - 1
    assert recorder.stops == ([HAND_BACK_AT - 1] if handed_back else recorder.lengths)
    assert torch.equal(out, _sample(ab, kind, x, sigmas, solver, python=True))


@pytest.mark.parametrize("kind,error", [("shape", ValueError), ("text", TypeError), ("raises", RuntimeError)])
def test_a_bad_output_or_a_failing_network_raises_as_in_python(kind, error, recorder):
    ab, sigmas, x = _setup("dpmpp_2m")
    _sample(ab, "plain", x, sigmas, "dpmpp_2m")
    with pytest.raises(error) as in_python:
        _sample(ab, kind, x, sigmas, "dpmpp_2m", python=True)
    with pytest.raises(error) as replayed:
        _sample(ab, kind, x, sigmas, "dpmpp_2m")
    assert str(replayed.value) == str(in_python.value)
    assert recorder.lengths      # (the run used the tape)


def test_an_output_requiring_grad_goes_back_to_python_and_gets_gradients(recorder):
    ab, sigmas, x = _setup("dpmpp_2m")
    _sample(ab, "plain", x, sigmas, "dpmpp_2m")
    recorder.stops.clear()
    results = []
    for python in (False, True):
        weight = torch.tensor(1.5, requires_grad=True)
        calls = [0]

        def net(x, t):
            calls[0] += 1
            eps = _eps(x, t)
            return eps * weight if calls[0] > HAND_BACK_AT else eps
        with torch.enable_grad():
            out = fastint.sample(DiscreteVPDenoiser(net, ab), x, sigmas, "dpmpp_2m",
                                 callback=(lambda d: None) if python else None)
            out.square().sum().backward()
        results.append((out.detach(), weight.grad))
    assert recorder.stops == [HAND_BACK_AT - 1]
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][1] != 0


def test_step_tape_and_replay_steps_refuse_malformed_arguments():
    module = extension.module()
    out = torch.empty(2, 3)
    step = (0, 0, 1, False, (0, 1), [out], [1.0, 0.5], None, 0, 0, (2,), ())
    with pytest.raises(TypeError, match="non-empty list"):
        module.step_tape([])
    with pytest.raises(TypeError, match="each step must be a tuple"):
        module.step_tape([step[:5]])
    with pytest.raises(TypeError, match="outs must be a list"):
        module.step_tape([step[:5] + ("x",) + step[6:]])
    with pytest.raises(ValueError, match="f_slot must be >= 0"):
        module.step_tape([(0, 0, -1) + step[3:]])
    with pytest.raises(ValueError, match="one out_slot per output"):
        module.step_tape([step[:10] + ((2, 3),) + step[11:]])
    tape = module.step_tape([step])
    values = [torch.ones(2, 3), None, None]
    with pytest.raises(TypeError, match="every slot"):
        module.replay_steps(tape, values[:2], lambda x, t: x, (torch.zeros(2),))
    with pytest.raises(TypeError, match="every timestep batch"):
        module.replay_steps(tape, values, lambda x, t: x, ())
    with pytest.raises(ValueError):
        module.replay_steps("not a tape", values, lambda x, t: x, (torch.zeros(2),))
    # well-formed tapes run: values[2] = 1.0 x + 0.5 F with F = 2 x; F is stored at slot 1 when a later step reads
    # it (keep), else dropped
    for keep in (False, True):
        values = [torch.ones(2, 3), None, None]
        tape = module.step_tape([step[:3] + (keep,) + step[4:]])
        stopped, handed = module.replay_steps(tape, values, lambda x, t: 2 * x, (torch.zeros(2),))
        assert (stopped, handed) == (1, None)
        assert values[2] is out and torch.equal(out, torch.full((2, 3), 2.0))
        assert torch.equal(values[1], torch.full((2, 3), 2.0)) if keep else values[1] is None
