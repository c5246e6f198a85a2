"""The synthetic benchmark's data type and file format: :class:`Benchmark`, its checksum, and
:func:`save_benchmark` / :func:`load_benchmark` (one ``.npz``, format below). Generation is in
:mod:`~sphere_reg_ros.evaluation.benchmark`, which re-exports all of this.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sphere_reg_ros.core.carm import CarmGeometry, CarmGeometryError
from sphere_reg_ros.evaluation.benchmark_views import (
    ExtraViews,
    all_rigid,
    checked_views,
    view_arrays,
)
from sphere_reg_ros.evaluation.degrade import PARAM_NAMES
from sphere_reg_ros.evaluation.degrade_harsh import HARSH_PARAM_NAMES

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "benchmark_checksum",
    "save_benchmark",
    "load_benchmark",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

FORMAT_NAME = "sphere_reg_ros.benchmark"
FORMAT_VERSION = 1


class BenchmarkError(ValueError):
    """Bad benchmark input or file; the message names the file (or source) and the problem."""


@dataclass(frozen=True, eq=False)
class Benchmark:
    """A synthetic benchmark (all arrays numpy, CPU).

    Attributes:
        images: ``(N, 2R, 2R)`` float32 degraded X-rays (log domain), on ``render_geometry``.
        resolution: registration resolution ``R``.
        geometry: C-arm intrinsics of the ``R × R`` registration images.
        render_geometry: ``geometry.resized(2R)``, the intrinsics of ``images``.
        poses_true, poses_init: ``(N, 4, 4)`` float64 ``T_ct_from_carm`` (mm).
        initial_mtre_mm: ``(N,)`` mTRE of ``poses_init`` on ``landmarks``.
        landmarks: ``(K, 3)`` float64 world RAS mm; ``landmark_names`` K strings.
        ct_source: path (or description) of the CT; ``ct_fingerprint`` its shape, spacing,
            affine and SHA-256 of the voxel data (float32) as given to :func:`make_benchmark`.
        seed, split: user seed and data split (generator root ``split_seed(split, seed)``).
        case_seeds: ``(N,)`` int64 per-case generator seeds.
        degradations: per-case parameters ``{name: (N, ...)}`` (see ``degrade.PARAM_NAMES``).
        config: everything else needed to regenerate (pose distribution, initial error,
            degradation ranges, rendering settings), JSON-ready.
        views: the further C-arm views of each case (:mod:`.benchmark_views`), or None (one
            view: ``images``).
    """

    images: np.ndarray
    resolution: int
    geometry: CarmGeometry
    render_geometry: CarmGeometry
    poses_true: np.ndarray
    poses_init: np.ndarray
    initial_mtre_mm: np.ndarray
    landmarks: np.ndarray
    landmark_names: tuple[str, ...]
    ct_source: str
    ct_fingerprint: dict
    seed: int
    split: str
    case_seeds: np.ndarray
    degradations: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    views: ExtraViews | None = None

    @property
    def n_cases(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_views(self) -> int:
        """C-arm views per case: 1 + the further views."""
        return 1 + (0 if self.views is None else int(self.views.images.shape[1]))

    def view_offsets(self) -> list[np.ndarray]:
        """``T_carm0_from_carmk`` ``(4, 4)`` of each view, the identity first."""
        rest = [] if self.views is None else list(self.views.offsets)
        return [np.eye(4)] + [np.asarray(T, dtype=np.float64) for T in rest]

    def case_views(self, i: int) -> list[np.ndarray]:
        """The ``(2R, 2R)`` images of case ``i``, one per view (view 0 is ``images[i]``)."""
        rest = [] if self.views is None else list(self.views.images[i])
        return [self.images[i]] + rest

    def registration_images(self) -> torch.Tensor:
        """``(N, 1, R, R)`` float32: the images 2×2 average-pooled onto ``geometry``."""
        return F.avg_pool2d(torch.from_numpy(self.images)[:, None], 2)

    def true_poses(self) -> torch.Tensor:
        """``(N, 4, 4)`` float64 tensor of the true poses."""
        return torch.from_numpy(self.poses_true)

    def initial_poses(self) -> torch.Tensor:
        """``(N, 4, 4)`` float64 tensor of the initial poses."""
        return torch.from_numpy(self.poses_init)


def benchmark_checksum(bm: Benchmark) -> str:
    """SHA-256 (first 16 hex digits) of a benchmark's content: images, poses, initial errors,
    landmarks, seeds, degradation parameters, geometry, CT fingerprint and generation settings
    (not the CT's path, and not the file's bytes, which carry zip time stamps). The same
    ``make-benchmark`` command gives the same checksum on every commit; tables print it."""
    h = hashlib.sha256()

    def add(name: str, a) -> None:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())

    add("images", bm.images.astype(np.float32, copy=False))
    for name in ("poses_true", "poses_init", "initial_mtre_mm", "landmarks"):
        add(name, np.asarray(getattr(bm, name), dtype=np.float64))
    add("case_seeds", np.asarray(bm.case_seeds, dtype=np.int64))
    for name in sorted(bm.degradations):
        add(f"degradation.{name}", bm.degradations[name])
    if bm.views is not None:  # absent from a 1-view benchmark, whose checksum stays as it was
        for key, values in sorted(view_arrays(bm.views).items()):
            add(key, values)
    meta = {
        "resolution": int(bm.resolution),
        "seed": int(bm.seed),
        "split": bm.split,
        "landmark_names": list(bm.landmark_names),
        "geometry": bm.geometry.to_dict(),
        "render_geometry": bm.render_geometry.to_dict(),
        "ct_fingerprint": bm.ct_fingerprint,
        "config": bm.config,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- file format
# One ``.npz`` (numpy zip, no pickles: read with ``allow_pickle=False``) holding:
#   format "sphere_reg_ros.benchmark", format_version 1 (int), images (N, 2R, 2R) float32,
#   resolution, seed (int), split (str), poses_true / poses_init (N, 4, 4) float64,
#   initial_mtre_mm (N,), landmarks (K, 3) float64, landmark_names (K,) str, case_seeds (N,) int64,
#   geometry_json / render_geometry_json (CarmGeometry.to_dict), ct_source (str),
#   ct_fingerprint_json, config_json, and one "degradation.<name>" (N, ...) per PARAM_NAMES entry;
#   with several views also the entries of benchmark_views (images_views, view_offsets, ...).
_ARRAY_KEYS = (
    "images",
    "poses_true",
    "poses_init",
    "initial_mtre_mm",
    "landmarks",
    "landmark_names",
    "case_seeds",
)
_SCALAR_KEYS = (
    "format",
    "format_version",
    "resolution",
    "seed",
    "split",
    "geometry_json",
    "render_geometry_json",
    "ct_source",
    "ct_fingerprint_json",
    "config_json",
)


def save_benchmark(path: str | Path, bm: Benchmark) -> Path:
    """Write ``bm`` to ``path`` (``.npz`` format, written whole to a temporary file then renamed)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "images": np.asarray(bm.images, dtype=np.float32),
        "resolution": np.array(bm.resolution, dtype=np.int64),
        "seed": np.array(bm.seed, dtype=np.int64),
        "split": np.array(bm.split),
        "poses_true": np.asarray(bm.poses_true, dtype=np.float64),
        "poses_init": np.asarray(bm.poses_init, dtype=np.float64),
        "initial_mtre_mm": np.asarray(bm.initial_mtre_mm, dtype=np.float64),
        "landmarks": np.asarray(bm.landmarks, dtype=np.float64),
        "landmark_names": np.array(list(bm.landmark_names), dtype=str),
        "case_seeds": np.asarray(bm.case_seeds, dtype=np.int64),
        "geometry_json": np.array(json.dumps(bm.geometry.to_dict())),
        "render_geometry_json": np.array(json.dumps(bm.render_geometry.to_dict())),
        "ct_source": np.array(bm.ct_source),
        "ct_fingerprint_json": np.array(json.dumps(bm.ct_fingerprint)),
        "config_json": np.array(json.dumps(bm.config)),
    }
    for name, values in bm.degradations.items():
        arrays[f"degradation.{name}"] = np.asarray(values)
    if bm.views is not None:
        arrays.update(view_arrays(bm.views))
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BenchmarkError(f"{path}: cannot write benchmark ({exc})") from exc
    return path


def load_benchmark(path: str | Path) -> Benchmark:
    """Read and validate a file written by :func:`save_benchmark`.

    Raises:
        BenchmarkError: missing, unreadable, truncated or corrupt file, another format or format
            version, missing entries, inconsistent shapes, non-finite values, invalid poses or
            geometry; the message names the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise BenchmarkError(f"{path}: cannot read ({exc})") from exc
    if not head:
        raise BenchmarkError(f"{path}: not a readable benchmark file (empty file, 0 bytes)")
    if not head.startswith((b"PK", b"\x93NUMPY")):  # np.load would try to unpickle it (and refuse)
        raise BenchmarkError(f"{path}: not a readable benchmark file (not a NumPy .npz archive)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare array has no context manager
            raise BenchmarkError(f"{path}: not a benchmark file (a bare .npy array, expected .npz)")
        with loaded as npz:
            data = {key: npz[key] for key in npz.files}
    except BenchmarkError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # zip, zlib, npy-header and pickle refusals all mean a bad file
        raise BenchmarkError(
            f"{path}: not a readable benchmark file ({type(exc).__name__}: {exc})"
        ) from exc
    return _from_arrays(data, path)


class _Entries:
    """The arrays of a benchmark file with typed accessors; errors name the file."""

    def __init__(self, data: dict[str, np.ndarray], path: Path) -> None:
        self.data, self.path = data, path

    def fail(self, problem: str) -> BenchmarkError:
        return BenchmarkError(f"{self.path}: {problem}")

    def text(self, key: str) -> str:
        if self.data[key].shape != () or self.data[key].dtype.kind != "U":
            raise self.fail(f"{key} must be a string")
        return str(self.data[key])

    def as_json(self, key: str) -> object:
        try:
            return json.loads(self.text(key))
        except json.JSONDecodeError as exc:
            raise self.fail(f"{key} is not valid JSON ({exc})") from exc

    def integer(self, key: str) -> int:
        if self.data[key].shape != () or not np.issubdtype(self.data[key].dtype, np.integer):
            raise self.fail(f"{key} must be an integer")
        return int(self.data[key])


def _from_arrays(data: dict[str, np.ndarray], path: Path) -> Benchmark:
    """Validate the arrays of a benchmark file (in this order: format, images, poses,
    landmarks, seeds, geometry, metadata, degradations) and build the :class:`Benchmark`."""
    e = _Entries(data, path)
    _check_format(e)
    resolution = e.integer("resolution")
    images = _checked_images(e, resolution)
    n = images.shape[0]
    _check_poses(e, n)
    points, names = _checked_landmarks(e)
    if data["case_seeds"].shape != (n,) or not np.issubdtype(data["case_seeds"].dtype, np.integer):
        raise e.fail(f"case_seeds must be ({n},) integers")
    geometry, render_geometry = _checked_geometries(e, resolution)
    fingerprint, config = e.as_json("ct_fingerprint_json"), e.as_json("config_json")
    if not isinstance(fingerprint, dict) or not isinstance(config, dict):
        raise e.fail("ct_fingerprint_json and config_json must hold JSON objects")
    degradations = _checked_degradations(e, config, n)
    views = checked_views(data, n, 2 * resolution, _param_names(e, config), e.fail)
    return Benchmark(
        images=images,
        resolution=resolution,
        geometry=geometry,
        render_geometry=render_geometry,
        poses_true=data["poses_true"],
        poses_init=data["poses_init"],
        initial_mtre_mm=data["initial_mtre_mm"],
        landmarks=points,
        landmark_names=tuple(str(s) for s in names),
        ct_source=e.text("ct_source"),
        ct_fingerprint=fingerprint,
        seed=e.integer("seed"),
        split=e.text("split"),
        case_seeds=data["case_seeds"],
        degradations=degradations,
        config=config,
        views=views,
    )


def _check_format(e: _Entries) -> None:
    """The format name and version, and every required entry present."""
    data, fail = e.data, e.fail
    if "format" not in data or str(data["format"]) != FORMAT_NAME:
        raise fail(
            f"not a {FORMAT_NAME} file (format entry {str(data.get('format', 'missing'))!r})"
        )
    version = data.get("format_version")
    if version is None or version.shape != () or not np.issubdtype(version.dtype, np.integer):
        raise fail("missing or malformed format_version")
    if int(version) != FORMAT_VERSION:
        raise fail(
            f"unsupported format version {int(version)} (this software reads version {FORMAT_VERSION})"
        )
    missing = [k for k in _ARRAY_KEYS + _SCALAR_KEYS if k not in data]
    if missing:
        raise fail(f"missing entries {missing}")


def _checked_images(e: _Entries, resolution: int) -> np.ndarray:
    """The images ``(N, 2R, 2R)`` float32, finite, N >= 1."""
    images, fail = e.data["images"], e.fail
    if images.dtype != np.float32 or images.ndim != 3 or images.shape[0] < 1:
        raise fail(
            f"images must be (N, 2R, 2R) float32 with N >= 1, got {images.shape} {images.dtype}"
        )
    if images.shape[1:] != (2 * resolution, 2 * resolution):
        raise fail(
            f"images are {images.shape[1]}x{images.shape[2]}, expected twice the resolution {resolution}"
        )
    if not np.isfinite(images).all():
        raise fail("images contain NaN or infinite values")
    return images


def _check_poses(e: _Entries, n: int) -> None:
    """True and initial poses: ``n`` finite rigid transforms each; ``n`` finite initial mTREs."""
    data, fail = e.data, e.fail
    for key in ("poses_true", "poses_init"):
        T = data[key]
        if T.shape != (n, 4, 4) or T.dtype != np.float64 or not np.isfinite(T).all():
            raise fail(f"{key} must be finite ({n}, 4, 4) float64, got {T.shape} {T.dtype}")
        if not all_rigid(T):
            raise fail(f"{key} are not rigid transforms")
    if data["initial_mtre_mm"].shape != (n,) or not np.isfinite(data["initial_mtre_mm"]).all():
        raise fail(f"initial_mtre_mm must be finite with shape ({n},)")


def _checked_landmarks(e: _Entries) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks ``(K, 3)`` finite, K >= 1, and their K names."""
    points, names, fail = e.data["landmarks"], e.data["landmark_names"], e.fail
    if (
        points.ndim != 2
        or points.shape[1:] != (3,)
        or len(points) < 1
        or not np.isfinite(points).all()
    ):
        raise fail(f"landmarks must be finite (K, 3) with K >= 1, got {points.shape}")
    if names.shape != (len(points),) or names.dtype.kind != "U":
        raise fail(f"landmark_names must be {len(points)} strings, got {names.shape} {names.dtype}")
    return points, names


def _checked_geometries(e: _Entries, resolution: int) -> tuple[CarmGeometry, CarmGeometry]:
    """The registration geometry (``R × R``) and the render geometry (its double)."""
    fail = e.fail
    try:
        geometry = CarmGeometry.from_dict(e.as_json("geometry_json"))
        render_geometry = CarmGeometry.from_dict(e.as_json("render_geometry_json"))
    except (CarmGeometryError, TypeError) as exc:
        raise fail(f"invalid C-arm geometry ({exc})") from exc
    expected = geometry.resized(2 * resolution).to_dict()
    if (geometry.height, geometry.width) != (resolution, resolution) or any(
        not math.isclose(render_geometry.to_dict()[k], v, rel_tol=1e-9, abs_tol=1e-9)
        for k, v in expected.items()
    ):
        raise fail(
            f"geometry {geometry.to_dict()} / render geometry {render_geometry.to_dict()} do not match "
            f"resolution {resolution} and its double"
        )
    return geometry, render_geometry


def _checked_degradations(e: _Entries, config: dict, n: int) -> dict[str, np.ndarray]:
    """The per-case degradation parameters of the config's family, ``(n, ...)`` each."""
    data, fail = e.data, e.fail
    param_names = _param_names(e, config)
    missing = [f"degradation.{n}" for n in param_names if f"degradation.{n}" not in data]
    if missing:
        raise fail(f"missing entries {missing}")
    degradations = {}
    for name, tail in param_names.items():
        values = data[f"degradation.{name}"]
        if values.shape != (n, *tail):
            raise fail(f"degradation.{name} must have shape {(n, *tail)}, got {values.shape}")
        degradations[name] = values
    return degradations


def _param_names(e: _Entries, config: dict) -> dict[str, tuple[int, ...]]:
    """The degradation parameters (and trailing shapes) of the config's family."""
    family = (config.get("degradation") or {}).get("family", "benchmark")
    if family not in ("benchmark", "harsh", "real"):
        raise e.fail(f"unknown degradation family {family!r}")
    if family == "real":  # real X-rays (evaluation.real_benchmark): nothing was simulated
        return {}
    return HARSH_PARAM_NAMES if family == "harsh" else PARAM_NAMES
