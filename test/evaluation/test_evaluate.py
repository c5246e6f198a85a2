"""Evaluation suite on a tiny benchmark: the table has every row, CSVs and plots are written."""

import argparse
import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from sphere_reg_ros.core import checkpoint, models
from sphere_reg_ros.core.baselines import GradientConfig
from sphere_reg_ros.core.metrics import mpd, mrpd
from sphere_reg_ros.core.registrar import RegistrarConfig
from sphere_reg_ros.core.volume import load_volume, resample
from sphere_reg_ros.evaluation.benchmark import make_benchmark, save_benchmark
from sphere_reg_ros.evaluation.evaluate import EvaluationConfig, convergence_point, evaluate
from sphere_reg_ros.evaluation.evaluate_cli import (
    add_evaluate_parser,
    add_register_parser,
    overlay_image,
    read_image,
)
from sphere_reg_ros.evaluation.xvr_adapter import XvrConfig, xvr_available

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(small_ct, tmp_path_factory):
    """An 8 mm CT written to NIfTI (so the CLI can load it) and a 3-case 16-px benchmark of it."""
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "ct8.nii.gz"
    ct8 = resample(small_ct[0], 8.0)
    nib.save(nib.Nifti1Image(ct8.data, ct8.affine), str(path))
    ct = load_volume(path)
    bm = make_benchmark(ct, None, None, n_cases=3, seed=0, resolution=16)
    save_benchmark(folder / "bm.npz", bm)
    return ct, bm, folder


def _config(**kw):
    reg = RegistrarConfig(max_iterations=3, scales=(1.0,))
    return EvaluationConfig(
        registrar=reg,
        learning_free=RegistrarConfig(max_iterations=3, scales=(1.0,), local_window=0.25),
        gradient=GradientConfig(max_iterations=3),
        xvr=XvrConfig(n_itrs=3),
        spacing_mm=8.0,
        warmup=False,
        **kw,
    )


def test_evaluate_prints_every_row_and_writes_csv_and_plots(tiny, tmp_path):
    ct, bm, _ = tiny
    methods = ["lm-intensity", "adam", "gd", "ncc-adam", "ours", "xvr", "no-such-method"]
    report = evaluate(bm, ct, methods, config=_config(), out_dir=tmp_path, progress=False)
    # `make test` installs the peers (xvr): then it must run; without it, it is listed with the hint
    ran = ["lm-intensity", "adam", "gd", "ncc-adam"] + (["xvr"] if xvr_available() else [])
    assert list(report.runs) == ran
    assert set(report.unavailable) == {"ours", "no-such-method"} | ({"xvr"} - set(ran))
    assert (
        "--model" in report.unavailable["ours"]
        and "unknown" in report.unavailable["no-such-method"]
    )
    if "xvr" not in ran:
        assert "pip install .[peers]" in report.unavailable["xvr"]
    text = report.text()
    for name in methods:
        assert name in text
    for name in report.runs:
        assert any(line.startswith(f"| {name} ") for line in report.table.splitlines())
        run = report.runs[name]
        assert len(run.results) == 3 and run.summary.n == 3 and np.all(run.run_time_s > 0)
    names = {p.name for p in report.files}
    assert {
        "summary.csv",
        "cases.csv",
        "convergence.png",
        "landscape.png",
        "table.txt",
        "reliability.png",
    } <= names
    # the trust table: one row per method, the flagged / passed / coverage columns
    assert report.trust_table in text and "Failed flagged" in report.trust_table
    for name in ran:
        assert any(line.startswith(f"| {name} ") for line in report.trust_table.splitlines())
        p = report.trust[name]
        assert len(p["passed"]) == 3 and p["passed"].dtype == bool
        ok = np.array([r.ok for r in report.runs[name].results])
        np.testing.assert_array_equal(p["passed"], ok)
    row = next(csv.DictReader(open(tmp_path / "cases.csv")))
    assert {
        "normalised_cost",
        "position_std_mm",
        "rejected_by",
        "roi_error_mm",
        "mahalanobis2",
        "mpd_mm",
        "mrpd_mm",
    } <= set(row)
    # mPD and mRPD of every case: those of its pose (docs/METRICS.md), their medians in the table
    lm_run = report.runs["lm-intensity"]
    T_est = torch.as_tensor(np.stack([r.pose for r in lm_run.results]))
    T_true = torch.as_tensor(bm.poses_true[:3])
    lms = torch.as_tensor(bm.landmarks, dtype=torch.float64)
    np.testing.assert_allclose(
        lm_run.mpd_mm, mpd(T_est, T_true, lms, bm.render_geometry.sdd).numpy(), rtol=1e-9
    )
    np.testing.assert_allclose(lm_run.mrpd_mm, mrpd(T_est, T_true, lms).numpy(), rtol=1e-9)
    assert lm_run.summary.mpd_median_mm == pytest.approx(float(np.median(lm_run.mpd_mm)))
    assert "mPD (mm)" in report.table and "mRPD (mm)" in report.table
    for p in report.files:
        assert p.stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["method"] for r in rows] == ran + [
        m for m in ["ours", "xvr", "no-such-method"] if m not in ran
    ]
    assert rows[-1]["note"].startswith("unavailable")
    assert float(rows[0]["mpd_median_mm"]) == pytest.approx(lm_run.summary.mpd_median_mm)
    assert float(rows[0]["mrpd_median_mm"]) == pytest.approx(lm_run.summary.mrpd_median_mm)
    assert len(list(csv.DictReader(open(tmp_path / "cases.csv")))) == 3 * len(ran)
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert set(curves) == set(ran) and all(len(c["mtre_mm"]) > 1 for c in curves[ran[-1]])


def test_failed_cases_count_as_failed(tiny, tmp_path):
    ct, bm, _ = tiny
    bad = bm.images.copy()
    bad[1, 0, 0] = np.nan
    from dataclasses import replace

    bm_bad = replace(bm, images=bad)
    report = evaluate(bm_bad, ct, ["lm-intensity"], config=_config(landscape=False), progress=False)
    run = report.runs["lm-intensity"]
    assert (
        run.summary.n == 3
        and np.isinf(run.mtre_mm[1])
        and np.isinf(run.mpd_mm[1])
        and np.isinf(run.mrpd_mm[1])
        and run.results[1].status.value == "invalid_input"
    )


def test_start_truth_reports_drift_and_ablation_rows_run(tiny):
    ct, bm, _ = tiny
    methods = ["lm-intensity", "lm-nomask", "lm-ls"]
    report = evaluate(
        bm, ct, methods, config=_config(landscape=False, start="truth", cases=2), progress=False
    )
    assert "AT THE TRUE POSE" in report.table and "checksum" in report.table
    for name in methods:
        run = report.runs[name]
        assert run.summary.n == 2 and np.all(np.isfinite(run.mtre_mm))
    # started at 0, not at the 5+ mm of the initial poses (without masks a shutter may pull it away)
    assert float(np.max(report.runs["lm-intensity"].mtre_mm)) < float(np.min(bm.initial_mtre_mm))
    with pytest.raises(ValueError, match="start"):
        _config(start="nowhere")


def test_convergence_point():
    m = np.array([20.0, 5.0, 1.2, 0.55, 0.5, 0.5])
    it = np.arange(6.0)
    assert convergence_point(m, it * 0.5, it) == (3.0, 1.5)
    assert convergence_point(np.array([]), np.array([]), np.array([]))[0] != 0


def _parse(argv):
    parser = argparse.ArgumentParser(prog="sphere-reg")
    sub = parser.add_subparsers(dest="command")
    add_evaluate_parser(sub)
    add_register_parser(sub)
    return parser.parse_args(argv)


def test_evaluate_command(tiny, tmp_path, capsys):
    _, _, folder = tiny
    args = _parse(
        [
            "evaluate",
            "--benchmark",
            str(folder / "bm.npz"),
            "--ct",
            str(folder / "ct8.nii.gz"),
            "--methods",
            "lm-intensity",
            "adam",
            "bogus",
            "--cases",
            "2",
            "--max-iterations",
            "2",
            "--adam-iterations",
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
    assert (
        "| Method" in out
        and "| lm-intensity" in out
        and "| adam" in out
        and "bogus: unknown" in out
    )
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "convergence.png").is_file()
    bad = _parse(["evaluate", "--benchmark", str(tmp_path / "missing.npz")])
    assert bad.func(bad) == 2


@pytest.mark.parametrize(
    "resolution, expected",
    [(32, 0), (16, 1)],
    ids=["32px-accepted-exit-0", "16px-rejected-by-a-gate-exit-1"],
)
def test_register_command_writes_pose_overlay_and_report(tiny, tmp_path, resolution, expected):
    """Exit code 0 when the pose may be used; 1 when it registered but a quality gate rejects the
    pose (at 16 px on the 8 mm CT the pose is too uncertain); the outputs are written either way."""
    ct, bm, folder = tiny
    np.save(tmp_path / "xray.npy", bm.images[0])
    (tmp_path / "geometry.json").write_text(json.dumps(bm.render_geometry.to_dict()))
    (tmp_path / "init.json").write_text(json.dumps(bm.poses_init[0].tolist()))
    args = _parse(
        [
            "register",
            "--ct",
            str(folder / "ct8.nii.gz"),
            "--image",
            str(tmp_path / "xray.npy"),
            "--geometry",
            str(tmp_path / "geometry.json"),
            "--init",
            str(tmp_path / "init.json"),
            "--resolution",
            str(resolution),
            "--spacing",
            "8",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert args.func(args) == expected
    info = json.loads((tmp_path / "out" / "pose.json").read_text())
    report = (tmp_path / "out" / "report.txt").read_text()
    if expected == 0:
        assert info["ok"] and info["status"] == "converged" and info["rejected_by"] is None
        assert "verdict: may be published" in report
    else:
        assert not info["ok"] and info["rejected_by"].startswith("rejected_")
        assert f"verdict: NOT to be used ({info['rejected_by']})" in report
    assert np.asarray(info["T_ct_from_carm_mm"]).shape == (4, 4)
    assert len(info["quaternion_xyzw"]) == 4 and len(info["translation_m"]) == 3
    assert info["translation_mm"][0] == pytest.approx(info["translation_m"][0] * 1000)
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 0
    assert f"status: {info['status']}" in report
    missing = _parse(["register", "--image", str(tmp_path / "nope.png")])
    assert missing.func(missing) == 2


def test_image_readers_and_overlay(tmp_path):
    import matplotlib.image as mpimg

    img = np.linspace(0.05, 1, 32 * 24).reshape(24, 32)
    mpimg.imsave(tmp_path / "x.png", img, cmap="gray", vmin=0, vmax=1)
    a, _ = read_image(tmp_path / "x.png")
    assert a.shape == (24, 32) and a.dtype == np.float32
    b, _ = read_image(tmp_path / "x.png", "intensity")
    assert np.isfinite(b).all() and b[0, -1] < b[0, 1]  # bright = low attenuation after the log
    rgb = overlay_image(a, a)
    assert rgb.shape == (24 * 16, 32 * 16, 3) and rgb.dtype == np.uint8
    valid = np.ones((24, 32), dtype=bool)
    valid[:6] = False  # a shutter along the top: tinted and hatched
    hatched = overlay_image(a, a, valid)
    blue = (hatched[..., 2] > 150) & (hatched[..., 0] < 50)
    assert blue[: 6 * 16].mean() > 0.1 and not blue[8 * 16 :].any()
    with pytest.raises(ValueError):
        read_image(tmp_path / "x.bmp2")


def test_learned_methods_run_from_a_checkpoint(tiny, tmp_path):
    ct, bm, _ = tiny
    torch.manual_seed(0)
    sim = models.SimilarityNet(
        models.SimilarityConfig(channels=4, stem_widths=(4, 8), model_dim=8, depth=1, heads=2)
    )
    reg = models.PoseRegressor(
        models.RegressorConfig("resnet10t", 16, 16), center_world=ct.center_world
    )
    path = checkpoint.save_checkpoint(tmp_path / "m.pt", sim, reg, bm.geometry, ct)
    eu = models.SimilarityNet(
        models.SimilarityConfig(
            embedding="euclidean", channels=4, stem_widths=(4, 8), model_dim=8, depth=1, heads=2
        )
    )
    path_eu = checkpoint.save_checkpoint(tmp_path / "eu.pt", eu, reg, bm.geometry, ct)
    methods = ["ours", "ours-regressor", "regressor", "adam", "euclidean", "hyperbolic"]
    report = evaluate(
        bm,
        ct,
        methods,
        model=str(path),
        models={"euclidean": str(path_eu)},
        config=_config(cases=2),
        out_dir=tmp_path / "out",
        progress=False,
    )
    assert list(report.runs) == ["ours", "ours-regressor", "regressor", "adam", "euclidean"]
    assert set(report.unavailable) == {"hyperbolic"}
    assert all(r.summary.n == 2 for r in report.runs.values())
    assert report.runs["regressor"].results[0].iterations == 0
    assert (tmp_path / "out" / "landscape.png").stat().st_size > 0
