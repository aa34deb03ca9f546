"""ComfyUI's heunpp2, ddpm, lcm, ipndm, ipndm_v and deis samplers and ComfyUI's alias names of existing samplers.

- fastint's solver equals the independent float64 reference (tests/reference_comfy1.py) to rounding, with injected
  noise for the stochastic ones and with fastint's own Philox noise by its documented addressing; a float32 state
  stays within 1e-5 of the float64 reference;
- the measured global order on the analytic target (as tests/test_convergence.py, with two step counts n, 2n:
  order = log2(err(n) / err(2n)));
- bad options raise errors naming the option;
- the drop-ins ``fastint.k_diffusion.sample_<name>`` (and the aliases) start with ComfyUI's parameter list (names,
  defaults), written out below from ComfyUI's ``comfy/k_diffusion/sampling.py``.
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
from fastint.solvers import SOLVERS, get_solver
from fastint.solvers.adams_coefficients import lagrange_in_vp_time

from injected_noise import KeyedNoise
from ode_reference import probability_flow_end
from reference_comfy1 import REFERENCES, deis_tab_weights, lagrange_sigma_weights
from reference_solvers import ancestral
from test_solver_parity import PhiloxAddressedNoise

CASES = [
    ("heunpp2", {}), ("heunpp2", {"s_churn": 2.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.01}),
    ("ddpm", {}), ("lcm", {}),
    ("ipndm", {}), ("ipndm", {"max_order": 1}), ("ipndm", {"max_order": 3}),
    ("ipndm_v", {}), ("ipndm_v", {"max_order": 3}), ("ipndm_v", {"coefficients": "exact"}),
    ("deis", {}), ("deis", {"max_order": 4}), ("deis", {"max_order": 2}),
    ("deis", {"deis_mode": "rhoab"}), ("deis", {"deis_mode": "rhoab", "max_order": 4}),
]


def _relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def _setup(seed, shape=(5, 2), final_zero=True):
    gen = torch.Generator().manual_seed(seed)
    gm = default_mixture(dim=math.prod(shape[1:]))
    sigmas = karras(9, 0.02, 40.0)
    if not final_zero:       # partial sampling: the grid ends at a positive sigma
        sigmas = sigmas[:-1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * sigmas[0]
    return gm, sigmas, x


@pytest.mark.parametrize("final_zero", [True, False], ids=["to-zero", "partial"])
@pytest.mark.parametrize("solver,options", CASES, ids=[f"{s}-{o}" for s, o in CASES])
def test_float64_matches_reference(solver, options, final_zero):
    gm, sigmas, x = _setup(4101 + len(options), final_zero=final_zero)
    noise = KeyedNoise(x.shape, seed=17)
    expected = REFERENCES[solver](gm, x.clone(), sigmas.tolist(), noise, **options)
    got = fastint.sample(gm, x, sigmas, solver, noise_sampler=noise, backend="eager", **options)
    assert _relative_error(got, expected) < 1e-11


@pytest.mark.parametrize("solver,options", CASES[::2], ids=[f"{s}-{o}" for s, o in CASES[::2]])
def test_float32_state_matches_float64_reference(solver, options):
    gm, sigmas, x64 = _setup(4202, shape=(4, 2, 3))
    expected = REFERENCES[solver](gm, x64.clone(), sigmas.tolist(), KeyedNoise(x64.shape, seed=9), **options)
    got = fastint.sample(gm, x64.float(), sigmas, solver, backend="eager",
                         noise_sampler=KeyedNoise(x64.shape, seed=9, dtype=torch.float32), **options)
    assert got.dtype == torch.float32
    assert _relative_error(got.double(), expected) < 1e-5


@pytest.mark.parametrize("solver,options", [("ddpm", {}), ("lcm", {}), CASES[1]], ids=["ddpm", "lcm", "heunpp2-churn"])
def test_in_kernel_noise_follows_the_documented_addressing(solver, options):
    gm, sigmas, x = _setup(4303, shape=(3, 2))
    seeds = torch.tensor([11, -5, 2 ** 40 + 3], dtype=torch.int64)
    noise = PhiloxAddressedNoise(seeds, x.shape, sigmas.tolist(), churn="s_churn" in options)
    expected = REFERENCES[solver](gm, x.clone(), sigmas.tolist(), noise, **options)
    got = fastint.sample(gm, x, sigmas, solver, seed=seeds, backend="eager", **options)
    assert _relative_error(got, expected) < 1e-11


def test_ddpm_is_the_ancestral_step_with_eta_one():
    gm, sigmas, x = _setup(4404)
    noise = KeyedNoise(x.shape, seed=3)
    vp = REFERENCES["ddpm"](gm, x.clone(), sigmas.tolist(), noise)
    assert _relative_error(vp, ancestral(gm, x.clone(), sigmas.tolist(), noise, eta=1.0)) < 1e-12


def test_deis_weights_are_integrals_of_the_lagrange_basis():
    """tAB weights against a 20-digit quadrature in tau, step by step, including tiny and huge steps (to 1e-13 of
    the step); every order's weights sum to the step (the basis sums to 1)."""
    grids = [karras(8, 0.002, 80.0).tolist()[:-1], [120.0, 30.0, 2.0, 0.5, 0.01, 0.0021, 0.002]]
    for sig in grids:
        for n in range(1, len(sig) - 1):
            for order in range(2, min(4, n + 1) + 1):
                ours, theirs = lagrange_in_vp_time(sig, n, order), deis_tab_weights(sig, n, order)
                scale = abs(sig[n + 1] - sig[n])
                assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-13 * scale, (n, order, ours, theirs)
                assert abs(sum(ours) - (sig[n + 1] - sig[n])) < 1e-13 * scale


def test_comfy_ipndm_v_weights_are_not_the_variable_step_method_documented():
    """docs/solvers.md: ComfyUI's order-3 weights are AB3's only on a uniform grid, its order-4 weights are not AB4
    even there and do not sum to the step on a non-uniform grid."""
    from fastint.solvers.adams_coefficients import comfy_variable_step
    uniform = [5.0, 4.0, 3.0, 2.0, 1.0]
    assert np.allclose(comfy_variable_step(uniform, 2, 3), lagrange_sigma_weights(uniform, 2, 3), rtol=1e-13)
    assert np.allclose(np.array(comfy_variable_step(uniform, 3, 4)) * -24, [57, -65, 43, -11], rtol=1e-13)
    assert np.allclose(np.array(lagrange_sigma_weights(uniform, 3, 4)) * -24, [55, -59, 37, -9], rtol=1e-13)
    graded = [10.0, 8.0, 5.0, 4.0, 2.5]
    assert not np.allclose(comfy_variable_step(graded, 2, 3), lagrange_sigma_weights(graded, 2, 3))
    assert abs(sum(comfy_variable_step(graded, 3, 4)) - (2.5 - 4.0)) > 1e-3


def test_model_evaluations():
    heunpp2 = get_solver("heunpp2")
    assert [heunpp2.nfe(n) for n in (1, 2, 3, 6)] == [1, 3, 6, 15]     # 3 per step, 2 and 1 on the last two
    gm, sigmas, x = _setup(4505)
    calls = []
    fastint.sample(lambda x, s: calls.append(s) or gm(x, s), x, sigmas, "heunpp2", backend="eager")
    assert len(calls) == 3 * (len(sigmas) - 3) + 2 + 1
    for name in ("ddpm", "lcm", "ipndm", "ipndm_v", "deis"):
        assert get_solver(name).nfe(7) == 7


# -- measured order ------------------------------------------------------------------------------------------------
SIGMA_MIN, SIGMA_MAX = 0.2, 80.0
ORDERS = [("heunpp2", {}, 1, 128), ("ipndm", {}, 2, 128), ("ipndm_v", {"max_order": 3}, 3, 128),
          ("ipndm_v", {}, 2, 256),     # ComfyUI's order-4 weights: 1.7 at 128 -> 256 steps, 1.9 at 256 -> 512
          ("ipndm_v", {"coefficients": "exact"}, 4, 128), ("deis", {}, 3, 128), ("deis", {"max_order": 4}, 4, 128),
          ("deis", {"deis_mode": "rhoab"}, 3, 128)]


@pytest.fixture(scope="module")
def problem():
    gm, x0, _, reference = probability_flow_end(16, 2025, SIGMA_MAX, SIGMA_MIN)
    return gm, x0, reference


@pytest.mark.parametrize("solver,options,order,steps", ORDERS, ids=[f"{s}-{o}" for s, o, _, _ in ORDERS])
def test_measured_order(problem, solver, options, order, steps):
    gm, x0, reference = problem
    errors = [(fastint.sample(gm, x0, karras(n, SIGMA_MIN, SIGMA_MAX), solver, backend="eager", **options)
               - reference).abs().mean().item() for n in (steps, 2 * steps)]
    measured = math.log2(errors[0] / errors[1])
    assert abs(measured - order) < 0.25, f"{solver} {options}: measured order {measured:.3f}, expected {order}"


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver,options,match", [
    ("ipndm", {"max_order": 0}, "max_order=0 is invalid: an integer from 1 to 4"),
    ("ipndm", {"max_order": 5}, "max_order=5"), ("ipndm_v", {"max_order": 2.0}, "max_order=2.0"),
    ("ipndm_v", {"max_order": True}, "max_order=True"), ("deis", {"max_order": 5}, "max_order=5"),
    ("ipndm_v", {"coefficients": "comfy"}, "coefficients='comfy' is invalid: 'peer'"),
    ("deis", {"deis_mode": "bogus"}, "deis_mode='bogus' is invalid: 'tab' or 'rhoab'"),
    ("heunpp2", {"s_churn": -1.0}, "s_churn"), ("heunpp2", {"s_noise": float("nan")}, "s_noise"),
])
def test_bad_options_raise_naming_the_option(solver, options, match):
    gm, sigmas, x = _setup(4606)
    before = x.clone()
    with pytest.raises(ValueError, match=match):
        fastint.sample(gm, x, sigmas, solver, **options)
    with pytest.raises(ValueError, match=match):
        getattr(fk, "sample_" + solver)(gm, x, sigmas, **options)
    assert torch.equal(x, before)


@pytest.mark.parametrize("solver", ["ddpm", "lcm", "ipndm", "deis"])
def test_unknown_options_raise(solver):
    with pytest.raises(TypeError, match="unknown option"):
        get_solver(solver, eta=0.5)


# -- drop-ins: ComfyUI's signatures --------------------------------------------------------------------------------
HEAD = [("model", inspect.Parameter.empty), ("x", inspect.Parameter.empty), ("sigmas", inspect.Parameter.empty),
        ("extra_args", None), ("callback", None), ("disable", None)]
SDE = [("eta", 1.0), ("s_noise", 1.0), ("noise_sampler", None)]
COMFY = {   # ComfyUI's parameters after ``disable``, read from comfy/k_diffusion/sampling.py
    "heunpp2": [("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", float("inf")), ("s_noise", 1.0)],
    "ddpm": [("noise_sampler", None)],
    "lcm": [("noise_sampler", None)],
    "ipndm": [("max_order", 4)],
    "ipndm_v": [("max_order", 4)],
    "deis": [("max_order", 3), ("deis_mode", "tab")],
    "dpmpp_2m_sde_heun": SDE + [("solver_type", "heun")],
    "dpmpp_2m_sde_gpu": SDE + [("solver_type", "midpoint")],
    "dpmpp_2m_sde_heun_gpu": SDE + [("solver_type", "heun")],
    "dpmpp_3m_sde_gpu": SDE,
    "dpmpp_sde_gpu": SDE + [("r", 0.5)],
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_dropin_signature_starts_with_comfyuis(name):
    if name == "dpmpp_sde_gpu" and "dpmpp_sde" not in SOLVERS and not hasattr(fk, "sample_dpmpp_sde"):
        pytest.skip("sample_dpmpp_sde is not in this fastint")
    params = list(inspect.signature(getattr(fk, "sample_" + name)).parameters.values())
    expected = HEAD + COMFY[name]
    assert [(p.name, p.default) for p in params[:len(expected)]] == expected
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:len(expected)])
    assert all(p.default is not inspect.Parameter.empty for p in params[len(expected):])   # ours are optional
    assert "sample_" + name in fk.__all__ and "sample_" + name in dir(fk)


def test_aliases_run_their_sampler():
    gm, sigmas, x = _setup(4707)
    noise = KeyedNoise(x.shape, seed=5)
    heun = fastint.sample(gm, x, sigmas, "dpmpp_2m_sde", solver_type="heun", noise_sampler=noise)
    midpoint = fastint.sample(gm, x, sigmas, "dpmpp_2m_sde", noise_sampler=noise)
    assert not torch.equal(heun, midpoint)
    for name in ("dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu"):
        sampler = getattr(fk, "sample_" + name)
        assert sampler.__name__ == "sample_" + name
        assert torch.equal(sampler(gm, x, sigmas, None, None, True, 1.0, 1.0, noise), heun)
        assert torch.equal(sampler(gm, x, sigmas, noise_sampler=noise, solver_type="midpoint"), midpoint)
        with pytest.raises(ValueError, match="solver_type"):
            sampler(gm, x, sigmas, solver_type="euler")
    assert fk.sample_dpmpp_2m_sde_gpu is fk.sample_dpmpp_2m_sde
    assert fk.sample_dpmpp_3m_sde_gpu is fk.sample_dpmpp_3m_sde
    assert set(fk.samplers()) == set(SOLVERS)        # aliases are names, not solvers


def test_dpmpp_sde_gpu_resolves_to_dpmpp_sde():
    if "dpmpp_sde" not in SOLVERS and not hasattr(fk, "sample_dpmpp_sde"):
        with pytest.raises(AttributeError, match="sample_dpmpp_sde"):
            fk.sample_dpmpp_sde_gpu
        pytest.skip("sample_dpmpp_sde is not in this fastint")
    assert fk.sample_dpmpp_sde_gpu is fk.sample_dpmpp_sde


# -- the fused path with a fastint adapter -------------------------------------------------------------------------
@pytest.mark.parametrize("solver,options", [("heunpp2", {"s_churn": 1.0}), ("ddpm", {}), ("lcm", {}),
                                            ("ipndm", {}), ("ipndm_v", {}), ("deis", {"max_order": 4})])
def test_adapter_fused_path_equals_plain_model(solver, options):
    """With an adapter D enters the fused calls as its parts c_skip x + c_out F (and the step writes c_in x); the
    same adapter called as a plain model gives the same samples."""
    from test_deferred_denoise import Network, _adapters, _plain, _setup as _vp_setup
    x, sigmas = _vp_setup(torch.float64, seed=5)
    for kind, adapter in _adapters(Network()).items():
        noise = KeyedNoise(x.shape, seed=21)
        fused = fastint.sample(adapter, x, sigmas, solver, noise_sampler=noise, backend="eager", **options)
        plain = fastint.sample(_plain(adapter), x, sigmas, solver, noise_sampler=noise, backend="eager", **options)
        assert _relative_error(fused, plain) < 1e-12, kind
