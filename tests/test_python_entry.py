"""``fastint._C.fused_step``: the fast Python entry to the compiled op (csrc/python_entry.cpp) gives exactly what
``torch.ops.fastint.fused_step`` gives and rejects bad arguments with a clear error."""

import pytest
import torch

from fastint.ops import extension

pytestmark = pytest.mark.skipif(extension.load() is not None, reason="the compiled extension is not available")


def _entry():
    return extension.module().fused_step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_in,n_out,k", [(1, 1, 0), (2, 2, 1), (4, 1, 1), (6, 2, 4)])
def test_bit_identical_to_the_dispatcher_path(dtype, n_in, n_out, k):
    gen = torch.Generator().manual_seed(7 * n_in + n_out + k)
    inputs = [torch.randn(3, 1029, generator=gen).to(dtype) for _ in range(n_in)]
    coeffs = torch.randn(n_out * (n_in + k), generator=gen, dtype=torch.float64).tolist()
    seeds = torch.tensor([5, -9, 2 ** 40], dtype=torch.int64) if k else None
    want = [torch.full_like(inputs[0], float("nan")) for _ in range(n_out)]
    got = [torch.full_like(inputs[0], float("nan")) for _ in range(n_out)]
    torch.ops.fastint.fused_step(want, inputs, coeffs, seeds, 11, k)
    assert _entry()(got, tuple(inputs), coeffs, seeds, 11, k) is None
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_in_place_output_aliasing_an_input():
    gen = torch.Generator().manual_seed(3)
    x, d = torch.randn(2, 77, generator=gen), torch.randn(2, 77, generator=gen)
    want = 0.5 * x + 2.0 * d
    _entry()([x], [x, d], [0.5, 2.0], None, 0, 0)
    torch.testing.assert_close(x, want, rtol=1e-6, atol=1e-6)


def test_inference_mode():
    x = torch.ones(4)
    with torch.inference_mode():
        out = torch.empty(4)
        _entry()([out], [x], [3.0], None, 0, 0)
    assert torch.equal(out, torch.full((4,), 3.0))


@pytest.mark.parametrize("args,error,match", [
    (([torch.empty(3)], [torch.ones(3)], [1.0], None, 0), TypeError, "takes 6 arguments"),
    ((torch.empty(3), [torch.ones(3)], [1.0], None, 0, 0), TypeError, "outs must be a list or tuple"),
    (([torch.empty(3)], [], [1.0], None, 0, 0), ValueError, "1 to 6 inputs, got 0"),
    (([torch.empty(3)], [torch.ones(3)] * 7, [1.0] * 7, None, 0, 0), ValueError, "1 to 6 inputs, got 7"),
    (([torch.empty(3)] * 3, [torch.ones(3)], [1.0] * 3, None, 0, 0), ValueError, "1 to 2 outs, got 3"),
    (([torch.empty(3)], [torch.ones(3), 2.0], [1.0, 1.0], None, 0, 0), TypeError, r"inputs\[1\] is a float"),
    (([torch.empty(3)], [torch.ones(3)], ["a"], None, 0, 0), TypeError, "must be real number"),
    (([torch.empty(3)], [torch.ones(3)], [1.0] * 21, None, 0, 0), ValueError, "at most 20 coefficients"),
    (([torch.empty(3)], [torch.ones(3)], 1.0, None, 0, 0), TypeError, "coeffs must be a list"),
    (([torch.empty(3)], [torch.ones(3)], [1.0], 5, 0, 0), TypeError, "seeds must be None or an int64 tensor"),
    (([torch.empty(3)], [torch.ones(3)], [1.0], None, "0", 0), TypeError, "cannot be interpreted as an integer"),
    (([torch.empty(3)], [torch.ones(3)], [1.0, 1.0], None, 0, 0), RuntimeError, r"M \* \(N \+ K\) = 1"),
    (([torch.empty(4)], [torch.ones(3)], [1.0], None, 0, 0), RuntimeError, "output 0 has shape"),
    (([torch.empty(3)], [torch.ones(3, dtype=torch.float64)], [1.0], None, 0, 0), RuntimeError, "Double"),
    (([torch.empty(3)], [torch.ones(3)], [1.0, 1.0], None, 0, 1), RuntimeError, "needs seeds"),
])
def test_bad_arguments_are_named(args, error, match):
    with pytest.raises(error, match=match):
        _entry()(*args)


def test_a_meta_tensor_among_real_ones_is_refused_before_anything_is_written():
    """The op's meta (fake) implementation makes the compiled op's tensor checks: a meta tensor among CPU ones is
    refused (the planned sampling loop relies on the op refusing any output it cannot read), all-meta calls pass."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, (1,))))
    x = torch.randn(2, 33, generator=gen)
    out = torch.full_like(x, 7.0)
    for call in (_entry(), torch.ops.fastint.fused_step):
        for inputs in ([x, torch.empty(2, 33, device="meta")], [torch.empty(2, 33, device="meta"), x]):
            with pytest.raises(RuntimeError, match="meta"):
                call([out], inputs, [1.0, 1.0], None, 0, 0)
            assert torch.equal(out, torch.full_like(x, 7.0))
        with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
            call([torch.empty(2, 33, device="meta")], [torch.empty(2, 33, device="meta", dtype=torch.float64)],
                 [1.0], None, 0, 0)
        meta = [torch.empty(2, 33, device="meta") for _ in range(3)]
        assert call(meta[:1], meta[1:], [1.0, 2.0], None, 0, 0) is None


def test_use_counts_sees_every_holder_of_the_tensor_and_its_storage():
    """fastint._C.use_counts: the executor's test whether a model output is held elsewhere (tests/
    test_output_history.py covers what it is used for); each new holder raises its own count by one."""
    use_counts = extension.module().use_counts
    t = torch.randn(4, 3)
    references, storage = use_counts(t)
    alias = t
    assert use_counts(t) == (references + 1, storage)
    del alias
    view = t[1:]
    assert use_counts(t)[1] == storage + 1   # (the view also keeps t's Python object alive: not asserted)
    del view
    assert use_counts(t) == (references, storage)
    # the executor's form: whether either count exceeds the given ones (the counts of an output only it holds)
    assert use_counts(t, references, storage) is False
    alias = t
    assert use_counts(t, references, storage) is True
    del alias
    view = t[1:]
    assert use_counts(t, references + 1, storage) is True
    del view
    assert use_counts(t, references - 1, storage) is True
    assert use_counts(t, references, storage - 1) is True
    with pytest.raises(TypeError, match="use_counts: expected a tensor, got int"):
        use_counts(3)
    with pytest.raises(TypeError, match="takes 1 or 3 arguments, got 2"):
        use_counts(t, 1)
