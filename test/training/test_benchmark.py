"""The regressor benchmark runs end to end on a tiny model (the real one is a command, not a test)."""

import argparse

import torch

from sphere_reg_ros.core.checkpoint import load_checkpoint, save_checkpoint
from sphere_reg_ros.core.models import (
    PoseRegressor,
    RegressorConfig,
    SimilarityConfig,
    SimilarityNet,
)
from sphere_reg_ros.core.sampling import PoseDistribution
from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.training.benchmark import run_regressor_benchmark, synthetic_xrays
from sphere_reg_ros.training.cli import add_benchmark_parser
from sphere_reg_ros.training.dataset import TrainingScene


def test_synthetic_xrays_are_noisy_drrs(tiny_scene):
    g = torch.Generator().manual_seed(0)
    poses = tiny_scene.sample_poses(3, g)
    xr = synthetic_xrays(tiny_scene, poses, g)
    drr = tiny_scene.render(poses)
    assert xr.shape == drr.shape and torch.isfinite(xr).all()
    rel = float((xr - drr).norm() / drr.norm())
    assert 0.01 < rel < 0.5  # the same anatomy, with a physics gap


def test_regressor_benchmark_and_its_command(small_ct, tmp_path, capsys):
    ct, labels, structures = small_ct
    torch.manual_seed(0)
    scene = TrainingScene.build(ct, default_geometry(32), spacing_mm=8.0)
    reg = PoseRegressor(
        RegressorConfig("test_resnet", 32, 32), scene.center_world, PoseDistribution()
    )
    sim = SimilarityNet(SimilarityConfig(channels=4, stem_widths=(4, 8, 8), model_dim=8, heads=2))
    path = save_checkpoint(
        tmp_path / "m.pt", sim, reg, scene.geometry, ct, scene.ct, {"spacing_mm": 8.0}
    )
    res = run_regressor_benchmark(
        load_checkpoint(path), ct, labels, structures, n=4, throughput_steps=1
    )
    assert res["summary"]["n"] == 4 and len(res["mtre_mm"]) == 4
    # an untrained regressor predicts the reference pose
    assert abs(res["summary"]["median_mm"] - res["initial_mtre_median_mm"]) < 0.5
    tp = res["throughput"]
    assert tp["drrs_per_s"] > 0 and tp["regressor_samples_per_s"] > 0
    parser = argparse.ArgumentParser()
    add_benchmark_parser(parser.add_subparsers())
    bad = parser.parse_args(
        ["benchmark-train", "--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"]
    )
    assert bad.func(bad) == 2 and "none.pt: no such checkpoint file" in capsys.readouterr().err
    # the cases of a `sphere-reg make-benchmark` file
    from sphere_reg_ros.evaluation.benchmark import make_benchmark, save_benchmark
    from sphere_reg_ros.training.cli import _on_benchmark_file

    bench = make_benchmark(ct, labels, structures, n_cases=2, seed=0, resolution=32, spacing_mm=8.0)
    save_benchmark(tmp_path / "bench.npz", bench)
    res = _on_benchmark_file(load_checkpoint(path), str(tmp_path / "bench.npz"), "cpu", False)
    assert res["cases"] == 2 and len(res["mtre_mm"]) == 2
