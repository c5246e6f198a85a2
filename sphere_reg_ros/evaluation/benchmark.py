"""Synthetic 2D/3D registration benchmark: degraded X-rays, true and initial poses, landmarks.

Protocol:

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
* **Further views** (``views > 1``, biplane): each case's view ``k`` at ``T_true @
  orbit_offset(k · view_angle_deg)``, rendered alike and degraded independently from streams of
  their own (:mod:`.benchmark_views`); the first view is the 1-view benchmark's image.

Files: :func:`save_benchmark` / :func:`load_benchmark` (:mod:`.benchmark_file`, re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from sphere_reg_ros.core.carm import CarmGeometry
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
from sphere_reg_ros.evaluation.benchmark_file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Benchmark,
    BenchmarkError,
    benchmark_checksum,
    load_benchmark,
    save_benchmark,
)
from sphere_reg_ros.evaluation.benchmark_views import (
    render_extra_views,
    render_view,
    view_offsets,
)
from sphere_reg_ros.evaluation.cases import (
    InitialErrorConfig,
    ct_fingerprint,
    default_landmarks,
    perturb_poses,
)
from sphere_reg_ros.evaluation.degrade import ChannelRenderer, DegradationConfig
from sphere_reg_ros.evaluation.degrade_harsh import HarshConfig, mineral_fraction

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
    views: int = 1,
    view_angle_deg: float = 90.0,
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
        views, view_angle_deg: C-arm views per case; views ``k >= 1`` are turned by ``k ·
            view_angle_deg`` about the first (:mod:`.benchmark_views`; 1: today's benchmark).

    Longer than most functions for its settings and the :class:`Benchmark` it fills; the steps
    (checks, landmarks, renderer, rendering the cases) are the helpers below, in the order of
    their random draws, which must not change (pinned: test/evaluation/pinned_benchmarks.py).
    """
    _check_counts(ct, n_cases, resolution)
    offsets = _offsets(views, view_angle_deg, distribution)
    root = split_seed(split, seed)
    geometry = _checked_geometry(ct, resolution, geometry)
    render_geometry = geometry.resized(2 * int(resolution))
    names, points = _landmarks(ct, labels, structures, landmarks, landmark_ids)

    center = ct.center_world
    poses = distribution.sample(int(n_cases), center, torch.Generator().manual_seed(root))
    init_gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([root, 2]).generate_state(1)[0])
    )
    poses_init, init_mtre = perturb_poses(poses, points, initial_error, init_gen)

    render_ct = ct if spacing_mm is None else resample(ct, float(spacing_mm))
    renderer = _channel_renderer(render_ct, render_geometry, degradation)
    seeds = _case_seeds(root, int(n_cases))
    images, degradations = _render_cases(
        renderer, poses, seeds, degradation, render_geometry, center, resolution, progress
    )
    extra = None
    if offsets is not None:  # after the first view's draws, from streams of their own
        extra = render_extra_views(renderer, poses, offsets, root, degradation, center, progress)
    config = {
        "pose_distribution": asdict(distribution),
        "isocenter_world": [float(x) for x in center],
        "initial_error": {**asdict(initial_error), "mtre_mm": list(initial_error.mtre_mm)},
        "degradation": degradation.to_dict(),
        "render": _render_config(spacing_mm, render_ct, renderer),
        "split_seed": root,
    }
    if extra is not None:
        config["views"] = {"count": int(views), "angle_deg": float(view_angle_deg)}
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
        views=extra,
    )


def _check_counts(ct: Volume, n_cases: int, resolution: int) -> None:
    """BenchmarkError unless ``n_cases`` >= 1 and ``resolution`` >= 4 are integers."""
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise BenchmarkError(f"{ct.source}: n_cases must be a positive integer, got {n_cases!r}")
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, (int, np.integer))
        or resolution < 4
    ):
        raise BenchmarkError(f"{ct.source}: resolution must be an integer >= 4, got {resolution!r}")


def _offsets(views: int, angle_deg: float, distribution: PoseDistribution) -> np.ndarray | None:
    """The further views' offsets (None for one view); BenchmarkError for a bad count or angle."""
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise BenchmarkError(f"views must be a positive integer, got {views!r}")
    if views == 1:
        return None
    try:
        return view_offsets(int(views), angle_deg, distribution.sod_mm)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from exc


def _checked_geometry(ct: Volume, resolution: int, geometry: CarmGeometry | None) -> CarmGeometry:
    """The registration geometry, ``default_geometry(R)`` unless given; BenchmarkError unless it
    is ``R × R``."""
    geometry = geometry or default_geometry(int(resolution))
    if (geometry.height, geometry.width) != (resolution, resolution):
        raise BenchmarkError(
            f"{ct.source}: geometry is {geometry.height}x{geometry.width}, "
            f"resolution is {resolution}"
        )
    return geometry


def _landmarks(
    ct: Volume,
    labels: Volume | None,
    structures: Mapping[int, str] | None,
    landmarks: tuple[Sequence[str], np.ndarray] | None,
    landmark_ids: Sequence[int] | None,
) -> tuple[list[str], np.ndarray]:
    """Names and ``(K, 3)`` world mm points: the given ``landmarks`` or the defaults."""
    if landmarks is None:
        return default_landmarks(ct, labels, structures, landmark_ids)
    names, points = list(landmarks[0]), as_landmarks(landmarks[1], source="landmarks")
    if len(names) != len(points):
        raise BenchmarkError(f"landmarks: {len(names)} names for {len(points)} points")
    return names, points


def _channel_renderer(
    render_ct: Volume, render_geometry: CarmGeometry, degradation: DegradationConfig | HarshConfig
) -> ChannelRenderer:
    """Two-channel renderer of the CT (HU): soft tissue and bone, or for the harsh family μ and
    its bone-mineral part (a ramp in HU)."""
    mu = hu_to_attenuation(render_ct.data)
    if isinstance(degradation, HarshConfig):
        return ChannelRenderer(
            np.stack([mu, mu * mineral_fraction(render_ct.data)]), render_ct.affine, render_geometry
        )
    bone = bone_attenuation(render_ct.data)
    renderer = ChannelRenderer(np.stack([mu - bone, bone]), render_ct.affine, render_geometry)
    del bone
    del mu
    return renderer


def _render_cases(
    renderer: ChannelRenderer,
    poses: torch.Tensor,
    seeds: np.ndarray,
    degradation: DegradationConfig | HarshConfig,
    render_geometry: CarmGeometry,
    center: np.ndarray,
    resolution: int,
    progress: bool,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The degraded images ``(N, 2R, 2R)`` float32 at ``poses`` (N, 4, 4) and the drawn
    degradation parameters ``{name: (N, ...)}``; case ``i`` draws from its own generator
    seeded with ``seeds[i]``."""
    n_cases = len(seeds)
    images = np.empty((int(n_cases), 2 * resolution, 2 * resolution), dtype=np.float32)
    drawn: list[dict[str, np.ndarray]] = []
    for i in tqdm(range(int(n_cases)), desc="make-benchmark", unit="case", disable=not progress):
        gen = torch.Generator().manual_seed(int(seeds[i]))
        images[i], params = render_view(
            renderer, poses[i : i + 1], gen, degradation, render_geometry, center
        )
        drawn.append(params)
    degradations = {k: np.stack([d[k] for d in drawn]) for k in drawn[0]}
    return images, degradations


def _render_config(
    spacing_mm: float | None, render_ct: Volume, renderer: ChannelRenderer
) -> dict[str, object]:
    """The rendering settings stored in a benchmark's ``config["render"]``."""
    return {
        "spacing_mm": spacing_mm,
        "render_ct_shape": list(render_ct.shape),
        "scale_per_mm": renderer.scale,
        "step_mm": renderer.renderer.step_mm,
        "bone_threshold_hu": BONE_HU_THRESHOLD,
        "renderer": "diffdrr trilinear",
    }
