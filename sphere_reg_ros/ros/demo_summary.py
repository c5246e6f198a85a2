"""The demo's summary: per-frame outcomes → SMSR, mTRE and latency figures, CSV, JSON, plot.

Part of :mod:`.demo` (which re-exports :func:`summarize` and :func:`plot_summary`); ``frames``
are :class:`.demo.Frame` records.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

__all__ = ["summarize", "plot_summary", "write_outputs"]


def summarize(frames: list) -> dict:
    """SMSR over frames with a truth, median mTRE over registered frames, median latency."""
    last = max((f.index for f in frames if f.estimate is not None), default=-1)
    with_truth = [
        f for f in frames if f.truth is not None and f.index <= last
    ]  # later ones: still queued
    registered = [f for f in with_truth if f.estimate is not None]
    mtres = np.array([f.mtre_mm for f in registered])
    return {
        "frames_published": len(with_truth),
        "frames_registered": len(registered),
        "frames_dropped": len(with_truth) - len(registered),
        "smsr": float(np.mean([f.mtre_mm < 1.0 for f in registered])) if registered else 0.0,
        "median_mtre_mm": float(np.median(mtres)) if len(mtres) else float("inf"),
        "p95_mtre_mm": float(np.percentile(mtres, 95)) if len(mtres) else float("inf"),
        "median_latency_s": float(np.median([f.latency_s for f in registered]))
        if registered
        else float("inf"),
    }


def plot_summary(frames: list, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    idx = [f.index for f in frames if f.estimate is not None]
    axes[0].semilogy(idx, [max(f.mtre_mm, 1e-3) for f in frames if f.estimate is not None], "o-")
    axes[0].axhline(1.0, color="r", ls="--", lw=1, label="1 mm")
    missing = [f.index for f in frames if f.truth is not None and f.estimate is None]
    if missing:
        axes[0].plot(missing, [1e-3] * len(missing), "kx", label="dropped (node busy)")
    axes[0].set(
        xlabel="frame",
        ylabel="mTRE (mm)",
        title=f"median {summary['median_mtre_mm']:.3f} mm, SMSR {100 * summary['smsr']:.0f}%",
    )
    axes[0].legend()
    axes[1].plot(idx, [f.latency_s for f in frames if f.estimate is not None], "o-")
    axes[1].set(
        xlabel="frame",
        ylabel="latency image → TF (s)",
        title=f"median {summary['median_latency_s']:.2f} s",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(frames: list, summary: dict, out: Path) -> None:
    """``frames.csv`` (frames with a truth), ``summary.json`` and, when there are frames,
    ``summary.png`` in ``out``."""
    with open(out / "frames.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["frame", "stamp_ns", "mtre_mm", "latency_s", "status"])
        for f in frames:
            if f.truth is not None:
                writer.writerow(
                    [f.index, f.stamp_ns, f"{f.mtre_mm:.4f}", f"{f.latency_s:.3f}", f.status]
                )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if frames:
        plot_summary(frames, summary, out / "summary.png")
