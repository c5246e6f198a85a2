"""Preview image of a benchmark: a grid of cases with their degradations and projected landmarks."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)
import numpy as np  # noqa: E402

from sphere_reg_ros.evaluation.benchmark import Benchmark  # noqa: E402

__all__ = ["save_preview", "project_landmarks"]


def project_landmarks(bm: Benchmark, case: int) -> np.ndarray:
    """Pixel coordinates ``(K, 2)`` (u = column, v = row) of the landmarks in ``bm.images[case]``."""
    T_inv = np.linalg.inv(bm.poses_true[case])
    p_carm = bm.landmarks @ T_inv[:3, :3].T + T_inv[:3, 3]
    return bm.render_geometry.project(p_carm)


def _title(bm: Benchmark, i: int) -> str:
    d = bm.degradations
    if "bone_gain" in d:  # the harsh family
        tags = [f"mineral+{float(d['bone_gain'][i]):.2f}", f"N0 {float(d['photons'][i]):.0e}"]
        tags += [
            name
            for name, key in (("collimator", "collimator"), ("iris", "iris"), ("lead", "lead"))
            if bool(d[key][i])
        ]
        if int(d["screws"][i]):
            tags.append(f"{int(d['screws'][i])} screws")
    else:
        tags = [f"bone×{float(d['bone_multiplier'][i]):.2f}", f"N0 {float(d['photons'][i]):.0e}"]
        if bool(d["collimation"][i]):
            tags.append("shutters")
        if bool(d["metal"][i]):
            tags.append("metal")
    return f"case {i}: " + ", ".join(tags) + f"\ninit mTRE {float(bm.initial_mtre_mm[i]):.1f} mm"


def save_preview(
    path: str | Path, bm: Benchmark, n_cases: int = 8, columns: int = 4, landmarks: bool = True
) -> Path:
    """Write a PNG grid of the first ``n_cases`` images (radiological display: dense = white,
    patient's head up, patient's right on the image's left for the AP view); with ``landmarks``
    the landmarks projected by the true pose are marked (cyan +)."""
    path = Path(path)
    n = max(1, min(int(n_cases), bm.n_cases))
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.5 * rows), squeeze=False)
    size = bm.images.shape[-1]
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        image = bm.images[k]
        lo, hi = np.percentile(image, [0.5, 99.5])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if landmarks:
            uv = project_landmarks(bm, k)
            keep = (
                (uv[:, 0] >= 0) & (uv[:, 0] <= size - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= size - 1)
            )
            ax.plot(uv[keep, 0], uv[keep, 1], "+", color="cyan", markersize=4, markeredgewidth=0.8)
        ax.set_title(_title(bm, k), fontsize=7)
    fig.suptitle(
        f"{Path(bm.ct_source).name}: {bm.n_cases} cases, rendered {size}², registration "
        f"{bm.resolution}², seed {bm.seed} ({bm.split})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
