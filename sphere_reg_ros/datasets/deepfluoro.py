"""DeepFluoro (``ipcai_2020_full_res_data.h5``): six cadaveric pelvis specimens, 366 X-rays.

Reads the keys diffdrrdata 0.0.7 reads, with h5py, and converts them to the project's frames
(docs/REAL_DATA.md):

* ``proj-params/``: ``intrinsic`` K (3, 3), ``extrinsic`` E (4, 4, C-arm world → camera),
  ``num-rows``, ``num-cols``, ``pixel-row-spacing``, ``pixel-col-spacing`` (shared by every X-ray).
* ``<specimen>/vol/``: ``pixels`` (Z, Y, X) HU, ``dir-mat`` (3, 3), ``origin`` (3, 1), in LPS mm;
  ``spacing`` (3, 1) when present (1 mm, as diffdrrdata assumes, when absent).
  ``vol-seg/image/pixels`` the segmentation on the same grid, ``vol-seg/labels-def/<id>`` names;
  ``vol-landmarks/<name>`` (3, 1) LPS mm.
* ``<specimen>/projections/<NNN>/``: ``image/pixels`` (rows, cols) detector intensities,
  ``gt-poses/cam-to-pelvis-vol`` P (4, 4, C-arm world → pelvis volume LPS), ``rot-180-for-up``,
  ``gt-landmarks/<name>`` (2, 1) stored pixel positions when present.

A CT point ``p`` (LPS) is at ``E · P⁻¹ · p`` in the camera frame ``C`` of
:mod:`.camera`, so ``T_ct_from_carm = LPS→RAS · P · E⁻¹ · T_C_from_optical``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sphere_reg_ros.core.volume import Volume, VolumeError

from .camera import dataset_camera, orthonormalised
from .hdf5 import DatasetError, Entries, Projection, Specimen, open_dataset_file
from .images import DEEPFLUORO_CROP, centre_crop, deepfluoro_log_image

__all__ = ["DEEPFLUORO_SPECIMENS", "load_deepfluoro_specimen", "load_deepfluoro_projection"]

#: Specimen groups in diffdrrdata's numbering (specimen 1 is ``17-1882``, ...).
DEEPFLUORO_SPECIMENS = ("17-1882", "18-1109", "18-0725", "18-2799", "18-2800", "17-1905")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _specimen_key(number: int) -> str:
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, np.integer))
        or not (1 <= number <= len(DEEPFLUORO_SPECIMENS))
    ):
        raise DatasetError(f"DeepFluoro specimen must be 1..6, got {number!r}")
    return DEEPFLUORO_SPECIMENS[int(number) - 1]


def _volume(e: Entries, key: str, pixels_key: str, allow_constant: bool) -> Volume:
    """The volume at ``pixels_key`` on the grid of ``<key>/vol``, affine in RAS mm."""
    pixels = e.array(pixels_key)
    if pixels.ndim != 3:
        raise e.fail(pixels_key, f"expected a 3-D (Z, Y, X) array, got shape {pixels.shape}")
    direction = e.array(f"{key}/vol/dir-mat", (3, 3)).astype(np.float64)
    origin = e.vector(f"{key}/vol/origin", 3)
    spacing = e.vector(f"{key}/vol/spacing", 3) if e.has(f"{key}/vol/spacing") else np.ones(3)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    data = np.ascontiguousarray(np.swapaxes(pixels, 0, 2), dtype=np.float32)  # (X, Y, Z)
    if not allow_constant and data.min() == data.max():
        raise e.fail(pixels_key, "constant volume")
    try:
        return Volume(data, _LPS_TO_RAS @ lps, f"{e.path}:{pixels_key}")
    except VolumeError as exc:
        raise e.fail(f"{key}/vol", str(exc)) from exc


def load_deepfluoro_specimen(path: str | Path, number: int) -> Specimen:
    """Specimen ``number`` (1..6): CT, segmentation and its names, the 3-D landmarks (RAS), and
    the names of its projections. Raises DatasetError (naming the key) for a bad file."""
    key = _specimen_key(number)
    with open_dataset_file(path, "deepfluoro") as f:
        e = Entries(f, path)
        e.group(key)
        ct = _volume(e, key, f"{key}/vol/pixels", allow_constant=False)
        labels = _volume(e, key, f"{key}/vol-seg/image/pixels", allow_constant=True)
        if labels.shape != ct.shape:
            raise e.fail(f"{key}/vol-seg/image/pixels", f"shape {labels.shape} != CT {ct.shape}")
        defs = e.group(f"{key}/vol-seg/labels-def")
        structures = {int(k): e.text(f"{key}/vol-seg/labels-def/{k}") for k in defs if k.isdigit()}
        names = tuple(e.group(f"{key}/vol-landmarks"))
        if not names:
            raise e.fail(f"{key}/vol-landmarks", "no landmarks")
        lps = np.stack([e.vector(f"{key}/vol-landmarks/{n}", 3) for n in names])
        projections = tuple(sorted(e.group(f"{key}/projections")))
        if not projections:
            raise e.fail(f"{key}/projections", "no projections")
    points = lps * _LPS_TO_RAS.diagonal()[:3]
    return Specimen(
        "deepfluoro",
        int(number),
        key,
        ct,
        labels,
        structures,
        names,
        points,
        projections,
        str(path),
    )


def load_deepfluoro_projection(path: str | Path, specimen: Specimen, index: int) -> Projection:
    """Projection ``index`` (0-based, in ``specimen.projection_names``) of ``specimen``: image
    cropped, blurred and log-transformed, turned when flagged and mirrored (:mod:`.camera`); its
    intrinsics; its true ``T_ct_from_carm``; its 2-D landmarks in the converted image."""
    if not 0 <= index < specimen.n_projections:
        raise DatasetError(
            f"{specimen.key}: projection index {index} outside 0..{specimen.n_projections - 1}"
        )
    name = specimen.projection_names[index]
    base = f"{specimen.key}/projections/{name}"
    with open_dataset_file(path, "deepfluoro") as f:
        e = Entries(f, path)
        K = e.array("proj-params/intrinsic", (3, 3)).astype(np.float64)
        E = e.rigid("proj-params/extrinsic")
        rows, cols = int(e.scalar("proj-params/num-rows")), int(e.scalar("proj-params/num-cols"))
        col_sp = e.scalar("proj-params/pixel-col-spacing", positive=True)
        row_sp = e.scalar("proj-params/pixel-row-spacing", positive=True)
        if min(rows, cols) <= DEEPFLUORO_CROP:
            raise e.fail(
                "proj-params/num-rows", f"detector {rows}x{cols} is not larger than the crop"
            )
        pixels = e.array(f"{base}/image/pixels", (rows, cols))
        P = e.rigid(f"{base}/gt-poses/cam-to-pelvis-vol")
        rot180 = bool(e.scalar(f"{base}/rot-180-for-up"))
        uv = {}
        if e.has(f"{base}/gt-landmarks"):
            for n in e.group(f"{base}/gt-landmarks"):
                uv[n] = e.vector(f"{base}/gt-landmarks/{n}", 2)
    cropped, top, left = centre_crop(pixels, DEEPFLUORO_CROP, DEEPFLUORO_CROP)
    K_crop = K.copy()
    K_crop[0, 2] -= left
    K_crop[1, 2] -= top
    camera = dataset_camera(
        K_crop,
        DEEPFLUORO_CROP,
        DEEPFLUORO_CROP,
        col_sp,
        row_sp,
        rot180,
        where=f"{path}: proj-params",
    )
    image = camera.image(deepfluoro_log_image(cropped, f"{path}: {base}/image/pixels"))
    pose = orthonormalised(_LPS_TO_RAS @ P @ np.linalg.inv(E) @ camera.T_C_from_optical)
    landmarks_2d = {n: camera.pixels(p - [left, top]) for n, p in uv.items()}
    return Projection(
        index, name, image, camera.geometry, pose, {"rot-180-for-up": rot180}, landmarks_2d
    )
