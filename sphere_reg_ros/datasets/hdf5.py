"""Shared pieces of the public-dataset readers: the error type, opening a file (never
downloading), typed access to HDF5 entries whose errors name the key, and the data types a
reader returns (:class:`Specimen`, :class:`Projection`).

Frames and units are those of :mod:`sphere_reg_ros.core`: CT world RAS mm, poses
``T_ct_from_carm`` in the C-arm optical frame (docs/ARCHITECTURE.md, Conventions; the datasets'
own conventions and how they are converted: docs/REAL_DATA.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.volume import Volume

__all__ = ["DatasetError", "Projection", "Specimen", "open_dataset_file", "Entries"]

#: Where each dataset comes from and the file it ships as (the missing-file error says so).
DATA_SOURCES = {
    "deepfluoro": (
        "ipcai_2020_full_res_data.h5",
        "DeepFluoro (Grupp et al., IJCARS 2020): download the full-resolution HDF5 file from the "
        "Johns Hopkins Research Data Repository, doi:10.7281/T1/IFSXNV (unzip it)",
    ),
    "ljubljana": (
        "ljubljana.h5",
        "Ljubljana 3D-2D cerebral angiography data (Mitrovic et al., IEEE TMI 2013, "
        "https://lit.fe.uni-lj.si/en/research/resources/3D-2D-GS-CA/), in the HDF5 layout that "
        "the diffdrrdata package distributes",
    ),
}


class DatasetError(ValueError):
    """Bad or missing dataset file; the message names the file, the HDF5 key and the problem."""


def open_dataset_file(path: str | Path, dataset: str) -> h5py.File:
    """Open ``path`` read-only. Nothing is ever downloaded: a missing file is a DatasetError that
    says where the data come from and where to put the file."""
    path = Path(path)
    filename, source = DATA_SOURCES[dataset]
    if not path.is_file():
        raise DatasetError(
            f"{path}: no such file. {source}; this project never downloads it. Put "
            f"{filename} anywhere (e.g. data/{filename}; diffdrrdata keeps it in "
            f"~/user/diffdrr_data/) and pass its path with --data."
        )
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from exc


class Entries:
    """Typed reads of one HDF5 file; every error names the file and the key."""

    def __init__(self, f: h5py.File, path: str | Path) -> None:
        self.f, self.path = f, str(path)

    def fail(self, key: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.path}: {key}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.f

    def group(self, key: str) -> h5py.Group:
        if key not in self.f:
            raise self.fail(key, "missing entry")
        node = self.f[key]
        if not isinstance(node, h5py.Group):
            raise self.fail(key, "expected a group")
        return node

    def array(self, key: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
        """The dataset at ``key`` as a finite float array; ``shape`` entries None match any size."""
        if key not in self.f:
            raise self.fail(key, "missing entry")
        node = self.f[key]
        if not isinstance(node, h5py.Dataset):
            raise self.fail(key, "expected a dataset, found a group")
        try:
            a = np.asarray(node[()], dtype=np.float64 if node.dtype.itemsize > 4 else np.float32)
        except (TypeError, ValueError) as exc:
            raise self.fail(key, f"not numeric ({exc})") from exc
        if shape is not None and (
            a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape))
        ):
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
            raise self.fail(key, f"expected shape {want}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise self.fail(key, "contains NaN or infinite values")
        return a

    def vector(self, key: str, n: int) -> np.ndarray:
        """``n`` numbers stored as ``(n,)``, ``(n, 1)`` or ``(1, n)``, float64."""
        a = self.array(key)
        if a.size != n or a.ndim > 2:
            raise self.fail(key, f"expected {n} numbers, got shape {a.shape}")
        return a.astype(np.float64).reshape(n)

    def scalar(self, key: str, *, positive: bool = False) -> float:
        a = self.array(key)
        if a.size != 1:
            raise self.fail(key, f"expected one number, got shape {a.shape}")
        value = float(a.reshape(()))
        if positive and not value > 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def rigid(self, key: str) -> np.ndarray:
        """A ``(4, 4)`` rigid transform (rotation to 1e-4, last row ``0 0 0 1``), float64."""
        T = self.array(key, (4, 4)).astype(np.float64)
        R = T[:3, :3]
        if (
            np.abs(R.T @ R - np.eye(3)).max() > 1e-4
            or abs(np.linalg.det(R) - 1.0) > 1e-4
            or np.abs(T[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6
        ):
            raise self.fail(key, "not a rigid transform (rotation and last row 0 0 0 1)")
        return T

    def text(self, key: str) -> str:
        if key not in self.f or not isinstance(self.f[key], h5py.Dataset):
            raise self.fail(key, "missing entry")
        value = self.f[key][()]
        return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, eq=False)
class Projection:
    """One X-ray of a dataset, converted to the project's conventions.

    Attributes:
        index: position in the specimen's projection list (0-based).
        name: the dataset's name of it (``"000"``, ``"ap"``, ...).
        image: ``(H, W)`` float32 line integrals (−log attenuation, bright bone), preprocessed as
            the dataset's reader in diffdrrdata does, then in the optical frame's pixel order.
        geometry: its intrinsics (``H × W``).
        pose: ``(4, 4)`` float64 true ``T_ct_from_carm`` (mm, CT world RAS).
        flags: the dataset's per-projection flags (e.g. ``{"rot-180-for-up": True}``).
        landmarks_2d: ``{name: (u, v)}`` the dataset's 2-D landmark positions converted to this
            image's pixels (OpenCV convention), or empty when the layout has none.
    """

    index: int
    name: str
    image: np.ndarray
    geometry: CarmGeometry
    pose: np.ndarray
    flags: dict = field(default_factory=dict)
    landmarks_2d: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Specimen:
    """One specimen (patient) of a dataset: its CT and landmarks; projections are read on demand.

    Attributes:
        dataset: ``"deepfluoro"`` or ``"ljubljana"``; ``number``: 1-based as in diffdrrdata;
        ``key``: its group in the file (``"17-1882"``, ``"subject01"``).
        ct: the CT (HU; Ljubljana's 3-D DSA mapped to HU-like values, docs/REAL_DATA.md).
        labels, structures: the segmentation on the CT's grid and ``{id: name}``, or None.
        landmark_names, landmarks: ``(K, 3)`` float64 world RAS mm (the dataset's fiducials).
        projection_names: the dataset's names of its projections, in order.
        source: the file.
    """

    dataset: str
    number: int
    key: str
    ct: Volume
    labels: Volume | None
    structures: dict[int, str] | None
    landmark_names: tuple[str, ...]
    landmarks: np.ndarray
    projection_names: tuple[str, ...]
    source: str

    @property
    def n_projections(self) -> int:
        return len(self.projection_names)
