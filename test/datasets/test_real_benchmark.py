"""make-benchmark --dataset on the written DeepFluoro and Ljubljana files: the benchmark file,
its CT, the common detector, the initial poses as the synthetic protocol, evaluate on it; and
train --dataset (its CT loading)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from sphere_reg_ros.cli import main
from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.core.volume import load_volume
from sphere_reg_ros.datasets import load_projection, load_specimen
from sphere_reg_ros.datasets.images import resample_to_geometry
from sphere_reg_ros.evaluation.benchmark import benchmark_checksum, load_benchmark
from sphere_reg_ros.evaluation.cases import ct_fingerprint
from sphere_reg_ros.evaluation.real_benchmark import common_geometry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def deepfluoro_benchmark(deepfluoro, tmp_path_factory):
    out = tmp_path_factory.mktemp("bm") / "df.npz"
    args = ["make-benchmark", "--dataset", "deepfluoro", "--data", str(deepfluoro[0])]
    assert main([*args, "--out", str(out), "--resolution", "32", "--no-progress"]) == 0
    return out


def test_deepfluoro_benchmark_file(deepfluoro_benchmark, deepfluoro):
    bm = load_benchmark(deepfluoro_benchmark)
    s = load_specimen("deepfluoro", deepfluoro[0], 1)
    assert bm.n_cases == 3 and bm.images.shape == (3, 64, 64) and bm.degradations == {}
    assert bm.config["dataset"] == "deepfluoro" and bm.config["projections"] == [
        "000",
        "001",
        "002",
    ]
    assert [f["rot-180-for-up"] for f in bm.config["flags"]] == [False, True, False]
    assert np.allclose(bm.poses_true, np.stack([load_projection(s, i).pose for i in range(3)]))
    assert np.allclose(bm.landmarks, s.landmarks) and bm.landmark_names == s.landmark_names
    ct = load_volume(bm.ct_source)  # the CT written beside it, named by the benchmark
    assert bm.ct_source.endswith("df_ct.nii.gz") and ct_fingerprint(ct) == bm.ct_fingerprint
    assert np.array_equal(ct.data, s.ct.data) and np.allclose(ct.affine, s.ct.affine, atol=1e-4)
    # initial poses as the synthetic protocol: mTRE drawn in [5, 25] mm on the landmarks
    init = mtre(
        torch.as_tensor(bm.poses_init),
        torch.as_tensor(bm.poses_true),
        torch.as_tensor(bm.landmarks),
    )
    init = init.numpy()
    assert np.allclose(init, bm.initial_mtre_mm) and np.all((init >= 5) & (init <= 25))
    # the same command gives the same content
    assert benchmark_checksum(bm) == benchmark_checksum(load_benchmark(deepfluoro_benchmark))


def test_benchmark_images_are_the_xrays_on_the_common_detector(deepfluoro_benchmark, deepfluoro):
    """Each stored image is its X-ray resampled onto the benchmark's detector: the 2-D
    landmarks land where the benchmark's geometry projects the 3-D ones with the true pose."""
    bm = load_benchmark(deepfluoro_benchmark)
    s = load_specimen("deepfluoro", deepfluoro[0], 1)
    for i in range(3):
        p = load_projection(s, i)
        T = np.linalg.inv(bm.poses_true[i])
        cam = s.landmarks @ T[:3, :3].T + T[:3, 3]
        on_xray, on_bm = p.geometry.project(cam), bm.render_geometry.project(cam)
        expected = (on_xray - [p.geometry.cx, p.geometry.cy]) * [
            bm.render_geometry.fx / p.geometry.fx,
            bm.render_geometry.fy / p.geometry.fy,
        ] + [bm.render_geometry.cx, bm.render_geometry.cy]
        assert np.abs(on_bm - expected).max() < 1e-6
        direct = resample_to_geometry(p.image, p.geometry, bm.render_geometry)
        assert np.abs(direct - bm.images[i]).max() < 0.05 * float(np.ptp(direct))


def test_common_geometry_is_inside_every_field_of_view():
    a = CarmGeometry(1020.0, 100, 120, 2.0, 2.0, x0=8.0)
    b = CarmGeometry(900.0, 90, 90, 2.5, 2.0, y0=-6.0)
    g = common_geometry([a, b], 16).resized(32)
    image = np.random.default_rng(0).random((100, 120)).astype(np.float32)
    out = resample_to_geometry(image, a, g)  # raises when a target pixel leaves the source
    assert out.shape == (32, 32) and resample_to_geometry(image[:90, :90], b, g).shape == (32, 32)
    ones = resample_to_geometry(np.ones((100, 120), np.float32), a, g)
    assert np.allclose(ones, 1.0, atol=1e-5)  # area weights sum to one


@pytest.mark.slow
def test_evaluate_runs_unchanged_on_a_real_benchmark(deepfluoro_benchmark, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--benchmark", str(deepfluoro_benchmark), "--methods", "lm-intensity"]
    assert main([*args, "--no-model", "--spacing", "6", "--out", str(out), "--no-progress"]) == 0
    with open(next(out.glob("*cases*.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3


def test_ljubljana_benchmark_puts_both_views_on_one_detector(ljubljana, tmp_path):
    out = tmp_path / "lj.npz"
    args = ["make-benchmark", "--dataset", "ljubljana", "--data", str(ljubljana[0])]
    assert (
        main([*args, "--out", str(out), "--resolution", "16", "--no-progress", "--seed", "3"]) == 0
    )
    bm = load_benchmark(out)
    assert bm.n_cases == 2 and bm.config["projections"] == ["ap", "lat"] and bm.seed == 3
    assert len(bm.config["source_geometries"]) == 2
    assert np.allclose(bm.poses_true, ljubljana[1], atol=1e-9)


def test_bad_real_benchmark_commands_exit_2(tmp_path, capsys, deepfluoro):
    missing = tmp_path / "ipcai_2020_full_res_data.h5"
    base = ["make-benchmark", "--out", str(tmp_path / "x.npz")]
    assert main([*base, "--dataset", "deepfluoro", "--data", str(missing)]) == 2
    assert "doi:10.7281/T1/IFSXNV" in capsys.readouterr().err
    assert main([*base, "--dataset", "deepfluoro"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main([*base, "--data", str(deepfluoro[0])]) == 2
    assert "--dataset" in capsys.readouterr().err
    bad = [*base, "--dataset", "deepfluoro", "--data", str(deepfluoro[0]), "--ct", "ct.nii"]
    assert main(bad) == 2 and "drop --ct" in capsys.readouterr().err
    bad = [*base, "--dataset", "deepfluoro", "--data", str(deepfluoro[0]), "--specimen", "9"]
    assert main(bad) == 2 and "specimen must be 1..6" in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_a_dataset_specimen_reads_its_ct(deepfluoro, tmp_path):
    """``train --dataset``: the checkpoint is the specimen's (CT fingerprint, structures)."""
    from sphere_reg_ros.core.checkpoint import load_checkpoint

    out = tmp_path / "specimen.pt"
    args = ["train", "--dataset", "deepfluoro", "--data", str(deepfluoro[0]), "--specimen", "1"]
    args += ["--out", str(out), "--max-steps", "1", "--device", "cpu", "--quiet", "--threads", "1"]
    args += ["--spacing-mm", "6", "--no-content", "--no-physics", "--batch-size", "2"]
    assert main(args) == 0
    s = load_specimen("deepfluoro", deepfluoro[0], 1)
    bundle = load_checkpoint(out, ct=s.ct)  # refuses another CT (fingerprint)
    assert bundle.ct_fingerprint["source"]["sha256"] == ct_fingerprint(s.ct)["sha256"]


def test_train_dataset_options_refused_with_the_reason(deepfluoro, tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "x.pt"), "--max-steps", "1"]
    assert main([*base, "--dataset", "ljubljana"]) == 2
    assert "--dataset needs --data" in capsys.readouterr().err
    assert main([*base, "--data", str(deepfluoro[0])]) == 2
    assert "--data needs --dataset" in capsys.readouterr().err
    assert main([*base, "--dataset", "ljubljana", "--data", str(tmp_path / "ljubljana.h5")]) == 2
    assert "lit.fe.uni-lj.si" in capsys.readouterr().err
