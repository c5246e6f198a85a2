"""``sphere-reg benchmark-node --views N``: the node's latency with N C-arm views against one.

For each device the benchmark of :mod:`.benchmark_latency` runs twice, in the same process and
from the same poses: the node with one view, then with ``N`` views (its ``views`` parameter and the
relative poses as ``view_offsets_mm``: view ``k`` turned by ``k * --view-angle`` about the first
view's isocentre, as the ``carm_simulator``'s views). The player publishes every view of a frame
with one stamp and measures publish → TF, as for one view; each view is the same CT rendered at
``T_ct_from_carm0 @ T_carm0_from_carmk``. The report prints both in the same table and the ratio
N views / one view of the cold and tracking medians (the issue's target: at most 2×).
"""

from __future__ import annotations

import argparse
from typing import Callable

import numpy as np

from .carm_simulator import view_offsets

__all__ = ["add_view_arguments", "render_views", "bench_mono_and_views", "report_ratios"]

#: What the several-view node may cost at most, relative to one view (cold and tracking medians).
MAX_RATIO = 2.0


def add_view_arguments(parser: argparse.ArgumentParser, views: int = 1, angle: float = 90.0):
    """``--views`` and ``--view-angle`` (``sphere-reg benchmark-node`` declares the same)."""
    parser.add_argument(
        "--views",
        type=int,
        default=views,
        help="C-arm views registered together; > 1 also runs one view for comparison (default 1)",
    )
    parser.add_argument(
        "--view-angle",
        type=float,
        default=angle,
        help="with --views: angle between consecutive views, deg (default 90)",
    )


def check_view_options(opts) -> None:
    """Raise ValueError for options the several-view benchmark cannot take."""
    if not 1 <= opts.views <= 4:
        raise ValueError(f"--views must be 1 to 4, got {opts.views}")
    if opts.views > 1 and opts.soak_minutes > 0:
        raise ValueError("--views > 1 runs the cold and tracking modes; the soak takes one view")
    if not np.isfinite(opts.view_angle):
        raise ValueError(f"--view-angle must be finite, got {opts.view_angle}")


def render_views(render: Callable, poses: list, opts) -> list:
    """The images of ``poses`` (``T_ct_from_carm0``): one array per pose with one view, else a
    list of one array per view (view ``k`` at ``pose @ T_carm0_from_carmk``)."""
    if opts.views <= 1:
        return render(poses)
    import torch

    per_view = [
        render([p @ torch.as_tensor(T, dtype=p.dtype) for p in poses])
        for T in view_offsets(opts.views, opts.view_angle)
    ]
    return [list(images) for images in zip(*per_view)]


def bench_mono_and_views(opts, device: str, bench: Callable) -> list[dict]:
    """``bench(opts, device)`` with one view, then with ``opts.views`` (without the large frame:
    it measures the image path, which is the same per view)."""
    mono = argparse.Namespace(**{**vars(opts), "views": 1})
    several = argparse.Namespace(**{**vars(opts), "large_frame_px": 0})
    return [bench(mono, device), bench(several, device)]


def report_ratios(results: list[dict]) -> None:
    """Per device: the several-view medians over the one-view medians, against :data:`MAX_RATIO`."""
    for r in results:
        if r.get("views", 1) <= 1:
            continue
        mono = next(
            (m for m in results if m["device"] == r["device"] and m.get("views", 1) == 1), None
        )
        if mono is None:
            continue
        parts = []
        for mode in ("cold", "tracking"):
            a, b = r[mode].get("median_s"), mono[mode].get("median_s")
            if a is None or b is None:
                parts.append(f"{mode}: no figure (frames without TF)")
                continue
            ratio = a / b
            r[f"{mode}_ratio_to_mono"] = ratio
            verdict = "met" if ratio <= MAX_RATIO else "NOT met"
            parts.append(f"{mode} {ratio:.2f}x ({a:.3f} / {b:.3f} s)")
            parts[-1] += f", target <= {MAX_RATIO:g}x: {verdict}"
        print(f"\n[{r['device']}] {r['views']} views / one view: " + "; ".join(parts))
