"""fastint.metrics: sliced Wasserstein and Frechet distance against closed forms and independent references."""

import math

import numpy as np
import pytest
import torch

from fastint.metrics import frechet_distance, random_directions, sliced_wasserstein

scipy_linalg = pytest.importorskip("scipy.linalg")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_spd(dim, gen, scale=1.0):
    m = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return scale * (m @ m.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64))


def _with_exact_moments(n, mean, cov, gen):
    """n samples whose sample mean is exactly ``mean`` and unbiased sample covariance exactly ``cov``."""
    dim = mean.shape[0]
    z = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    z = z - z.mean(0)
    s = z.T @ z / (n - 1)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(s)).T  # whitened: sample covariance exactly I
    return mean + z @ torch.linalg.cholesky(cov).T


def _gaussian_w2_squared_scipy(mu_a, ca, mu_b, cb):
    """The closed form with scipy's general sqrtm (an independent route to the same number)."""
    ca, cb = ca.numpy(), cb.numpy()
    root_a = scipy_linalg.sqrtm(ca)
    cross = scipy_linalg.sqrtm(root_a @ cb @ root_a)
    return float(((mu_a - mu_b) ** 2).sum()) + float(np.trace(ca) + np.trace(cb) - 2 * np.trace(cross).real)


# ------------------------------------------------------------------------------------------------- frechet_distance
@pytest.mark.parametrize("dim", [1, 2, 5, 16])
def test_frechet_matches_closed_form_on_exact_moments(dim):
    gen = _gen(10 + dim)
    mu_a = torch.randn(dim, generator=gen, dtype=torch.float64)
    mu_b = torch.randn(dim, generator=gen, dtype=torch.float64) * 2
    ca, cb = _random_spd(dim, gen), _random_spd(dim, gen, scale=3.0)
    a = _with_exact_moments(500, mu_a, ca, gen)
    b = _with_exact_moments(731, mu_b, cb, gen)
    expected = _gaussian_w2_squared_scipy(mu_a, ca, mu_b, cb)
    assert expected > 0.1
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_diagonal_and_one_dimensional_closed_forms():
    gen = _gen(3)
    # 1-D: (mu_a - mu_b)^2 + (s_a - s_b)^2
    a = _with_exact_moments(300, torch.tensor([1.25], dtype=torch.float64),
                            torch.tensor([[0.7 ** 2]], dtype=torch.float64), gen)
    b = _with_exact_moments(400, torch.tensor([-0.5], dtype=torch.float64),
                            torch.tensor([[2.3 ** 2]], dtype=torch.float64), gen)
    assert frechet_distance(a, b) == pytest.approx(1.75 ** 2 + 1.6 ** 2, rel=1e-10)
    # diagonal covariances: sum_i (mu_i diff)^2 + (sqrt(ca_i) - sqrt(cb_i))^2
    va = 0.2 + torch.rand(6, generator=gen, dtype=torch.float64)
    vb = 0.2 + 3 * torch.rand(6, generator=gen, dtype=torch.float64)
    ma, mb = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    a = _with_exact_moments(250, ma, torch.diag(va), gen)
    b = _with_exact_moments(260, mb, torch.diag(vb), gen)
    expected = float(((ma - mb) ** 2).sum() + ((va.sqrt() - vb.sqrt()) ** 2).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_on_random_sets_and_is_symmetric():
    gen = _gen(7)
    a = torch.randn(400, 8, generator=gen, dtype=torch.float64) @ torch.randn(8, 8, generator=gen,
                                                                               dtype=torch.float64)
    b = 0.5 + torch.randn(350, 8, generator=gen, dtype=torch.float64) * 1.7
    ref = _gaussian_w2_squared_scipy(a.mean(0), torch.from_numpy(np.cov(a.numpy(), rowvar=False)),
                                     b.mean(0), torch.from_numpy(np.cov(b.numpy(), rowvar=False)))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(ref, rel=1e-8)


def test_frechet_identical_sets_and_shift():
    gen = _gen(8)
    a = torch.randn(300, 4, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.3, 5.0],
                                                                               dtype=torch.float64)
    assert frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-9)
    v = torch.randn(4, generator=gen, dtype=torch.float64)
    assert frechet_distance(a, a + v) == pytest.approx(float((v ** 2).sum()), rel=1e-8, abs=1e-9)


def test_frechet_singular_covariance_is_finite_and_accurate():
    gen = _gen(9)
    # samples on a 2-D subspace of R^5: rank-deficient covariances
    basis = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    a = torch.randn(200, 2, generator=gen, dtype=torch.float64) @ basis
    b = 1.0 + 2 * torch.randn(200, 2, generator=gen, dtype=torch.float64) @ basis
    value = frechet_distance(a, b)
    assert math.isfinite(value) and value > 0
    ref = _gaussian_w2_squared_scipy(a.mean(0), torch.from_numpy(np.cov(a.numpy(), rowvar=False)),
                                     b.mean(0), torch.from_numpy(np.cov(b.numpy(), rowvar=False)))
    assert value == pytest.approx(ref, rel=1e-6)


def test_frechet_accepts_float32_and_numpy():
    gen = _gen(11)
    a = torch.randn(100, 3, generator=gen)
    b = torch.randn(120, 3, generator=gen) + 1
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(a.double().numpy(), b.double()), rel=1e-12)


# ----------------------------------------------------------------------------------------------- sliced_wasserstein
def _w2_squared_1d_replicated(x, y):
    """Independent exact 1-D W2^2 for unequal sizes: replicate both to lcm(n, m) atoms and pair sorted values."""
    n, m = len(x), len(y)
    lcm = n * m // math.gcd(n, m)
    xs = np.repeat(np.sort(x), lcm // n)
    ys = np.repeat(np.sort(y), lcm // m)
    return float(np.mean((xs - ys) ** 2))


def test_sliced_wasserstein_identical_sets_is_zero_and_symmetric():
    gen = _gen(20)
    a = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(450, 3, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    assert sliced_wasserstein(a, a.clone()) == 0.0
    assert sliced_wasserstein(a, a[torch.randperm(500, generator=gen)]) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(a, b) == pytest.approx(sliced_wasserstein(b, a), rel=1e-12)
    assert sliced_wasserstein(a, b) > 0.1


def test_sliced_wasserstein_shift_exact_for_given_directions():
    gen = _gen(21)
    a = torch.randn(300, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(4, generator=gen, dtype=torch.float64)
    theta = random_directions(17, 4, _gen(5))
    # each 1-D W2 of a set and its shift is |theta . v|
    expected = math.sqrt(float(((theta @ v) ** 2).mean()))
    assert sliced_wasserstein(a, a + v, projections=theta) == pytest.approx(expected, rel=1e-10)
    # unnormalised directions are normalised
    assert sliced_wasserstein(a, a + v, projections=3.5 * theta) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("dim", [2, 5])
def test_sliced_wasserstein_shift_matches_uniform_direction_expectation(dim):
    gen = _gen(22 + dim)
    a = torch.randn(50, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(dim, generator=gen, dtype=torch.float64) * 2
    # E_theta (theta . v)^2 = |v|^2 / dim for theta uniform on the sphere
    sw = sliced_wasserstein(a, a + v, projections=20000, generator=_gen(1))
    assert sw ** 2 == pytest.approx(float((v ** 2).sum()) / dim, rel=0.04)


def test_sliced_wasserstein_scales_linearly():
    gen = _gen(23)
    a = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(260, 3, generator=gen, dtype=torch.float64) + 0.7
    assert sliced_wasserstein(2.5 * a, 2.5 * b) == pytest.approx(2.5 * sliced_wasserstein(a, b), rel=1e-12)


def test_sliced_wasserstein_unequal_sizes_exact():
    gen = _gen(24)
    a = torch.randn(37, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(50, 2, generator=gen, dtype=torch.float64) * 0.8 + torch.tensor([0.4, -0.2],
                                                                                   dtype=torch.float64)
    theta = random_directions(9, 2, _gen(2))
    expected = math.sqrt(np.mean([_w2_squared_1d_replicated((a @ t).numpy(), (b @ t).numpy()) for t in theta]))
    assert sliced_wasserstein(a, b, projections=theta) == pytest.approx(expected, rel=1e-12)
    # the same empirical measure with every atom twice is at distance 0
    assert sliced_wasserstein(a, torch.cat([a, a.flip(0)]), projections=theta) == pytest.approx(0.0, abs=1e-12)


def test_sliced_wasserstein_reproducible_and_generator_used():
    gen = _gen(25)
    a = torch.randn(100, 3, generator=gen)
    b = torch.randn(100, 3, generator=gen) * 2
    assert sliced_wasserstein(a, b) == sliced_wasserstein(a, b)
    assert sliced_wasserstein(a, b, generator=_gen(4)) == sliced_wasserstein(a, b, generator=_gen(4))
    assert sliced_wasserstein(a, b, projections=8, generator=_gen(4)) != \
        sliced_wasserstein(a, b, projections=8, generator=_gen(5))


def test_sliced_wasserstein_blocks_of_directions_agree(monkeypatch):
    import fastint.metrics as metrics
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 1000)  # blocks of 1000 // 700 = 1 direction
    gen = _gen(26)
    a = torch.randn(400, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(300, 2, generator=gen, dtype=torch.float64) + 0.1
    theta = random_directions(13, 2, _gen(6))
    blockwise = sliced_wasserstein(a, b, projections=theta)
    direct = math.sqrt(np.mean([_w2_squared_1d_replicated((a @ t).numpy(), (b @ t).numpy()) for t in theta]))
    assert blockwise == pytest.approx(direct, rel=1e-12)


# ------------------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("metric", [sliced_wasserstein, frechet_distance])
def test_bad_inputs_raise(metric):
    gen = _gen(30)
    a = torch.randn(10, 3, generator=gen)
    with pytest.raises(ValueError, match="2-D"):
        metric(a.reshape(10, 3, 1), a)
    with pytest.raises(ValueError, match="2-D"):
        metric(a, a[:, 0])
    with pytest.raises(ValueError, match="same dim"):
        metric(a, torch.randn(10, 2, generator=gen))
    with pytest.raises(ValueError, match="at least 2"):
        metric(a, a[:1])
    bad = a.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        metric(bad, a)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        metric(a, bad)
    with pytest.raises(TypeError):
        metric("not samples", a)


def test_bad_projections_raise():
    gen = _gen(31)
    a = torch.randn(10, 3, generator=gen)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="projections"):
            sliced_wasserstein(a, a, projections=bad)
    with pytest.raises(ValueError, match="directions"):
        sliced_wasserstein(a, a, projections=torch.randn(4, 2, generator=gen))
    with pytest.raises(ValueError, match="non-zero"):
        sliced_wasserstein(a, a, projections=torch.zeros(4, 3))
