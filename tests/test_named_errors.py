"""The defects of issue 14, one test each: every entry of the fused op (``fastint.ops.fused_step`` on each backend,
``torch.ops.fastint.fused_step``, ``fastint._C.fused_step``) refuses partial overlap, aliased outputs, NaN and
float32-overflowing coefficients, and nothing is written; the errors a new user met now name the problem."""

import zlib

import numpy
import pytest
import torch

import fastint
from fastint.models import default_mixture
from fastint.ops import extension, fused_step


def _random(name, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))


def _public(backend):
    def call(outs, inputs, flat):
        width = len(flat) // len(outs)
        return fused_step(inputs, [flat[m * width:(m + 1) * width] for m in range(len(outs))], out=outs,
                          backend=backend)
    return call


def _entries():
    entries = {"eager": _public("eager"), "compile": _public("compile")}
    if extension.load() is None:
        entries["cpp"] = _public("cpp")
        entries["torch.ops"] = lambda outs, inputs, flat: torch.ops.fastint.fused_step(outs, inputs, flat, None, 0, 0)
        entries["fastint._C"] = lambda outs, inputs, flat: extension.module().fused_step(outs, inputs, flat, None, 0,
                                                                                        0)
    return entries


ENTRIES = ["eager", "compile", "cpp", "torch.ops", "fastint._C"]


def _entry(name):
    entries = _entries()
    if name not in entries:
        pytest.skip("the compiled extension is not available")
    return entries[name]


@pytest.mark.parametrize("name", ENTRIES)
def test_partial_overlap_of_an_input_and_an_output_is_refused(name):
    """inputs=[buf[:-1]], out=[buf[1:]] gave a running doubling 1, 2, 4, 8, ... instead of 2x."""
    buf = torch.ones(9)
    with pytest.raises(ValueError, match="output 0 partially overlaps input 0"):
        _entry(name)([buf[1:]], [buf[:-1]], [2.0])
    assert torch.equal(buf, torch.ones(9))


@pytest.mark.parametrize("name", ENTRIES)
def test_exact_alias_is_an_in_place_update(name):
    x, d = _random("alias-x", 2, 9), _random("alias-d", 2, 9)
    want = 0.5 * x + 2.0 * d
    _entry(name)([x], [x, d], [0.5, 2.0])
    torch.testing.assert_close(x, want)


@pytest.mark.parametrize("name", ENTRIES)
def test_an_exact_alias_of_another_dtype_is_refused(name):
    """Same address, other element size: element i of the output covers other elements of the input."""
    if name in ("eager", "compile"):
        pytest.skip("the kernels' dtypes only (float32 output over a bfloat16 view of its memory)")
    out = torch.zeros(8)
    alias = out.view(torch.bfloat16)[:8]
    with pytest.raises(ValueError, match="partially overlaps"):
        _entry(name)([out], [alias], [1.0])


@pytest.mark.parametrize("name", ENTRIES)
def test_aliased_outputs_are_refused(name):
    x = _random("outputs", 3, 5)
    out = torch.zeros(3, 5)
    for outs in ([out, out], [out.view(-1)[:10].view(2, 5), out.view(-1)[5:].view(2, 5)]):
        inputs = [x[:outs[0].shape[0]].contiguous()]
        with pytest.raises(ValueError, match="outputs 0 and 1 overlap"):
            _entry(name)(outs, inputs, [1.0, 2.0])
        assert torch.equal(out, torch.zeros(3, 5))


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("coefficient", [float("nan"), 1e39, -3.5e38, float("inf")])
def test_coefficients_must_be_finite_float32(name, coefficient):
    """1e39 overflowed the kernels' float32 to inf outputs; NaN was accepted by the compiled entries."""
    out = torch.zeros(4)
    with pytest.raises(ValueError, match="not a finite float32 value"):
        _entry(name)([out], [torch.ones(4), torch.ones(4)], [1.0, coefficient])
    assert torch.equal(out, torch.zeros(4))


@pytest.mark.parametrize("name", ENTRIES)
def test_largest_float32_coefficient_is_accepted(name):
    out = torch.zeros(4)
    _entry(name)([out], [torch.full((4,), 0.5)], [3.4028234663852886e38])
    assert torch.isfinite(out).all()


def test_flat_coefficients_name_the_matrix_form():
    with pytest.raises(TypeError, match=r"\(M, N \+ K\) matrix.*\[\[2\.0\]\]"):
        fused_step([torch.ones(3)], [2.0])
    with pytest.raises(TypeError, match=r"\(M, N \+ K\) matrix"):
        fused_step([torch.ones(3)], 2.0)


def test_counter_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"counter must be an int in \[0, 2\*\*30 - 1"):
        fused_step([torch.ones(3)], [[1.0]], counter=2 ** 70)
    if extension.load() is None:
        with pytest.raises(ValueError, match=r"counter must be an int in \[0, 2\*\*30\)"):
            extension.module().fused_step([torch.empty(3)], [torch.ones(3)], [1.0], None, 2 ** 70, 0)


@pytest.mark.parametrize("seeds", [[3, 4], (3, 4), numpy.array([3, 4]), 3, numpy.int64(3),
                                   torch.tensor([3, 4], dtype=torch.int32)], ids=repr)
def test_seeds_in_every_accepted_form_give_the_same_noise(seeds):
    x = _random("seed-forms", 2, 7)
    want = fused_step([x], [[1.0, 0.5]], num_noise=1, seeds=torch.tensor([3, 4]), counter=2)[0]
    got = fused_step([x], [[1.0, 0.5]], num_noise=1, seeds=seeds, counter=2)[0]
    assert torch.equal(got, want)
    assert not torch.equal(want, x)


@pytest.mark.parametrize("seed,error,match", [
    ([1, 2 ** 64], ValueError, r"seeds\[1\] = 18446744073709551616 does not fit in int64"),
    ("42", TypeError, "must be an int .* got str '42'"),
    ([1, "2"], TypeError, r"seeds\[1\] is str"),
    ([1.0, 2.0], TypeError, r"seeds\[0\] is float"),
    (True, TypeError, "must be an int"),
    ([1, 2, 3], ValueError, "3 seeds for a batch of 2"),
])
def test_bad_seeds_are_named_in_fused_step(seed, error, match):
    with pytest.raises(error, match=match):
        fused_step([torch.ones(2, 3)], [[1.0, 1.0]], num_noise=1, seeds=seed)


def _mixture_sample(**kwargs):
    model = default_mixture()
    x = kwargs.pop("x", None)
    if x is None:
        x = _random("mixture-x", 2, 2) * 4
    sigmas = kwargs.pop("sigmas", [4.0, 1.0, 0.0])
    return fastint.sample(model, x, sigmas, kwargs.pop("solver", "euler_ancestral"), **kwargs)


def test_sample_accepts_a_numpy_seed_and_lists():
    want = _mixture_sample(seed=5)
    assert torch.equal(_mixture_sample(seed=numpy.int64(5)), want)
    assert torch.equal(_mixture_sample(seed=[5, 6]), want)
    assert not torch.equal(_mixture_sample(seed=6), want)


@pytest.mark.parametrize("seed,error,match", [
    ("42", TypeError, "seed must be an int .* got str '42'"),
    ([1, 2 ** 64], ValueError, r"seed\[1\] = 18446744073709551616 does not fit in int64"),
    (2 ** 63 - 1, ValueError, "seed \\+ b .* must fit in int64"),
])
def test_bad_sample_seeds_are_named(seed, error, match):
    with pytest.raises(error, match=match):
        _mixture_sample(seed=seed)


def test_meta_tensors_in_sample_are_named():
    with pytest.raises(ValueError, match="x is a tensor on the meta device .* check_finite='off'"):
        _mixture_sample(x=torch.empty(2, 2, device="meta"))
    with pytest.raises(ValueError, match="sigmas is a tensor on the meta device"):
        _mixture_sample(sigmas=torch.empty(3, device="meta"))


def test_default_mixture_on_an_empty_batch_is_named():
    with pytest.raises(ValueError, match="empty batch"):
        default_mixture()(torch.empty(0, 2), 1.0)
