"""Ljubljana (``ljubljana.h5``): 3-D DSA and two 2-D DSA views (AP, lateral) of ten patients.

Reads the keys diffdrrdata 0.0.7 reads, with h5py, and converts them (docs/REAL_DATA.md):

* ``subject<NN>/volume/``: ``pixels`` (3-D DSA intensities), ``spacing`` (3,), ``origin`` (3,).
  As in diffdrrdata the array's first axis runs against the world's x axis (diffdrrdata flips
  it), so voxel ``(i, j, k)`` is at ``origin + spacing · (n₀ − 1 − i, j, k)``; intensities below
  1000 are background. The project renders HU, so intensities ``v ≥ 1000`` become ``v − 1000``
  and the background −1000 (air): attenuation ``∝ v`` in vessels and 0 elsewhere, as
  diffdrrdata's density. The world frame is the dataset's own (treated as RAS, as diffdrrdata
  does).
* ``subject<NN>/points`` (N, 3): fiducials in the same world frame (the landmarks).
* ``subject<NN>/proj-ap/``, ``proj-lat/``: ``pixels`` (rows, cols), ``intrinsic`` K (3, 3),
  ``extrinsic`` E (4, 4, world → camera), ``col-spacing``, ``row-spacing``: per-image intrinsics.

``T_ct_from_carm = E⁻¹ · T_C_from_optical`` (the camera frame ``C`` of :mod:`.camera`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sphere_reg_ros.core.volume import Volume, VolumeError

from .camera import dataset_camera, orthonormalised
from .hdf5 import DatasetError, Entries, Projection, Specimen, open_dataset_file
from .images import ljubljana_log_image

__all__ = ["LJUBLJANA_VIEWS", "load_ljubljana_specimen", "load_ljubljana_projection"]

#: The views of each patient, in diffdrrdata's order (index 0: AP, 1: lateral).
LJUBLJANA_VIEWS = ("ap", "lat")
#: 3-D DSA intensity below which diffdrrdata discards a voxel as background.
DSA_BACKGROUND = 1000.0


def _subject_key(number: int) -> str:
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, np.integer))
        or not (1 <= number <= 10)
    ):
        raise DatasetError(f"Ljubljana patient must be 1..10, got {number!r}")
    return f"subject{int(number):02d}"


def load_ljubljana_specimen(path: str | Path, number: int) -> Specimen:
    """Patient ``number`` (1..10): the 3-D DSA as a HU-like volume and the fiducials.
    Raises DatasetError (naming the key) for a bad file."""
    key = _subject_key(number)
    with open_dataset_file(path, "ljubljana") as f:
        e = Entries(f, path)
        e.group(key)
        v = e.array(f"{key}/volume/pixels")
        if v.ndim != 3:
            raise e.fail(f"{key}/volume/pixels", f"expected a 3-D array, got shape {v.shape}")
        spacing = e.vector(f"{key}/volume/spacing", 3)
        origin = e.vector(f"{key}/volume/origin", 3)
        points = e.array(f"{key}/points", (None, 3)).astype(np.float64)
        if len(points) == 0:
            raise e.fail(f"{key}/points", "no fiducials")
        for view in LJUBLJANA_VIEWS:
            e.group(f"{key}/proj-{view}")
    if np.any(spacing <= 0):
        raise DatasetError(f"{path}: {key}/volume/spacing: must be positive, got {spacing}")
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin + [spacing[0] * (v.shape[0] - 1), 0.0, 0.0]
    hu = np.where(v >= DSA_BACKGROUND, v - DSA_BACKGROUND, -1000.0).astype(np.float32)
    if hu.min() == hu.max():
        raise DatasetError(f"{path}: {key}/volume/pixels: no voxel above {DSA_BACKGROUND:g}")
    try:
        ct = Volume(hu, affine, f"{path}:{key}/volume")
    except VolumeError as exc:
        raise DatasetError(f"{path}: {key}/volume: {exc}") from exc
    names = tuple(f"fiducial_{i}" for i in range(len(points)))
    return Specimen(
        "ljubljana", int(number), key, ct, None, None, names, points, LJUBLJANA_VIEWS, str(path)
    )


def load_ljubljana_projection(path: str | Path, specimen: Specimen, index: int) -> Projection:
    """View ``index`` (0: AP, 1: lateral) of ``specimen``: background-subtracted log image,
    mirrored (:mod:`.camera`); its own intrinsics; its true ``T_ct_from_carm``."""
    if not 0 <= index < len(LJUBLJANA_VIEWS):
        raise DatasetError(f"{specimen.key}: view index {index} outside 0..1")
    view = LJUBLJANA_VIEWS[index]
    base = f"{specimen.key}/proj-{view}"
    with open_dataset_file(path, "ljubljana") as f:
        e = Entries(f, path)
        pixels = e.array(f"{base}/pixels", (None, None))
        K = e.array(f"{base}/intrinsic", (3, 3)).astype(np.float64)
        E = e.rigid(f"{base}/extrinsic")
        col_sp = e.scalar(f"{base}/col-spacing", positive=True)
        row_sp = e.scalar(f"{base}/row-spacing", positive=True)
    rows, cols = pixels.shape
    camera = dataset_camera(K, rows, cols, col_sp, row_sp, False, where=f"{path}: {base}")
    image = camera.image(ljubljana_log_image(pixels))
    pose = orthonormalised(np.linalg.inv(E) @ camera.T_C_from_optical)
    return Projection(index, view, image, camera.geometry, pose, {"view": view})
