"""The finiteness check of ``fastint.sample`` (``executor.all_finite``): the compiled scan of the exponent bits
(``fastint._C.all_finite``) and the sum-first fallback both agree with ``torch.isfinite(t).all()`` wherever a NaN or
an infinity sits, for every float dtype, and neither is fooled by finite values whose sum overflows."""

import math

import pytest
import torch

from fastint.ops import extension
from fastint import executor as base
from seeding import stable_seed

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
needs_extension = pytest.mark.skipif(extension.load() is not None, reason="the compiled extension is not available")


def _checks():
    """(name, check) for every implementation available here."""
    found = [("fallback", lambda t: math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all()))]
    if extension.load() is None:
        found.append(("compiled", extension.module().all_finite))
    return found


def _generator(*parts):
    return torch.Generator().manual_seed(stable_seed(*parts))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("numel", [1, 63, 4099, (1 << 16) * 3 + 5])   # the last spans several parallel chunks
def test_every_non_finite_value_is_found_wherever_it_sits(dtype, numel):
    gen = _generator("every non-finite value", str(dtype), numel)
    for name, check in _checks():
        clean = torch.randn(numel, generator=gen).to(dtype)
        assert check(clean) is True, (name, dtype)
        positions = sorted({0, numel - 1, numel // 2, int(torch.randint(0, numel, (1,), generator=gen))})
        for bad in (float("nan"), float("inf"), -float("inf")):
            for pos in positions:
                y = clean.clone()
                y[pos] = bad
                assert check(y) is False, (name, dtype, bad, pos)
                assert bool(torch.isfinite(y).all()) is False


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_extreme_finite_values_and_nan_payloads(dtype):
    """Largest and smallest finite values, subnormals and -0 are finite (an overflowing sum proves nothing); a NaN
    with another payload or sign bit is not."""
    info = torch.finfo(dtype)
    finite = torch.tensor([info.max, info.max / 2, info.tiny, info.tiny / 4, -0.0, info.eps, -info.max / 4],
                          dtype=dtype).repeat(50)
    assert not math.isfinite(finite.sum().item())
    bits = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}[dtype]
    odd_nan = torch.tensor([float("nan")], dtype=dtype).view(bits)
    odd_nan = (odd_nan ^ 1).view(dtype)           # still all exponent bits set, another mantissa: a NaN
    assert math.isnan(odd_nan.item())
    negative_nan = -torch.tensor([float("nan")], dtype=dtype)
    for name, check in _checks():
        assert check(finite) is True, (name, dtype)
        for nan in (odd_nan, negative_nan):
            assert check(torch.cat([finite, nan, finite])) is False, (name, dtype)


@needs_extension
def test_compiled_check_takes_any_tensor_and_refuses_anything_else():
    compiled = extension.module().all_finite
    gen = _generator("any tensor")
    y = torch.randn(6, 40, generator=gen)
    y[5, 3] = float("inf")
    assert compiled(y.t()) is False and compiled(torch.randn(6, 40, generator=gen).t()) is True  # strided: fallback
    assert compiled(y[:, ::2]) is bool(torch.isfinite(y[:, ::2]).all())
    assert compiled(y[5:]) is False and compiled(y[:5]) is True and compiled(y[5, 4:]) is True  # offset views
    assert compiled(y[5, 3]) is False and compiled(torch.tensor(1.5)) is True                   # 0-d
    assert compiled(torch.arange(10)) is True and compiled(torch.ones(3, dtype=torch.bool)) is True
    assert compiled(torch.empty(0)) is True
    with pytest.raises(TypeError, match="expected a tensor"):
        compiled([1.0, 2.0])


def test_sample_uses_the_compiled_check_when_built(monkeypatch):
    """``all_finite`` goes to the compiled check for a plain tensor when the extension is built and to the fallback
    otherwise (or for a tensor subclass); both answer the same."""
    gen = _generator("compiled check in sample")
    y = torch.randn(5, 7, generator=gen)
    z = y.clone()
    z[2, 2] = float("nan")
    calls = []
    if extension.load() is None:
        compiled = extension.module().all_finite
        monkeypatch.setattr(base, "_compiled_all_finite", lambda: lambda t: calls.append(t) or compiled(t))
        assert base.all_finite(y) is True and base.all_finite(z) is False
        assert len(calls) == 2
        assert base.all_finite(torch.nn.Parameter(z, requires_grad=False)) is False and len(calls) == 2
    monkeypatch.setattr(base, "_compiled_all_finite", lambda: None)
    assert base.all_finite(y) is True and base.all_finite(z) is False
