"""Synthetic benchmark: determinism, seeds, file format, geometry, pose ranges, degradations, CLI."""

from __future__ import annotations

import argparse
import math
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from pinned_benchmarks import assert_matches_pinned

from sphere_reg_ros.core.drr import MU_WATER_PER_MM, DrrRenderer
from sphere_reg_ros.core.geometry import se3_inverse, so3_log
from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.core.sampling import PoseDistribution, split_seed
from sphere_reg_ros.core.views import ap_pose, default_geometry
from sphere_reg_ros.core.volume import BONE_HU_THRESHOLD, hu_to_attenuation
from sphere_reg_ros.evaluation.benchmark import (
    FORMAT_VERSION,
    BenchmarkError,
    InitialErrorConfig,
    benchmark_checksum,
    default_landmarks,
    load_benchmark,
    make_benchmark,
    perturb_poses,
    save_benchmark,
)
from sphere_reg_ros.evaluation.cli import add_make_benchmark_parser, run_make_benchmark
from sphere_reg_ros.evaluation.degrade import (
    PARAM_NAMES,
    ChannelRenderer,
    DegradationConfig,
    apply_degradations,
    draw_degradations,
    metal_line_integral,
)

R = 16  # registration resolution: images are rendered at 32 x 32
N = 3


@pytest.fixture(scope="module")
def bm(ct8):
    ct, labels, structures = ct8
    return make_benchmark(ct, labels, structures, N, seed=7, resolution=R)


def _same(a, b) -> bool:
    return (
        np.array_equal(a.images, b.images)
        and np.array_equal(a.poses_true, b.poses_true)
        and np.array_equal(a.poses_init, b.poses_init)
        and all(np.array_equal(a.degradations[k], b.degradations[k]) for k in PARAM_NAMES)
    )


def test_benchmark_content_is_pinned(bm, ct8):
    """``make_benchmark(ct8, labels8, structures, 3, seed=7, resolution=16)`` is the pinned file
    (tolerances of other CPUs' last bits: test/evaluation/pinned_benchmarks.py); another seed is
    not (the pin can fail)."""
    assert_matches_pinned(bm, "benchmark_seed7")
    ct, labels, structures = ct8
    other = make_benchmark(ct, labels, structures, N, seed=8, resolution=R)
    with pytest.raises(AssertionError):
        assert_matches_pinned(other, "benchmark_seed7")


def test_generation_is_deterministic_for_a_seed(ct8, bm):
    ct, labels, structures = ct8
    again = make_benchmark(ct, labels, structures, N, seed=7, resolution=R)
    assert _same(bm, again)
    assert np.array_equal(bm.case_seeds, again.case_seeds) and len(set(bm.case_seeds.tolist())) == N


def test_different_seeds_and_splits_differ(ct8, bm):
    ct, labels, structures = ct8
    other = make_benchmark(ct, labels, structures, N, seed=8, resolution=R)
    val = make_benchmark(ct, labels, structures, N, seed=7, resolution=R, split="val")
    for b in (other, val):
        assert not np.allclose(b.poses_true, bm.poses_true)
        assert np.abs(b.images - bm.images).mean() > 0.05
        assert not np.array_equal(b.case_seeds, bm.case_seeds)
    assert bm.config["split_seed"] == split_seed("test", 7) and val.config[
        "split_seed"
    ] == split_seed("val", 7)


def test_split_seeds_are_disjoint():
    seeds = {s: {split_seed(s, n) for n in range(2000)} for s in ("test", "val", "train")}
    assert all(len(v) == 2000 for v in seeds.values())
    assert not (seeds["test"] & seeds["val"]) and not (seeds["test"] & seeds["train"])
    assert not (seeds["val"] & seeds["train"])


def test_save_load_round_trip(bm, tmp_path):
    path = save_benchmark(tmp_path / "bm.npz", bm)
    assert path == tmp_path / "bm.npz" and not (tmp_path / "bm.npz.partial").exists()
    back = load_benchmark(path)
    assert _same(bm, back)
    assert back.images.dtype == np.float32 and back.resolution == R
    assert back.geometry == bm.geometry and back.render_geometry == bm.render_geometry
    np.testing.assert_array_equal(back.landmarks, bm.landmarks)
    np.testing.assert_array_equal(back.initial_mtre_mm, bm.initial_mtre_mm)
    assert back.landmark_names == bm.landmark_names and back.ct_source == bm.ct_source
    assert back.ct_fingerprint == bm.ct_fingerprint and back.config == bm.config
    assert (back.seed, back.split) == (7, "test")
    with np.load(path, allow_pickle=False) as npz:  # plain arrays, no pickles
        assert int(npz["format_version"]) == FORMAT_VERSION


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def test_bad_files_raise_benchmark_error_naming_the_file(bm, tmp_path):
    good = save_benchmark(tmp_path / "good.npz", bm)
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a benchmark" * 10)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, images=np.array([{"a": 1}], dtype=object))
    corrupt = tmp_path / "corrupt.npz"  # zip intact, one member's bytes damaged
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(corrupt, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(
                item,
                data[:60] + b"\xff" * 40 + data[100:] if item.filename == "images.npy" else data,
            )
    cases = {
        tmp_path / "missing.npz": "no such file",
        truncated: "not a readable benchmark",
        garbage: "not a readable benchmark",
        pickled: "not a readable benchmark",
        corrupt: "",
        _rewrite(
            good, tmp_path / "v2.npz", format_version=np.array(FORMAT_VERSION + 1)
        ): "unsupported format version",
        _rewrite(
            good, tmp_path / "other.npz", format=np.array("something else")
        ): "not a sphere_reg_ros",
        _rewrite(good, tmp_path / "noposes.npz", poses_true=None): "missing entries",
        _rewrite(
            good, tmp_path / "size.npz", images=bm.images[:, :R, :R].copy()
        ): "twice the resolution",
        _rewrite(good, tmp_path / "nan.npz", images=np.full_like(bm.images, np.nan)): "NaN",
        _rewrite(good, tmp_path / "pose.npz", poses_init=2.0 * bm.poses_init): "not rigid",
        _rewrite(good, tmp_path / "geom.npz", geometry_json=np.array('{"sdd": -1}')): "geometry",
        _rewrite(
            good, tmp_path / "deg.npz", **{"degradation.photons": np.ones(N + 1)}
        ): "degradation.photons",
    }
    for path, problem in cases.items():
        with pytest.raises(BenchmarkError) as info:
            load_benchmark(path)
        assert str(path) in str(info.value) and problem in str(info.value), str(info.value)


def test_images_are_rendered_at_twice_the_resolution_with_consistent_geometry(ct8):
    ct, labels, structures = ct8
    clean = make_benchmark(
        ct, labels, structures, 2, seed=3, resolution=R, degradation=DegradationConfig.none()
    )
    assert clean.images.shape == (2, 2 * R, 2 * R) and clean.images.dtype == np.float32
    assert clean.render_geometry == clean.geometry.resized(2 * R)
    assert (clean.geometry.height, clean.geometry.width) == (R, R)
    # 2x2-pooled fine images ≈ DRRs rendered directly at R on `geometry` (same field of view)
    pooled = clean.registration_images()
    assert pooled.shape == (2, 1, R, R)
    direct = DrrRenderer(hu_to_attenuation(ct.data), ct.affine, clean.geometry)(
        clean.true_poses().float()
    )
    err = (pooled - direct).abs()
    assert float(err.mean()) < 0.03 * float(direct.mean()) and float(err.max()) < 0.25 * float(
        direct.max()
    )
    corr = np.corrcoef(pooled.flatten().numpy(), direct.flatten().numpy())[0, 1]
    assert corr > 0.99


def test_channel_renderer_equals_rendering_with_bone_emphasis(ct8):
    ct = ct8[0]
    geometry = default_geometry(24)
    mu = hu_to_attenuation(ct.data)
    bone = np.where(ct.data > BONE_HU_THRESHOLD, mu, 0.0).astype(np.float32)
    channels = ChannelRenderer(np.stack([mu - bone, bone]), ct.affine, geometry)
    pose = ap_pose(ct.center_world)
    soft, hard = channels(pose)
    for m in (1.0, 1.8):
        ref = DrrRenderer(hu_to_attenuation(ct.data, bone_multiplier=m), ct.affine, geometry)(
            pose.float()
        )[0, 0]
        torch.testing.assert_close(soft + m * hard, ref, rtol=1e-4, atol=1e-4)
    assert float(hard.max()) > 0.05  # the spine is in view


def test_configs_validate_and_round_trip(ct8, bm):
    config = DegradationConfig.from_dict(bm.config["degradation"])
    assert config == DegradationConfig()
    for bad in (
        {"photons": (0.0, 1.0)},
        {"beam_hardening": (0.2, 0.1)},
        {"metal_probability": 1.5},
        {"collimation_inset": (0.1, 0.6)},
    ):
        with pytest.raises(ValueError):
            DegradationConfig(**bad)
    with pytest.raises(ValueError):
        InitialErrorConfig(mtre_mm=(10.0, 5.0))
    with pytest.raises(BenchmarkError, match="n_cases"):
        make_benchmark(ct8[0], ct8[1], ct8[2], 0, seed=0, resolution=R)


def test_true_poses_lie_in_the_documented_ranges(ct8, bm):
    ct = ct8[0]
    dist = PoseDistribution()
    expected = dist.sample(N, ct.center_world, torch.Generator().manual_seed(split_seed("test", 7)))
    np.testing.assert_array_equal(bm.poses_true, expected.numpy())
    T = torch.from_numpy(bm.poses_true)
    ref = dist.reference(ct.center_world)
    rot = so3_log(T[:, :3, :3] @ ref[:, :3, :3].transpose(-1, -2))  # G's rotation vector
    assert float(rot.abs().max()) <= math.radians(15.0) + 1e-9
    c = torch.as_tensor(ct.center_world)
    R_g = T[:, :3, :3] @ ref[:, :3, :3].transpose(-1, -2)
    G = torch.eye(4, dtype=torch.float64).repeat(N, 1, 1)
    G[:, :3, :3], G[:, :3, 3] = R_g, c - R_g @ c
    shift = (se3_inverse(ref) @ se3_inverse(G) @ T)[:, :3, 3]
    assert (
        float(shift[:, :2].abs().max()) <= 30.0 + 1e-6
        and float(shift[:, 2].abs().max()) <= 60.0 + 1e-6
    )


def test_landmarks_lie_inside_the_ct(ct8, bm):
    ct, labels, _ = ct8
    upper = np.asarray(ct.shape) - 0.5
    for points in (bm.landmarks, default_landmarks(ct)[1]):
        ijk = ct.world_to_index(points)
        assert np.all(ijk >= -0.5) and np.all(ijk <= upper)
    assert len(bm.landmark_names) == len(bm.landmarks) >= 10 and "vertebrae_T8" in bm.landmark_names
    names, grid = default_landmarks(ct)  # no label map: a grid inside the body
    inside = ct.data[tuple(np.round(ct.world_to_index(grid)).astype(int).T)] > -300
    assert len(names) == len(grid) >= 4 and inside.all()


def test_degradations_change_the_image_and_keep_it_finite(ct8, bm):
    ct, labels, structures = ct8
    clean = make_benchmark(
        ct, labels, structures, N, seed=7, resolution=R, degradation=DegradationConfig.none()
    )
    assert np.all(np.isfinite(bm.images))
    assert np.abs(bm.images - clean.images).mean(axis=(1, 2)).min() > 0.05
    # each stage alone, noise-free, on one rendered case
    geometry, pose = bm.render_geometry, bm.poses_true[0]
    mu = hu_to_attenuation(ct.data)
    bone = np.where(ct.data > BONE_HU_THRESHOLD, mu, 0.0).astype(np.float32)
    renderer = ChannelRenderer(np.stack([mu - bone, bone]), ct.affine, geometry)
    soft, hard = renderer(torch.from_numpy(bm.poses_true[:1]))
    none = draw_degradations(
        DegradationConfig.none(), torch.Generator().manual_seed(0), pose, geometry, ct.center_world
    )
    base = apply_degradations(
        soft, hard, none, geometry, pose, torch.Generator(), MU_WATER_PER_MM, noise=False
    )
    torch.testing.assert_close(base, (soft + hard).float(), rtol=1e-5, atol=1e-5)  # identity
    drawn = {k: bm.degradations[k][0] for k in PARAM_NAMES}
    drawn["psf_sigma_mm"] = np.asarray(
        12.0
    )  # one 12 mm pixel: the drawn 1-4 mm barely blur at 32 x 32
    metal = {**drawn, "metal": np.asarray(True)}
    for name in (
        "bone_multiplier",
        "beam_hardening",
        "heel_strength",
        "scatter_fraction",
        "psf_sigma_mm",
    ):
        out = apply_degradations(
            soft,
            hard,
            {**none, name: drawn[name], "scatter_sigma_mm": drawn["scatter_sigma_mm"]},
            geometry,
            pose,
            torch.Generator(),
            MU_WATER_PER_MM,
            noise=False,
        )
        assert torch.isfinite(out).all() and float((out - base).abs().max()) > 1e-3, name
    coll = apply_degradations(
        soft,
        hard,
        {
            **none,
            "collimation": np.asarray(True),
            "collimation_insets": np.full(4, 0.1),
            "collimator_transmission": np.asarray(0.01),
        },
        geometry,
        pose,
        torch.Generator(),
        MU_WATER_PER_MM,
        noise=False,
    )
    assert float((coll - base)[0, 0]) == pytest.approx(
        -math.log(0.01), rel=1e-4
    )  # shutter: 1 % passes
    assert float((coll - base)[16, 16]) == pytest.approx(0.0, abs=1e-5)
    wire = metal_line_integral(
        geometry, pose, metal["metal_endpoints_world"], 2.0, 20.0, MU_WATER_PER_MM
    )
    assert float(wire.max()) > 0.1 and float(wire.min()) == 0.0
    with_wire = apply_degradations(
        soft,
        hard,
        {
            **none,
            "metal": np.asarray(True),
            "metal_radius_mm": np.asarray(2.0),
            "metal_mu": np.asarray(20.0),
            "metal_endpoints_world": metal["metal_endpoints_world"],
        },
        geometry,
        pose,
        torch.Generator(),
        MU_WATER_PER_MM,
        noise=False,
    )
    torch.testing.assert_close(with_wire - base, wire.float(), rtol=1e-4, atol=1e-4)
    gen = torch.Generator().manual_seed(1)
    noisy = apply_degradations(
        soft,
        hard,
        {**none, "photons": np.asarray(3e3), "electronic_noise": np.asarray(3.0)},
        geometry,
        pose,
        gen,
        MU_WATER_PER_MM,
        noise=True,
    )
    assert torch.isfinite(noisy).all() and 0.01 < float((noisy - base).std()) < 1.0
    assert float(noisy.max()) <= math.log(3e3) - math.log(0.5) + 1e-4  # counts clamped at 0.5


def test_initial_error_gives_mtre_in_the_documented_range(bm):
    np.testing.assert_allclose(
        bm.initial_mtre_mm,
        mtre(bm.initial_poses(), bm.true_poses(), torch.from_numpy(bm.landmarks)).numpy(),
    )
    poses = bm.true_poses().repeat(100, 1, 1)  # 300 draws
    init, err = perturb_poses(
        poses, bm.landmarks, InitialErrorConfig(), torch.Generator().manual_seed(0)
    )
    err = mtre(init, poses, torch.from_numpy(bm.landmarks))
    assert float(err.min()) >= 5.0 - 1e-6 and float(err.max()) <= 25.0 + 1e-6
    assert float(err.min()) < 6.0 and float(err.max()) > 24.0  # spans the range
    assert float(err.median()) == pytest.approx(15.0, abs=2.0)


def test_cli_writes_a_loadable_file(ct8, tmp_path, capsys):
    ct, labels, _ = ct8
    nib.save(nib.Nifti1Image(ct.data, ct.affine), tmp_path / "ct.nii.gz")
    nib.save(
        nib.Nifti1Image(labels.data.astype(np.int16), labels.affine), tmp_path / "labels.nii.gz"
    )
    parser = argparse.ArgumentParser(prog="sphere-reg")
    add_make_benchmark_parser(parser.add_subparsers(dest="command"))
    out, png = tmp_path / "bm.npz", tmp_path / "preview.png"
    args = parser.parse_args(
        [
            "make-benchmark",
            "--ct",
            str(tmp_path / "ct.nii.gz"),
            "--labels",
            str(tmp_path / "labels.nii.gz"),
            "--cases",
            "3",
            "--seed",
            "2",
            "--out",
            str(out),
            "--resolution",
            str(R),
            "--preview",
            str(png),
            "--no-progress",
        ]
    )
    assert args.func is run_make_benchmark
    assert run_make_benchmark(args) == 0
    loaded = load_benchmark(out)
    assert loaded.n_cases == 3 and loaded.images.shape == (3, 2 * R, 2 * R) and loaded.seed == 2
    assert loaded.ct_source == str(tmp_path / "ct.nii.gz") and loaded.ct_fingerprint[
        "shape"
    ] == list(ct.shape)
    assert png.stat().st_size > 1000
    summary = capsys.readouterr().out
    assert "3 cases" in summary and "wrote" in summary and "s/case" in summary
    assert f"checksum {benchmark_checksum(loaded)}" in summary
    # --degradation none: matched physics, recorded in the file's config
    clean = parser.parse_args(
        [
            "make-benchmark",
            "--ct",
            str(tmp_path / "ct.nii.gz"),
            "--cases",
            "2",
            "--seed",
            "2",
            "--out",
            str(tmp_path / "clean.npz"),
            "--resolution",
            str(R),
            "--degradation",
            "none",
            "--no-progress",
        ]
    )
    assert run_make_benchmark(clean) == 0
    assert "degradation 'none'" in capsys.readouterr().out
    clean_bm = load_benchmark(tmp_path / "clean.npz")
    assert clean_bm.config["degradation"] == DegradationConfig.none().to_dict()
    assert loaded.config["degradation"] == DegradationConfig().to_dict()
    bad = parser.parse_args(
        ["make-benchmark", "--ct", str(tmp_path / "nope.nii.gz"), "--out", str(out)]
    )
    assert run_make_benchmark(bad) == 2
    assert "nope.nii.gz" in capsys.readouterr().err
