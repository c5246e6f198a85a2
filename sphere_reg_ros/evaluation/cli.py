"""``sphere-reg make-benchmark``: write a synthetic benchmark file (and optionally a preview PNG);
with ``--dataset``, a benchmark of a public dataset's real X-rays (:mod:`.real_benchmark_cli`).

The lead's ``sphere_reg_ros/cli.py`` wires it in with::

    sub = parser.add_subparsers(dest="command")
    add_make_benchmark_parser(sub)          # sets ``func=run_make_benchmark``
    args = parser.parse_args(argv); return args.func(args)

Exit codes: 0 success, 1 the job ran but failed, 2 bad input or usage (one line on stderr naming
the file and the problem; the landmark and label files are read before the CT).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from sphere_reg_ros.cli_errors import EXIT_CODES, refuse
from sphere_reg_ros.core.landmarks import LandmarkError, load_landmarks
from sphere_reg_ros.core.sampling import PoseDistribution
from sphere_reg_ros.core.volume import VolumeError, load_example_ct, load_volume
from sphere_reg_ros.evaluation.real_benchmark_cli import add_dataset_options, run_real_benchmark

__all__ = ["add_make_benchmark_parser", "run_make_benchmark"]

log = logging.getLogger(__name__)


def add_make_benchmark_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``make-benchmark`` sub-command to ``subparsers``; returns its parser.

    Long because it is one flat list of option declarations, read top to bottom like ``--help``."""
    p = subparsers.add_parser(
        "make-benchmark",
        help="render a synthetic registration benchmark (degraded X-rays, poses, landmarks)",
        description="Render degraded X-rays of a CT at twice the registration resolution from C-arm "
        "poses around the AP view (±15° per axis, ±30 mm in-plane, ±60 mm depth by default) and write "
        "them with the true and initial poses, intrinsics and landmarks to one .npz file.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "--ct",
        type=Path,
        default=None,
        help="CT volume (NIfTI, NRRD or DICOM folder); default: the embedded example chest CT",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="label map on the CT's grid; structure centroids become the landmarks",
    )
    p.add_argument(
        "--landmarks",
        type=Path,
        default=None,
        help="landmarks file (CSV/JSON, world RAS mm) instead of label centroids",
    )
    p.add_argument("--cases", type=int, default=100, help="number of cases (default 100)")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    p.add_argument(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="data split whose seeds to use (default test; seeds of splits never coincide)",
    )
    p.add_argument("--out", type=Path, required=True, help="output file (.npz)")
    p.add_argument(
        "--resolution",
        type=int,
        default=64,
        help="registration resolution R; images are rendered at 2R x 2R (default 64)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        default=None,
        metavar="MM",
        help="resample the CT to this spacing (mm) before rendering (default: its own grid)",
    )
    p.add_argument(
        "--rot-deg", type=float, default=15.0, help="pose range: rotation per axis, degrees"
    )
    p.add_argument("--inplane-mm", type=float, default=30.0, help="pose range: in-plane shift, mm")
    p.add_argument("--depth-mm", type=float, default=60.0, help="pose range: depth shift, mm")
    p.add_argument(
        "--degradation",
        choices=("benchmark", "mild", "none", "harsh"),
        default="benchmark",
        help="X-ray degradations (evaluation.simulate.DEGRADATION_PRESETS): 'benchmark' the full "
        "physics and content gap (default), 'mild' no instruments or shutters, 'none' "
        "matched physics (the models' own domain), 'harsh' a second family with physics of "
        "its own (evaluation.degrade_harsh) and a wider initial error (mTRE 10-35 mm)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for rendering (default 0: torch's default); the file does not depend on it",
    )
    p.add_argument(
        "--init-mtre",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="initial mTRE range, mm (uniform; default 5 25, 10 35 for 'harsh')",
    )
    p.add_argument(
        "--views",
        type=int,
        choices=(1, 2),
        default=1,
        help="C-arm views per case (default 1); 2: a second view turned by --view-angle about the "
        "first's isocentre, rendered alike and degraded independently (biplane)",
    )
    p.add_argument(
        "--view-angle",
        type=float,
        default=90.0,
        metavar="DEG",
        help="angle between the views, degrees, in (0, 180) (default 90)",
    )
    p.add_argument(
        "--preview",
        type=Path,
        default=None,
        metavar="PNG",
        help="also write a PNG grid of the first cases",
    )
    p.add_argument("--preview-cases", type=int, default=8, help="cases in the preview (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataset_options(p)
    p.set_defaults(func=run_make_benchmark)
    return p


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{n_bytes} B"
        n_bytes /= 1024
    return ""


def run_make_benchmark(args: argparse.Namespace) -> int:
    """Run ``make-benchmark``; prints a summary; returns 0, or 2 on bad input (one line on stderr)."""
    from sphere_reg_ros.evaluation.benchmark import BenchmarkError, make_benchmark, save_benchmark
    from sphere_reg_ros.evaluation.simulate import DEGRADATION_PRESETS

    start = time.perf_counter()
    if getattr(args, "threads", 0):
        if args.threads < 0:
            return refuse("make-benchmark", f"--threads must be >= 0, got {args.threads}")
        import torch

        torch.set_num_threads(int(args.threads))
    if getattr(args, "dataset", None):
        return run_real_benchmark(args)
    if getattr(args, "data", None) is not None:
        return refuse("make-benchmark", "--data needs --dataset deepfluoro|ljubljana")
    try:
        views = _views(args)  # checked before the CT is read
        distribution, ct, labels, structures, landmarks = _inputs(args)
        loaded = time.perf_counter()
        bm = make_benchmark(
            ct,
            labels,
            structures,
            args.cases,
            args.seed,
            args.resolution,
            distribution,
            split=args.split,
            spacing_mm=args.spacing,
            landmarks=landmarks,
            degradation=DEGRADATION_PRESETS[args.degradation],
            initial_error=_initial_error(args),
            progress=not args.no_progress,
            **views,
        )
        out = save_benchmark(args.out, bm)
        if args.preview is not None:
            from sphere_reg_ros.evaluation.preview import save_preview

            save_preview(args.preview, bm, n_cases=args.preview_cases)
    except (BenchmarkError, VolumeError, LandmarkError, ValueError, OSError) as exc:
        return refuse("make-benchmark", exc)
    _print_summary(args, bm, out, time.perf_counter() - start, loaded - start)
    return 0


def _inputs(args: argparse.Namespace) -> tuple:
    """``(pose distribution, CT, labels, structures, landmarks)`` of the command line: the
    numbers checked, then the landmark and label files read before the CT (small files first).

    Raises:
        BenchmarkError, VolumeError, LandmarkError: bad input (the message names it).
    """
    from sphere_reg_ros.evaluation.benchmark import BenchmarkError

    if args.cases < 1 or args.resolution < 4 or (args.spacing is not None and not args.spacing > 0):
        raise BenchmarkError("--cases must be >= 1, --resolution >= 4 and --spacing > 0")
    distribution = PoseDistribution(
        rot_deg=args.rot_deg, inplane_mm=args.inplane_mm, depth_mm=args.depth_mm
    )
    if args.ct is None and args.labels is not None:
        raise BenchmarkError("--labels needs --ct (the example CT brings its own label map)")
    landmarks = load_landmarks(args.landmarks) if args.landmarks else None  # small files first
    if args.ct is None:
        ct, labels, structures = load_example_ct()
    else:
        labels = load_volume(args.labels, allow_constant=True) if args.labels else None
        ct = load_volume(args.ct)
        structures = None
    return distribution, ct, labels, structures, landmarks


def _views(args: argparse.Namespace) -> dict:
    """``make_benchmark``'s view settings: none for one view (today's benchmark).

    Raises:
        BenchmarkError: a view angle outside (0, 180) degrees.
    """
    from sphere_reg_ros.evaluation.benchmark import BenchmarkError

    views = getattr(args, "views", 1)
    if views == 1:
        return {}
    if not 0.0 < args.view_angle < 180.0:
        raise BenchmarkError(f"--view-angle must be in (0, 180) degrees, got {args.view_angle}")
    return {"views": views, "view_angle_deg": args.view_angle}


def _initial_error(args: argparse.Namespace):
    """The initial-error setting: ``--init-mtre``, else the harsh family's default, else the
    standard one."""
    from sphere_reg_ros.evaluation.cases import InitialErrorConfig
    from sphere_reg_ros.evaluation.simulate import HARSH_INITIAL_MTRE_MM

    init_mtre = (
        args.init_mtre or HARSH_INITIAL_MTRE_MM if args.degradation == "harsh" else args.init_mtre
    )
    return InitialErrorConfig(mtre_mm=tuple(init_mtre)) if init_mtre else InitialErrorConfig()


def _print_summary(args: argparse.Namespace, bm, out: Path, elapsed: float, loading: float) -> None:
    """What was written: cases, sizes, initial errors, times, the file and the checksum."""
    from sphere_reg_ros.evaluation.benchmark import benchmark_checksum

    init = bm.initial_mtre_mm
    print(
        f"benchmark: {bm.n_cases} cases ({bm.split}, seed {bm.seed}, degradation '{args.degradation}') "
        f"of {bm.ct_source}"
    )
    print(
        f"  registration resolution {bm.resolution}x{bm.resolution}, images rendered at "
        f"{bm.images.shape[1]}x{bm.images.shape[2]}; {len(bm.landmarks)} landmarks"
    )
    if bm.n_views > 1:
        print(f"  {bm.n_views} views, turned by {bm.config['views']['angle_deg']:g} degrees")
    print(
        f"  initial mTRE {init.min():.1f}-{init.max():.1f} mm (median {float(sorted(init)[len(init) // 2]):.1f})"
    )
    per_case = (elapsed - loading) / bm.n_cases
    print(f"  time {elapsed:.1f} s (loading {loading:.1f} s, {per_case:.2f} s/case)")
    print(
        f"  wrote {out} ({_size(out.stat().st_size)})"
        + (f", preview {args.preview}" if args.preview else "")
    )
    print(
        f"  checksum {benchmark_checksum(bm)} (content; `sphere-reg evaluate` prints it with every table)"
    )
