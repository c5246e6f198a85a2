"""Further C-arm views of a benchmark's cases (biplane; ``make-benchmark --views 2``).

View 0 is the benchmark's own image (``Benchmark.images``, unchanged: a 2-view benchmark's first
view equals the 1-view benchmark of the same arguments). View ``k ≥ 1`` of case ``i`` is rendered
at ``T_ct_from_carmk = poses_true[i] @ offsets[k - 1]`` with the same renderer and geometry, and
degraded independently: its own degradation draw and noise from a generator seeded with
``SeedSequence([split_seed, 3, i, k])``, a stream apart from the first view's (which stays
untouched). ``offsets[k - 1] = core.views.orbit_offset(k · angle, sod)``: the C-arm turned by ``k
· angle`` about the first view's image-row axis through its isocentre, the same for every case.

File entries (all absent in a 1-view file): ``images_views`` ``(N, V-1, 2R, 2R)`` float32,
``view_offsets`` ``(V-1, 4, 4)`` float64 ``T_carm0_from_carmk``, ``view_case_seeds`` ``(N, V-1)``
int64 and one ``view_degradation.<name>`` ``(N, V-1, ...)`` per degradation parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.views import orbit_offset
from sphere_reg_ros.evaluation.degrade import (
    ChannelRenderer,
    DegradationConfig,
    apply_degradations,
    draw_degradations,
)
from sphere_reg_ros.evaluation.degrade_harsh import HarshConfig, apply_harsh, draw_harsh

__all__ = [
    "ExtraViews",
    "render_view",
    "render_extra_views",
    "view_offsets",
    "view_arrays",
    "checked_views",
    "all_rigid",
]

#: Prefix of the per-view degradation parameters in a benchmark file.
DEGRADATION_PREFIX = "view_degradation."


@dataclass(frozen=True, eq=False)
class ExtraViews:
    """Views ``1 .. V-1`` of every case (view 0 is ``Benchmark.images``).

    Attributes:
        images: ``(N, V-1, 2R, 2R)`` float32 degraded X-rays on the benchmark's render geometry.
        offsets: ``(V-1, 4, 4)`` float64 ``T_carm0_from_carmk``, the same for every case.
        case_seeds: ``(N, V-1)`` int64 seeds of each view's degradation generator.
        degradations: ``{name: (N, V-1, ...)}`` each view's drawn degradation parameters.
    """

    images: np.ndarray
    offsets: np.ndarray
    case_seeds: np.ndarray
    degradations: dict[str, np.ndarray]


def view_offsets(n_views: int, angle_deg: float, sod_mm: float) -> np.ndarray:
    """``(V-1, 4, 4)`` offsets of views ``1 .. V-1`` (view ``k`` turned by ``k · angle_deg``).

    Raises:
        ValueError: ``n_views`` < 2, or a turn outside (0°, 180°) (the views would coincide or
            look along one line).
    """
    if isinstance(n_views, bool) or not isinstance(n_views, (int, np.integer)) or n_views < 2:
        raise ValueError(f"views: need an integer >= 2 for extra views, got {n_views!r}")
    turns = [k * float(angle_deg) for k in range(1, int(n_views))]
    if not all(np.isfinite(a) and 0.0 < a < 180.0 for a in turns):
        raise ValueError(
            f"view angle must put every view strictly between 0 and 180 degrees from the first, "
            f"got {angle_deg!r} for {n_views} views"
        )
    return np.stack([orbit_offset(a, sod_mm) for a in turns])


def _view_seeds(root: int, n_cases: int, n_extra: int) -> np.ndarray:
    """``(N, V-1)`` int64 seeds of view ``k = 1 .. V-1`` of case ``i``."""
    return np.array(
        [
            [
                int(np.random.SeedSequence([root, 3, i, k]).generate_state(1, np.uint64)[0] >> 1)
                for k in range(1, n_extra + 1)
            ]
            for i in range(n_cases)
        ],
        dtype=np.int64,
    ).reshape(n_cases, n_extra)


def render_view(
    renderer: ChannelRenderer,
    pose: torch.Tensor,
    generator: torch.Generator,
    degradation: DegradationConfig | HarshConfig,
    render_geometry: CarmGeometry,
    center: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One degraded image ``(2R, 2R)`` float32 at ``pose`` ``(1, 4, 4)`` and its drawn parameters;
    the parameters, then the noise, come from ``generator``."""
    harsh = isinstance(degradation, HarshConfig)
    draw, apply = (draw_harsh, apply_harsh) if harsh else (draw_degradations, apply_degradations)
    T = pose[0].numpy()
    params = draw(degradation, generator, T, render_geometry, center)
    p_a, p_b = renderer(pose)
    image = apply(
        p_a, p_b, params, render_geometry, T, generator, renderer.scale, noise=degradation.noise
    )
    return image.numpy(), params


def render_extra_views(
    renderer: ChannelRenderer,
    poses: torch.Tensor,
    offsets: np.ndarray,
    root: int,
    degradation: DegradationConfig | HarshConfig,
    center: np.ndarray,
    progress: bool = False,
) -> ExtraViews:
    """Views ``1 .. V-1`` of the cases at ``poses`` ``(N, 4, 4)`` (``offsets`` ``(V-1, 4, 4)``)."""
    n, n_extra = int(poses.shape[0]), int(offsets.shape[0])
    seeds = _view_seeds(int(root), n, n_extra)
    geometry = renderer.geometry
    images = np.empty((n, n_extra, geometry.height, geometry.width), dtype=np.float32)
    drawn: list[list[dict[str, np.ndarray]]] = []
    offs = torch.as_tensor(offsets, dtype=poses.dtype)
    for i in tqdm(range(n), desc="make-benchmark views", unit="case", disable=not progress):
        row = []
        for k in range(n_extra):
            gen = torch.Generator().manual_seed(int(seeds[i, k]))
            pose = (poses[i] @ offs[k])[None]
            images[i, k], params = render_view(renderer, pose, gen, degradation, geometry, center)
            row.append(params)
        drawn.append(row)
    degradations = {
        name: np.stack([np.stack([d[name] for d in row]) for row in drawn]) for name in drawn[0][0]
    }
    return ExtraViews(images, np.asarray(offsets, np.float64), seeds, degradations)


def view_arrays(views: ExtraViews) -> dict[str, np.ndarray]:
    """The file entries of ``views`` (see the module docstring)."""
    arrays = {
        "images_views": np.asarray(views.images, dtype=np.float32),
        "view_offsets": np.asarray(views.offsets, dtype=np.float64),
        "view_case_seeds": np.asarray(views.case_seeds, dtype=np.int64),
    }
    for name, values in views.degradations.items():
        arrays[DEGRADATION_PREFIX + name] = np.asarray(values)
    return arrays


def checked_views(
    data: dict[str, np.ndarray],
    n: int,
    side: int,
    param_names: dict[str, tuple[int, ...]],
    fail: Callable[[str], Exception],
) -> ExtraViews | None:
    """The extra views of a file's ``data`` with ``n`` cases of ``side × side`` pixels, or None
    when it has none; ``fail(problem)`` builds the error to raise (the problem names the entry)."""
    keys = ("images_views", "view_offsets", "view_case_seeds")
    present = [k for k in data if k in keys or k.startswith(DEGRADATION_PREFIX)]
    if not present:
        return None
    missing = [k for k in keys if k not in data]
    missing += [DEGRADATION_PREFIX + p for p in param_names if DEGRADATION_PREFIX + p not in data]
    if missing:
        raise fail(f"has {sorted(present)} but misses entries {missing}")
    images = data["images_views"]
    if images.dtype != np.float32 or images.ndim != 4 or images.shape[1] < 1:
        raise fail(
            f"images_views must be (N, V-1, H, W) float32, got {images.shape} {images.dtype}"
        )
    n_extra = images.shape[1]
    if images.shape != (n, n_extra, side, side):
        raise fail(f"images_views must have shape {(n, n_extra, side, side)}, got {images.shape}")
    if not np.isfinite(images).all():
        raise fail("images_views contain NaN or infinite values")
    _check_offsets(data["view_offsets"], n_extra, fail)
    seeds = data["view_case_seeds"]
    if seeds.shape != (n, n_extra) or not np.issubdtype(seeds.dtype, np.integer):
        raise fail(f"view_case_seeds must be ({n}, {n_extra}) integers, got {seeds.shape}")
    degradations = {}
    for name, tail in param_names.items():
        values = data[DEGRADATION_PREFIX + name]
        if values.shape != (n, n_extra, *tail):
            raise fail(
                f"{DEGRADATION_PREFIX}{name} must have shape {(n, n_extra, *tail)}, "
                f"got {values.shape}"
            )
        degradations[name] = values
    return ExtraViews(images, data["view_offsets"], seeds, degradations)


def _check_offsets(T: np.ndarray, n_extra: int, fail: Callable[[str], Exception]) -> None:
    """``view_offsets``: ``n_extra`` finite rigid float64 transforms."""
    if T.shape != (n_extra, 4, 4) or T.dtype != np.float64 or not np.isfinite(T).all():
        raise fail(
            f"view_offsets must be finite ({n_extra}, 4, 4) float64, got {T.shape} {T.dtype}"
        )
    if not all_rigid(T):
        raise fail("view_offsets are not rigid transforms")


def all_rigid(T: np.ndarray) -> bool:
    """Whether every ``(4, 4)`` of ``T`` ``(n, 4, 4)`` is a rigid transform (rotation to 1e-6,
    last row exactly ``0 0 0 1``)."""
    R = T[:, :3, :3]
    return not (
        np.abs(R.transpose(0, 2, 1) @ R - np.eye(3)).max() > 1e-6
        or np.abs(np.linalg.det(R) - 1.0).max() > 1e-6
        or np.abs(T[:, 3] - [0.0, 0.0, 0.0, 1.0]).max() > 0
    )
