"""DeepFluoro and Ljubljana readers on files written in their layouts (test/datasets/conftest.py):
reading, the conversion to T_ct_from_carm checked against the datasets' own projection, the
180° flag, registration from the true and a perturbed pose, and bad files."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from h5_layouts import (
    K_RAW,
    LJ_SPACING,
    LPS,
    RAW,
    dsa_values,
    project_raw,
    raw_image,
    true_pose,
)

from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.datasets import DatasetError, load_projection, load_specimen
from sphere_reg_ros.datasets.camera import dataset_camera
from sphere_reg_ros.datasets.images import DEEPFLUORO_CROP

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mtre(pose, true, points) -> float:
    as_t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731
    return float(mtre(as_t(pose)[None], as_t(true)[None], as_t(points)))


def _project(projection, points) -> np.ndarray:
    T = np.linalg.inv(projection.pose)
    return projection.geometry.project(points @ T[:3, :3].T + T[:3, 3])


def test_deepfluoro_specimen_reads_ct_labels_landmarks(deepfluoro, scene):
    path, _ = deepfluoro
    s = load_specimen("deepfluoro", path, 1)
    assert (s.key, s.projection_names, s.n_projections) == ("17-1882", ("000", "001", "002"), 3)
    assert np.array_equal(s.ct.data, scene.ct.data) and np.allclose(s.ct.affine, scene.ct.affine)
    assert np.array_equal(s.labels.data, scene.labels.data.astype(np.uint8))
    assert s.structures[1] == scene.structures[1]
    assert s.landmark_names == ("L0", "L1", "L2", "L3")
    assert np.allclose(s.landmarks, scene.points)


def test_deepfluoro_projection_pose_geometry_and_image(deepfluoro):
    path, poses = deepfluoro
    p = load_projection(load_specimen("deepfluoro", path, 1), 0)
    assert p.image.shape == (DEEPFLUORO_CROP, DEEPFLUORO_CROP) and p.image.dtype == np.float32
    g = p.geometry
    assert g.sdd == pytest.approx(5257.73 * 0.194) and g.fx == pytest.approx(5257.73)
    # principal point: K's, less the 50-pixel crop, then mirrored across the columns
    assert (g.cx, g.cy) == pytest.approx((DEEPFLUORO_CROP - 1 - (770.3 - 50), 760.8 - 50))
    assert np.allclose(p.pose, poses[0], atol=1e-9)
    assert abs(np.linalg.det(p.pose[:3, :3]) - 1.0) < 1e-12
    assert 0.0 < float(np.median(p.image)) < 20.0  # −log(I / 65487): line integrals


def test_deepfluoro_landmarks_project_onto_the_stored_2d_landmarks(deepfluoro, scene):
    """Our pose and intrinsics put every 3-D landmark on the 2-D position the file stores
    (computed with the raw K and E·P⁻¹ only), for the flagged and unflagged readings."""
    path, _ = deepfluoro
    s = load_specimen("deepfluoro", path, 1)
    for i in range(3):
        p = load_projection(s, i)
        stored = np.stack([p.landmarks_2d[n] for n in s.landmark_names])
        assert np.abs(_project(p, s.landmarks) - stored).max() < 1e-6


def test_deepfluoro_written_images_obey_the_datasets_projection(deepfluoro, scene):
    """Check of the test files themselves: each ball's shadow in the stored (raw) image sits
    where the raw K and E·P⁻¹ project its centre. Within 15 px (3 mm on the detector): the
    6 mm CT's shadows are that coarse (one lies 1.3 render pixels off in our own frame too),
    while a mirrored row or column would put them 320 px or more away."""
    path, poses = deepfluoro
    with h5py.File(path, "r") as f:
        stored = f["17-1882/projections/000/image/pixels"][()]
        P = f["17-1882/projections/000/gt-poses/cam-to-pelvis-vol"][()]
        E = f["proj-params/extrinsic"][()]
    K_crop = K_RAW - np.array([[0, 0, 50], [0, 0, 50], [0, 0, 0]])
    camera = dataset_camera(K_crop, DEEPFLUORO_CROP, DEEPFLUORO_CROP, 0.194, 0.194, False, where="")
    balls = np.log(raw_image(scene.plain, camera, poses[0])) - np.log(stored)  # the balls alone
    expected = project_raw(K_RAW, E @ np.linalg.inv(P), scene.points @ LPS[:3, :3])
    for u, v in expected:
        rows, cols = np.ogrid[:RAW, :RAW]
        near = np.where((cols - u) ** 2 + (rows - v) ** 2 < 150**2, np.clip(balls, 0, None), 0.0)
        assert near.sum() > 0
        cy, cx = ndi.center_of_mass(near)
        assert np.hypot(cx - u, cy - v) < 15.0


def test_deepfluoro_rot180_flag_turns_image_pose_and_principal_point(deepfluoro):
    path, _ = deepfluoro
    s = load_specimen("deepfluoro", path, 1)
    plain, turned = load_projection(s, 0), load_projection(s, 1)
    assert (plain.flags, turned.flags) == ({"rot-180-for-up": False}, {"rot-180-for-up": True})
    assert np.array_equal(turned.image, plain.image[::-1, ::-1])
    assert np.allclose(turned.pose, plain.pose @ np.diag([-1.0, -1.0, 1.0, 1.0]), atol=1e-9)
    n = DEEPFLUORO_CROP - 1
    assert (turned.geometry.cx, turned.geometry.cy) == pytest.approx(
        (n - plain.geometry.cx, n - plain.geometry.cy)
    )


@pytest.mark.slow
@pytest.mark.parametrize("index", [1, 2])
def test_deepfluoro_registration_from_true_and_perturbed_pose(deepfluoro, scene, index):
    path, _ = deepfluoro
    s = load_specimen("deepfluoro", path, 1)
    p = load_projection(s, index)
    stay = scene.registrar.register(p.image, p.geometry, p.pose.copy())
    assert _mtre(stay.pose, p.pose, s.landmarks) < 1.0
    start = (
        true_pose(scene, [3.0, -2.0, 5.0, 0.03, 0.02, -0.02])
        @ np.linalg.inv(true_pose(scene, [0.0] * 6))
        @ p.pose
    )
    assert _mtre(start, p.pose, s.landmarks) > 3.0
    found = scene.registrar.register(p.image, p.geometry, start)
    assert _mtre(found.pose, p.pose, s.landmarks) < 1.0


def test_ljubljana_reads_volume_fiducials_and_per_image_intrinsics(ljubljana, scene):
    path, poses = ljubljana
    s = load_specimen("ljubljana", path, 1)
    assert s.key == "subject01" and s.projection_names == ("ap", "lat") and s.labels is None
    assert np.allclose(s.ct.affine, scene.ct.affine) and np.allclose(s.landmarks, scene.points)
    v = dsa_values(scene.ct.data)
    assert np.array_equal(s.ct.data, np.where(v >= 1000.0, v - 1000.0, -1000.0))
    ap, lat = load_projection(s, 0), load_projection(s, 1)
    assert ap.image.shape == (160, 200) and lat.image.shape == (180, 150)
    assert (ap.geometry.fx, lat.geometry.fx) == pytest.approx(
        (1020.0 / LJ_SPACING, 1122.0 / LJ_SPACING)
    )
    assert (ap.geometry.cx, ap.geometry.cy) == pytest.approx((199 - 101.3, 77.9))
    for p, true in zip((ap, lat), poses):
        assert np.allclose(p.pose, true, atol=1e-9)
        assert float(p.image.min()) == pytest.approx(0.0, abs=1e-6)  # background subtracted


@pytest.mark.parametrize("index", [0, 1])
def test_ljubljana_registration_from_true_and_perturbed_pose(ljubljana, index):
    path, _ = ljubljana
    s = load_specimen("ljubljana", path, 1)
    p = load_projection(s, index)
    from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig

    reg = Registrar(s.ct, config=RegistrarConfig(resolution=32, scales=(0.5, 1.0)), spacing_mm=6.0)
    stay = reg.register(p.image, p.geometry, p.pose.copy())
    assert _mtre(stay.pose, p.pose, s.landmarks) < 1.0
    shift = np.eye(4)
    shift[:3, 3] = [2.5, -2.0, 2.0]
    found = reg.register(p.image, p.geometry, shift @ p.pose)
    assert _mtre(found.pose, p.pose, s.landmarks) < 1.0


def test_missing_file_says_where_the_data_come_from(tmp_path):
    with pytest.raises(DatasetError, match="doi:10.7281/T1/IFSXNV.*never downloads"):
        load_specimen("deepfluoro", tmp_path / "ipcai_2020_full_res_data.h5", 1)
    with pytest.raises(DatasetError, match="lit.fe.uni-lj.si.*--data"):
        load_specimen("ljubljana", tmp_path / "ljubljana.h5", 1)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_specimen("other", tmp_path / "x.h5", 1)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        load_specimen("ljubljana", tmp_path / "junk.h5", 1)


def _broken(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__delitem__("17-1882/vol/origin"), "17-1882/vol/origin: missing entry"),
        (lambda f: f.__delitem__("17-1882/vol-landmarks"), "17-1882/vol-landmarks: missing entry"),
        (
            lambda f: (
                f.__delitem__("17-1882/vol/dir-mat"),
                f.create_dataset("17-1882/vol/dir-mat", data=np.eye(2)),
            ),
            r"17-1882/vol/dir-mat: expected shape \(3, 3\), got \(2, 2\)",
        ),
    ],
)
def test_bad_deepfluoro_specimen_names_the_key(deepfluoro, tmp_path, edit, message):
    bad = _broken(deepfluoro[0], tmp_path / "bad.h5", edit)
    with pytest.raises(DatasetError, match=message):
        load_specimen("deepfluoro", bad, 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__delitem__("proj-params/intrinsic"), "proj-params/intrinsic: missing entry"),
        (
            lambda f: f["17-1882/projections/001/gt-poses/cam-to-pelvis-vol"].__setitem__(
                (0, 0), 2.0
            ),
            "001/gt-poses/cam-to-pelvis-vol: not a rigid transform",
        ),
        (
            lambda f: (
                f.__delitem__("17-1882/projections/001/image/pixels"),
                f.create_dataset("17-1882/projections/001/image/pixels", data=np.ones((20, 30))),
            ),
            rf"001/image/pixels: expected shape \({RAW}, {RAW}\), got \(20, 30\)",
        ),
    ],
)
def test_bad_deepfluoro_projection_names_the_key(deepfluoro, tmp_path, edit, message):
    s = load_specimen("deepfluoro", _broken(deepfluoro[0], tmp_path / "bad.h5", edit), 1)
    with pytest.raises(DatasetError, match=message):
        load_projection(s, 1)


def test_bad_ljubljana_files_name_the_key(ljubljana, tmp_path):
    bad = _broken(ljubljana[0], tmp_path / "a.h5", lambda f: f.__delitem__("subject01/points"))
    with pytest.raises(DatasetError, match="subject01/points: missing entry"):
        load_specimen("ljubljana", bad, 1)
    s = load_specimen(
        "ljubljana",
        _broken(
            ljubljana[0], tmp_path / "b.h5", lambda f: f.__delitem__("subject01/proj-lat/extrinsic")
        ),
        1,
    )
    with pytest.raises(DatasetError, match="subject01/proj-lat/extrinsic: missing entry"):
        load_projection(s, 1)
    with pytest.raises(DatasetError, match="patient must be 1..10"):
        load_specimen("ljubljana", ljubljana[0], 11)
    with pytest.raises(DatasetError, match="specimen must be 1..6"):
        load_specimen("deepfluoro", ljubljana[0], 0)


def test_datasets_import_without_ros_and_only_core():
    """ROS-free like core, and importing only core (docs/ARCHITECTURE.md, Layers)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import sphere_reg_ros.datasets as datasets

    blocker = (
        "import importlib.abc, sys\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('rclpy', 'cv_bridge', 'tf2_ros', 'rosidl_runtime_py'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, B())\n"
        "import sphere_reg_ros.datasets, sphere_reg_ros.datasets.camera, sphere_reg_ros.datasets.images\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for path in Path(datasets.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith(
                    ("sphere_reg_ros.evaluation", "sphere_reg_ros.training", "sphere_reg_ros.ros")
                ), f"{path.name} imports {node.module}"
