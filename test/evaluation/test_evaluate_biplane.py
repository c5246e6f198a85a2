"""``evaluate`` on a 2-view benchmark: mono rows (the first view) and -biplane rows (every view,
``Registrar.register_views``) on the same cases, with the depth / in-plane split everywhere."""

import argparse
import csv
import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from sphere_reg_ros.core import checkpoint, models
from sphere_reg_ros.core.metrics import TABLE_COLUMNS, depth_error, mrpd
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig
from sphere_reg_ros.core.volume import load_volume, resample
from sphere_reg_ros.evaluation.benchmark import make_benchmark, save_benchmark
from sphere_reg_ros.evaluation.evaluate import EvaluationConfig, evaluate
from sphere_reg_ros.evaluation.evaluate_cli import add_evaluate_parser

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LM = RegistrarConfig(max_iterations=3, scales=(1.0,), local_window=0.25)


@pytest.fixture(scope="module")
def tiny2(small_ct, tmp_path_factory):
    """An 8 mm CT written to NIfTI and a 2-case, 2-view (90°) benchmark of it, 32 px rendered."""
    folder = tmp_path_factory.mktemp("tiny2")
    path = folder / "ct8.nii.gz"
    ct8 = resample(small_ct[0], 8.0)
    nib.save(nib.Nifti1Image(ct8.data, ct8.affine), str(path))
    ct = load_volume(path)
    bm = make_benchmark(ct, None, None, n_cases=2, seed=0, resolution=16, views=2)
    save_benchmark(folder / "bm2.npz", bm)
    return ct, bm, folder


def _config(**kw):
    return EvaluationConfig(
        registrar=replace(LM, local_window=0.0),
        learning_free=LM,
        spacing_mm=8.0,
        warmup=False,
        landscape=False,
        **kw,
    )


def test_mono_and_biplane_rows_with_the_depth_split(tiny2, tmp_path):
    ct, bm, _ = tiny2
    methods = ["lm-intensity", "lm-intensity-biplane", "ours-biplane"]
    report = evaluate(bm, ct, methods, config=_config(), out_dir=tmp_path, progress=False)
    assert list(report.runs) == ["lm-intensity", "lm-intensity-biplane"]
    assert "--model" in report.unavailable["ours-biplane"]
    head = report.table.splitlines()[2]
    assert "Depth (mm)" in head and "In-plane (mm)" in head and "2 views" in report.table
    lms = torch.as_tensor(bm.landmarks, dtype=torch.float64)
    T_true = torch.as_tensor(bm.poses_true)
    for name, run in report.runs.items():
        assert any(line.startswith(f"| {name} ") for line in report.table.splitlines())
        T_est = torch.as_tensor(np.stack([r.pose for r in run.results]))
        np.testing.assert_allclose(run.depth_mm, depth_error(T_est, T_true, lms).numpy())
        np.testing.assert_allclose(run.inplane_mm, mrpd(T_est, T_true, lms).numpy())
        assert run.summary.depth_median_mm == pytest.approx(float(np.median(run.depth_mm)))
        cells = next(r for r in report.table.splitlines() if r.startswith(f"| {name} "))
        cells = [c.strip() for c in cells.strip("|").split("|")]
        assert cells[TABLE_COLUMNS.index("Depth (mm)")] != "-"
    # the biplane row registered both views: its pose is register_views' on the same case
    reg = Registrar(ct, config=replace(LM, resolution=16), spacing_mm=8.0)
    g = bm.render_geometry
    direct = reg.register_views(bm.case_views(0), [g, g], bm.view_offsets(), bm.poses_init[0])
    np.testing.assert_allclose(report.runs["lm-intensity-biplane"].results[0].pose, direct.pose)
    mono = reg.register(bm.images[0], g, bm.poses_init[0])
    np.testing.assert_allclose(report.runs["lm-intensity"].results[0].pose, mono.pose)
    assert not np.allclose(direct.pose, mono.pose)
    # CSV, JSON and the box plot carry the split
    rows = list(csv.DictReader(open(tmp_path / "cases.csv")))
    assert {"depth_mm", "inplane_mm"} <= set(rows[0]) and len(rows) == 4
    summary = {r["method"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert float(summary["lm-intensity-biplane"]["depth_median_mm"]) == pytest.approx(
        report.runs["lm-intensity-biplane"].summary.depth_median_mm
    )
    as_json = json.loads((tmp_path / "summary.json").read_text())
    assert as_json["lm-intensity"]["inplane_median_mm"] == pytest.approx(
        report.runs["lm-intensity"].summary.inplane_median_mm
    )
    assert (tmp_path / "depth_inplane.png").stat().st_size > 1000


def test_biplane_rows_need_a_benchmark_with_views(tiny2):
    ct, bm, _ = tiny2
    one = replace(bm, views=None)
    report = evaluate(one, ct, ["lm-intensity-biplane", "lm-intensity"], config=_config(cases=1))
    assert list(report.runs) == ["lm-intensity"]
    assert "--views 2" in report.unavailable["lm-intensity-biplane"]


def test_learned_biplane_rows_from_a_checkpoint(tiny2, tmp_path):
    ct, bm, _ = tiny2
    torch.manual_seed(0)
    sim = models.SimilarityNet(
        models.SimilarityConfig(channels=4, stem_widths=(4, 8), model_dim=8, depth=1, heads=2)
    )
    reg = models.PoseRegressor(
        models.RegressorConfig("resnet10t", 16, 16), center_world=ct.center_world
    )
    path = checkpoint.save_checkpoint(tmp_path / "m.pt", sim, reg, bm.geometry, ct)
    methods = ["ours", "ours-biplane", "ours-regressor-biplane"]
    report = evaluate(bm, ct, methods, model=str(path), config=_config(cases=1))
    assert list(report.runs) == methods
    assert all(np.isfinite(r.depth_mm).all() for r in report.runs.values())
    # the regressor's start (per view, the best one kept), not the benchmark's initial pose
    assert (
        "the regressor's start of view" in report.runs["ours-regressor-biplane"].results[0].message
    )


def test_evaluate_command_on_a_two_view_benchmark(tiny2, tmp_path, capsys):
    _, _, folder = tiny2
    parser = argparse.ArgumentParser(prog="sphere-reg")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "evaluate",
            "--benchmark",
            str(folder / "bm2.npz"),
            "--ct",
            str(folder / "ct8.nii.gz"),
            "--methods",
            "lm-intensity",
            "lm-intensity-biplane",
            "--cases",
            "1",
            "--max-iterations",
            "2",
            "--spacing",
            "8",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--no-landscape",
            "--no-warmup",
            "--no-model",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| lm-intensity-biplane" in out and "In-plane (mm)" in out
    assert (tmp_path / "depth_inplane.png").is_file()
