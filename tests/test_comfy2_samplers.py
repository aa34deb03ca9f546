"""ComfyUI's res_multistep(_ancestral), gradient_estimation, er_sde, sa_solver(_pece) and exp_heun_2_x0(_sde).

- parity: fastint against the independent float64 references of tests/reference_comfy2.py (written from the
  papers), with injected noise (1e-10 relative), a float32 state (1e-5) and fastint's in-kernel noise reproduced
  from its documented addressing;
- measured global order on the analytic target (the probability-flow ODE of the default mixture, DOP853 at 1e-13);
- bad options are refused with errors naming them; the drop-ins have ComfyUI's parameters and defaults.
"""

import inspect
import math

import numpy as np
import pytest
import torch

import fastint
from fastint import k_diffusion as fk
from fastint.models import default_mixture
from fastint.schedules import karras
from fastint.solvers import get_solver
from fastint.solvers.base import example_sigmas
from fastint.solvers.program import Combine
from fastint.solvers.sa_solver import tau_interval

from injected_noise import KeyedNoise
from ode_reference import probability_flow_end
from reference_comfy2 import REFERENCES
from test_solver_parity import PhiloxAddressedNoise
from test_solver_programs import FakeExecutor


def _square(v):
    return v * v


CASES = [
    ("res_multistep", {}), ("res_multistep_ancestral", {}), ("res_multistep_ancestral", {"eta": 0.6, "s_noise": 0.9}),
    ("gradient_estimation", {}), ("gradient_estimation", {"ge_gamma": 1.5}),
    ("er_sde", {}), ("er_sde", {"max_stage": 2, "s_noise": 0.8}), ("er_sde", {"noise_scaler": _square, "max_stage": 1}),
    ("sa_solver", {}), ("sa_solver", {"predictor_order": 2, "corrector_order": 2, "simple_order_2": True}),
    ("sa_solver", {"tau_func": tau_interval(10.0, 0.1, 0.7), "predictor_order": 4, "corrector_order": 1}),
    ("sa_solver", {"corrector_order": 0, "s_noise": 0.5}),
    ("sa_solver_pece", {}), ("sa_solver_pece", {"simple_order_2": True, "predictor_order": 2, "corrector_order": 2}),
    ("sa_solver", {"predictor_order": 5, "corrector_order": 6, "use_pece": True}),   # 2 fused calls per update
    ("exp_heun_2_x0", {}), ("exp_heun_2_x0", {"solver_type": "phi_1"}),
    ("exp_heun_2_x0_sde", {}), ("exp_heun_2_x0_sde", {"eta": 0.5, "solver_type": "phi_1", "s_noise": 1.1}),
]
IDS = [f"{s}-{i}" for i, (s, _) in enumerate(CASES)]
STOCHASTIC = [c for c in CASES if get_solver(c[0], **c[1]).uses_noise()]


def _relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def _setup(seed, shape=(5, 2), end_at_zero=True):
    gen = torch.Generator().manual_seed(seed)
    gm = default_mixture(dim=math.prod(shape[1:]))
    sigmas = karras(9, 0.02, 40.0)
    if not end_at_zero:
        sigmas = sigmas[:-1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * sigmas[0]
    return gm, sigmas, x


@pytest.mark.parametrize("end_at_zero", [True, False])
@pytest.mark.parametrize("solver,options", CASES, ids=IDS)
def test_float64_matches_reference(solver, options, end_at_zero):
    gm, sigmas, x = _setup(101 + len(options), end_at_zero=end_at_zero)
    x_before = x.clone()
    noise = KeyedNoise(x.shape, seed=7)
    expected = REFERENCES[solver](gm, x.clone(), sigmas.tolist(), noise, **options)
    got = fastint.sample(gm, x, sigmas, solver, noise_sampler=noise, backend="eager", **options)
    assert _relative_error(got, expected) < 1e-10
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("solver,options", CASES[::2], ids=IDS[::2])
def test_float32_state_matches_float64_reference(solver, options):
    gm, sigmas, x64 = _setup(202 + len(options), shape=(4, 2, 3))
    expected = REFERENCES[solver](gm, x64.clone(), sigmas.tolist(), KeyedNoise(x64.shape, seed=9), **options)
    noise32 = KeyedNoise(x64.shape, seed=9, dtype=torch.float32)
    got = fastint.sample(gm, x64.float(), sigmas, solver, noise_sampler=noise32, backend="eager", **options)
    assert got.dtype == torch.float32
    # gradient estimation amplifies the model's float32 rounding: the reference itself run in float32 is 2.6e-5 off
    assert _relative_error(got.double(), expected) < (1e-4 if solver == "gradient_estimation" else 1e-5)


@pytest.mark.parametrize("solver,options", STOCHASTIC, ids=[i for i, c in zip(IDS, CASES) if c in STOCHASTIC])
def test_in_kernel_noise_follows_the_documented_addressing(solver, options):
    """Step i's noise is counter i, stream 0; SA-Solver's corrector regenerates its predictor's noise."""
    gm, sigmas, x = _setup(303, shape=(3, 2))
    seeds = torch.tensor([11, -5, 2 ** 40 + 3], dtype=torch.int64)
    noise = PhiloxAddressedNoise(seeds, x.shape, sigmas.tolist(), churn=False)
    expected = REFERENCES[solver](gm, x.clone(), sigmas.tolist(), noise, **options)
    got = fastint.sample(gm, x, sigmas, solver, seed=seeds, backend="eager", **options)
    assert _relative_error(got, expected) < 1e-10


def test_exp_heun_is_seeds_2_with_r_1():
    gm, sigmas, x = _setup(404)
    noise = KeyedNoise(x.shape, seed=3)
    sde = fastint.sample(gm, x, sigmas, "exp_heun_2_x0_sde", noise_sampler=noise, backend="eager", eta=0.7)
    seeds = fastint.sample(gm, x, sigmas, "seeds_2", noise_sampler=noise, backend="eager", eta=0.7, r=1.0,
                           solver_type="phi_2")
    assert torch.equal(sde, seeds)
    ode = fastint.sample(gm, x, sigmas, "exp_heun_2_x0", backend="eager")
    assert torch.equal(ode, fastint.sample(gm, x, sigmas, "seeds_2", backend="eager", eta=0.0, r=1.0,
                                           solver_type="phi_2"))
    # r = 1 puts the stage on the step's end point: one noise interval per step, no zero-length one
    calls = []
    fastint.sample(gm, x, sigmas, "seeds_2", r=1.0, backend="eager",
                   noise_sampler=lambda a, b: calls.append((a, b)) or noise(a, b))
    assert all(a > b for a, b in calls) and len(calls) == len(sigmas) - 2


PROGRAM_CONFIGS = [(name, {}) for name in REFERENCES] + [
    ("sa_solver", {"predictor_order": 6, "corrector_order": 6, "use_pece": True}),
    ("sa_solver_pece", {"predictor_order": 1, "corrector_order": 5, "simple_order_2": True}),
    ("er_sde", {"max_stage": 1}), ("seeds_2", {"r": 1.0, "solver_type": "phi_2"})]


@pytest.mark.parametrize("name,options", PROGRAM_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PROGRAM_CONFIGS)])
def test_programs_fit_the_fused_op(name, options):
    """Host programs only (the fake executor of test_solver_programs); every update reads at most 5 tensors, so with
    an injected noise tensor it fits the op's 6 inputs."""
    fake = FakeExecutor()
    fake.run(get_solver(name, **options), example_sigmas(12))   # long enough for SA-Solver's orders 6
    for request in fake.requests:
        if type(request) is Combine:
            assert len({id(h) for row in request.rows for _, h in row}) <= 5, request


def test_model_evaluations():
    assert get_solver("sa_solver").nfe(6) == 6
    assert get_solver("sa_solver_pece").nfe(6) == 11          # 1 + 2 per later step
    assert get_solver("sa_solver_pece", corrector_order=0).nfe(6) == 6
    assert get_solver("exp_heun_2_x0").nfe(6) == 11
    for name in ("res_multistep", "res_multistep_ancestral", "gradient_estimation", "er_sde"):
        assert get_solver(name).nfe(6) == 6


# -- measured orders ------------------------------------------------------------------------------------------------

SIGMA_MIN, SIGMA_MAX = 0.2, 80.0


def _ode(_):
    return 0.0


def _identity(v):
    return v


# (solver, options, grid ends at 0, step counts, expected order); ODE forms (no noise)
ORDERS = [
    ("res_multistep", {}, True, (32, 64, 128), 2),
    ("res_multistep_ancestral", {"eta": 0.0}, True, (32, 64, 128), 2),
    ("gradient_estimation", {}, True, (32, 64, 128), 1),
    ("gradient_estimation", {"ge_gamma": 1.5}, True, (32, 64, 128), 2),
    ("er_sde", {"noise_scaler": _identity, "s_noise": 0.0}, True, (16, 32, 64), 2),
    ("er_sde", {"noise_scaler": _identity, "s_noise": 0.0, "max_stage": 1}, True, (16, 32, 64), 1),
    ("sa_solver", {"tau_func": _ode}, True, (64, 128, 256), 2),        # the orders lowered near sigma = 0
    ("sa_solver_pece", {"tau_func": _ode}, True, (64, 128, 256), 2),
    ("sa_solver", {"tau_func": _ode, "corrector_order": 0}, False, (32, 64, 128), 3),
    ("sa_solver", {"tau_func": _ode, "predictor_order": 2, "corrector_order": 2}, False, (64, 128, 256), 2),
    ("exp_heun_2_x0", {}, True, (32, 64, 128), 2),
    ("exp_heun_2_x0", {"solver_type": "phi_1"}, True, (32, 64, 128), 2),
]


@pytest.fixture(scope="module")
def ode_problem():
    return probability_flow_end(8, 2024, SIGMA_MAX, SIGMA_MIN)


@pytest.mark.parametrize("solver,options,to_zero,steps,order", ORDERS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(ORDERS)])
def test_measured_order(ode_problem, solver, options, to_zero, steps, order):
    gm, x0, x_end, denoised_end = ode_problem
    errors = []
    for n in steps:
        sigmas = karras(n, SIGMA_MIN, SIGMA_MAX)
        out = fastint.sample(gm, x0, sigmas if to_zero else sigmas[:-1], solver, backend="eager", **options)
        errors.append((out - (denoised_end if to_zero else x_end)).abs().mean().item())
    measured = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(measured - order) < 0.4, f"{solver} {options}: measured order {measured:.3f}, expected {order}"


# -- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver,options,error,match", [
    ("res_multistep", {"eta": 0.5}, TypeError, "unknown option.*eta.*valid options: s_noise"),
    ("res_multistep_ancestral", {"eta": -1.0}, ValueError, "eta=-1.0 is invalid"),
    ("res_multistep_ancestral", {"s_noise": float("inf")}, ValueError, "s_noise=inf is invalid"),
    ("gradient_estimation", {"ge_gamma": float("nan")}, ValueError, "ge_gamma=nan is invalid"),
    ("gradient_estimation", {"cfg_pp": True}, ValueError, "cfg_pp=True is invalid.*CFG\\+\\+"),
    ("er_sde", {"max_stage": 4}, ValueError, "max_stage=4 is invalid: 1, 2 or 3"),
    ("er_sde", {"max_stage": 2.0}, ValueError, "max_stage=2.0 is invalid"),
    ("er_sde", {"noise_scaler": 3.0}, ValueError, "noise_scaler=3.0 is invalid.*callable"),
    ("sa_solver", {"predictor_order": 0}, ValueError, "predictor_order=0 is invalid: an integer from 1 to 6"),
    ("sa_solver", {"predictor_order": 7}, ValueError, "predictor_order=7 is invalid"),
    ("sa_solver", {"corrector_order": -1}, ValueError, "corrector_order=-1 is invalid: an integer from 0 to 6"),
    ("sa_solver", {"use_pece": "yes"}, ValueError, "use_pece='yes' is invalid"),
    ("sa_solver", {"simple_order_2": 1}, ValueError, "simple_order_2=1 is invalid"),
    ("sa_solver", {"tau_func": 0.5}, ValueError, "tau_func=0.5 is invalid"),
    ("sa_solver_pece", {"use_pece": True}, TypeError, "unknown option.*use_pece"),
    ("exp_heun_2_x0", {"solver_type": "phi_3"}, ValueError, "solver_type='phi_3' is invalid"),
    ("exp_heun_2_x0", {"eta": 0.5}, TypeError, "unknown option.*eta"),
    ("exp_heun_2_x0_sde", {"eta": -0.5}, ValueError, "eta=-0.5 is invalid"),
    ("seeds_2", {"r": 1.5}, ValueError, r"r=1.5 is invalid: a number in \(0, 1\]"),
    ("seeds_2", {"r": 0.0}, ValueError, r"r=0.0 is invalid"),
])
def test_bad_options_are_named(solver, options, error, match):
    with pytest.raises(error, match=match):
        get_solver(solver, **options)


@pytest.mark.parametrize("solver,options,error,match", [
    ("sa_solver", {"tau_func": lambda s: -0.5}, ValueError, r"tau_func\(.*\) returned -0.5.*float >= 0"),
    ("sa_solver", {"tau_func": lambda s: float("nan")}, ValueError, r"tau_func\(.*\) returned nan"),
    ("sa_solver", {"tau_func": lambda s: torch.tensor(1.0)}, ValueError, r"tau_func\(.*\) returned tensor"),
    ("sa_solver_pece", {"tau_func": lambda s: s.item()}, TypeError, "tau_func must map a Python float"),
    ("er_sde", {"noise_scaler": lambda v: -v}, ValueError, r"noise_scaler\(.*\) returned -.*float > 0"),
    ("er_sde", {"noise_scaler": lambda v: v * ((v ** 0.3).exp() + 10.0)}, TypeError,
     "noise_scaler must map a Python float to a float"),
])
def test_bad_callables_are_named_when_the_run_is_recorded(solver, options, error, match):
    gm, sigmas, x = _setup(505)
    x_before = x.clone()
    with pytest.raises(error, match=match):
        fastint.sample(gm, x, sigmas, solver, backend="eager", **options)
    assert torch.equal(x, x_before)


# -- drop-in signatures -----------------------------------------------------------------------------------------------

_E = inspect.Parameter.empty
_HEAD = [("model", _E), ("x", _E), ("sigmas", _E), ("extra_args", None), ("callback", None)]
# Read from ComfyUI's comfy/k_diffusion/sampling.py (the _cfg_pp variants are left out)
COMFY_SIGNATURES = {
    "res_multistep": _HEAD + [("disable", None), ("s_noise", 1.0), ("noise_sampler", None)],
    "res_multistep_ancestral": _HEAD + [("disable", None), ("eta", 1.0), ("s_noise", 1.0), ("noise_sampler", None)],
    "gradient_estimation": _HEAD + [("disable", None), ("ge_gamma", 2.0), ("cfg_pp", False)],
    "er_sde": _HEAD + [("disable", None), ("s_noise", 1.0), ("noise_sampler", None), ("noise_scaler", None),
                       ("max_stage", 3)],
    "sa_solver": _HEAD + [("disable", False), ("tau_func", None), ("s_noise", 1.0), ("noise_sampler", None),
                          ("predictor_order", 3), ("corrector_order", 4), ("use_pece", False),
                          ("simple_order_2", False)],
    "sa_solver_pece": _HEAD + [("disable", False), ("tau_func", None), ("s_noise", 1.0), ("noise_sampler", None),
                               ("predictor_order", 3), ("corrector_order", 4), ("simple_order_2", False)],
    "exp_heun_2_x0": _HEAD + [("disable", None), ("solver_type", "phi_2")],
    "exp_heun_2_x0_sde": _HEAD + [("disable", None), ("eta", 1.0), ("s_noise", 1.0), ("noise_sampler", None),
                                  ("solver_type", "phi_2")],
    "seeds_2": _HEAD + [("disable", None), ("eta", 1.0), ("s_noise", 1.0), ("noise_sampler", None), ("r", 0.5),
                        ("solver_type", "phi_1")],
}


@pytest.mark.parametrize("name", sorted(COMFY_SIGNATURES))
def test_dropin_has_comfyui_parameters_and_defaults(name):
    ours = list(inspect.signature(getattr(fk, "sample_" + name)).parameters.values())
    theirs = COMFY_SIGNATURES[name]
    assert [(p.name, p.default) for p in ours[:len(theirs)]] == theirs
    assert all(p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD for p in ours[:len(theirs)])
    # what follows: noise_sampler where ComfyUI has none, then fastint's keyword-only seed and backend
    rest = [p.name for p in ours[len(theirs):]]
    assert rest in (["seed", "backend"], ["noise_sampler", "seed", "backend"]), rest


def test_dropin_positional_call_as_comfyui():
    gm, sigmas, x = _setup(606)
    noise = KeyedNoise(x.shape, seed=1)
    tau = tau_interval(10.0, 0.5)
    # ComfyUI order: (..., disable, tau_func, s_noise, noise_sampler, predictor_order, corrector_order, use_pece)
    got = fk.sample_sa_solver(gm, x, sigmas, None, None, True, tau, 0.9, noise, 2, 3, True)
    expected = REFERENCES["sa_solver"](gm, x.clone(), sigmas.tolist(), noise, tau_func=tau, s_noise=0.9,
                                       predictor_order=2, corrector_order=3, use_pece=True)
    assert _relative_error(got, expected) < 1e-10
    got = fk.sample_er_sde(gm, x, sigmas, None, None, True, 0.7, noise, _square, 2)
    expected = REFERENCES["er_sde"](gm, x.clone(), sigmas.tolist(), noise, s_noise=0.7, noise_scaler=_square,
                                    max_stage=2)
    assert _relative_error(got, expected) < 1e-10
