"""Registration metrics: mTRE, mPD, mRPD, pose errors, SMSR and the seed paper's Table 1 layout.

Poses are ``T_ct_from_carm`` tensors (B, 4, 4) in mm (see :mod:`sphere_reg_ros.core`). mTRE is a
3D distance in mm between landmarks; it is never multiplied by a detector pixel spacing (the
mistake of DiffPose's evaluation code; docs/ARCHITECTURE.md, Baselines and the physics gap). A
non-finite mTRE (NaN / inf) is a failed case: it counts in ``n``, is never below the threshold,
and ranks as +inf in the percentiles; it is never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sphere_reg_ros.core.geometry import se3_inverse, so3_log

__all__ = [
    "mtre",
    "mpd",
    "mrpd",
    "depth_error",
    "rotation_error_deg",
    "translation_error_mm",
    "smsr",
    "Summary",
    "summarize",
    "format_table",
    "to_csv_rows",
    "CSV_FIELDS",
    "TABLE_COLUMNS",
]

TABLE_COLUMNS = (
    "Method",
    "SMSR",
    "Median (mm)",
    "75%",
    "95%",
    "mPD (mm)",
    "mRPD (mm)",
    "Depth (mm)",
    "In-plane (mm)",
    "Run time",
)
CSV_FIELDS = (
    "method",
    "n",
    "smsr",
    "median_mm",
    "p75_mm",
    "p95_mm",
    "mpd_median_mm",
    "mrpd_median_mm",
    "depth_median_mm",
    "inplane_median_mm",
    "run_time_s",
    "threshold_mm",
)


def _poses(T_est: torch.Tensor, T_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, T in (("T_est", T_est), ("T_true", T_true)):
        if not isinstance(T, torch.Tensor) or not T.is_floating_point():
            raise ValueError(f"{name} must be a floating torch.Tensor")
        if T.dim() != 3 or tuple(T.shape[1:]) != (4, 4):
            raise ValueError(f"{name} must have shape (B, 4, 4), got {tuple(T.shape)}")
    if T_est.shape[0] != T_true.shape[0] and 1 not in (T_est.shape[0], T_true.shape[0]):
        raise ValueError(f"batch sizes differ: {T_est.shape[0]} vs {T_true.shape[0]}")
    return T_est, T_true.to(dtype=T_est.dtype, device=T_est.device)


def _in_carm_frames(
    T_est: torch.Tensor, T_true: torch.Tensor, landmarks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks ``(K, 3)`` or ``(B, K, 3)`` (mm, CT world) in the estimated and in the true C-arm
    frame: two ``(B, K, 3)`` tensors ``T_est^-1 p`` and ``T_true^-1 p``."""
    T_est, T_true = _poses(T_est, T_true)
    p = torch.as_tensor(landmarks)
    if p.dim() not in (2, 3) or p.shape[-1] != 3:
        raise ValueError(f"landmarks must have shape (K, 3) or (B, K, 3), got {tuple(p.shape)}")
    if p.shape[-2] == 0:
        raise ValueError("landmarks must not be empty")
    B = max(T_est.shape[0], T_true.shape[0])
    if p.dim() == 3 and p.shape[0] not in (1, B):
        raise ValueError(f"landmarks batch {p.shape[0]} does not match the poses' batch {B}")
    p = p.to(dtype=T_est.dtype, device=T_est.device)
    if p.dim() == 2:
        p = p[None]

    def to_carm(T: torch.Tensor) -> torch.Tensor:
        Ti = se3_inverse(T)
        return p @ Ti[:, :3, :3].transpose(-1, -2) + Ti[:, None, :3, 3]

    return to_carm(T_est), to_carm(T_true)


def mtre(T_est: torch.Tensor, T_true: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Mean target registration error (B,) in mm.

    ``mean_k |T_est^-1 p_k - T_true^-1 p_k|``: landmarks ``p_k`` (K, 3) or (B, K, 3), mm in the
    CT world frame, mapped into the C-arm frame by each pose (B, 4, 4) ``T_ct_from_carm``.
    """
    p_est, p_true = _in_carm_frames(T_est, T_true, landmarks)
    return torch.linalg.vector_norm(p_est - p_true, dim=-1).mean(-1)


def mpd(
    T_est: torch.Tensor, T_true: torch.Tensor, landmarks: torch.Tensor, sdd_mm: float
) -> torch.Tensor:
    """Mean projection distance (B,) in mm on the detector (docs/METRICS.md).

    Each landmark is projected onto the detector (``sdd_mm`` from the source) with the true and
    with the estimated pose; the mean distance between the two projections, in mm on the detector
    plane. It equals the distance in pixels times the pixel spacing, whatever the spacing and the
    principal point, so only the source-to-detector distance enters. A landmark at or behind the
    source in either pose has no projection: that case's mPD is +inf.
    """
    if not (math.isfinite(sdd_mm) and sdd_mm > 0):
        raise ValueError(f"sdd_mm must be finite and > 0, got {sdd_mm}")
    p_est, p_true = _in_carm_frames(T_est, T_true, landmarks)
    front = (p_est[..., 2] > 0) & (p_true[..., 2] > 0)
    d = sdd_mm * (p_est[..., :2] / p_est[..., 2:] - p_true[..., :2] / p_true[..., 2:])
    dist = torch.where(front, torch.linalg.vector_norm(d, dim=-1), math.inf)
    return dist.mean(-1)


def mrpd(T_est: torch.Tensor, T_true: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Mean reprojection distance (B,) in mm (docs/METRICS.md).

    Each landmark's true projection (with the true pose) is cast back into the CT as the ray of
    the estimated pose from its source through that detector point; the mean distance between
    the landmark and that ray (the whole line). In the estimated C-arm frame the ray runs along
    ``T_true^-1 p`` from the origin, so the distance is ``|T_est^-1 p x unit(T_true^-1 p)|``:
    independent of the intrinsics, zero at the true pose.
    """
    p_est, p_true = _in_carm_frames(T_est, T_true, landmarks)
    ray = p_true / torch.linalg.vector_norm(p_true, dim=-1, keepdim=True)
    return torch.linalg.vector_norm(torch.linalg.cross(p_est, ray, dim=-1), dim=-1).mean(-1)


def depth_error(T_est: torch.Tensor, T_true: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Mean depth error (B,) in mm: the error along the beam (docs/METRICS.md).

    Each landmark's error ``T_est^-1 p - T_true^-1 p`` (as in :func:`mtre`) is split along the
    beam through its true position (the ray from the source through ``T_true^-1 p``): the mean
    length of the part along the ray. The part across the ray, the in-plane error, is the
    landmark's distance to that ray, i.e. :func:`mrpd`; per landmark ``depth² + in-plane² =
    TRE²``.
    """
    p_est, p_true = _in_carm_frames(T_est, T_true, landmarks)
    ray = p_true / torch.linalg.vector_norm(p_true, dim=-1, keepdim=True)
    return ((p_est - p_true) * ray).sum(-1).abs().mean(-1)


def rotation_error_deg(T_est: torch.Tensor, T_true: torch.Tensor) -> torch.Tensor:
    """Angle (B,) in degrees of the relative rotation ``R_est^T R_true`` (in [0, 180])."""
    T_est, T_true = _poses(T_est, T_true)
    R = T_est[:, :3, :3].transpose(-1, -2) @ T_true[:, :3, :3]
    return torch.rad2deg(torch.linalg.vector_norm(so3_log(R), dim=-1))


def translation_error_mm(T_est: torch.Tensor, T_true: torch.Tensor) -> torch.Tensor:
    """Norm (B,) in mm of the translation of ``T_est^-1 T_true``.

    Since ``T_est^-1 T_true = (R_est^T R_true, R_est^T (t_true - t_est))``, this equals
    ``|t_true - t_est|``: the distance between the estimated and the true X-ray source (origin
    of the C-arm frame) in the CT world frame.
    """
    T_est, T_true = _poses(T_est, T_true)
    return torch.linalg.vector_norm(T_true[:, :3, 3] - T_est[:, :3, 3], dim=-1)


def _values(x: torch.Tensor | np.ndarray | Sequence[float], name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty")
    return a


def _check_threshold(threshold_mm: float) -> None:
    if not (math.isfinite(threshold_mm) and threshold_mm > 0):
        raise ValueError(f"threshold_mm must be finite and > 0, got {threshold_mm}")


def smsr(mtres: torch.Tensor | np.ndarray | Sequence[float], threshold_mm: float = 1.0) -> float:
    """Share in [0, 1] of cases with ``mTRE < threshold_mm``; NaN / inf count as failures."""
    _check_threshold(threshold_mm)
    a = _values(mtres, "mtres")
    return float(np.count_nonzero(np.isfinite(a) & (a < threshold_mm)) / a.size)


def _percentile(sorted_a: np.ndarray, q: float) -> float:
    """numpy's default ('linear') percentile of a sorted array that may hold +inf."""
    h = (sorted_a.size - 1) * q / 100.0
    lo, hi = math.floor(h), math.ceil(h)
    a, b = float(sorted_a[lo]), float(sorted_a[hi])
    if lo == hi or a == b:
        return a
    return math.inf if math.isinf(b) else a + (h - lo) * (b - a)


@dataclass(frozen=True)
class Summary:
    """One row of Table 1: ``n`` cases, ``smsr`` in [0, 1], mTRE percentiles in mm (+inf when
    failures reach them), mean run time per case in s (NaN if not measured), and the medians of
    the mean projection distance on the detector, of the mean reprojection distance and of the
    depth and in-plane errors in mm (:func:`mpd`, :func:`mrpd`, :func:`depth_error`; NaN when not
    measured, +inf when failures reach them)."""

    n: int
    smsr: float
    median_mm: float
    p75_mm: float
    p95_mm: float
    run_time_s: float
    threshold_mm: float = 1.0
    mpd_median_mm: float = math.nan
    mrpd_median_mm: float = math.nan
    depth_median_mm: float = math.nan
    inplane_median_mm: float = math.nan


def _median_of(values, n: int, name: str) -> float:
    """Median of per-case values (N,) with non-finite ones ranked +inf; NaN when None."""
    if values is None:
        return math.nan
    a = _values(values, name)
    if a.size != n:
        raise ValueError(f"{a.size} {name} for {n} mTREs")
    return _percentile(np.sort(np.where(np.isfinite(a), a, np.inf)), 50)


def summarize(
    mtres: torch.Tensor | np.ndarray | Sequence[float],
    run_times_s: torch.Tensor | np.ndarray | Sequence[float] | None,
    threshold_mm: float = 1.0,
    mpd_mm: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    mrpd_mm: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    depth_mm: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    inplane_mm: torch.Tensor | np.ndarray | Sequence[float] | None = None,
) -> Summary:
    """Summary of per-case mTREs (N,) in mm and run times (N,) in s (or None), and optionally the
    per-case mPD, mRPD, depth and in-plane errors (N,) in mm (:func:`mpd`, :func:`mrpd`,
    :func:`depth_error`).

    Non-finite errors are failures and rank as +inf in the percentiles (numpy 'linear' method).
    """
    _check_threshold(threshold_mm)
    a = _values(mtres, "mtres")
    if run_times_s is None:
        rt = math.nan
    else:
        r = _values(run_times_s, "run_times_s")
        if r.size != a.size:
            raise ValueError(f"{r.size} run times for {a.size} mTREs")
        if not np.all(np.isfinite(r) & (r >= 0)):
            raise ValueError("run times must be finite and >= 0")
        rt = float(r.mean())
    s = np.sort(np.where(np.isfinite(a), a, np.inf))
    return Summary(
        n=int(a.size),
        smsr=smsr(a, threshold_mm),
        median_mm=_percentile(s, 50),
        p75_mm=_percentile(s, 75),
        p95_mm=_percentile(s, 95),
        run_time_s=rt,
        threshold_mm=float(threshold_mm),
        mpd_median_mm=_median_of(mpd_mm, a.size, "mpd_mm"),
        mrpd_median_mm=_median_of(mrpd_mm, a.size, "mrpd_mm"),
        depth_median_mm=_median_of(depth_mm, a.size, "depth_mm"),
        inplane_median_mm=_median_of(inplane_mm, a.size, "inplane_mm"),
    )


def _fmt_mm(x: float) -> str:
    """Three significant figures as in the seed's table: 0.51, 2.51, 16.6, 123."""
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def _fmt_time(x: float) -> str:
    if math.isnan(x):
        return "-"
    return "<0.1 s" if x < 0.05 else f"{x:.1f} s"


def format_table(rows: dict[str, Summary], title: str | None = None) -> str:
    """Aligned text table (Markdown-compatible) in the layout of the seed paper's Table 1.

    Columns: Method | SMSR | Median (mm) | 75% | 95% | mPD (mm) | mRPD (mm) | Depth (mm) |
    In-plane (mm) | Run time (percentiles of mTRE in mm, SMSR in %, medians of mPD, mRPD and the
    depth and in-plane errors in mm ("-" when not measured), mean run time per case). ``title`` (optional) goes above the table.
    """
    if not rows:
        raise ValueError("rows must not be empty")
    body = []
    for name, s in rows.items():
        if not isinstance(s, Summary):
            raise ValueError(f"row {name!r} is not a Summary")
        body.append(
            [
                str(name),
                f"{100 * s.smsr:.1f}%",
                _fmt_mm(s.median_mm),
                _fmt_mm(s.p75_mm),
                _fmt_mm(s.p95_mm),
                _fmt_mm(s.mpd_median_mm),
                _fmt_mm(s.mrpd_median_mm),
                _fmt_mm(s.depth_median_mm),
                _fmt_mm(s.inplane_median_mm),
                _fmt_time(s.run_time_s),
            ]
        )
    widths = [
        max(len(r[i]) for r in [list(TABLE_COLUMNS), *body]) for i in range(len(TABLE_COLUMNS))
    ]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(out) + " |"

    rule = (
        "|"
        + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]])
        + "|"
    )
    lines = ([title, ""] if title else []) + [line(TABLE_COLUMNS), rule] + [line(r) for r in body]
    return "\n".join(lines)


def to_csv_rows(rows: dict[str, Summary]) -> list[dict[str, str | int | float]]:
    """One dict per method with keys :data:`CSV_FIELDS` (numbers unformatted; smsr in [0, 1]),
    for ``csv.DictWriter(f, fieldnames=CSV_FIELDS)``."""
    out: list[dict[str, str | int | float]] = []
    for name, s in rows.items():
        if not isinstance(s, Summary):
            raise ValueError(f"row {name!r} is not a Summary")
        out.append(
            {
                "method": str(name),
                "n": s.n,
                "smsr": s.smsr,
                "median_mm": s.median_mm,
                "p75_mm": s.p75_mm,
                "p95_mm": s.p95_mm,
                "mpd_median_mm": s.mpd_median_mm,
                "mrpd_median_mm": s.mrpd_median_mm,
                "depth_median_mm": s.depth_median_mm,
                "inplane_median_mm": s.inplane_median_mm,
                "run_time_s": s.run_time_s,
                "threshold_mm": s.threshold_mm,
            }
        )
    return out
