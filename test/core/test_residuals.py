"""Learning-free residuals: the intensity model fitted in closed form (bone weight, curve)."""

import pytest
import torch

from sphere_reg_ros.core.residuals import (
    BONE_WEIGHT_BOUNDS,
    IntensityResiduals,
    fit_bone_weight,
    fit_intensity,
    local_standardize,
)


def _images(seed=0, shape=(2, 1, 40, 48)):
    g = torch.Generator().manual_seed(seed)
    soft = torch.nn.functional.avg_pool2d(
        torch.rand(shape, generator=g, dtype=torch.float64), 5, 1, 2
    )
    bone = torch.relu(
        torch.nn.functional.avg_pool2d(torch.rand(shape, generator=g, dtype=torch.float64), 3, 1, 1)
        - 0.5
    )
    return soft + bone, bone


def test_fit_recovers_a_different_bone_weight_under_a_smooth_ramp():
    whole, bone = _images()
    ramp = torch.linspace(0, 3, whole.shape[-1], dtype=torch.float64)  # scatter / heel: smooth
    fixed = 0.7 * (whole + 1.5 * bone) + ramp  # bone 2.5 times as dense as the CT says
    fitted = fit_intensity(torch.cat([whole, bone], 1), fixed, degree=1, window=9, ridge=1e-9)
    want = local_standardize(whole + 1.5 * bone, 9)
    # (the box means at the borders are one-sided, so the ramp leaks in there a little)
    assert float((local_standardize(fitted, 9) - want).abs().mean()) < 0.005
    # without the bone channel the same fit cannot explain the X-ray
    alone = fit_intensity(whole, fixed, degree=1, window=9)
    assert (local_standardize(alone, 9) - want).abs().mean() > 0.05


def test_bone_weight_is_recovered_and_bounded():
    whole, bone = _images(4)
    ramp = torch.linspace(0, 3, whole.shape[-1], dtype=torch.float64)
    moving = torch.cat([whole, bone], 1)
    fitted, m = fit_bone_weight(moving, 0.7 * (whole + 1.5 * bone), window=9)
    torch.testing.assert_close(m, torch.full_like(m, 2.5))
    torch.testing.assert_close(fitted, whole + 1.5 * bone)
    _, m = fit_bone_weight(
        moving, 0.7 * (whole + 1.5 * bone) + ramp, window=9
    )  # the ramp leaks at the borders
    torch.testing.assert_close(m, torch.full_like(m, 2.5), atol=0.15, rtol=0)
    # an X-ray that no bone weight explains (inverted, or bone-only) stays within the bounds
    for fixed in (-whole, 5.0 * bone):
        _, m = fit_bone_weight(moving, fixed, window=9)
        assert bool(((m >= BONE_WEIGHT_BOUNDS[0]) & (m <= BONE_WEIGHT_BOUNDS[1])).all())
    _, m = fit_bone_weight(moving, 5.0 * bone, window=9)
    torch.testing.assert_close(m, torch.full_like(m, BONE_WEIGHT_BOUNDS[1]))


def test_fit_curve_undoes_a_monotone_intensity_curve():
    whole, _ = _images(1)
    fixed = torch.log1p(2.0 * whole)  # beam-hardening-like curve
    lin = fit_intensity(whole, fixed, degree=1, ridge=1e-9)
    cubic = fit_intensity(whole, fixed, degree=3, ridge=1e-9)

    def misfit(x):  # per image: the fit leaves each image's offset free
        def z(y):
            return (y - y.mean(dim=(-2, -1), keepdim=True)) / y.std(dim=(-2, -1), keepdim=True)

        return float((z(x) - z(fixed)).abs().mean())

    assert misfit(cubic) < 0.1 * misfit(lin)


def test_zero_or_masked_regressors_give_finite_fits():
    whole, bone = _images(2)
    mask = torch.ones_like(whole, dtype=torch.bool)
    mask[..., :10, :] = False
    out = fit_intensity(
        torch.cat([whole, torch.zeros_like(bone)], 1), whole, degree=2, mask=mask, window=7
    )
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="degree"):
        fit_intensity(whole, whole, degree=0)


def test_images_below_the_fit_height_compare_as_without_a_fit():
    whole, bone = _images(3)
    fixed = whole + bone
    mask = torch.ones_like(whole, dtype=torch.bool)
    mask[..., -6:] = False
    plain = IntensityResiduals(gradients=True, local_window=0.2)
    fit = IntensityResiduals(gradients=True, local_window=0.2, materials=True, fit_min_height=41)
    moving = torch.cat([whole, bone], 1)
    r_plain = plain.residuals(plain.embed(whole, mask=mask), plain.embed(fixed, mask=mask))
    r_fit = fit.residuals(fit.embed(moving, mask=mask), fit.embed(fixed, mask=mask))
    torch.testing.assert_close(r_fit, r_plain)
    fit.fit_min_height = 40  # now the fit runs: bone weighed as the X-ray shows it
    r_on = fit.residuals(fit.embed(moving, mask=mask), fit.embed(fixed, mask=mask))
    assert r_on.square().sum() < 0.5 * r_plain.square().sum()
    with pytest.raises(ValueError, match="images must be"):
        plain.embed(moving)
