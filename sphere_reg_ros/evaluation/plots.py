"""Evaluation plots (matplotlib, Agg backend, PNG): convergence (the seed's Fig. 4, right) and
the similarity landscape around the true pose (the seed's Fig. 3).

* :func:`convergence`: mTRE and cost against iteration and against wall time, one line per
  optimiser: the median over cases, with the 25–75 % band. Costs are relative to each case's
  cost at the start of each scale (methods and image sizes have different cost scales). A case is held at its last value after it
  stops; failed cases end at +inf (drawn at the top of the axis).
* :func:`landscape`: 1-D sweeps of each pose parameter around the true pose (translations of
  the CT centre ±``trans_mm`` mm along the CT world axes, rotations about it ±``rot_deg``°), one
  line per similarity, each normalised to [0, 1] over the whole sweep -- a sharper, single
  minimum at 0 is better.
* :func:`depth_inplane`: per method, box plots of the depth error (along the first view's beam)
  and the in-plane error (across it).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sphere_reg_ros.core.geometry import se3_exp  # noqa: E402
from sphere_reg_ros.core.lm import increment_matrix, resize_images  # noqa: E402

__all__ = [
    "convergence",
    "landscape",
    "landscape_for_benchmark",
    "depth_inplane",
    "PARAMETER_NAMES",
]

PARAMETER_NAMES = ("x (mm)", "y (mm)", "z (mm)", "rx (deg)", "ry (deg)", "rz (deg)")


def _resample_steps(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Value of the step function (last record at or before each grid point) on ``grid``."""
    if len(x) == 0:
        return np.full(len(grid), np.nan)
    k = np.searchsorted(x, grid, side="right") - 1
    return np.where(k >= 0, y[np.clip(k, 0, len(y) - 1)], y[0])


def _band(ax, grid, values: np.ndarray, label: str, color) -> None:
    if not np.isfinite(values).any() and not np.isinf(values).any():
        return  # nothing to draw (e.g. the regressor row has no cost)
    finite_cap = (
        np.nanmax(np.where(np.isfinite(values), values, np.nan))
        if np.isfinite(values).any()
        else 1.0
    )
    v = np.where(np.isinf(values), finite_cap * 10, values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN (not drawn)
        med = np.nanmedian(v, axis=0)
        lo, hi = np.nanpercentile(v, 25, axis=0), np.nanpercentile(v, 75, axis=0)
    ax.plot(grid, med, label=label, color=color, lw=1.8)
    ax.fill_between(grid, lo, hi, color=color, alpha=0.18, lw=0)


def _relative_cost(curve: Mapping[str, np.ndarray]) -> np.ndarray:
    """Cost divided by the cost at the start of its scale (costs of different image sizes differ)."""
    cost = np.asarray(curve["cost"], dtype=float)
    scale = np.asarray(curve.get("scale", np.zeros(len(cost))), dtype=float)
    out = np.full(len(cost), np.nan)
    start = 0
    for k in range(1, len(cost) + 1):
        if k == len(cost) or scale[k] != scale[start]:
            c0 = cost[start]
            if math.isfinite(c0) and c0 != 0:
                out[start:k] = cost[start:k] / c0
            start = k
    return out


def convergence(runs: Mapping[str, object], path: str | Path) -> list[Path]:
    """Write the 2×2 convergence figure for the runs (``MethodRun``) to ``path``."""
    path = Path(path)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (name, run) in enumerate(runs.items()):
        curves = [c for c in run.curves if len(c["iteration"])]
        if not curves:
            continue
        color = colors[j % len(colors)]
        it_max = max(c["iteration"][-1] for c in curves)
        t_max = max(c["elapsed_s"][-1] for c in curves)
        it_grid = np.arange(0, it_max + 1)
        t_grid = np.linspace(0, max(t_max, 1e-3), 200)
        for col, (xkey, grid) in enumerate((("iteration", it_grid), ("elapsed_s", t_grid))):
            m = np.stack([_resample_steps(c[xkey], c["mtre_mm"], grid) for c in curves])
            rel = [_resample_steps(c[xkey], _relative_cost(c), grid) for c in curves]
            _band(axes[0, col], grid, m, name, color)
            _band(axes[1, col], grid, np.stack(rel), name, color)
    for col, xl in enumerate(("iteration", "wall time per case (s)")):
        axes[0, col].set(
            xlabel=xl, ylabel="mTRE (mm)", yscale="log", title=f"mTRE vs {xl.split(' (')[0]}"
        )
        axes[1, col].set(
            xlabel=xl,
            ylabel="cost / cost at the start of its scale",
            yscale="log",
            title=f"cost vs {xl.split(' (')[0]} (restarts at 1 at each finer scale)",
        )
        axes[0, col].axhline(1.0, color="k", lw=0.8, ls=":")
        for r in range(2):
            axes[r, col].grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        "Convergence: median over cases, 25-75 % band (a stopped case holds its last value)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def landscape(
    costs: Mapping[str, np.ndarray], offsets: np.ndarray, path: str | Path, title: str = ""
) -> list[Path]:
    """Plot sweeps ``costs[name]`` (6, S) over ``offsets`` (6, S) (mm / degrees) to ``path``."""
    path = Path(path)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for k, ax in enumerate(axes.ravel()):
        for name, c in costs.items():
            v = c[k]
            span = np.nanmax(c) - np.nanmin(c)
            ax.plot(
                offsets[k], (v - np.nanmin(c)) / (span if span > 0 else 1.0), label=name, lw=1.6
            )
        ax.axvline(0.0, color="k", lw=0.8, ls=":")
        ax.set(xlabel=PARAMETER_NAMES[k], ylabel="normalised cost")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title or "Similarity landscape around the true pose")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def sweep_poses(
    true_pose: torch.Tensor,
    center: np.ndarray,
    trans_mm: float = 20.0,
    rot_deg: float = 10.0,
    steps: int = 21,
) -> tuple[torch.Tensor, np.ndarray]:
    """Poses ``(6, S, 4, 4)`` sweeping each centred increment parameter, and offsets ``(6, S)``."""
    P = increment_matrix(torch.as_tensor(center, dtype=torch.float64), 1.0)
    offsets = np.stack(
        [np.linspace(-trans_mm, trans_mm, steps)] * 3 + [np.linspace(-rot_deg, rot_deg, steps)] * 3
    )
    s = torch.zeros(6, steps, 6, dtype=torch.float64)
    for k in range(6):
        s[k, :, k] = torch.as_tensor(offsets[k] if k < 3 else np.radians(offsets[k]))
    return se3_exp(s @ P.T) @ true_pose.to(torch.float64), offsets


def landscape_for_benchmark(benchmark, extra: dict, path: str | Path, case: int = 0) -> list[Path]:
    """Landscape of every similarity used in an evaluation (``extra`` from ``evaluate_methods.build_runners``)."""
    registrars = list(extra["registrars"].values())
    reg = registrars[0]
    geometry = reg.registration_geometry(benchmark.render_geometry)
    renderer = reg.renderer(geometry)
    fixed = resize_images(
        torch.from_numpy(benchmark.images[case : case + 1])[:, None],
        geometry.height,
        geometry.width,
    )
    poses, offsets = sweep_poses(
        torch.as_tensor(benchmark.poses_true[case])[None], reg.center_world
    )
    with torch.no_grad():
        flat = poses.reshape(-1, 4, 4)
        window = renderer.window(flat.float())
        images = torch.cat(
            [renderer(flat[i : i + 21].float(), window=window) for i in range(0, len(flat), 21)]
        )
        costs = {}
        for name, sim in extra["similarities"].items():
            if hasattr(sim, "embed"):
                ef = sim.embed(fixed.to(images))
                vals = []
                for i in range(0, len(images), 21):
                    r = sim.residuals(
                        sim.embed(images[i : i + 21]),
                        ef.expand(len(images[i : i + 21]), *ef.shape[1:]),
                    )
                    vals.append(0.5 * (r * r).sum(-1))
                costs[name] = torch.cat(vals).reshape(6, -1).double().numpy()
            else:
                costs[name] = (
                    sim(images, fixed.expand(len(images), -1, -1, -1).to(images))
                    .reshape(6, -1)
                    .double()
                    .numpy()
                )
    if not costs:
        return []
    return landscape(
        costs, offsets, path, f"Similarity landscape around the true pose of case {case}"
    )


def reliability(points: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> list[Path]:
    """Predicted vs actual error at the region of interest, one panel per method.

    ``points[name]``: ``predicted_mm`` (the 95 % radius of the predicted error along its worst axis,
    ``2.80 · largest std``), ``actual_mm`` (the true error's length), ``passed`` (bool: the
    registration passed the gates) and ``mtre_mm``. A calibrated, honest method has its passed
    cases below the diagonal (the actual error inside the predicted 95 % radius) and its failures
    flagged.
    """
    path = Path(path)
    names = [n for n in points if len(points[n]["actual_mm"])]
    if not names:
        return []
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        p = points[name]
        pred = np.clip(np.nan_to_num(p["predicted_mm"], nan=1e3, posinf=1e3), 1e-3, 1e3)
        act = np.clip(np.nan_to_num(p["actual_mm"], nan=1e3, posinf=1e3), 1e-3, 1e3)
        passed = np.asarray(p["passed"], dtype=bool)
        bad = np.asarray(p["mtre_mm"]) > 2.0
        for sel, style, label in (
            (passed & ~bad, dict(c="tab:green", marker="o"), "passed, mTRE ≤ 2 mm"),
            (passed & bad, dict(c="tab:red", marker="o"), "passed, mTRE > 2 mm"),
            (~passed & ~bad, dict(c="tab:gray", marker="x"), "flagged, mTRE ≤ 2 mm"),
            (~passed & bad, dict(c="tab:orange", marker="x"), "flagged, mTRE > 2 mm"),
        ):
            if sel.any():
                ax.scatter(
                    pred[sel],
                    act[sel],
                    s=18,
                    alpha=0.8,
                    label=f"{label} ({int(sel.sum())})",
                    **style,
                )
        lo, hi = 1e-2, max(1e2, float(max(pred.max(), act.max())))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="actual = predicted")
        ax.set(
            xscale="log",
            yscale="log",
            xlim=(lo, hi),
            ylim=(lo, hi),
            title=name,
            xlabel="predicted 95 % error radius at the ROI (mm)",
            ylabel="actual error at the ROI (mm)",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Reliability: predicted vs actual error at the region of interest\n"
        "(points above the diagonal lie outside the predicted 95 % radius)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def depth_inplane(runs: Mapping[str, object], path: str | Path) -> list[Path]:
    """Box plot of each method's per-case depth error (along the first view's beam) beside its
    in-plane error (across it), in mm on a log axis; failed cases (inf) drawn at the top. ``runs``:
    :class:`~.evaluate.MethodRun` with ``depth_mm`` and ``inplane_mm``."""
    path = Path(path)
    names = [n for n, r in runs.items() if len(getattr(r, "depth_mm", ()))]
    if not names:
        return []
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) + 1.5), 4.2))
    top = 1e3
    for j, name in enumerate(names):
        r = runs[name]
        for dx, values, color in (
            (-0.18, r.depth_mm, "tab:blue"),
            (0.18, r.inplane_mm, "tab:orange"),
        ):
            v = np.clip(np.nan_to_num(np.asarray(values, float), nan=top, posinf=top), 1e-3, top)
            box = ax.boxplot(v, positions=[j + dx], widths=0.3, patch_artist=True, showfliers=True)
            for patch in box["boxes"]:
                patch.set(facecolor=color, alpha=0.6)
    ax.plot([], [], "s", color="tab:blue", label="depth (along the first view's beam)")
    ax.plot([], [], "s", color="tab:orange", label="in-plane (across it)")
    ax.set(
        yscale="log",
        xticks=range(len(names)),
        ylabel="error at the landmarks, mean per case (mm)",
        title="Depth vs in-plane error per method (failures at the top)",
    )
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
