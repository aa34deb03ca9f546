"""Autograd of the fused op: gradcheck in float64, every backend's gradients against eager's, torch.compile, opcheck,
and torch's rules for in-place and out= calls (fastint/ops/autograd.py, csrc/autograd.cpp).

    out[m] = sum_n C[m,n] in[n] + sum_k C[m,N+k] z_k      =>      grad_in[n] = sum_m C[m,n] grad_out[m]
"""

import os
import subprocess
import sys
import zlib

import pytest
import torch

import fastint
from fastint.ops import extension, fused_step
from fastint.ops.autograd import fused_step_functional
from fastint.ops.philox import normals

IN_TRITON_SUBPROCESS = os.environ.get("FASTINT_TEST_TRITON_INTERPRET") == "1"
needs_extension = pytest.mark.skipif(extension.load() is not None, reason="the compiled extension is not available")
# (outputs, inputs, noise streams)
KINDS = [(1, 1, 0), (1, 3, 2), (2, 2, 1), (2, 5, 0), (2, 6, 4)]


def _generator(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _case(name, n_out, n_in, k, shape=(3, 37), dtype=torch.float64):
    gen = _generator(name)
    inputs = [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
              for _ in range(n_in)]
    coeffs = (torch.rand(n_out, n_in + k, generator=gen, dtype=torch.float64) * 4 - 2).tolist()
    seeds = torch.randint(-2 ** 62, 2 ** 62, (shape[0],), generator=gen)
    weights = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(n_out)]
    return inputs, coeffs, seeds, weights


def _loss(outs, weights):
    """A loss that weighs each output differently (a wrong transpose or a swapped row shows)."""
    return sum((o.double() * w).sum() + 0.5 * (o.double() ** 2).sum() for o, w in zip(outs, weights))


@pytest.mark.parametrize("n_out,n_in,k", KINDS)
def test_gradcheck_float64_eager(n_out, n_in, k):
    inputs, coeffs, seeds, _ = _case(f"gradcheck{n_out}{n_in}{k}", n_out, n_in, k)

    def f(*tensors):
        return tuple(fused_step(list(tensors), coeffs, num_noise=k, seeds=seeds, counter=7, backend="eager"))

    assert torch.autograd.gradcheck(f, tuple(inputs))
    assert torch.autograd.gradgradcheck(f, tuple(inputs))


@pytest.mark.parametrize("n_out,n_in,k", [(1, 2, 1), (2, 3, 2)])
def test_gradcheck_float64_in_place_and_out(n_out, n_in, k):
    """The in-place form (output 0 overwrites input 0) and the out= form with a fresh second output."""
    inputs, coeffs, seeds, _ = _case(f"inplace{n_out}{n_in}{k}", n_out, n_in, k)

    def f(*tensors):
        state = tensors[0] * 1.0  # a non-leaf the call overwrites
        outs = [state] + [torch.empty_like(state) for _ in range(n_out - 1)]
        got = fused_step([state] + list(tensors[1:]), coeffs, num_noise=k, seeds=seeds, counter=2, out=outs,
                         backend="eager")
        assert got[0] is state
        return tuple(got)

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_gradient_is_the_transposed_step():
    """grad_in[n] = sum_m C[m,n] grad_out[m], with the noise fixed: compared with the plain expression."""
    inputs, coeffs, seeds, weights = _case("transposed", 2, 3, 2)
    outs = fused_step(inputs, coeffs, num_noise=2, seeds=seeds, counter=3, backend="eager")
    got = torch.autograd.grad(_loss(outs, weights), inputs)
    per_sample = inputs[0][0].numel()
    z = [normals(seeds, 3, k, per_sample).reshape(inputs[0].shape).double() for k in range(2)]
    plain = [sum(c * t for c, t in zip(row, list(inputs) + z)) for row in coeffs]
    want = torch.autograd.grad(_loss(plain, weights), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def _backend_gradients(backend, dtype, n_out, n_in, k, in_place):
    inputs, coeffs, seeds, weights = _case(f"backends{n_out}{n_in}{k}{in_place}", n_out, n_in, k, shape=(2, 301),
                                           dtype=dtype)
    if in_place:
        state = inputs[0] * 1.0
        outs = [state] + [torch.empty_like(state) for _ in range(n_out - 1)]
        got = fused_step([state] + inputs[1:], coeffs, num_noise=k, seeds=seeds, counter=9, out=outs,
                         backend=backend)
    else:
        got = fused_step(inputs, coeffs, num_noise=k, seeds=seeds, counter=9, backend=backend)
    return got, torch.autograd.grad(_loss(got, weights), inputs)


def _assert_gradients_match_eager(backend, dtype=torch.float32, kinds=KINDS):
    for n_out, n_in, k in kinds:
        for in_place in (False, True):
            values, grads = _backend_gradients(backend, dtype, n_out, n_in, k, in_place)
            assert all(v.grad_fn is not None for v in values)
            want_values, want = _backend_gradients("eager", dtype, n_out, n_in, k, in_place)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            for g, w in zip(grads, want):
                torch.testing.assert_close(g, w, rtol=tol, atol=tol)
            for v, w in zip(values, want_values):
                torch.testing.assert_close(v, w, rtol=tol, atol=tol)


@needs_extension
@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpp_gradients_equal_eager(dtype):
    _assert_gradients_match_eager("cpp", dtype)


@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
def test_compile_backend_gradients_equal_eager():
    _assert_gradients_match_eager("compile", kinds=[(1, 3, 2), (2, 2, 1)])  # each kind compiles (slow on a CPU)


@pytest.mark.skipif(not (IN_TRITON_SUBPROCESS or torch.cuda.is_available()),
                    reason="runs on a GPU or in the interpreter subprocess (test_triton_interpreter_gradients)")
def test_triton_gradients_in_this_process():
    assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    _assert_gradients_match_eager("triton")


@pytest.mark.skipif(IN_TRITON_SUBPROCESS or torch.cuda.is_available(), reason="the subprocess / tested on the GPU")
def test_triton_interpreter_gradients():
    """The Triton kernel's gradients under TRITON_INTERPRET=1 (set before triton is imported: a subprocess)."""
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(fastint.__file__))
    env = dict(os.environ, TRITON_INTERPRET="1", FASTINT_TEST_TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rs", __file__,
                        "-k", "triton_gradients_in_this_process or triton_op_under_compile"],
                       capture_output=True, text=True, env=env, cwd=os.path.dirname(__file__), timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "2 passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]


@pytest.mark.skipif(not (IN_TRITON_SUBPROCESS or torch.cuda.is_available()),
                    reason="runs on a GPU or in the interpreter subprocess (test_triton_interpreter_gradients)")
def test_triton_op_under_compile():
    """The Triton kernel is the registered op fastint::fused_step_triton (triton_op): torch.compile traces it."""
    from fastint.ops import triton_kernel
    op = triton_kernel.registered_op()
    assert hasattr(torch.ops.fastint, "fused_step_triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = _generator("triton_compile")
    x, d = (torch.randn(2, 64, generator=gen).to(device) for _ in range(2))

    def step(x, d):
        out = torch.empty_like(x)
        op([out], [x, d], [0.5, -2.0], None, 0, 0)
        return out

    if device == "cpu":  # Inductor cannot lower an interpreted kernel: trace the graph only (one op)
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward
        got = torch.compile(step, backend=backend, fullgraph=True)(x, d)
        assert any("fused_step_triton" in str(n.target) for n in graphs[0].graph.nodes)
    else:
        got = torch.compile(step, fullgraph=True)(x, d)
    torch.testing.assert_close(got, 0.5 * x - 2.0 * d)


@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
def test_gradients_under_torch_compile():
    """The functional op is one node of a compiled graph, forward and backward (fullgraph)."""
    inputs, coeffs, seeds, weights = _case("compiled", 2, 3, 1, dtype=torch.float32)
    flat = [c for row in coeffs for c in row]

    def loss(a, b, c):
        outs = fused_step_functional([a, b, c], flat, seeds, 4, 1, 2, "eager")
        return _loss(outs, weights)

    got = torch.autograd.grad(torch.compile(loss, fullgraph=True, dynamic=False)(*inputs), inputs)
    want = torch.autograd.grad(loss(*inputs), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
def test_fused_step_under_torch_compile_backpropagates():
    """``fastint.ops.fused_step`` itself inside a compiled function (graph breaks allowed around validation)."""
    inputs, coeffs, seeds, weights = _case("compiled_entry", 1, 2, 1, dtype=torch.float32)

    def loss(a, b):
        return _loss(fused_step([a * 2.0, b], coeffs, num_noise=1, seeds=seeds, counter=1, backend="eager"), weights)

    got = torch.autograd.grad(torch.compile(loss)(*inputs), inputs)
    want = torch.autograd.grad(loss(*inputs), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
@pytest.mark.parametrize("backend", ["eager", "cpp"])
def test_opcheck_of_the_functional_op(backend):
    if backend == "cpp" and extension.load() is not None:
        pytest.skip("the compiled extension is not available")
    inputs, coeffs, seeds, _ = _case(f"opcheck{backend}", 2, 3, 1, dtype=torch.float32)
    flat = [c for row in coeffs for c in row]
    torch.library.opcheck(fused_step_functional, (inputs, flat, seeds, 4, 1, 2, backend))
    torch.library.opcheck(fused_step_functional, ([t.detach() for t in inputs], flat[:3], None, 0, 0, 1, backend))


@needs_extension
@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
def test_opcheck_of_the_compiled_op_with_inputs_requiring_grad():
    """The out= op of the extension, its Autograd kernel included (autograd registration, aot dispatch)."""
    inputs, coeffs, seeds, _ = _case("opcheck-compiled", 1, 2, 1, dtype=torch.float32)
    flat = [c for row in coeffs for c in row]
    for tensors in (inputs, [t.detach() for t in inputs]):
        torch.library.opcheck(torch.ops.fastint.fused_step.default,
                              ([torch.empty_like(inputs[0])], tensors, flat, seeds, 4, 1))


@needs_extension
@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
def test_compiled_entries_record_gradients():
    """torch.ops.fastint.fused_step and fastint._C.fused_step (the fast entry) record the call whenever an input
    requires grad: the gradient equals the eager one, through an in-place update too."""
    for entry in (torch.ops.fastint.fused_step, extension.module().fused_step):
        inputs, coeffs, seeds, weights = _case("entries", 2, 3, 1, dtype=torch.float32)
        flat = [c for row in coeffs for c in row]
        state = inputs[0] * 1.0
        outs = [state, torch.empty_like(state)]
        entry(outs, [state] + inputs[1:], flat, seeds, 6, 1)
        assert outs[0].grad_fn is not None and outs[1].grad_fn is not None
        got = torch.autograd.grad(_loss(outs, weights), inputs)
        want_outs = fused_step(inputs, coeffs, num_noise=1, seeds=seeds, counter=6, backend="eager")
        want = torch.autograd.grad(_loss(want_outs, weights), inputs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _entries():
    """Every entry of the op as f(outs, inputs, flat coeffs): the public function on each backend here, and the
    compiled op's two entries."""
    def public(backend):
        def call(outs, inputs, flat):
            width = len(flat) // len(outs)
            fused_step(inputs, [flat[m * width:(m + 1) * width] for m in range(len(outs))], out=outs,
                       backend=backend)
        return call
    entries = {"eager": public("eager"), "compile": public("compile")}
    if extension.load() is None:
        entries.update({"cpp": public("cpp"),
                        "torch.ops": lambda outs, inputs, flat: torch.ops.fastint.fused_step(outs, inputs, flat,
                                                                                            None, 0, 0),
                        "fastint._C": lambda outs, inputs, flat: extension.module().fused_step(outs, inputs, flat,
                                                                                              None, 0, 0)})
    return entries


ENTRIES = ["eager", "compile", "cpp", "torch.ops", "fastint._C"]


def _entry(name):
    entries = _entries()
    if name not in entries:
        pytest.skip("the compiled extension is not available")
    return entries[name]


@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
@pytest.mark.parametrize("name", ENTRIES)
def test_leaf_requiring_grad_is_refused_as_output(name):
    call = _entry(name)
    leaf = torch.zeros(2, 8, requires_grad=True)
    x = torch.randn(2, 8, generator=_generator("leaf"))
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        call([leaf], [x], [2.0])
    assert torch.equal(leaf.detach(), torch.zeros(2, 8))
    with torch.no_grad():  # torch's rule: allowed without grad mode (an optimiser step)
        call([leaf], [x], [2.0])
    assert torch.equal(leaf.detach(), 2.0 * x)


@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
@pytest.mark.parametrize("name", ENTRIES)
def test_in_place_on_a_tensor_saved_for_backward_is_detected(name):
    """Overwriting a tensor another op saved for its backward makes that backward fail (version counter), with grad
    mode on or off during the write, as for torch's own in-place ops."""
    call = _entry(name)
    for grad_mode in (True, False):
        a = torch.randn(2, 8, generator=_generator("saved"), requires_grad=True)
        b = a * 1.0
        product = (b * b).sum()  # saves b
        with torch.set_grad_enabled(grad_mode):
            call([b], [b], [2.0])
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            product.backward()


@pytest.mark.skipif(IN_TRITON_SUBPROCESS, reason="Triton subprocess")
def test_no_grad_results_do_not_require_grad():
    x = torch.randn(2, 8, generator=_generator("nograd"), requires_grad=True)
    with torch.no_grad():
        out = fused_step([x], [[2.0]])[0]
    assert not out.requires_grad
    assert fused_step([x], [[2.0]])[0].requires_grad
    with torch.inference_mode():
        assert not fused_step([x.detach()], [[2.0]])[0].requires_grad
