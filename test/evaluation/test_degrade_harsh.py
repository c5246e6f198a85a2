"""The second degradation family (``harsh``): determinism, file round trip, its physics, the CLI."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch
from pinned_benchmarks import assert_matches_pinned

from sphere_reg_ros.core.masks import detect_masks
from sphere_reg_ros.core.views import ap_pose, default_geometry
from sphere_reg_ros.evaluation.benchmark import (
    benchmark_checksum,
    load_benchmark,
    make_benchmark,
    save_benchmark,
)
from sphere_reg_ros.evaluation.cli import add_make_benchmark_parser, run_make_benchmark
from sphere_reg_ros.evaluation.degrade_harsh import (
    HARSH_PARAM_NAMES,
    HarshConfig,
    apply_harsh,
    draw_harsh,
    mineral_fraction,
)

R = 16


@pytest.fixture(scope="module")
def harsh(ct8):
    ct, labels, structures = ct8
    return make_benchmark(
        ct, labels, structures, 3, seed=5, resolution=R, degradation=HarshConfig()
    )


def test_harsh_benchmark_is_pinned_deterministic_and_round_trips(ct8, harsh, tmp_path):
    # make_benchmark(ct8, labels8, structures, 3, seed=5, resolution=16, degradation=HarshConfig())
    # is the pinned file: the harsh family is a fixed instrument too
    assert_matches_pinned(harsh, "harsh_seed5")
    ct, labels, structures = ct8
    again = make_benchmark(
        ct, labels, structures, 3, seed=5, resolution=R, degradation=HarshConfig()
    )
    assert benchmark_checksum(again) == benchmark_checksum(harsh)
    assert set(harsh.degradations) == set(HARSH_PARAM_NAMES)
    assert harsh.config["degradation"]["family"] == "harsh"
    loaded = load_benchmark(save_benchmark(tmp_path / "h.npz", harsh))
    assert benchmark_checksum(loaded) == benchmark_checksum(harsh)
    assert HarshConfig.from_dict(loaded.config["degradation"]) == HarshConfig()
    assert np.isfinite(harsh.images).all()


def _clean_config(**kw) -> HarshConfig:
    zero = (0.0, 0.0)
    base = HarshConfig(
        bone_gain=zero,
        response=(1e-9, 1e-9),
        vignetting=zero,
        heel=zero,
        collimator_probability=0.0,
        iris_probability=0.0,
        scatter_fraction=zero,
        psf_sigma_mm=zero,
        glare_fraction=zero,
        gain_variation=zero,
        electronic_noise=zero,
        saturation_quantile=zero,
        lead_probability=0.0,
        screw_length_mm=(15.0, 15.0),
        noise=False,
    )
    return replace(base, **kw)


def _draw(config, pose, geometry, seed=0):
    params = draw_harsh(config, torch.Generator().manual_seed(seed), pose, geometry, np.zeros(3))
    assert {k: v.shape for k, v in params.items()} == HARSH_PARAM_NAMES
    return params


def test_without_effects_the_image_is_the_line_integral():
    geometry = default_geometry(32)
    pose = ap_pose(np.zeros(3))[0].numpy()
    params = _draw(_clean_config(), pose, geometry)
    params["screws"] = np.asarray(0)
    p = torch.rand(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    out = apply_harsh(
        p, torch.ones_like(p), params, geometry, pose, torch.Generator(), 0.02, noise=False
    )
    torch.testing.assert_close(out.double(), p, atol=1e-4, rtol=1e-4)
    # bone gain adds the mineral line integral; the detector response bends dense paths down
    params["bone_gain"] = np.asarray(0.5)
    out = apply_harsh(
        p, torch.ones_like(p), params, geometry, pose, torch.Generator(), 0.02, noise=False
    )
    torch.testing.assert_close(out.double(), p + 0.5, atol=1e-4, rtol=1e-4)
    params["response"] = np.asarray(0.2)
    bent = apply_harsh(
        p, torch.zeros_like(p), params, geometry, pose, torch.Generator(), 0.02, noise=False
    )
    torch.testing.assert_close(bent.double(), -torch.expm1(-0.2 * p) / 0.2, atol=1e-4, rtol=1e-4)
    assert mineral_fraction(np.array([0.0, 100.0, 550.0, 1000.0, 2000.0])).tolist() == [
        0.0,
        0.0,
        0.5,
        1.0,
        1.0,
    ]


@pytest.mark.parametrize("shape", ["collimator", "iris"])
def test_rotated_collimators_and_irises_are_found_by_the_masks(shape):
    """The masks (core.masks) were not written for this family: they must find its collimation."""
    geometry = default_geometry(128)
    pose = ap_pose(np.zeros(3))[0].numpy()
    config = _clean_config(
        collimator_probability=float(shape == "collimator"),
        iris_probability=float(shape == "iris"),
        collimator_transmission=(0.02, 0.02),
        penumbra_mm=(4.0, 4.0),
        photons=(1e5, 1e5),
        collimator_angle_deg=45.0,
    )
    found = 0
    for seed in range(3):
        params = _draw(config, pose, geometry, seed)
        params["screws"] = np.asarray(0)
        yy, xx = torch.meshgrid(
            torch.linspace(0, 1, 128, dtype=torch.float64),
            torch.linspace(0, 1, 128, dtype=torch.float64),
            indexing="ij",
        )
        p = 1.0 + 0.8 * torch.sin(9 * xx) * torch.cos(7 * yy)  # anatomy-like texture
        image = apply_harsh(
            p, torch.zeros_like(p), params, geometry, pose, torch.Generator(), 0.02, noise=False
        )
        truth = (image.double() - p).abs() > 1.0  # where the collimator took most of the primary
        valid = detect_masks(image).valid
        if truth.any():
            found += 1
            assert float((~valid)[truth].float().mean()) > 0.97  # the shuttered pixels are masked
            assert (
                float((~valid).float().mean()) < float(truth.float().mean()) + 0.15
            )  # and not much more
    assert found >= 2


def test_cli_harsh_widens_the_initial_error(ct8, tmp_path, capsys):
    import nibabel as nib

    ct = ct8[0]
    nib.save(nib.Nifti1Image(ct.data, ct.affine), tmp_path / "ct.nii.gz")
    parser = argparse.ArgumentParser(prog="sphere-reg")
    add_make_benchmark_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "make-benchmark",
            "--ct",
            str(tmp_path / "ct.nii.gz"),
            "--cases",
            "6",
            "--out",
            str(tmp_path / "h.npz"),
            "--resolution",
            str(R),
            "--degradation",
            "harsh",
            "--no-progress",
        ]
    )
    assert run_make_benchmark(args) == 0
    assert "degradation 'harsh'" in capsys.readouterr().out
    bm = load_benchmark(tmp_path / "h.npz")
    assert bm.config["degradation"]["family"] == "harsh"
    assert bm.initial_mtre_mm.min() >= 10.0 - 1e-6 and bm.initial_mtre_mm.max() <= 35.0 + 1e-6
    args = parser.parse_args(
        [
            "make-benchmark",
            "--ct",
            str(tmp_path / "ct.nii.gz"),
            "--cases",
            "4",
            "--out",
            str(tmp_path / "w.npz"),
            "--resolution",
            str(R),
            "--init-mtre",
            "30",
            "40",
            "--no-progress",
        ]
    )
    assert run_make_benchmark(args) == 0
    wide = load_benchmark(tmp_path / "w.npz")
    assert (
        wide.initial_mtre_mm.min() >= 30.0 - 1e-6
        and wide.config["degradation"].get("family") is None
    )
