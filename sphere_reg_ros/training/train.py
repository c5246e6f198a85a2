"""Patient-specific training of the pose regressor and the similarity network on one CT.

One loop trains both networks (docs/ARCHITECTURE.md, Method):

* regressor: a batch from the :class:`~.dataset.DrrPool` (DRRs at poses of the pose
  distribution, jittered by an exact homography, given collimator shutters and metal
  (:mod:`.content`) and domain-randomised as X-rays), loss
  :func:`~.losses.regressor_loss` (SO(4) by default) in the isocentric frame;
* similarity: a batch from the :class:`~.dataset.SimilarityPool` (fixed "X-ray" at the truth,
  clean moving DRR near it with its exact pose Jacobian), loss
  :func:`~.losses.gradient_matching_loss` between ``∂ε/∂δ = J_DRRᵀ ∇_DRR ε`` and the gradient of
  the geodesic distance to the truth.

Each step also renders ``render_per_step`` new pool DRRs (and every ``sim_render_every`` steps
one similarity item), so the pools keep changing while rendering stays a bounded share of the
time. Validation (on poses of the ``val`` split, disjoint from ``train`` and ``test`` by
``sampling.split_seed``) runs at step 0, then every ``val_every_steps`` steps or
``val_every_s`` seconds, and at the end; it reports the regressor's loss and mTRE (mm; landmarks
from ``evaluation.cases.default_landmarks``) on simulated "X-rays" (drawn once) and
on clean DRRs, and the similarity's
gradient-matching loss and gradient alignment. The weights with the best validation loss of
each network are the ones saved.

The parts: the settings (:mod:`.train_config`), one run step by step (:mod:`.train_run`), the
validation set (:mod:`.validation`) and the checkpoint it writes (:mod:`.train_save`); this module
drives the run and shows its progress.

Determinism: for a seed, a run of ``max_steps`` steps on the CPU gives the same weights (all
randomness from seeded generators; validation draws nothing from them). Budget-limited runs stop
after a wall-clock-dependent number of steps. Mixed precision (bfloat16 autocast of the
regressor) is used on CUDA only.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from sphere_reg_ros.core.volume import Volume

from .train_config import TrainConfig, TrainResult
from .train_run import TrainingRun
from .validation import ValidationSet, evaluate_regressor

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "ValidationSet",
    "evaluate_regressor",
]


def train(
    ct: Volume,
    config: TrainConfig,
    *,
    labels: Volume | None = None,
    structures: dict[int, str] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train both networks on ``ct`` (HU) and save the checkpoint to ``out`` (if given).

    ``resume=True`` continues from ``out`` (weights) and ``out + ".state"`` (optimisers, step,
    generator; if missing, fresh optimisers): the CT and geometry must match the checkpoint's
    unless ``force``. The learning-rate schedule restarts over the new budget.
    """
    run = TrainingRun(ct, config, labels, structures, None if out is None else Path(out))
    run.start(resume, force)
    bar = _progress_bar(config, progress)
    while not run.stop_now(run.step):
        run.train_step()
        run.validate_when_due()
        _show(bar, run)
    return run.finish(bar)


def _progress_bar(config: TrainConfig, progress: bool) -> tqdm:
    """The progress bar: seconds of the budget, or steps."""
    bar_total = int(config.budget_s) if config.budget_s else config.max_steps
    fmt = (
        "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"
        if config.budget_s
        else "{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]"
    )
    return tqdm(
        total=bar_total,
        disable=not progress,
        desc="train",
        dynamic_ncols=True,
        leave=True,
        bar_format=fmt,
    )


def _show(bar: tqdm, run: TrainingRun) -> None:
    """The bar after one step: smoothed losses, the last validation mTRE, the time left."""
    post = {}
    if run.ema_r is not None:
        post["loss"] = f"{run.ema_r:.3f}"
    if run.ema_s is not None:
        post["sim"] = f"{run.ema_s:.2f}"
    post["val_mTRE"] = f"{run.history[-1]['mtre_median_mm']:.1f}mm"
    if run.config.budget_s:
        post["left"] = f"{max(0.0, run.config.budget_s - run.elapsed()) / 60:.1f}min"
        bar.update(int(run.elapsed()) - bar.n)
    else:
        bar.update(1)
    bar.set_postfix(post, refresh=False)
