"""Synthetic 2D/3D registration benchmark: degraded X-rays, true and initial poses, landmarks.

Protocol (DESIGN.md §6, issue 3 item 6):

* **Poses** ``T_ct_from_carm`` from :class:`~sphere_reg_ros.core.sampling.PoseDistribution`
  around the AP view aimed at the CT's grid centre, generator seeded with
  ``split_seed(split, seed)`` (default ±15° per axis about the centre, ±30 mm in-plane, ±60 mm
  depth, source 650 mm from the centre). Test, validation and training seeds are disjoint.
* **Images** are rendered at ``2R × 2R`` on ``geometry.resized(2R)`` (same field of view as the
  ``R × R`` registration geometry; ``Benchmark.registration_images`` average-pools 2×2 back to R),
  from the CT at ``spacing_mm`` (default: its own grid), then degraded
  (:mod:`~sphere_reg_ros.evaluation.degrade`). They are log-domain, line-integral-like float32
  images as the registration consumes them.
* **Initial poses** for methods without a regressor: ``T_init = G · T_true`` with
  ``G = Trans(c) Rot(s·w) Trans(−c) Trans(s·v)``, ``c`` the landmarks' centroid, ``w`` ~ N(0, 5°)
  and ``v`` ~ N(0, 10 mm) per axis (CT world), and ``s > 0`` chosen (bisection) so that the
  initial mTRE equals a target drawn U[5, 25] mm (:class:`InitialErrorConfig`).
* **Landmarks** (``(K, 3)`` world RAS mm): given points, else centroids of the label map's
  structures, else a 3×3×3 grid over the body (HU > −300) keeping points inside it.
* Each case draws its degradations and noise from its own generator
  (``case_seeds[i]`` from ``SeedSequence([split_seed, 1, i])``), so a case is reproducible alone.

Files: :func:`save_benchmark` / :func:`load_benchmark` (format below them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sphere_reg_ros.core.carm import CarmGeometry, CarmGeometryError
from sphere_reg_ros.core.landmarks import as_landmarks
from sphere_reg_ros.core.sampling import PoseDistribution, split_seed
from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.core.volume import (
    BONE_HU_THRESHOLD,
    Volume,
    bone_attenuation,
    hu_to_attenuation,
    resample,
)
from sphere_reg_ros.evaluation.cases import (
    InitialErrorConfig,
    ct_fingerprint,
    default_landmarks,
    perturb_poses,
)
from sphere_reg_ros.evaluation.degrade import (
    PARAM_NAMES,
    ChannelRenderer,
    DegradationConfig,
    apply_degradations,
    draw_degradations,
)
from sphere_reg_ros.evaluation.degrade_harsh import (
    HARSH_PARAM_NAMES,
    HarshConfig,
    apply_harsh,
    draw_harsh,
    mineral_fraction,
)

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "benchmark_checksum",
    "InitialErrorConfig",
    "make_benchmark",
    "save_benchmark",
    "load_benchmark",
    "DegradationConfig",
    "perturb_poses",
    "default_landmarks",
    "ct_fingerprint",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

log = logging.getLogger(__name__)

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

    @property
    def n_cases(self) -> int:
        return int(self.images.shape[0])

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


def _case_seeds(root: int, n: int) -> np.ndarray:
    return np.array(
        [
            int(np.random.SeedSequence([root, 1, i]).generate_state(1, np.uint64)[0] >> 1)
            for i in range(n)
        ],
        dtype=np.int64,
    )


# ----------------------------------------------------------------------------- generation
def make_benchmark(
    ct: Volume,
    labels: Volume | None,
    structures: Mapping[int, str] | None,
    n_cases: int,
    seed: int,
    resolution: int = 64,
    distribution: PoseDistribution = PoseDistribution(),
    *,
    split: str = "test",
    spacing_mm: float | None = None,
    geometry: CarmGeometry | None = None,
    landmarks: tuple[Sequence[str], np.ndarray] | None = None,
    landmark_ids: Sequence[int] | None = None,
    degradation: DegradationConfig | HarshConfig = DegradationConfig(),
    initial_error: InitialErrorConfig = InitialErrorConfig(),
    progress: bool = False,
) -> Benchmark:
    """Generate a synthetic benchmark of ``n_cases`` degraded X-rays of ``ct`` (HU).

    Args:
        labels, structures: label map on the CT's grid and ``{id: name}`` (landmarks), or None.
        resolution: registration resolution ``R``; images are rendered at ``2R``.
        distribution: C-arm poses around the AP view (isocentre: the CT's grid centre).
        split: ``"test"`` (default), ``"val"`` or ``"train"``; with ``seed`` it fixes every draw.
        spacing_mm: resample the CT (trilinear) to this spacing for rendering; None keeps its grid.
        geometry: registration intrinsics (``R × R``); default ``default_geometry(R)``
            (384 mm detector, SDD 1020 mm).
        landmarks: ``(names, (K, 3) world mm)`` to use instead of :func:`default_landmarks`.
        landmark_ids: label ids for the landmarks (default every structure of >= 2 mL).
        progress: show a tqdm progress bar.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise BenchmarkError(f"{ct.source}: n_cases must be a positive integer, got {n_cases!r}")
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, (int, np.integer))
        or resolution < 4
    ):
        raise BenchmarkError(f"{ct.source}: resolution must be an integer >= 4, got {resolution!r}")
    root = split_seed(split, seed)
    geometry = geometry or default_geometry(int(resolution))
    if (geometry.height, geometry.width) != (resolution, resolution):
        raise BenchmarkError(
            f"{ct.source}: geometry is {geometry.height}x{geometry.width}, "
            f"resolution is {resolution}"
        )
    render_geometry = geometry.resized(2 * int(resolution))
    if landmarks is None:
        names, points = default_landmarks(ct, labels, structures, landmark_ids)
    else:
        names, points = list(landmarks[0]), as_landmarks(landmarks[1], source="landmarks")
        if len(names) != len(points):
            raise BenchmarkError(f"landmarks: {len(names)} names for {len(points)} points")

    center = ct.center_world
    poses = distribution.sample(int(n_cases), center, torch.Generator().manual_seed(root))
    init_gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([root, 2]).generate_state(1)[0])
    )
    poses_init, init_mtre = perturb_poses(poses, points, initial_error, init_gen)

    render_ct = ct if spacing_mm is None else resample(ct, float(spacing_mm))
    mu = hu_to_attenuation(render_ct.data)
    harsh = isinstance(degradation, HarshConfig)
    if harsh:  # channels: μ and its bone-mineral part (a ramp in HU)
        renderer = ChannelRenderer(
            np.stack([mu, mu * mineral_fraction(render_ct.data)]), render_ct.affine, render_geometry
        )
    else:
        bone = bone_attenuation(render_ct.data)
        renderer = ChannelRenderer(np.stack([mu - bone, bone]), render_ct.affine, render_geometry)
        del bone
    del mu
    draw, apply = (draw_harsh, apply_harsh) if harsh else (draw_degradations, apply_degradations)

    seeds = _case_seeds(root, int(n_cases))
    images = np.empty((int(n_cases), 2 * resolution, 2 * resolution), dtype=np.float32)
    drawn: list[dict[str, np.ndarray]] = []
    for i in tqdm(range(int(n_cases)), desc="make-benchmark", unit="case", disable=not progress):
        gen = torch.Generator().manual_seed(int(seeds[i]))
        pose = poses[i].numpy()
        params = draw(degradation, gen, pose, render_geometry, center)
        p_a, p_b = renderer(poses[i : i + 1])
        images[i] = apply(
            p_a, p_b, params, render_geometry, pose, gen, renderer.scale, noise=degradation.noise
        ).numpy()
        drawn.append(params)
    degradations = {k: np.stack([d[k] for d in drawn]) for k in drawn[0]}
    config = {
        "pose_distribution": asdict(distribution),
        "isocenter_world": [float(x) for x in center],
        "initial_error": {**asdict(initial_error), "mtre_mm": list(initial_error.mtre_mm)},
        "degradation": degradation.to_dict(),
        "render": {
            "spacing_mm": spacing_mm,
            "render_ct_shape": list(render_ct.shape),
            "scale_per_mm": renderer.scale,
            "step_mm": renderer.renderer.step_mm,
            "bone_threshold_hu": BONE_HU_THRESHOLD,
            "renderer": "diffdrr trilinear",
        },
        "split_seed": root,
    }
    log.info(
        "benchmark: %d cases of %s, %dx%d rendered, %d landmarks",
        n_cases,
        ct.source,
        2 * resolution,
        2 * resolution,
        len(points),
    )
    return Benchmark(
        images=images,
        resolution=int(resolution),
        geometry=geometry,
        render_geometry=render_geometry,
        poses_true=poses.numpy(),
        poses_init=poses_init.numpy(),
        initial_mtre_mm=init_mtre.numpy(),
        landmarks=np.asarray(points, dtype=np.float64),
        landmark_names=tuple(str(n) for n in names),
        ct_source=str(ct.source),
        ct_fingerprint=ct_fingerprint(ct),
        seed=int(seed),
        split=split,
        case_seeds=seeds,
        degradations=degradations,
        config=config,
    )


# ----------------------------------------------------------------------------- file format
# One ``.npz`` (numpy zip, no pickles: read with ``allow_pickle=False``) holding:
#   format "sphere_reg_ros.benchmark", format_version 1 (int), images (N, 2R, 2R) float32,
#   resolution, seed (int), split (str), poses_true / poses_init (N, 4, 4) float64,
#   initial_mtre_mm (N,), landmarks (K, 3) float64, landmark_names (K,) str, case_seeds (N,) int64,
#   geometry_json / render_geometry_json (CarmGeometry.to_dict), ct_source (str),
#   ct_fingerprint_json, config_json, and one "degradation.<name>" (N, ...) per PARAM_NAMES entry.
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


def _from_arrays(data: dict[str, np.ndarray], path: Path) -> Benchmark:
    def fail(problem: str) -> BenchmarkError:
        return BenchmarkError(f"{path}: {problem}")

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

    def text(key: str) -> str:
        if data[key].shape != () or data[key].dtype.kind != "U":
            raise fail(f"{key} must be a string")
        return str(data[key])

    def as_json(key: str) -> object:
        try:
            return json.loads(text(key))
        except json.JSONDecodeError as exc:
            raise fail(f"{key} is not valid JSON ({exc})") from exc

    def integer(key: str) -> int:
        if data[key].shape != () or not np.issubdtype(data[key].dtype, np.integer):
            raise fail(f"{key} must be an integer")
        return int(data[key])

    resolution = integer("resolution")
    images = data["images"]
    if images.dtype != np.float32 or images.ndim != 3 or images.shape[0] < 1:
        raise fail(
            f"images must be (N, 2R, 2R) float32 with N >= 1, got {images.shape} {images.dtype}"
        )
    n = images.shape[0]
    if images.shape[1:] != (2 * resolution, 2 * resolution):
        raise fail(
            f"images are {images.shape[1]}x{images.shape[2]}, expected twice the resolution {resolution}"
        )
    if not np.isfinite(images).all():
        raise fail("images contain NaN or infinite values")
    for key in ("poses_true", "poses_init"):
        T = data[key]
        if T.shape != (n, 4, 4) or T.dtype != np.float64 or not np.isfinite(T).all():
            raise fail(f"{key} must be finite ({n}, 4, 4) float64, got {T.shape} {T.dtype}")
        R = T[:, :3, :3]
        if (
            np.abs(R.transpose(0, 2, 1) @ R - np.eye(3)).max() > 1e-6
            or np.abs(np.linalg.det(R) - 1.0).max() > 1e-6
            or np.abs(T[:, 3] - [0.0, 0.0, 0.0, 1.0]).max() > 0
        ):
            raise fail(f"{key} are not rigid transforms")
    if data["initial_mtre_mm"].shape != (n,) or not np.isfinite(data["initial_mtre_mm"]).all():
        raise fail(f"initial_mtre_mm must be finite with shape ({n},)")
    points, names = data["landmarks"], data["landmark_names"]
    if (
        points.ndim != 2
        or points.shape[1:] != (3,)
        or len(points) < 1
        or not np.isfinite(points).all()
    ):
        raise fail(f"landmarks must be finite (K, 3) with K >= 1, got {points.shape}")
    if names.shape != (len(points),) or names.dtype.kind != "U":
        raise fail(f"landmark_names must be {len(points)} strings, got {names.shape} {names.dtype}")
    if data["case_seeds"].shape != (n,) or not np.issubdtype(data["case_seeds"].dtype, np.integer):
        raise fail(f"case_seeds must be ({n},) integers")
    try:
        geometry = CarmGeometry.from_dict(as_json("geometry_json"))
        render_geometry = CarmGeometry.from_dict(as_json("render_geometry_json"))
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
    fingerprint, config = as_json("ct_fingerprint_json"), as_json("config_json")
    if not isinstance(fingerprint, dict) or not isinstance(config, dict):
        raise fail("ct_fingerprint_json and config_json must hold JSON objects")
    family = (config.get("degradation") or {}).get("family", "benchmark")
    if family not in ("benchmark", "harsh"):
        raise fail(f"unknown degradation family {family!r}")
    param_names = HARSH_PARAM_NAMES if family == "harsh" else PARAM_NAMES
    missing = [f"degradation.{n}" for n in param_names if f"degradation.{n}" not in data]
    if missing:
        raise fail(f"missing entries {missing}")
    degradations = {}
    for name, tail in param_names.items():
        values = data[f"degradation.{name}"]
        if values.shape != (n, *tail):
            raise fail(f"degradation.{name} must have shape {(n, *tail)}, got {values.shape}")
        degradations[name] = values
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
        ct_source=text("ct_source"),
        ct_fingerprint=fingerprint,
        seed=integer("seed"),
        split=text("split"),
        case_seeds=data["case_seeds"],
        degradations=degradations,
        config=config,
    )
