"""The ``sphere-reg`` command line: ``sphere-reg <command> --help`` for each command.

Commands are registered by the module that implements them; commands that need ROS 2
(``demo``, ``benchmark-node``) import the ROS glue only when they run, so the rest of the
command line works without rclpy (import direction: core <- training/evaluation/cli <- ros).

Exit codes (:mod:`sphere_reg_ros.cli_errors`): ``register`` 0 registered and the pose may be used,
1 registered but failed or rejected by a quality gate, 2 bad input or usage; every other command
0 success, 1 the job ran but failed, 2 bad input or usage. A bad input file is one line on stderr,
``sphere-reg COMMAND: FILE: problem``; an unexpected error while a job runs is one line too
(``sphere-reg COMMAND: failed: ...``, exit code 1; ``-v`` adds the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .cli_errors import failed, refuse
from .evaluation import bench_drr, evaluate_cli, trust_calibration
from .evaluation import cli as evaluation_cli
from .training import cli as training_cli

log = logging.getLogger(__name__)

#: Errors that name a bad input file (module, class): raised inside a job, they still exit with 2.
_INPUT_ERRORS = (
    ("sphere_reg_ros.core.volume", "VolumeError"),
    ("sphere_reg_ros.core.checkpoint", "CheckpointError"),
    ("sphere_reg_ros.evaluation.benchmark", "BenchmarkError"),
    ("sphere_reg_ros.core.landmarks", "LandmarkError"),
)


def _input_errors() -> tuple[type, ...]:
    """The input-error classes of :data:`_INPUT_ERRORS` among the modules loaded so far (an error
    of a module never imported cannot have been raised; nothing is imported here)."""
    return tuple(getattr(sys.modules[m], name) for m, name in _INPUT_ERRORS if m in sys.modules)


def _run_ros_command(module: str):
    """Handler that imports the ROS-side ``module`` only when its command runs."""

    def handler(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            print(
                f"sphere-reg {args.command}: needs ROS 2 (rclpy and the message packages): {exc}",
                file=sys.stderr,
            )
            return 2
        return int(mod.run(args) or 0)

    return handler


def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="simulated C-arm + registration node + evaluator on the example CT (needs ROS 2)",
    )
    parser.add_argument(
        "--frames", type=int, default=24, help="registered frames to collect (default 24)"
    )
    parser.add_argument(
        "--min-frames",
        type=int,
        default=20,
        help="registered frames the expectation needs (default 20, as the README states)",
    )
    parser.add_argument(
        "--rate", type=float, default=0.2, help="simulator frame rate, Hz (default 0.2)"
    )
    parser.add_argument(
        "--resolution", type=int, default=128, help="simulated image size, px (default 128)"
    )
    parser.add_argument(
        "--degradation",
        default="mild",
        choices=("none", "mild", "benchmark", "harsh"),
        help="image degradations of the simulator (default mild)",
    )
    parser.add_argument("--ct", default=None, help="CT file (default: the embedded example CT)")
    parser.add_argument(
        "--ct-spacing-mm",
        type=float,
        default=None,
        help="voxel size the CT is resampled to for the simulator and the node "
        "(default: their defaults, 2 mm)",
    )
    parser.add_argument("--model", default=None, help="checkpoint (default: the node's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated degradations")
    parser.add_argument(
        "--views",
        type=int,
        default=1,
        choices=(1, 2, 3, 4),
        help="C-arm views registered together (default 1; 2: biplane, the simulator's and the "
        "node's views view_a, view_b)",
    )
    parser.add_argument(
        "--view-angle",
        type=float,
        default=90.0,
        help="with --views: angle between consecutive views, deg (default 90)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="the node's torch threads (its `threads` parameter; default 0: torch's default, "
        "which `make demo` sets to 1 through OMP_NUM_THREADS)",
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default demo_output/)")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="s to wait for the node to start"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="s to run at most (default 600)"
    )
    parser.set_defaults(func=_run_ros_command("sphere_reg_ros.ros.demo"))


def _add_benchmark_node_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark-node",
        help="end-to-end latency image -> TF (cold, tracking) and memory of the node, or a soak at a "
        "fixed rate (needs ROS 2)",
    )
    parser.add_argument("--frames", type=int, default=10, help="timed frames per mode (default 10)")
    parser.add_argument(
        "--memory-frames", type=int, default=0, help="extra tracking frames for the memory check"
    )
    parser.add_argument("--devices", default="cpu", help="comma-separated: cpu,cuda")
    parser.add_argument("--json", default=None, help="write the results as JSON")
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0.0,
        help="soak mode: publish tracking frames at --rate-hz for this many minutes whether or not "
        "the node keeps up; a row every 10 s, a summary and a PNG (default 0: the modes above)",
    )
    parser.add_argument(
        "--rate-hz", type=float, default=30.0, help="soak mode: publishing rate (default 30)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="soak mode: folder of soak_<device>.png and soak.json (default: next to --json, else .)",
    )
    parser.add_argument(
        "--large-frame-px",
        type=int,
        default=0,
        help="after the timed frames, one N x N mono16 frame: how much it raises the node's peak "
        "resident memory, against its size (default 0: skip)",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=1,
        choices=(1, 2, 3, 4),
        help="C-arm views registered together; > 1 also runs one view and prints the ratio "
        "(default 1)",
    )
    parser.add_argument(
        "--view-angle",
        type=float,
        default=90.0,
        help="with --views: angle between consecutive views, deg (default 90)",
    )
    parser.set_defaults(func=_run_ros_command("sphere_reg_ros.ros.benchmark_latency"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sphere-reg",
        description="Intraoperative 2D/3D registration of C-arm X-rays to a CT.",
        epilog="exit codes: register: 0 registered and the pose may be used, 1 registered but failed or "
        "rejected by a quality gate, 2 bad input or usage; every other command: 0 success, 1 the job "
        "ran but failed, 2 bad input or usage. A bad input file is reported in one line on stderr "
        "naming the file and the problem.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo_parser(subparsers)
    _add_benchmark_node_parser(subparsers)
    evaluation_cli.add_make_benchmark_parser(subparsers)
    bench_drr.add_parser(subparsers)
    training_cli.add_train_parser(subparsers)
    training_cli.add_benchmark_parser(subparsers)
    evaluate_cli.add_evaluate_parser(subparsers)
    evaluate_cli.add_register_parser(subparsers)
    trust_calibration.add_calibrate_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # the commands report bad input themselves; this is the safety net
        log.debug("sphere-reg %s failed", args.command, exc_info=True)
        if isinstance(exc, _input_errors()):
            return refuse(args.command, exc)
        hint = "" if args.verbose else " (-v shows the traceback)"
        return failed(args.command, f"{type(exc).__name__}: {exc}{hint}")


if __name__ == "__main__":
    sys.exit(main())
