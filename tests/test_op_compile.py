"""The ``compile`` backend (torch.compile of the reference math) against the float64 eager reference."""

import pytest
import torch

from fastint.ops import fused_step

from op_cases import SIZES, assert_matches_reference, random_case

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compile_matches_eager_float64_over_sizes(dtype):
    for i, shape in enumerate(SIZES):
        if shape == (1,) and dtype != torch.float32:
            continue  # size 1 specialises the graph: covered once, for float32
        inputs, coeffs, seeds = random_case(10 + i, shape, n_in=3, n_out=2, n_noise=2, dtype=dtype)
        outs = [torch.full(shape, float("nan"), dtype=dtype) for _ in range(2)]  # poisoned
        got = fused_step(inputs, coeffs, num_noise=2, seeds=seeds, counter=17 + i, out=outs, backend="compile")
        same = fused_step(inputs, coeffs, num_noise=2, seeds=seeds, counter=17 + i, backend="eager")
        assert_matches_reference(got, inputs, coeffs, seeds, 17 + i, 2, backend_same_dtype=same)


def test_compile_in_place_aliasing_an_input():
    inputs, coeffs, seeds = random_case(3, (4, 333), n_in=3, n_out=1, n_noise=1, dtype=torch.float32)
    original = [t.clone() for t in inputs]
    got = fused_step(inputs, coeffs, num_noise=1, seeds=seeds, counter=5, out=inputs[0], backend="compile")
    assert got[0] is inputs[0]
    assert_matches_reference(got, original, coeffs, seeds, 5, 1)
    assert torch.equal(inputs[1], original[1]) and torch.equal(inputs[2], original[2])


def test_compile_mixed_input_dtypes_write_the_state_dtype():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1000, generator=gen)
    d = torch.randn(2, 1000, generator=gen).to(torch.bfloat16)
    coeffs = [[0.75, 0.25]]
    got = fused_step([x, d], coeffs, backend="compile")
    assert got[0].dtype == torch.float32
    assert_matches_reference(got, [x, d], coeffs, None, 0, 0)


def test_compile_rejects_float64():
    x = torch.randn(8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="does not support torch.float64"):
        fused_step([x], [[1.0]], backend="compile")
