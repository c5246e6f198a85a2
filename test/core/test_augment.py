"""Tests for sphere_reg_ros.core.augment (the seed's domain randomisation)."""

from __future__ import annotations

import math

import pytest
import torch

from sphere_reg_ros.core import augment as A

N_DRAWS = 2000
# |count - n p| <= 5 sigma: a fixed seed makes it deterministic, 5 sigma makes a pass meaningful.
BINOMIAL_SIGMAS = 5.0


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(
    b: int = 4, h: int = 16, w: int = 16, seed: int = 1, dtype=torch.float32
) -> torch.Tensor:
    return torch.rand((b, 1, h, w), generator=_gen(seed), dtype=dtype)


def _assert_binomial(count: int, n: int, p: float) -> None:
    sigma = math.sqrt(n * p * (1.0 - p))
    assert abs(count - n * p) <= BINOMIAL_SIGMAS * sigma, (count, n, p)


def _assert_covers(values: torch.Tensor, bounds: tuple[float, float]) -> None:
    """Inside the range and, over N_DRAWS uniform draws, reaching within 1 % of each end."""
    lo, hi = bounds
    tol = 0.01 * (hi - lo)
    assert values.min() >= lo and values.max() <= hi
    assert values.min() <= lo + tol and values.max() >= hi - tol


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image, (B,)."""
    return x.diff(dim=2).abs().sum(dim=(1, 2, 3)) + x.diff(dim=3).abs().sum(dim=(1, 2, 3))


# ------------------------------------------------------------------ parameter ranges


@pytest.mark.parametrize(
    ("name", "key", "bounds"),
    [
        ("noise", "mean_fraction", A.NOISE_MEAN_RANGE),
        ("bound_normalization", "lower_fraction", A.LOWER_BOUND_RANGE),
        ("bound_normalization", "upper_fraction", A.UPPER_BOUND_RANGE),
        ("linear_scaling", "factor", A.LINEAR_SCALE_RANGE),
        ("gamma", "gamma", A.GAMMA_RANGE),
        ("nonlinear_scaling", "a", A.SIN_AMPLITUDE_RANGE),
        ("nonlinear_scaling", "b", A.SIN_FREQUENCY_RANGE),
        ("nonlinear_scaling", "c", A.SIN_PHASE_RANGE),
        ("erasing", "area_fraction", A.ERASE_AREA_RANGE),
        ("erasing", "aspect", A.ERASE_ASPECT_RANGE),
    ],
)
def test_parameters_lie_in_and_cover_seed_ranges(name, key, bounds):
    images = 2.0 * _images(N_DRAWS, 32, 32)
    _, params = A.TRANSFORMS[name](images, _gen(3))
    assert params[key].shape == (N_DRAWS,)
    _assert_covers(params[key], bounds)


def test_seed_ranges_are_the_seeds():
    assert A.SMOOTHING_KERNEL_SIZES == (3, 5)
    assert A.NOISE_MEAN_RANGE == (-0.15, 0.1)
    assert A.LOWER_BOUND_RANGE == (-0.04, 0.02) and A.UPPER_BOUND_RANGE == (0.9, 1.05)
    assert A.LINEAR_SCALE_RANGE == (0.9, 1.05) and A.GAMMA_RANGE == (0.7, 1.3)
    assert A.SIN_AMPLITUDE_RANGE == (0.8, 1.1) and A.SIN_FREQUENCY_RANGE == (0.8, 1.1)
    assert A.SIN_PHASE_RANGE == (-0.5, 0.4)
    assert A.ERASE_AREA_RANGE == (0.02, 0.4) and A.ERASE_ASPECT_RANGE == (0.3, 1.0)
    assert A.TRANSFORM_NAMES == (
        "smoothing",
        "noise",
        "bound_normalization",
        "linear_scaling",
        "gamma",
        "nonlinear_scaling",
        "erasing",
    )


def test_noise_and_bounds_scale_with_the_per_image_max():
    images = _images(N_DRAWS, 8, 8) * torch.linspace(0.1, 10.0, N_DRAWS).view(-1, 1, 1, 1)
    m = images.amax(dim=(1, 2, 3)).double()
    _, noise = A.random_noise(images, _gen(4))
    torch.testing.assert_close(noise["max"], m)
    ratio = noise["mean"] / m
    assert ratio.min() >= -0.15 - 1e-12 and ratio.max() <= 0.1 + 1e-12
    torch.testing.assert_close(noise["std"], 0.02 * m)
    _, bounds = A.random_bound_normalization(images, _gen(5))
    lo, hi = bounds["lower"] / m, bounds["upper"] / m
    assert lo.min() >= -0.04 - 1e-12 and lo.max() <= 0.02 + 1e-12
    assert hi.min() >= 0.9 - 1e-12 and hi.max() <= 1.05 + 1e-12


def test_smoothing_kernel_choice_is_fifty_fifty():
    _, params = A.random_smoothing(_images(N_DRAWS, 8, 8), _gen(6))
    k = params["kernel_size"]
    assert set(k.tolist()) == {3, 5}
    _assert_binomial(int((k == 3).sum()), N_DRAWS, 0.5)
    torch.testing.assert_close(
        params["sigma"][k == 3], torch.full_like(params["sigma"][k == 3], 0.8)
    )
    torch.testing.assert_close(
        params["sigma"][k == 5], torch.full_like(params["sigma"][k == 5], 1.1)
    )


def test_erasing_orientation_is_fifty_fifty():
    _, params = A.random_erasing(_images(N_DRAWS, 32, 32), _gen(7))
    _assert_binomial(int(params["vertical"].sum()), N_DRAWS, 0.5)


# ------------------------------------------------------------------ what each transform does


def test_smoothing_smooths_and_keeps_constants():
    images = _images(64, 24, 24)
    out, params = A.random_smoothing(images, _gen(8))
    tv_in, tv_out = _tv(images), _tv(out)
    assert bool((tv_out < 0.8 * tv_in).all())
    k5 = params["kernel_size"] == 5
    assert tv_out[k5].mean() < tv_out[~k5].mean()  # the larger kernel smooths more
    torch.testing.assert_close(
        out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=0.02, rtol=0
    )
    const = torch.full((4, 1, 9, 7), 0.7)
    torch.testing.assert_close(A.random_smoothing(const, _gen(9))[0], const)


def test_noise_has_the_sampled_mean_and_std():
    images = _images(8, 64, 64)
    out, params = A.random_noise(images, _gen(10))
    residual = (out - images).double().flatten(1)
    torch.testing.assert_close(residual.mean(1), params["mean"], atol=2e-3, rtol=0)
    torch.testing.assert_close(residual.std(1), params["std"], atol=0, rtol=0.05)


def test_bound_normalization_is_a_clipped_window():
    images = _images(16, 16, 16)
    out, p = A.random_bound_normalization(images, _gen(11))
    lo, hi = p["lower"].float().view(-1, 1, 1, 1), p["upper"].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(out, ((images - lo) / (hi - lo)).clamp(0, 1))
    assert out.min() >= 0 and out.max() <= 1


def test_linear_gamma_and_sine_follow_their_formulas():
    images = _images(16, 8, 8, dtype=torch.float64)
    out, p = A.random_linear_scaling(images, _gen(12))
    torch.testing.assert_close(out, images * p["factor"].view(-1, 1, 1, 1))
    out, p = A.random_gamma(images, _gen(13))
    m = images.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, m * (images / m) ** p["gamma"].view(-1, 1, 1, 1))
    out, p = A.random_nonlinear_scaling(images, _gen(14))
    a, b, c = (p[k].view(-1, 1, 1, 1) for k in "abc")
    torch.testing.assert_close(out, a * torch.sin(b * images + c))


def test_gamma_is_odd_on_signed_images():
    images = _images(4, 8, 8) - 0.5
    out_pos, _ = A.random_gamma(images, _gen(15))
    out_neg, _ = A.random_gamma(-images, _gen(15))
    torch.testing.assert_close(out_neg, -out_pos)


def test_erasing_rectangle_area_aspect_and_fill():
    h, w = 48, 64
    images = _images(500, h, w)
    out, p = A.random_erasing(images, _gen(16))
    rows, cols = p["height"], p["width"]
    assert bool(
        (
            (p["top"] >= 0) & (p["top"] + rows <= h) & (p["left"] >= 0) & (p["left"] + cols <= w)
        ).all()
    )
    # realised area and aspect match the sampled ones up to rounding the sides to whole pixels
    sampled = p["area_fraction"] * h * w
    assert bool(((rows * cols - sampled).abs() <= 0.5 * (rows + cols) + 0.25).all())
    realised = (rows * cols).double() / (h * w)
    assert realised.min() >= 0.02 * 0.8 and realised.max() <= 0.4 * 1.1
    exact_long = torch.sqrt(sampled / p["aspect"])
    exact_short = torch.sqrt(sampled * p["aspect"])
    vertical = p["vertical"]
    exact_rows = torch.where(vertical, exact_long, exact_short)
    exact_cols = torch.where(vertical, exact_short, exact_long)
    torch.testing.assert_close(rows.double(), exact_rows, atol=0.5, rtol=0)
    torch.testing.assert_close(cols.double(), exact_cols, atol=0.5, rtol=0)
    assert not bool((vertical & (rows < cols)).any() or (~vertical & (rows > cols)).any())
    aspect = torch.minimum(rows, cols).double() / torch.maximum(rows, cols)
    assert aspect.min() >= 0.3 * 0.85 and aspect.max() <= 1.0
    for i in range(0, 500, 50):
        t, l, r, c = (int(p[k][i]) for k in ("top", "left", "height", "width"))
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[t : t + r, l : l + c] = True
        assert float(p["fill"][i]) == pytest.approx(float(images[i].mean()), rel=1e-6)
        assert bool((out[i, 0][mask] == images[i].mean()).all())
        assert torch.equal(out[i, 0][~mask], images[i, 0][~mask])


def test_erasing_redraws_when_the_rectangle_does_not_fit():
    images = _images(N_DRAWS, 8, 8)  # area 0.4 with aspect 0.3 has a long side of 9.2 px > 8
    _, p = A.random_erasing(images, _gen(17))
    assert bool((p["height"] <= 8).all() and (p["width"] <= 8).all())
    assert bool((p["area_fraction"] <= 0.4).all())


# ------------------------------------------------------------------ DomainRandomization


def test_application_probability_and_record():
    images = _images(N_DRAWS, 8, 8)
    aug = A.DomainRandomization(p=0.5)
    out, record = aug.apply(images, _gen(18))
    assert record.applied.shape == (N_DRAWS, 7) and record.applied.dtype == torch.bool
    for j, name in enumerate(A.TRANSFORM_NAMES):
        _assert_binomial(int(record.applied[:, j].sum()), N_DRAWS, 0.5)
        index = record.params[name]["index"]
        assert torch.equal(index, torch.nonzero(record.applied[:, j]).flatten())
        for value in record.params[name].values():
            assert value.shape == index.shape
    # independence of two transforms: both applied a quarter of the time
    _assert_binomial(int((record.applied[:, 0] & record.applied[:, 6]).sum()), N_DRAWS, 0.25)
    untouched = ~record.applied.any(dim=1)
    assert torch.equal(out[untouched], images[untouched])
    assert bool((out[~untouched] != images[~untouched]).flatten(1).any(1).all())


def test_probability_extremes_and_order():
    images = _images(6, 16, 16)
    assert torch.equal(A.DomainRandomization(p=0.0)(images, _gen(19)), images)
    out, record = A.DomainRandomization(p=1.0).apply(images, _gen(20))
    assert bool(record.applied.all())
    g, expected = _gen(20), images
    torch.rand((6, 7), generator=g, dtype=torch.float64)  # the application draws come first
    for name in A.TRANSFORM_NAMES:
        expected, _ = A.TRANSFORMS[name](expected, g)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_probability(p):
    with pytest.raises(ValueError):
        A.DomainRandomization(p=p)


# ------------------------------------------------------------------ generic contract


def _all_seven(images: torch.Tensor, generator: torch.Generator):
    return A.DomainRandomization(1.0).apply(images, generator)


ALL = list(A.TRANSFORMS.items()) + [("domain_randomization", _all_seven)]


@pytest.mark.parametrize(("name", "fn"), ALL)
def test_determinism_and_seed_dependence(name, fn):
    images = _images()
    out1, p1 = fn(images, _gen(21))
    out2, p2 = fn(images, _gen(21))
    out3, _ = fn(images, _gen(22))
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    if isinstance(p1, A.AugmentationRecord):
        assert torch.equal(p1.applied, p2.applied)
        p1 = {f"{n}.{k}": v for n, d in p1.params.items() for k, v in d.items()}
        p2 = {f"{n}.{k}": v for n, d in p2.params.items() for k, v in d.items()}
    assert p1.keys() == p2.keys()
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


@pytest.mark.parametrize(("name", "fn"), ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_no_in_place(name, fn, dtype):
    images = _images(3, 12, 10, dtype=dtype)
    before = images.clone()
    out, _ = fn(images, _gen(23))
    assert torch.equal(images, before)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert out.data_ptr() != images.data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "fn"), ALL)
def test_cuda_images_with_cpu_generator_match_cpu(name, fn):
    images = _images(3, 12, 10)
    out_cpu, _ = fn(images, _gen(27))
    out_gpu, _ = fn(images.cuda(), _gen(27))
    assert out_gpu.device.type == "cuda" and out_gpu.dtype == images.dtype
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "fn"), ALL)
@pytest.mark.parametrize("value", [0.0, 0.3, -0.4, 1e-30])
def test_constant_images_give_finite_output(name, fn, value):
    images = torch.full((5, 1, 8, 8), value)
    out, _ = fn(images, _gen(24))
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize(("name", "fn"), ALL)
def test_single_pixel_and_empty_batches(name, fn):
    assert bool(torch.isfinite(fn(_images(3, 1, 1), _gen(25))[0]).all())
    assert fn(torch.zeros(0, 1, 5, 5), _gen(25))[0].shape == (0, 1, 5, 5)


@pytest.mark.parametrize(("name", "fn"), ALL)
def test_bad_input(name, fn):
    g = _gen(26)
    bad = [
        torch.rand(1, 8, 8),
        torch.rand(2, 3, 8, 8),
        torch.rand(2, 1, 0, 8),
        torch.zeros(2, 1, 8, 8, dtype=torch.int64),
    ]
    nan = torch.rand(2, 1, 8, 8)
    nan[1, 0, 3, 3] = float("nan")
    inf = torch.rand(2, 1, 8, 8)
    inf[0, 0, 0, 0] = float("inf")
    for images in bad + [nan, inf]:
        with pytest.raises(ValueError):
            fn(images, g)
    with pytest.raises(TypeError):
        fn(torch.rand(2, 1, 8, 8), 0)
    with pytest.raises(TypeError):
        fn(torch.rand(2, 1, 8, 8).numpy(), g)
