"""``sphere-reg evaluate`` and ``sphere-reg register``: the command-line faces of the registrar.
``register`` lives in :mod:`.register_cli` and the input readers in :mod:`.inputs`; both are
re-exported here.

The lead's ``sphere_reg_ros/cli.py`` wires them in::

    add_evaluate_parser(sub)   # sets func=run_evaluate
    add_register_parser(sub)   # sets func=run_register
    args = parser.parse_args(argv); return args.func(args)

Exit codes (:mod:`sphere_reg_ros.cli_errors`): ``evaluate`` 0 success, 1 the job ran but failed,
2 bad input or usage; ``register`` 0 registered and the pose may be used, 1 registered but failed or
rejected by a quality gate, 2 bad input or usage. Bad input is one line on stderr naming the file
and the problem; every input file is checked before the CT is loaded where possible.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from sphere_reg_ros.cli_errors import EXIT_CODES, refuse
from sphere_reg_ros.evaluation.inputs import (
    MIN_IMAGE_SIZE,
    check_checkpoint,
    read_geometry,
    read_image,
    read_pose,
)
from sphere_reg_ros.evaluation.register_cli import (
    _robustness_options,
    _robustness_settings,
    add_register_parser,
    overlay_image,
    pose_json,
    run_register,
)

__all__ = [
    "add_evaluate_parser",
    "run_evaluate",
    "add_register_parser",
    "run_register",
    "read_image",
    "read_pose",
    "read_geometry",
    "check_checkpoint",
    "pose_json",
    "overlay_image",
    "MIN_IMAGE_SIZE",
]

log = logging.getLogger(__name__)


# ============================================================================ evaluate
def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command; returns its parser."""
    from .evaluate import METHODS

    p = subparsers.add_parser(
        "evaluate",
        help="run registration methods on a benchmark file and print the seed's Table 1",
        description="Run every method in one process on the same cases and start poses of a benchmark "
        "(sphere-reg make-benchmark), print SMSR, median / 75th / 95th percentile mTRE and mean run time "
        "(the seed paper's Table 1 layout), and write summary.csv, cases.csv, convergence.png and "
        "landscape.png. Methods: " + "; ".join(f"{k}: {v}" for k, v in METHODS.items()),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--benchmark", type=Path, required=True, help="benchmark file (.npz)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["lm-intensity", "adam"],
        metavar="METHOD",
        help="methods to run (default: lm-intensity adam); unknown or unavailable ones are "
        "listed with the reason",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint for ours / ours-regressor / regressor "
        "(and the similarity adam/gd use); default: the checkpoint shipped in sphere_reg_ros/data, if any",
    )
    p.add_argument(
        "--no-model", action="store_true", help="ignore the shipped checkpoint (learning-free runs)"
    )
    p.add_argument(
        "--models",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="checkpoints of the ablations: ours-se3=, ours-so4=, euclidean=, hyperbolic=",
    )
    p.add_argument(
        "--ct",
        type=Path,
        default=None,
        help="CT of the benchmark (default: its recorded source if it exists, else the example CT)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="use a CT whose fingerprint differs from the benchmark's",
    )
    p.add_argument(
        "--out", type=Path, default=Path("evaluation"), help="output folder (default ./evaluation)"
    )
    p.add_argument("--cases", type=int, default=None, help="evaluate the first N cases only")
    _evaluate_run_options(p)
    _robustness_options(p)
    _evaluate_output_options(p)
    p.set_defaults(func=run_evaluate)
    return p


def _evaluate_output_options(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s options of what it shows and times: landscape plot, warm-up, progress."""
    p.add_argument("--no-landscape", action="store_true", help="skip the similarity-landscape plot")
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first case too (default: one untimed warm-up registration per method)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate_run_options(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s options of how the methods run: spacing, iteration caps, xvr's scales,
    device, threads and start poses."""
    p.add_argument(
        "--spacing",
        type=float,
        default=2.0,
        metavar="MM",
        help="CT voxel size for DRRs (default 2)",
    )
    p.add_argument(
        "--max-iterations", type=int, default=20, help="LM iteration cap per scale (default 20)"
    )
    p.add_argument(
        "--adam-iterations",
        type=int,
        default=100,
        help="Adam / GD iteration cap per scale (default 100; DiffPose uses 500)",
    )
    p.add_argument(
        "--xvr-scales",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="xvr's downsampling divisors of the benchmark images, coarse to fine (default: "
        "the registration resolution and half of it)",
    )
    p.add_argument(
        "--xvr-iterations",
        type=int,
        default=500,
        help="xvr's Adam iteration cap per scale (default 500, xvr's; it stops earlier on plateaus)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); 1 is fastest on a loaded machine",
    )
    p.add_argument(
        "--start",
        choices=("init", "truth"),
        default="init",
        help="start poses: the benchmark's initial poses (default), or the true poses: then the "
        "mTRE is each method's drift, telling a misplaced cost minimum from a too small basin",
    )


def _models(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--models entries must be NAME=PATH, got {item!r}")
        out[name] = path
    return out


def _benchmark_ct(args: argparse.Namespace, bm):
    """The CT of the benchmark ``bm``: ``--ct``, else its recorded source if it exists, else the
    example CT; ValueError when its fingerprint differs from the benchmark's (unless --force)."""
    from sphere_reg_ros.core.volume import load_example_ct, load_volume

    from .benchmark import ct_fingerprint

    if args.ct is not None:
        ct = load_volume(args.ct)
    elif Path(bm.ct_source).is_file():
        ct = load_volume(bm.ct_source)
    else:
        ct = load_example_ct()[0]
    fp = ct_fingerprint(ct)
    if fp.get("sha256") != bm.ct_fingerprint.get("sha256") and not args.force:
        raise ValueError(
            f"the CT {ct.source} is not the benchmark's ({bm.ct_source}): fingerprints differ "
            "(pass --ct with the right CT, or --force)"
        )
    return ct


def _evaluation_config(args: argparse.Namespace):
    """The :class:`~.evaluate.EvaluationConfig` of ``evaluate``'s options."""
    from sphere_reg_ros.core.registrar import RegistrarConfig

    from .evaluate import EvaluationConfig

    lm = {
        "max_iterations": args.max_iterations,
        "device": args.device,
        **_robustness_settings(args),
    }
    base = RegistrarConfig(**lm)
    ev = EvaluationConfig()
    config = replace(
        ev,
        registrar=base,
        learning_free=replace(ev.learning_free, **lm),
        start=args.start,
        gradient=replace(ev.gradient, max_iterations=args.adam_iterations),
        xvr=replace(
            ev.xvr,
            scales=tuple(args.xvr_scales) if args.xvr_scales else None,
            n_itrs=args.xvr_iterations,
        ),
        spacing_mm=args.spacing,
        cases=args.cases,
        landscape=not args.no_landscape,
        warmup=not args.no_warmup,
    )
    return config


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``; prints the table; returns 0, or 2 on bad input (one line on stderr)."""
    from sphere_reg_ros.core.volume import VolumeError

    from .benchmark import BenchmarkError, load_benchmark
    from .evaluate import evaluate, shipped_model

    try:
        if args.cases is not None and args.cases < 1:
            raise ValueError("--cases must be >= 1")
        models = _models(args.models)
        bm = load_benchmark(args.benchmark)
        for path in ([args.model] if args.model else []) + list(models.values()):
            check_checkpoint(path)  # before the CT is loaded
        ct = _benchmark_ct(args, bm)
        config = _evaluation_config(args)
    except (ValueError, BenchmarkError, VolumeError, OSError) as exc:
        return refuse("evaluate", exc)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = str(args.model) if args.model else (None if args.no_model else shipped_model())
    if model and not args.model:
        print(f"using the shipped checkpoint {model}")
    report = evaluate(
        bm,
        ct,
        args.methods,
        model=model,
        models=models,
        config=config,
        out_dir=args.out,
        progress=not args.no_progress,
    )
    print(report.text())
    print(
        f"\nwrote {', '.join(str(f) for f in report.files)} ({time.perf_counter() - start:.0f} s)"
    )
    return 0
