"""``sphere-reg benchmark-node --views N``: the node's latency with several C-arm views against one
(:mod:`sphere_reg_ros.ros.benchmark_biplane`). The options, the rendered views, the ratio lines,
and a short real run: two registration nodes in subprocesses (one view, then two) on a coarse CT
(6 mm, 32 px registration, 64 px images), two frames per mode. No mocks."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sphere_reg_ros.cli import build_parser


def _opts(**changes) -> argparse.Namespace:
    from sphere_reg_ros.ros.benchmark_latency import _DEFAULTS

    return argparse.Namespace(**{**_DEFAULTS, **changes})


def test_cli_and_module_take_the_view_options():
    from sphere_reg_ros.ros.benchmark_latency import add_arguments

    args = build_parser().parse_args(["benchmark-node", "--views", "2", "--view-angle", "45"])
    assert (args.views, args.view_angle) == (2, 45.0)
    default = build_parser().parse_args(["benchmark-node"])
    assert (default.views, default.view_angle) == (1, 90.0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--views", "2"]).views == 2


def test_bad_view_options_are_refused_with_the_reason():
    from sphere_reg_ros.ros.benchmark_biplane import check_view_options

    check_view_options(_opts(views=2))
    with pytest.raises(ValueError, match="the soak takes one view"):
        check_view_options(_opts(views=2, soak_minutes=1.0))
    with pytest.raises(ValueError, match="--views must be 1 to 4"):
        check_view_options(_opts(views=0))
    with pytest.raises(ValueError, match="--view-angle must be finite"):
        check_view_options(_opts(views=2, view_angle=float("nan")))


def test_views_are_rendered_at_the_orbit_offsets():
    """Each view's image is the rendering of ``pose @ orbit_offset(k * angle)``; one view: as before."""
    from sphere_reg_ros.core.views import orbit_offset
    from sphere_reg_ros.ros.benchmark_biplane import render_views

    seen = []

    def render(poses):  # records what it was asked to render, returns one marker image per pose
        seen.append([p.clone() for p in poses])
        return [np.full((2, 2), float(len(seen))) for _ in poses]

    poses = [torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64) * 1.0]
    poses[1][:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    mono = render_views(render, poses, _opts(views=1))
    assert len(mono) == 2 and isinstance(mono[0], np.ndarray)
    seen.clear()
    pairs = render_views(render, poses, _opts(views=2, view_angle=30.0))
    assert [len(p) for p in pairs] == [2, 2]
    assert [float(img[0, 0]) for img in pairs[1]] == [1.0, 2.0]  # view 0, then view 1
    for pose, turned in zip(poses, seen[1]):
        np.testing.assert_allclose(turned.numpy(), pose.numpy() @ orbit_offset(30.0), atol=1e-12)


def test_offsets_parameter_holds_the_relative_poses():
    from sphere_reg_ros.core.pose_formats import translation_quaternion_to_pose
    from sphere_reg_ros.ros.benchmark_node import _offsets_param
    from sphere_reg_ros.ros.carm_simulator import view_offsets

    offsets = view_offsets(3, 40.0)
    numbers = np.array(json.loads(_offsets_param(offsets)))
    assert numbers.shape == (14,)
    for k, row in enumerate(numbers.reshape(2, 7), start=1):
        T = translation_quaternion_to_pose(
            torch.as_tensor(row[:3]), torch.as_tensor(row[3:]), unit="mm"
        )
        np.testing.assert_allclose(T.numpy(), offsets[k], atol=1e-9)


def test_ratio_lines_compare_with_the_one_view_row(capsys):
    from sphere_reg_ros.ros.benchmark_biplane import report_ratios

    mono = {"device": "cpu", "views": 1, "cold": {"median_s": 1.0}, "tracking": {"median_s": 0.5}}
    two = {"device": "cpu", "views": 2, "cold": {"median_s": 1.5}, "tracking": {"median_s": 1.25}}
    report_ratios([mono, two])
    out = capsys.readouterr().out
    assert "[cpu] 2 views / one view: cold 1.50x (1.500 / 1.000 s), target <= 2x: met" in out
    assert "tracking 2.50x (1.250 / 0.500 s), target <= 2x: NOT met" in out
    assert two["cold_ratio_to_mono"] == 1.5 and two["tracking_ratio_to_mono"] == 2.5


@pytest.mark.ros
@pytest.mark.slow
def test_short_two_view_benchmark_prints_both_rows_and_the_ratio(tmp_path, ros_env):
    out = tmp_path / "views.json"
    cmd = [sys.executable, "-m", "sphere_reg_ros.ros.benchmark_latency", "--devices", "cpu"]
    cmd += ["--views", "2", "--frames", "2", "--memory-frames", "0", "--spacing", "6"]
    cmd += ["--resolution", "32", "--image-size", "64", "--timeout", "120", "--json", str(out)]
    env = dict(ros_env, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "\n[cpu] CT" in proc.stdout and "\n[cpu, 2 views] CT" in proc.stdout, text[-3000:]
    assert "[cpu] 2 views / one view: cold " in proc.stdout, text[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["views"] for r in results] == [1, 2]
    for r in results:
        for mode in ("cold", "tracking"):
            assert r[mode]["frames"] == 2 and r[mode]["failed"] == 0, (mode, r)
            assert 0 < r[mode]["median_s"] < 60
        assert r["cold_translation_error_mm_median"] < 2.0
    two = results[1]
    assert two["cold_ratio_to_mono"] == pytest.approx(
        two["cold"]["median_s"] / results[0]["cold"]["median_s"]
    )
