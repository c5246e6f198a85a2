"""What a training run writes: the checkpoint with the best weights so far and its metadata
(:func:`save_run`, through :func:`~sphere_reg_ros.core.checkpoint.save_checkpoint`), and the
resume state beside it (optimisers, step, generator: :func:`state_path`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sphere_reg_ros.core.checkpoint import ct_fingerprint, save_checkpoint

from .dataset import TrainingScene

if TYPE_CHECKING:
    from .train_config import TrainConfig

__all__ = ["save_run", "state_path"]


def state_path(out: Path) -> Path:
    """The resume state file beside the checkpoint ``out``."""
    return out.with_name(out.name + ".state")


def save_run(
    out: Path,
    regressor,
    similarity,
    reg_state,
    sim_state,
    scene: TrainingScene,
    config: TrainConfig,
    history: list,
    step: int,
    wall: float,
    opt_r,
    opt_s,
    gen,
    throughput: dict | None = None,
) -> Path:
    """Checkpoint with the best weights so far + a resume state file beside it."""
    reg_copy = copy.deepcopy(regressor).cpu()
    sim_copy = copy.deepcopy(similarity).cpu()
    reg_copy.load_state_dict(reg_state)
    sim_copy.load_state_dict(sim_state)
    meta = {
        "seed": config.seed,
        "steps": step,
        "wall_time_s": round(wall, 2),
        "validation": history,
        "config": _plain(config.to_dict()),
        "spacing_mm": config.spacing_mm,
        "step_mm": config.effective_step_mm(),
        "landmarks": _landmark_kind(scene.landmark_names),
        "device": str(config.device),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
    if throughput:
        meta["throughput"] = throughput
    path = save_checkpoint(
        out,
        sim_copy,
        reg_copy,
        scene.geometry,
        ct_fingerprint(scene.source_ct),
        ct_fingerprint(scene.ct),
        meta,
    )
    state = {
        "opt_regressor": opt_r.state_dict(),
        "opt_similarity": opt_s.state_dict(),
        "generator": gen.get_state(),
        "step": step,
    }
    sp = state_path(out)
    tmp = sp.with_name(sp.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(sp)
    return path


def _landmark_kind(names: list[str]) -> str:
    """How the landmarks of ``evaluation.cases.default_landmarks`` were made, from their names."""
    if names[0].startswith("grid_"):
        return "grid"
    return "body centroid" if names == ["body_centroid"] else "label centroids"


def _plain(value):
    """Config dict with tuples as lists and None kept (weights_only-safe)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
