"""Benchmark: cost of a DRR alone vs a DRR plus its exact pose Jacobian (``sphere-reg benchmark-drr``)."""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from ..core.drr import DrrRenderer
from ..core.views import ap_pose, default_geometry
from ..core.volume import hu_to_attenuation, load_example_ct, load_volume, resample


def _time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call (s)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(
    ct_path: str | None, spacing_mm: float, resolutions: list[int], repeats: int, device: str
) -> list[dict]:
    """Time ``forward`` and ``render_with_jacobian`` at each resolution; returns one row each."""
    ct = load_example_ct()[0] if ct_path is None else load_volume(ct_path)
    ct = resample(ct, spacing_mm)
    mu = hu_to_attenuation(ct.data)
    rows = []
    for resolution in resolutions:
        renderer = DrrRenderer(mu, ct.affine, default_geometry(resolution)).to(device)
        pose = ap_pose(ct.center_world).float().to(device)

        def sync():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        with torch.no_grad():
            t_drr = _time(lambda: (renderer(pose), sync()), repeats)
            t_jac = _time(lambda: (renderer.render_with_jacobian(pose), sync()), repeats)
        rows.append(
            {
                "resolution": resolution,
                "drr_s": t_drr,
                "drr_jacobian_s": t_jac,
                "ratio": t_jac / t_drr,
                "samples_per_ray": renderer.n_samples(renderer.window(pose)),
            }
        )
    return rows


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark-drr", help="time a DRR vs a DRR plus its exact pose Jacobian"
    )
    parser.add_argument(
        "--ct", default=None, help="CT file or DICOM folder (default: the embedded example CT)"
    )
    parser.add_argument(
        "--spacing", type=float, default=2.0, help="working voxel spacing, mm (default 2)"
    )
    parser.add_argument(
        "--resolution", type=int, nargs="+", default=[64, 128], help="DRR sizes (px)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions (median reported)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's; 1 is steadier on a busy machine)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"benchmark-drr: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    rows = run(args.ct, args.spacing, args.resolution, args.repeats, args.device)
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, device {args.device}, CT at {args.spacing:g} mm"
    )
    print(f"{'size':>8} {'samples':>8} {'DRR (s)':>10} {'DRR+J (s)':>10} {'ratio':>7}")
    for row in rows:
        print(
            f"{row['resolution']:>6}^2 {row['samples_per_ray']:>8} {row['drr_s']:>10.4f} "
            f"{row['drr_jacobian_s']:>10.4f} {row['ratio']:>7.2f}"
        )
    return 0
