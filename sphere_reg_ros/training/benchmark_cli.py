"""``sphere-reg benchmark-train``: the regressor alone on held-out test poses (and on the cases of
a ``make-benchmark`` file), and the training throughput on this machine. Re-exported by
:mod:`.cli`.

Exit codes: 0 success, 2 bad input or usage (one line on stderr naming the file and the
problem; checkpoint and benchmark files are checked before the CT is loaded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sphere_reg_ros.cli_errors import EXIT_CODES, refuse
from sphere_reg_ros.core.volume import VolumeError

__all__ = ["add_benchmark_parser", "run_benchmark"]


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``benchmark-train`` sub-command (regressor-only mTRE and training throughput)."""
    p = subparsers.add_parser(
        "benchmark-train",
        help="regressor-only accuracy on held-out test poses and training throughput",
        description="Regressor-only mTRE (median, 75th, 95th percentile) on synthetic X-rays of "
        "held-out test poses, and DRR / training throughput on this machine.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint (default: the shipped example-CT model)"
    )
    p.add_argument(
        "--ct", help="CT the checkpoint was trained on (default: the embedded example CT)"
    )
    p.add_argument("--labels", help="label map for landmarks (default: none / the example's)")
    p.add_argument(
        "--benchmark",
        help="also evaluate on the cases of a `sphere-reg make-benchmark` file "
        "(its true poses and landmarks)",
    )
    p.add_argument("--cases", type=int, default=50, help="test poses (default 50)")
    p.add_argument("--seed", type=int, default=0, help="test-split seed (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--force", action="store_true", help="accept a checkpoint made for another CT / geometry"
    )
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput measurement")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for PyTorch (default 0: PyTorch's choice)",
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run_benchmark)
    return p


def run_benchmark(args: argparse.Namespace) -> int:
    """Run ``sphere-reg benchmark-train``; prints a Table-1 style row and the throughput."""
    from sphere_reg_ros.core.checkpoint import (
        CheckpointError,
        default_checkpoint_path,
        load_checkpoint,
    )
    from sphere_reg_ros.core.registrar import resolve_device
    from sphere_reg_ros.evaluation.benchmark import load_benchmark
    from sphere_reg_ros.training.benchmark import run_regressor_benchmark
    from sphere_reg_ros.training.cli import _load_ct

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.cases < 1:
            raise ValueError("--cases must be >= 1")
        device = resolve_device(args.device)
        path = args.checkpoint or default_checkpoint_path()
        load_checkpoint(
            path, map_location="cpu"
        )  # unusable files are refused before the CT is loaded
        bench = load_benchmark(args.benchmark) if args.benchmark else None
        ct, labels, structures, desc = _load_ct(args.ct, args.labels)
        bundle = load_checkpoint(path, ct=ct, force=args.force, map_location=device)
        if bench is not None:
            _check_benchmark_geometry(bundle, bench, args.benchmark, args.force)
        res = run_regressor_benchmark(
            bundle,
            ct,
            labels,
            structures,
            n=args.cases,
            seed=args.seed,
            device=device,
            throughput=not args.no_throughput,
        )
        if bench is not None:
            res["benchmark_file"] = _on_benchmark_file(
                bundle, bench, device, args.force, args.benchmark
            )
    except (CheckpointError, VolumeError, ValueError, OSError) as exc:
        return refuse("benchmark-train", exc)
    _print_benchmark(args, bundle, res, desc, path)
    return 0


def _check_benchmark_geometry(bundle, bench, path: str, force: bool) -> None:
    """Refuse a benchmark made for another C-arm geometry than the checkpoint (unless ``force``)."""
    from sphere_reg_ros.core.checkpoint import geometry_differences

    diffs = geometry_differences(bundle.geometry, bench.geometry)
    if diffs and not force:
        raise ValueError(
            f"{path}: made for another C-arm geometry than the checkpoint: {'; '.join(diffs)}"
        )


def _on_benchmark_file(bundle, bench, device, force: bool = False, path: str | None = None) -> dict:
    """Regressor-only figures on a ``make-benchmark`` file, given loaded or as its path (its geometry
    must match the model's)."""
    from sphere_reg_ros.evaluation.benchmark import load_benchmark
    from sphere_reg_ros.training.benchmark import regressor_on_cases

    if isinstance(bench, (str, Path)):
        path, bench = str(bench), load_benchmark(bench)
    _check_benchmark_geometry(bundle, bench, path or "the benchmark", force)
    out = regressor_on_cases(
        bundle, bench.registration_images(), bench.true_poses(), bench.landmarks, device
    )
    out["cases"] = bench.n_cases
    return out


def _print_benchmark(args: argparse.Namespace, bundle, res: dict, desc: str, path) -> None:
    """The Table-1 style rows (held-out poses; the benchmark file's cases) and the throughput;
    the JSON file when asked."""
    from sphere_reg_ros.core.metrics import Summary, format_table

    h, w = bundle.resolution
    name = f"Regressor only ({bundle.regressor.config.backbone}, {h}x{w})"
    print(
        format_table(
            {name: Summary(**res["summary"])},
            title=f"{args.cases} held-out test poses of {desc} (synthetic X-rays of "
            f"training.benchmark); checkpoint {path}",
        )
    )
    print(
        f"(the reference pose alone: median mTRE {res['initial_mtre_median_mm']:.1f} mm; "
        f"{res['landmarks']} landmarks)"
    )
    if args.benchmark:
        fb = res["benchmark_file"]
        print()
        print(
            format_table(
                {name: Summary(**fb["summary"])}, title=f"{fb['cases']} cases of {args.benchmark}"
            )
        )
        print(f"(the reference pose alone: median mTRE {fb['initial_mtre_median_mm']:.1f} mm)")
    if "throughput" in res:
        tp = res["throughput"]
        print(
            f"throughput on {tp['device']}: {tp['drrs_per_s']} DRRs/s ({h}x{w}), {tp['pool_drrs_per_s']} "
            f"pool DRRs/s (with jitter margin), {tp['regressor_samples_per_s']} regressor training samples/s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
