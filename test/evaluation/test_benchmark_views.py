"""Benchmarks with a second C-arm view (biplane): the first view untouched, the second rendered at
the orbit offset and degraded on its own, the file format and its refusals, the CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from pinned_benchmarks import assert_matches_pinned

from sphere_reg_ros.core.drr import DrrRenderer
from sphere_reg_ros.core.sampling import PoseDistribution, split_seed
from sphere_reg_ros.core.views import orbit_offset
from sphere_reg_ros.core.volume import bone_attenuation, hu_to_attenuation
from sphere_reg_ros.evaluation.benchmark import (
    BenchmarkError,
    benchmark_checksum,
    load_benchmark,
    make_benchmark,
    save_benchmark,
)
from sphere_reg_ros.evaluation.benchmark_views import _view_seeds, render_view
from sphere_reg_ros.evaluation.cli import add_make_benchmark_parser
from sphere_reg_ros.evaluation.degrade import PARAM_NAMES, ChannelRenderer, DegradationConfig

R = 16  # registration resolution: images are rendered at 32 x 32
N = 3
ANGLE = 60.0


@pytest.fixture(scope="module")
def pair(ct8):
    """``(1-view, 2-view)`` benchmarks of the same arguments."""
    ct, labels, structures = ct8
    one = make_benchmark(ct, labels, structures, N, seed=7, resolution=R)
    two = make_benchmark(
        ct, labels, structures, N, seed=7, resolution=R, views=2, view_angle_deg=ANGLE
    )
    return one, two


def test_two_view_content_is_pinned(pair):
    """``make_benchmark(ct8, labels8, structures, 3, seed=7, resolution=16, views=2,
    view_angle_deg=60)`` is the pinned file: a fixed instrument like the 1-view benchmark (whose
    pin must not move when views are added)."""
    assert_matches_pinned(pair[1], "views2_seed7_60deg")


def test_first_view_is_the_one_view_benchmark(pair):
    one, two = pair
    assert one.views is None and one.n_views == 1 and "views" not in one.config
    assert two.n_views == 2 and two.config["views"] == {"count": 2, "angle_deg": ANGLE}
    for key in ("images", "poses_true", "poses_init", "initial_mtre_mm", "case_seeds"):
        np.testing.assert_array_equal(getattr(one, key), getattr(two, key))
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(one.degradations[name], two.degradations[name])
    assert benchmark_checksum(one) != benchmark_checksum(two)


def test_second_view_sits_at_the_orbit_offset_and_draws_on_its_own(ct8, pair):
    two = pair[1]
    sod = PoseDistribution().sod_mm
    offsets = two.view_offsets()
    np.testing.assert_array_equal(offsets[0], np.eye(4))
    np.testing.assert_allclose(offsets[1], orbit_offset(ANGLE, sod), atol=1e-12)
    assert two.views.images.shape == (N, 1, 2 * R, 2 * R)
    # each view drew its own degradations: no parameter repeats the first view's draw
    for name in ("photons", "scatter_fraction", "bone_multiplier"):
        assert not np.allclose(two.views.degradations[name][:, 0], two.degradations[name])
    assert two.views.case_seeds.shape == (N, 1)
    assert not set(two.views.case_seeds.ravel()) & set(two.case_seeds.tolist())
    # without degradations, the second view is the DRR at pose @ offset, not at the first pose
    ct, labels, structures = ct8
    clean = make_benchmark(
        ct, labels, structures, 2, 5, R, degradation=DegradationConfig.none(), views=2
    )
    drr = DrrRenderer(hu_to_attenuation(ct.data), ct.affine, clean.render_geometry)
    for i in range(2):
        view1 = torch.as_tensor(clean.poses_true[i] @ clean.view_offsets()[1])[None].float()
        at_view1 = drr(view1)[0, 0].numpy().ravel()
        at_view0 = drr(clean.true_poses()[i : i + 1].float())[0, 0].numpy().ravel()
        image = clean.case_views(i)[1].ravel()
        assert np.corrcoef(image, at_view1)[0, 1] > 0.99
        assert np.corrcoef(image, at_view0)[0, 1] < 0.9


def test_second_view_is_reproduced_from_its_stored_seed(ct8, pair):
    two = pair[1]
    assert np.array_equal(two.views.case_seeds, _view_seeds(split_seed("test", 7), N, 1))
    ct = ct8[0]
    mu = hu_to_attenuation(ct.data)

    bone = bone_attenuation(ct.data)
    renderer = ChannelRenderer(np.stack([mu - bone, bone]), ct.affine, two.render_geometry)
    i = 1
    pose = torch.as_tensor(two.poses_true[i] @ two.view_offsets()[1])[None]
    gen = torch.Generator().manual_seed(int(two.views.case_seeds[i, 0]))
    image, params = render_view(
        renderer, pose, gen, DegradationConfig(), two.render_geometry, ct.center_world
    )
    np.testing.assert_array_equal(image, two.views.images[i, 0])
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(params[name], two.views.degradations[name][i, 0])


def test_round_trip_keeps_the_views_and_a_one_view_file_has_none(pair, tmp_path):
    one, two = pair
    back = load_benchmark(save_benchmark(tmp_path / "two.npz", two))
    assert benchmark_checksum(back) == benchmark_checksum(two) and back.n_views == 2
    np.testing.assert_array_equal(back.views.images, two.views.images)
    np.testing.assert_array_equal(back.views.offsets, two.views.offsets)
    for i in range(N):
        assert all(np.array_equal(a, b) for a, b in zip(back.case_views(i), two.case_views(i)))
    save_benchmark(tmp_path / "one.npz", one)
    with np.load(tmp_path / "one.npz", allow_pickle=False) as npz:
        assert not [k for k in npz.files if "view" in k]
    assert load_benchmark(tmp_path / "one.npz").views is None


def _rewrite(src, dst, **changes):
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update({k: v for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def test_bad_view_entries_are_refused_naming_the_entry(pair, tmp_path):
    good = save_benchmark(tmp_path / "good.npz", pair[1])
    with np.load(good, allow_pickle=False) as npz:
        images, offsets = npz["images_views"], npz["view_offsets"]
    skew = offsets.copy()
    skew[0, 0, 1] += 0.1
    cases = {
        "images_views must have shape": {"images_views": images[:, :, :-1]},
        "images_views must be (N, V-1, H, W) float32": {"images_views": images.astype(np.float64)},
        "images_views contain NaN": {"images_views": np.where(images > 2, np.nan, images)},
        "view_offsets are not rigid": {"view_offsets": skew},
        "view_offsets must be finite (1, 4, 4)": {"view_offsets": offsets[:, :3]},
        "view_case_seeds must be (3, 1)": {"view_case_seeds": np.zeros((3, 2), np.int64)},
        "view_degradation.photons must have shape": {"view_degradation.photons": np.ones((3, 2))},
        "misses entries ['view_offsets']": {"view_offsets": None},
        "misses entries ['images_views'": {"images_views": None},
    }
    for j, (problem, change) in enumerate(cases.items()):
        path = _rewrite(good, tmp_path / f"bad{j}.npz", **change)
        with pytest.raises(BenchmarkError) as info:
            load_benchmark(path)
        assert str(path) in str(info.value) and problem in str(info.value), str(info.value)


def test_bad_view_settings_are_refused(ct8):
    ct, labels, structures = ct8
    for views, angle in ((0, 90.0), (2, 0.0), (2, 180.0), (2, float("nan")), (3, 90.0)):
        with pytest.raises(BenchmarkError, match="view"):
            make_benchmark(ct, labels, structures, 1, 0, R, views=views, view_angle_deg=angle)


def test_cli_makes_a_two_view_benchmark(pair, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="sphere-reg")
    add_make_benchmark_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "bm2.npz"
    common = ["--cases", "2", "--resolution", str(R), "--spacing", "8", "--no-progress"]
    args = parser.parse_args(
        ["make-benchmark", "--views", "2", "--view-angle", "45", "--out", str(out), *common]
    )
    assert args.func(args) == 0
    loaded = load_benchmark(out)
    assert loaded.n_views == 2 and loaded.config["views"]["angle_deg"] == 45.0
    summary = capsys.readouterr().out
    assert "2 views, turned by 45 degrees" in summary
    assert f"checksum {benchmark_checksum(loaded)}" in summary
    bad = parser.parse_args(
        ["make-benchmark", "--views", "2", "--view-angle", "180", "--out", str(out), *common]
    )
    assert bad.func(bad) == 2
    assert "--view-angle must be in (0, 180)" in capsys.readouterr().err


def test_harsh_family_gets_a_second_view_too(ct8, tmp_path):
    from sphere_reg_ros.evaluation.degrade_harsh import HARSH_PARAM_NAMES, HarshConfig

    ct, labels, structures = ct8
    bm = make_benchmark(ct, labels, structures, 1, 4, R, degradation=HarshConfig(), views=2)
    back = load_benchmark(save_benchmark(tmp_path / "harsh2.npz", bm))
    assert back.n_views == 2 and set(back.views.degradations) == set(HARSH_PARAM_NAMES)
    assert benchmark_checksum(back) == benchmark_checksum(bm)
