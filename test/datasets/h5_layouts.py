"""Small DeepFluoro and Ljubljana HDF5 files written by the tests, in the datasets' own layouts.

The CT is the example CT at 6 mm with four dense balls (the landmarks). Each X-ray is rendered by
the project's renderer at a known ``T_ct_from_carm`` on the optical geometry the loader derives,
then stored as the dataset stores it: mirrored back, padded to the raw detector, as detector
intensities, with the dataset's pose (``cam-to-pelvis-vol`` / ``extrinsic``) and, for DeepFluoro,
the 2-D landmarks projected with the raw ``K`` and ``E · P⁻¹`` alone (not with our conversion).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
import pytest
import torch

from sphere_reg_ros.core.geometry import se3_exp
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig
from sphere_reg_ros.core.views import ap_pose, orbit_offset
from sphere_reg_ros.core.volume import Volume, resample
from sphere_reg_ros.datasets.camera import dataset_camera
from sphere_reg_ros.datasets.images import DEEPFLUORO_CROP, DEEPFLUORO_I0

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS
RAW = 1536  # DeepFluoro's detector, pixels
K_RAW = np.array([[-5257.73, 0.0, 770.3], [0.0, -5257.73, 760.8], [0.0, 0.0, 1.0]])
SPACING = 0.194  # mm per pixel
RENDER = DEEPFLUORO_CROP // 4  # rendered at 359 px, then each pixel stored as 4 x 4
LJ_SPACING = 1.6  # Ljubljana test detectors: mm per pixel


@dataclass
class Scene:
    ct: Volume
    labels: Volume
    structures: dict
    points: np.ndarray  # (K, 3) RAS
    registrar: Registrar
    plain: Registrar  # the same CT without the balls


def _with_balls(
    ct: Volume, points: np.ndarray, radius_mm: float = 8.0
) -> tuple[Volume, np.ndarray]:
    """The CT with dense balls (3000 HU) about ``points``, and the balls' voxel centroids (the
    landmarks: on a coarse grid a ball's centre is not the point it was drawn about)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in ct.shape], indexing="ij"), -1)
    world = ct.voxel_to_world(ijk)
    data = ct.data.copy()
    centres = []
    for p in points:
        inside = np.linalg.norm(world - p, axis=-1) < radius_mm
        data[inside] = 3000.0
        centres.append(world[inside].mean(axis=0))
    return Volume(data, ct.affine, "ct with balls"), np.asarray(centres)


@pytest.fixture(scope="session")
def scene(example_ct) -> Scene:
    ct, labels, structures = example_ct
    ct6, labels6 = resample(ct, 6.0), resample(labels, 6.0, order=0)
    c = ct6.center_world
    points = c + np.array(
        [[40.0, 10.0, 50.0], [-50.0, 0.0, 30.0], [20.0, -10.0, -60.0], [-30, 20, -20]]
    )
    balls, points = _with_balls(ct6, points)
    reg = Registrar(balls, config=RegistrarConfig(resolution=64, scales=(0.5, 1.0)), spacing_mm=6.0)
    plain = Registrar(ct6, config=reg.config, spacing_mm=6.0)
    names = {int(k): str(v) for k, v in structures.items()}
    return Scene(balls, labels6, names, points, reg, plain)


def true_pose(scene: Scene, xi: list[float]) -> np.ndarray:
    """``T_ct_from_carm``: a left increment ``(v mm, w rad)`` of the AP view of the CT's centre."""
    ap = ap_pose(scene.ct.center_world)
    return (se3_exp(torch.tensor(xi, dtype=torch.float64)[None]) @ ap)[0].numpy()


def raw_image(registrar: Registrar, camera, pose: np.ndarray) -> np.ndarray:
    """What the detector stored: intensities ``I0·exp(−L)``, un-mirrored/un-turned, 1536²."""
    line = registrar.render(pose, camera.geometry.resized(RENDER))
    line = np.kron(line, np.ones((4, 4), dtype=np.float32))  # same field of view, 1436²
    stored = camera.image(line)  # the mapping is its own inverse
    pad = (RAW - DEEPFLUORO_CROP) // 2
    return (DEEPFLUORO_I0 * np.exp(-np.pad(stored, pad, mode="edge"))).astype(np.float32)


def project_raw(K: np.ndarray, world_to_cam: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
    """The dataset's own projection: ``K · (E · P⁻¹ · p)``, dehomogenised ``(K, 2)``."""
    cam = points_lps @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def _put(g: h5py.Group, key: str, value) -> None:
    g.create_dataset(key, data=np.asarray(value))


def _write_deepfluoro_volume(g: h5py.Group, scene: Scene) -> None:
    lps = LPS @ scene.ct.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    _put(g, "vol/pixels", np.swapaxes(scene.ct.data, 0, 2))
    _put(g, "vol/dir-mat", lps[:3, :3] / spacing)
    _put(g, "vol/origin", lps[:3, 3:])
    _put(g, "vol/spacing", spacing[:, None])
    _put(g, "vol-seg/image/pixels", np.swapaxes(scene.labels.data, 0, 2).astype(np.uint8))
    for i in (1, 2, 3):
        _put(g, f"vol-seg/labels-def/{i}", scene.structures.get(i, f"s{i}").encode())
    for i, p in enumerate(scene.points):
        _put(g, f"vol-landmarks/L{i}", (LPS[:3, :3] @ p)[:, None])


def write_deepfluoro(path, scene: Scene, poses: list[np.ndarray], flags: list[bool]) -> None:
    """Specimen 1 (``17-1882``) with one projection per pose; ``flags[i]``: rot-180-for-up.
    ``poses`` are the true poses of the *unflagged* reading; a flagged projection stores the
    same raw data (the flag only says the image is shown turned)."""
    E = np.eye(4)
    E[:3, :3] = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    E[:3, 3] = [5.0, -3.0, 700.0]
    crop = (RAW - DEEPFLUORO_CROP) // 2
    K_crop = K_RAW - np.array([[0, 0, crop], [0, 0, crop], [0, 0, 0]])
    camera = dataset_camera(
        K_crop, DEEPFLUORO_CROP, DEEPFLUORO_CROP, SPACING, SPACING, False, where=""
    )
    with h5py.File(path, "w") as f:
        _put(f, "proj-params/intrinsic", K_RAW)
        _put(f, "proj-params/extrinsic", E)
        for key, value in (("num-rows", RAW), ("num-cols", RAW)):
            _put(f, f"proj-params/{key}", value)
        _put(f, "proj-params/pixel-row-spacing", SPACING)
        _put(f, "proj-params/pixel-col-spacing", SPACING)
        spec = f.create_group("17-1882")
        _write_deepfluoro_volume(spec, scene)
        for i, (pose, flag) in enumerate(zip(poses, flags)):
            # T = LPS · P · E⁻¹ · T_C_from_optical, so P = LPS · T · T_C_from_optical⁻¹ · E
            P = LPS @ pose @ np.linalg.inv(camera.T_C_from_optical) @ E
            g = spec.create_group(f"projections/{i:03d}")
            g.create_dataset(
                "image/pixels", data=raw_image(scene.registrar, camera, pose), compression="gzip"
            )
            _put(g, "gt-poses/cam-to-pelvis-vol", P)
            _put(g, "rot-180-for-up", np.uint8(flag))
            uv = project_raw(K_RAW, E @ np.linalg.inv(P), scene.points @ LPS[:3, :3])
            for k, p in enumerate(uv):
                _put(g, f"gt-landmarks/L{k}", p[:, None])


def dsa_values(hu: np.ndarray) -> np.ndarray:
    """3-D DSA-like intensities: ``HU + 1000`` in bone (HU >= 300), 0 elsewhere (float32)."""
    return np.where(hu >= 300.0, hu + 1000.0, 0.0).astype(np.float32)


def write_ljubljana(path, scene: Scene, poses: list[np.ndarray], K: list[np.ndarray], size) -> None:
    """Patient 1 with views ``ap`` and ``lat`` at ``poses`` with intrinsics ``K`` (each
    ``rows × cols`` = ``size[i]``); the volume is :func:`dsa_values` of the CT (bone only, so
    that most detector pixels see background, as in a subtraction image)."""
    sp = np.abs(np.diag(scene.ct.affine)[:3])
    assert np.allclose(scene.ct.affine[:3, :3], np.diag([-sp[0], sp[1], sp[2]]))
    with h5py.File(path, "w") as f:
        g = f.create_group("subject01")
        _put(g, "volume/pixels", dsa_values(scene.ct.data))
        _put(g, "volume/spacing", sp)
        _put(g, "volume/origin", scene.ct.affine[:3, 3] - [sp[0] * (scene.ct.shape[0] - 1), 0, 0])
        _put(g, "points", scene.points)
        v = dsa_values(scene.ct.data)
        hu = np.where(v >= 1000.0, v - 1000.0, -1000.0)  # what the loader renders
        reg = Registrar(Volume(hu, scene.ct.affine), config=scene.registrar.config, spacing_mm=6.0)
        for view, pose, k, (rows, cols) in zip(("ap", "lat"), poses, K, size):
            camera = dataset_camera(k, rows, cols, LJ_SPACING, LJ_SPACING, False, where="")
            line = reg.render(pose, camera.geometry)
            # background 0.5 everywhere, attenuating parts darker by at most 0.5 (diffdrrdata's clip range)
            stored = 0.5 - 0.5 * camera.image(line) / max(float(line.max()), 1e-6)
            _put(g, f"proj-{view}/pixels", stored.astype(np.float32))
            _put(g, f"proj-{view}/intrinsic", k)
            _put(
                g,
                f"proj-{view}/extrinsic",
                np.linalg.inv(pose @ np.linalg.inv(camera.T_C_from_optical)),
            )
            _put(g, f"proj-{view}/col-spacing", LJ_SPACING)
            _put(g, f"proj-{view}/row-spacing", LJ_SPACING)


XI_A = [4.0, -3.0, 10.0, 0.03, -0.02, 0.05]
XI_B = [-6.0, 5.0, -15.0, -0.04, 0.06, -0.03]


@pytest.fixture(scope="session")
def deepfluoro(tmp_path_factory, scene):
    """The file (projections 0 and 1: the same raw X-ray, 1 flagged rot-180-for-up; 2 another)
    and the true poses of the unflagged readings."""
    path = tmp_path_factory.mktemp("deepfluoro") / "ipcai_2020_full_res_data.h5"
    poses = [true_pose(scene, XI_A), true_pose(scene, XI_A), true_pose(scene, XI_B)]
    write_deepfluoro(path, scene, poses, [False, True, False])
    return path, poses


@pytest.fixture(scope="session")
def ljubljana(tmp_path_factory, scene):
    path = tmp_path_factory.mktemp("ljubljana") / "ljubljana.h5"
    ap = true_pose(scene, [3.0, 2.0, -20.0, 0.02, 0.01, -0.03])
    poses = [ap, ap @ orbit_offset(90.0)]
    f = 1020.0 / LJ_SPACING
    K = [
        np.array([[-f, 0.0, 101.3], [0.0, -f, 77.9], [0.0, 0.0, 1.0]]),  # signs as DeepFluoro's
        np.array([[1.1 * f, 0.0, 70.2], [0.0, 1.1 * f, 92.5], [0.0, 0.0, 1.0]]),  # other signs
    ]
    write_ljubljana(path, scene, poses, K, [(160, 200), (180, 150)])
    return path, poses
