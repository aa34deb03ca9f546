"""The fused op's argument checks, aliasing rules and the backend registry (eager backend; float64)."""

import os
import subprocess
import sys

import pytest
import torch

import fastint
from fastint.ops import fused_step, list_backends, use_backend
from fastint.ops.registry import current_backend

from op_cases import assert_matches_reference, random_case


def test_eager_float64_is_exact_in_place_and_poisoned():
    inputs, coeffs, seeds = random_case(1, (3, 101), n_in=4, n_out=2, n_noise=3, dtype=torch.float64)
    original = [t.clone() for t in inputs]
    outs = [inputs[0], torch.full((3, 101), float("nan"), dtype=torch.float64)]
    got = fused_step(inputs, coeffs, num_noise=3, seeds=seeds, counter=2, out=outs, backend="eager")
    assert got[0] is inputs[0]
    assert_matches_reference(got, original, coeffs, seeds, 2, 3, rel=1e-15)


def test_non_contiguous_inputs_are_handled():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(64, 32, generator=gen).t()
    b = torch.randn(32, 64, generator=gen)
    got = fused_step([a, b], [[2.0, -0.5]], backend="eager")[0]
    assert torch.allclose(got, 2 * a - 0.5 * b)


@pytest.mark.parametrize("make_call,error,match", [
    (lambda x: dict(inputs=[x] * 7, coeffs=[[1.0] * 7]), ValueError, "1 to 6 input tensors"),
    (lambda x: dict(inputs=[x, x[:3]], coeffs=[[1.0, 1.0]]), ValueError, "input 1 has shape"),
    (lambda x: dict(inputs=[x, x.long()], coeffs=[[1.0, 1.0]]), TypeError, "input 1 has dtype torch.int64"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0, 2.0]]), ValueError, "need N \\+ K = 1 \\+ 0 entries, got 2"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0]] * 3), ValueError, "1 to 2 coefficient rows"),
    (lambda x: dict(inputs=[x], coeffs=[[float("inf")]]), ValueError, "finite"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0] * 6], num_noise=5), ValueError, "num_noise"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0, 1.0]], num_noise=1), TypeError, "needs seeds"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0, 1.0]], num_noise=1, seeds=torch.arange(3)), ValueError,
     "3 seeds for a batch of 4"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0]], counter=-1), ValueError, "counter"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0]], out=torch.empty(8, 4).t()), ValueError, "output 0 is"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0]], out=torch.empty(4, 16)[:, ::2]), ValueError, "not contiguous"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0]], out=x.view(-1)[1:].clone().resize_(0)), ValueError, "output 0"),
    (lambda x: dict(inputs=[x], coeffs=[[1.0]], backend="nope"), ValueError, "unknown backend 'nope'"),
    (lambda x: dict(inputs=[x], coeffs=torch.ones(1, 1, dtype=torch.float64, device="meta")), ValueError, "host"),
])
def test_bad_calls_are_named(make_call, error, match):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    before = x.clone()
    with pytest.raises(error, match=match):
        fused_step(**make_call(x))
    assert torch.equal(x, before)


def test_partial_overlap_between_output_and_input_is_rejected():
    buf = torch.randn(2, 100, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="partially overlaps"):
        fused_step([buf[:, :50].contiguous(), buf.view(-1)[:100].view(2, 50)], [[1.0, 1.0]],
                   out=buf.view(-1)[10:110].view(2, 50), backend="eager")


def test_backend_registry_reports_and_overrides():
    rows = {r["name"]: r for r in list_backends()}
    assert {"eager", "compile"} <= set(rows)
    assert rows["eager"]["available"] and rows["eager"]["reason"] is None
    for row in rows.values():
        assert row["available"] or row["reason"]
    assert current_backend() in ("auto", *rows)
    previous = current_backend()
    with use_backend("eager"):
        assert current_backend() == "eager"
    assert current_backend() == previous
    with pytest.raises(ValueError, match="unknown backend"):
        use_backend("fastest")
    unavailable = [name for name, row in rows.items() if not row["available"]]
    for name in unavailable:
        with pytest.raises(RuntimeError, match=f"backend '{name}' is unavailable"):
            use_backend(name)


def test_auto_uses_eager_for_float64_and_explicit_unsupported_raises():
    x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(fused_step([x], [[3.0]])[0], 3 * x)
    with pytest.raises(RuntimeError, match="cannot run this call"):
        fused_step([x], [[3.0]], backend="compile")


def test_environment_override_falls_back_with_one_warning():
    code = ("import warnings, torch, fastint\n"
            "from fastint.ops import fused_step\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    x = torch.ones(3, dtype=torch.float64)\n"
            "    fused_step([x], [[2.0]]); fused_step([x], [[2.0]])\n"
            "    print(sum('FASTINT_BACKEND=compile cannot run' in str(m.message) for m in w))\n")
    root = os.path.dirname(os.path.dirname(fastint.__file__))
    env = {**os.environ, "FASTINT_BACKEND": "compile", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_opcheck_of_the_eager_op():
    inputs, coeffs, seeds = random_case(6, (2, 33), n_in=2, n_out=1, n_noise=1, dtype=torch.float32)
    outs = [torch.empty(2, 33)]
    flat = [c for row in coeffs for c in row]
    torch.library.opcheck(torch.ops.fastint.fused_step_eager.default, (outs, inputs, flat, seeds, 4, 1))
