"""The demo pipeline end to end (``sphere-reg demo``): simulator, registration node and evaluator as
three processes over DDS, on a down-sampled example CT, with a few frames for speed. The full
demo (24 frames, 128 px, 2 mm CT) is ``make demo``; its figures are in the README."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def ct_6mm(ct_file_at):
    return ct_file_at(6.0)


def test_demo_registers_simulated_frames_and_writes_its_summary(ct_6mm, tmp_path, ros_env):
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "sphere_reg_ros.cli",
        "demo",
        "--ct",
        str(ct_6mm),
        "--ct-spacing-mm",
        "6",
        "--resolution",
        "64",
        "--degradation",
        "none",
        "--rate",
        "1.0",
        "--frames",
        "3",
        "--min-frames",
        "3",
        "--timeout",
        "240",
        "--out",
        str(out),
    ]
    env = dict(ros_env, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:] + (out / "registration_node.log").read_text()[-3000:]
    frame_lines = [line for line in proc.stdout.splitlines() if line.startswith("frame ")]
    assert len(frame_lines) >= 3 and all(line.rstrip().endswith("ok") for line in frame_lines), text
    assert "expectation (median mTRE < 1.0 mm over >= 3 frames): met" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_registered"] >= 3 and summary["median_mtre_mm"] < 1.0
    assert summary["expectation"]["min_frames"] == 3
    with open(out / "frames.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    assert len(rows) >= 3 and all(float(r["mtre_mm"]) < 1.0 for r in rows)
    assert (out / "summary.png").stat().st_size > 10_000
    assert list(out.glob("overlay_*.png")), (
        "the evaluator subscribes the overlay, so the node draws it"
    )
    assert os.path.getsize(out / "carm_simulator.log") > 0


def test_demo_evaluator_node_beside_simulator_and_node(ct_6mm, tmp_path, ros_env):
    """What launch/demo.launch.py starts, as three processes: carm_simulator (waits for the node's
    subscription), registration_node and the demo_evaluator node, which exits 0 with its summary."""
    out = tmp_path / "launch_like"
    env = dict(ros_env, OMP_NUM_THREADS="1")
    common = ["-p", f"ct_path:={ct_6mm}", "-p", "ct_spacing_mm:=6.0"]
    sim = [
        sys.executable,
        "-m",
        "sphere_reg_ros.ros.carm_simulator",
        "--ros-args",
        *common,
        "-p",
        "resolution:=64",
        "-p",
        "rate_hz:=1.0",
        "-p",
        "degradation:=none",
        "-p",
        "wait_for_subscribers:=1",
    ]
    node = [
        sys.executable,
        "-m",
        "sphere_reg_ros.ros.registration_node",
        "--ros-args",
        "--params-file",
        "config/register.yaml",
        *common,
        "-p",
        "tracking:=true",
        "-p",
        "default_carm_frame:=carm_optical",
        "-p",
        "max_image_age_s:=10.0",
    ]
    evaluator = [
        sys.executable,
        "-m",
        "sphere_reg_ros.ros.demo",
        "--ros-args",
        *common[:2],
        "-p",
        "frames:=2",
        "-p",
        "min_frames:=2",
        "-p",
        "timeout_s:=200.0",
        "-p",
        f"out:={out}",
    ]
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd in (sim, node)
    ]
    try:
        result = subprocess.run(
            evaluator, env=env, cwd=root, capture_output=True, text=True, timeout=300
        )
    finally:
        for p in procs:
            p.terminate()
        logs = [p.communicate(timeout=20)[0] for p in procs]
    assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-3000:] + "".join(x[-2000:] for x in logs)
    )
    assert "expectation (median mTRE < 1.0 mm over >= 2 frames): met" in result.stdout
    assert json.loads((out / "summary.json").read_text())["frames_registered"] >= 2


def test_demo_frames_of_one_and_two_views():
    """The evaluator's frames and overlay topics follow the simulator's view naming."""
    from sphere_reg_ros.ros.demo import demo_frames

    assert demo_frames([]) == ("carm_optical", "carm_truth", {"/registration_node/overlay": ""})
    assert demo_frames(["view_a", "view_b"]) == (
        "carm_optical_view_a",
        "carm_truth_view_a",
        {"/registration_node/overlay": "", "/registration_node/view_b/overlay": "_view_b"},
    )


def test_demo_parameters_of_two_views():
    """``--views 2``: the simulator and the node get the same view namespaces, the node the first
    view's frame; the relative poses are left to TF (the simulator's /tf_static)."""
    from sphere_reg_ros.cli import build_parser
    from sphere_reg_ros.ros.demo import _node_params, _sim_params

    args = build_parser().parse_args(["demo", "--views", "2", "--view-angle", "60"])
    sim, node = _sim_params(args), _node_params(args)
    assert sim["views"] == node["views"] == "[view_a, view_b]"
    assert sim["view_angle_deg"] == 60.0 and node["default_carm_frame"] == "carm_optical_view_a"
    assert "view_offsets_mm" not in node
    mono = build_parser().parse_args(["demo"])
    assert "views" not in _sim_params(mono) and "views" not in _node_params(mono)
    assert _node_params(mono)["default_carm_frame"] == "carm_optical"


@pytest.mark.ros
@pytest.mark.slow
def test_biplane_demo_registers_pairs_of_views(ct_6mm, tmp_path, ros_env):
    """``sphere-reg demo --views 2``: two views 90 deg apart, one pose per pair, the same summary
    as one view; overlays of both views."""
    out = tmp_path / "biplane"
    cmd = [sys.executable, "-m", "sphere_reg_ros.cli", "demo", "--views", "2"]
    cmd += ["--ct", str(ct_6mm), "--ct-spacing-mm", "6", "--resolution", "64"]
    cmd += ["--degradation", "none", "--rate", "1.0", "--frames", "2", "--min-frames", "2"]
    cmd += ["--timeout", "240", "--out", str(out)]
    env = dict(ros_env, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:] + (out / "registration_node.log").read_text()[-3000:]
    assert "from a 2-view C-arm (90 deg apart)" in proc.stdout
    frame_lines = [line for line in proc.stdout.splitlines() if line.startswith("frame ")]
    assert len(frame_lines) >= 2 and all(line.rstrip().endswith("ok") for line in frame_lines), text
    assert "expectation (median mTRE < 1.0 mm over >= 2 frames): met" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_registered"] >= 2 and summary["median_mtre_mm"] < 1.0
    assert summary["views"] == ["view_a", "view_b"]
    assert list(out.glob("overlay_*_view_b.png")), "the second view's overlay"
    assert [p for p in out.glob("overlay_*.png") if "view_b" not in p.name], "the first view's"
