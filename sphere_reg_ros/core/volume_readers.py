"""Volume file readers behind :func:`.volume.load_volume`: NIfTI (nibabel), NRRD (pynrrd) and
DICOM series (pydicom), each giving voxel data ``(X, Y, Z)`` and the voxel -> world RAS mm affine
(4, 4) under the conventions of :mod:`.volume` (files in LPS converted to RAS).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

__all__ = ["VolumeError", "read_volume_arrays"]

log = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
# Sign that turns each axis of an anatomical NRRD space into the matching RAS axis.
_NRRD_SPACES = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}


class VolumeError(ValueError):
    """Bad volume input; the message names the file (or source) and the problem."""


def read_volume_arrays(p: Path, series_uid: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Voxel data and affine (4, 4) of the volume at ``p`` (see :func:`.volume.load_volume`),
    by its suffix; raises VolumeError for an unsupported format, and the readers' own errors."""
    name = p.name.lower()
    if p.is_dir():
        return _read_dicom_series(p, series_uid)
    if name.endswith(_NIFTI_SUFFIXES):
        return _read_nifti(p)
    if name.endswith(_NRRD_SUFFIXES):
        return _read_nrrd(p)
    if name.endswith(_DICOM_SUFFIXES) or "." not in name:
        uid = series_uid or pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID
        return _read_dicom_series(p.parent, str(uid))
    raise VolumeError(
        f"{p}: unsupported volume format (expected .nii, .nii.gz, .nrrd, .nhdr, "
        "a DICOM file or a folder of DICOM slices)"
    )


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI via nibabel; ``img.affine`` (sform, else qform) is already voxel -> RAS mm."""
    img = nib.load(str(path))
    return img.get_fdata(dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """NRRD via pynrrd (data in ``[i, j, k]`` order); affine from its space to RAS mm."""
    data, header = nrrd.read(str(path))
    if data.ndim != 3:
        raise VolumeError(f"{path}: not a 3-D volume (shape {data.shape})")
    space = header.get("space")
    if space is None:
        log.warning("%s: NRRD without 'space' field; assuming LPS as ITK and 3D Slicer do", path)
        space = "left-posterior-superior"
    sign = _NRRD_SPACES.get(str(space).lower())
    if sign is None:
        raise VolumeError(f"{path}: unsupported NRRD space {space!r} (need RAS, LAS or LPS)")
    if header.get("space directions") is not None:
        dirs = np.asarray(header["space directions"], dtype=np.float64)
        dirs = dirs[np.all(np.isfinite(dirs), axis=1)]  # drop 'none' rows of non-spatial axes
        if dirs.shape != (3, 3):
            raise VolumeError(f"{path}: 'space directions' has {len(dirs)} spatial axes, not 3")
    elif header.get("spacings") is not None:
        dirs = np.diag(np.asarray(header["spacings"], dtype=np.float64))
    else:
        log.warning("%s: NRRD without 'space directions' or 'spacings'; assuming 1 mm", path)
        dirs = np.eye(3)
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(sign)[:, None] * dirs.T  # rows of `dirs` are per-axis vectors
    affine[:3, 3] = np.asarray(sign) * origin
    return data, affine


def _read_dicom_series(folder: Path, series_uid: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Read one series of single-frame slices from ``folder`` (not recursive).

    Slices are sorted by ImagePositionPatient projected on the slice normal
    (row cosine x column cosine); RescaleSlope/Intercept are applied per slice. DICOM pixel
    ``(row r, column c)`` of slice ``s`` becomes voxel ``(i, j, k) = (c, r, s)``.
    """
    slices, uid = _dicom_series(folder, series_uid)
    if any(int(ds.get("NumberOfFrames", 1)) > 1 for ds in slices):
        raise VolumeError(f"{folder}: multi-frame (enhanced) DICOM is not supported")
    if len(slices) < 2:
        raise VolumeError(f"{folder}: not a 3-D volume (series {uid} has {len(slices)} slice)")
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]  # row_cos: direction of increasing column index
    if any(
        not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-4)
        for ds in slices
    ):
        raise VolumeError(f"{folder}: slices of series {uid} have different orientations")
    normal = np.cross(row_cos, col_cos)
    slices.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
    pos = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in slices])
    gaps = np.diff(pos @ normal)
    if np.any(gaps <= 1e-6):
        raise VolumeError(f"{folder}: zero slice spacing (slices share a position)")
    if gaps.max() - gaps.min() > 0.01 * gaps.mean():
        raise VolumeError(
            f"{folder}: non-uniform slice spacing ({gaps.min():g}..{gaps.max():g} mm)"
        )
    planes = []
    for ds in slices:
        plane = ds.pixel_array.astype(np.float32)
        plane = plane * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
        if planes and plane.T.shape != planes[0].shape:
            raise VolumeError(f"{folder}: slices of series {uid} differ in size")
        planes.append(plane.T)  # (Rows, Columns) -> (i=column, j=row)
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = (pos[-1] - pos[0]) / (len(slices) - 1)
    lps[:3, 3] = pos[0]
    return np.stack(planes, axis=2), _LPS_TO_RAS @ lps


def _dicom_series(folder: Path, series_uid: str | None) -> tuple[list[pydicom.Dataset], str]:
    """The image slices (with position and orientation) of one series in ``folder`` and its
    SeriesInstanceUID: ``series_uid``, or the series with the most slices (logged)."""
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for f in sorted(q for q in folder.iterdir() if q.is_file()):
        try:
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, OSError, EOFError) as exc:
            log.debug("%s: skipped, not a DICOM file (%s)", f, exc)
            continue
        if all(k in ds for k in ("PixelData", "ImagePositionPatient", "ImageOrientationPatient")):
            series[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    if not series:
        raise VolumeError(f"{folder}: no DICOM image slices with position/orientation found")
    if series_uid is not None:
        if series_uid not in series:
            raise VolumeError(f"{folder}: no DICOM series {series_uid!r} (have {sorted(series)})")
        uid = series_uid
    else:
        uid = max(series, key=lambda u: len(series[u]))
        if len(series) > 1:
            log.warning(
                "%s: %d DICOM series; reading %s (%d slices); pass series_uid to choose",
                folder,
                len(series),
                uid,
                len(series[uid]),
            )
    return series[uid], uid
