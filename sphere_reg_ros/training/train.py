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

Determinism: for a seed, a run of ``max_steps`` steps on the CPU gives the same weights (all
randomness from seeded generators; validation draws nothing from them). Budget-limited runs stop
after a wall-clock-dependent number of steps. Mixed precision (bfloat16 autocast of the
regressor) is used on CUDA only.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sphere_reg_ros.core.augment import DomainRandomization
from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.checkpoint import ct_fingerprint, load_checkpoint, save_checkpoint
from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.core.registrar import resolve_device
from sphere_reg_ros.core.regressor import PoseRegressor, RegressorConfig
from sphere_reg_ros.core.sampling import PoseDistribution, split_seed
from sphere_reg_ros.core.similarity import SimilarityConfig, SimilarityNet
from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.core.volume import Volume

from .content import ContentAugmentation
from .dataset import DrrPool, SimilarityPool, TrainingScene
from .losses import (
    centered_jacobian,
    geodesic_pose_gradient,
    gradient_alignment,
    gradient_matching_loss,
    regressor_loss,
    similarity_pose_gradient,
)
from .physics import PhysicsConfig, PhysicsRandomization

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "ValidationSet",
    "evaluate_regressor",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see the module docstring).

    Pose jitter (``jitter_*``), moving-pose spread (``moving_*``) and pools are described in
    :mod:`.dataset`. ``physics`` (default on): the training "X-rays" are simulated from
    two-channel DRRs by :mod:`.physics` (``physics_*``: probabilities of its optional effects);
    off: the older image-space ``p_collimation``, ``p_metal`` (clinical content, 0 = the seed's
    domain randomisation only) of :mod:`.content`. ``step_mm`` None: 1.5 × ``spacing_mm``
    (ray step of the training DRRs).
    Stopping: after ``max_steps`` steps or ``budget_s`` seconds (whichever comes first; at least
    one must be set).
    """

    resolution: int = 64
    seed: int = 0
    spacing_mm: float | None = 2.0
    step_mm: float | None = None
    backbone: str = "resnet18"
    channel_scale: float = 1.0
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    pose_distribution: PoseDistribution = field(default_factory=PoseDistribution)
    regressor_loss: str = "so4"
    length_mm: float = 100.0
    batch_size: int = 32
    sim_batch_size: int = 8
    lr: float = 1e-3
    sim_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    pool_size: int = 4096
    initial_pool: int = 192
    render_per_step: int = 1
    sim_pool_size: int = 512
    initial_sim_pool: int = 32
    sim_render_every: int = 4
    sim_every: int = 2
    jitter_tilt_deg: float = 1.5
    jitter_roll_deg: float = 4.0
    p_collimation: float = 0.5
    p_metal: float = 0.5
    physics: bool = True
    physics_metal: float = 0.5
    physics_collimation: float = 0.6
    moving_rot_deg: float = 6.0
    moving_trans_mm: float = 20.0
    n_val: int = 64
    n_val_sim: int = 16
    val_every_steps: int = 0
    val_every_s: float = 120.0
    max_steps: int | None = None
    budget_s: float | None = None
    device: str = "cpu"
    amp: bool = True
    train_regressor: bool = True
    train_similarity: bool = True

    def __post_init__(self) -> None:
        if self.max_steps is None and self.budget_s is None:
            raise ValueError("set max_steps or budget_s (or both)")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")
        if self.resolution < 16 or self.resolution % self.similarity.downsample:
            raise ValueError(
                f"resolution must be >= 16 and divisible by {self.similarity.downsample}, "
                f"got {self.resolution}"
            )
        if self.regressor_loss not in ("so4", "se3"):
            raise ValueError(f"regressor_loss must be so4 or se3, got {self.regressor_loss!r}")
        for name in (
            "batch_size",
            "sim_batch_size",
            "pool_size",
            "initial_pool",
            "sim_pool_size",
            "initial_sim_pool",
            "n_val",
            "n_val_sim",
            "sim_render_every",
            "sim_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "sim_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        if not (self.train_regressor or self.train_similarity):
            raise ValueError(
                "nothing to train: train_regressor and train_similarity are both False"
            )

    def geometry(self) -> CarmGeometry:
        """C-arm geometry at the training resolution (``views.default_geometry``)."""
        return default_geometry(self.resolution)

    def effective_step_mm(self) -> float | None:
        if self.step_mm is not None:
            return self.step_mm
        return 1.5 * self.spacing_mm if self.spacing_mm else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["similarity"] = self.similarity.to_dict()
        return d


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history``: one dict per validation (see ``ValidationSet``)."""

    regressor: PoseRegressor
    similarity: SimilarityNet
    history: list[dict]
    steps: int
    wall_time_s: float
    checkpoint: Path | None
    throughput: dict

    @property
    def initial(self) -> dict:
        return self.history[0]

    @property
    def final(self) -> dict:
        return self.history[-1]


class ValidationSet:
    """Fixed held-out data (``val`` split): regressor images/poses and similarity items."""

    def __init__(
        self,
        scene: TrainingScene,
        n: int,
        n_sim: int,
        seed: int,
        sim_pool: SimilarityPool,
        kind: str,
        length_mm: float,
        content: ContentAugmentation | None = None,
        physics: PhysicsRandomization | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(split_seed("val", seed))
        self.scene, self.kind, self.length_mm = scene, kind, length_mm
        content = content or ContentAugmentation(0.0, 0.0)

        def xray(poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(clean DRRs, simulated X-rays), both (B, 1, H, W), of poses (B, 4, 4)."""
            if physics is None:
                clean = scene.render(poses)
                return clean, DomainRandomization()(content(clean, g), g)
            channels = scene.render(poses, channels=True)
            return channels[:, :1], DomainRandomization()(content(physics(channels, g), g), g)

        self.poses = scene.sample_poses(n, g)
        self.clean, self.images = xray(self.poses)
        true = scene.sample_poses(n_sim, g)
        self.sim_true = true
        self.sim_moving = sim_pool.moving_offsets(n_sim, g) @ true
        self.sim_fixed = xray(true)[1]
        self.sim_images, jac = scene.render_with_jacobian(self.sim_moving)
        self.sim_jacobian = centered_jacobian(jac, scene.center_world)
        self.sim_target = geodesic_pose_gradient(
            self.sim_moving,
            true,
            kind,
            center=scene.center_world,
            sod_mm=scene.pose_distribution.sod_mm,
            length_mm=length_mm,
        )
        self.landmarks = torch.as_tensor(scene.landmarks, dtype=torch.float64)

    def evaluate(self, regressor: PoseRegressor, similarity: SimilarityNet) -> dict:
        """Validation figures (floats): loss and mTRE of the regressor, similarity loss/alignment."""
        out: dict = {}
        was = regressor.training, similarity.training
        regressor.eval()
        similarity.eval()
        with torch.no_grad():
            for tag, images in (("", self.images), ("clean_", self.clean)):
                T = torch.cat(
                    [regressor(images[i : i + 32]).double() for i in range(0, len(images), 32)]
                )
                out[f"{tag}loss"] = float(
                    regressor_loss(
                        T.cpu(),
                        self.poses,
                        self.kind,
                        center=self.scene.center_world,
                        sod_mm=self.scene.pose_distribution.sod_mm,
                        length_mm=self.length_mm,
                    )
                )
                e = mtre(T.cpu(), self.poses, self.landmarks)
                out[f"{tag}mtre_median_mm"] = float(np.median(e.numpy()))
                out[f"{tag}mtre_mean_mm"] = float(e.mean())
        g, _ = similarity_pose_gradient(
            similarity, self.sim_images, self.sim_fixed, self.sim_jacobian, create_graph=False
        )
        out["sim_loss"] = float(gradient_matching_loss(g.detach(), self.sim_target))
        out["sim_cos_translation"], out["sim_cos_rotation"] = gradient_alignment(
            g.detach(), self.sim_target
        )
        regressor.train(was[0])
        similarity.train(was[1])
        return out


def evaluate_regressor(
    regressor: PoseRegressor,
    images: torch.Tensor,
    poses: torch.Tensor,
    landmarks: torch.Tensor | np.ndarray,
    batch: int = 32,
) -> torch.Tensor:
    """Per-case mTRE ``(N,)`` in mm of the regressor on images ``(N, 1, H, W)`` with true poses."""
    regressor.eval()
    dev = next(regressor.parameters()).device
    with torch.no_grad():
        T = torch.cat(
            [
                regressor(images[i : i + batch].to(dev)).double().cpu()
                for i in range(0, len(images), batch)
            ]
        )
    return mtre(T, poses.to(torch.float64).cpu(), torch.as_tensor(landmarks, dtype=torch.float64))


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % over ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress)))))


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


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
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    use_amp = bool(config.amp and device.type == "cuda")
    torch.manual_seed(config.seed)
    geometry = config.geometry()
    out = Path(out) if out is not None else None

    scene = TrainingScene.build(
        ct,
        geometry,
        config.pose_distribution,
        labels=labels,
        structures=structures,
        spacing_mm=config.spacing_mm,
        bone_channel=config.physics,
        step_mm=config.effective_step_mm(),
        jitter_tilt_deg=config.jitter_tilt_deg,
        jitter_roll_deg=config.jitter_roll_deg,
        device=device,
    )
    regressor = PoseRegressor(
        RegressorConfig(
            config.backbone, config.resolution, config.resolution, config.channel_scale
        ),
        scene.center_world,
        config.pose_distribution,
    )
    similarity = SimilarityNet(config.similarity)
    step0, history, prior_time = 0, [], 0.0
    gen = torch.Generator().manual_seed(split_seed("train", config.seed))
    state = None
    if resume:
        if out is None:
            raise ValueError("resume needs the checkpoint path (out)")
        bundle = load_checkpoint(out, ct=ct, geometry=geometry, force=force)
        regressor, similarity = bundle.regressor, bundle.similarity
        history = list(bundle.training.get("validation", []))
        step0 = int(bundle.training.get("steps", 0))
        prior_time = float(bundle.training.get("wall_time_s", 0.0))
        sp = _state_path(out)
        if sp.exists():
            state = torch.load(sp, map_location="cpu", weights_only=True)
            gen.set_state(state["generator"])
        else:
            log.warning("%s missing: resuming with fresh optimisers", sp)
    regressor.to(device).train()
    similarity.to(device).train()
    opt_r = torch.optim.AdamW(
        regressor.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
    )
    opt_s = torch.optim.AdamW(
        similarity.parameters(), lr=config.sim_lr, weight_decay=config.weight_decay, foreach=True
    )
    if state is not None:
        opt_r.load_state_dict(state["opt_regressor"])
        opt_s.load_state_dict(state["opt_similarity"])

    augmentation = DomainRandomization()
    if config.physics:  # the physics has its own shutters and metal
        physics = PhysicsRandomization(
            PhysicsConfig(metal=config.physics_metal, collimation=config.physics_collimation)
        )
        content = ContentAugmentation(0.0, 0.0)
    else:
        physics, content = None, ContentAugmentation(config.p_collimation, config.p_metal)
    pool = DrrPool(
        scene,
        config.pool_size,
        config.jitter_tilt_deg,
        config.jitter_roll_deg,
        augmentation,
        content,
        physics,
    )
    sim_pool = SimilarityPool(
        scene,
        config.sim_pool_size,
        config.moving_rot_deg,
        config.moving_trans_mm,
        jitter_tilt_deg=config.jitter_tilt_deg,
        jitter_roll_deg=config.jitter_roll_deg,
        augmentation=augmentation,
        content=content,
        physics=physics,
    )
    t_render = time.perf_counter()
    if config.train_regressor:
        pool.add(min(config.initial_pool, config.pool_size), gen)
    if config.train_similarity:
        sim_pool.add(min(config.initial_sim_pool, config.sim_pool_size), gen)
    render_time = time.perf_counter() - t_render
    rendered = pool.rendered + 2 * sim_pool.size
    val = ValidationSet(
        scene,
        config.n_val,
        config.n_val_sim,
        config.seed,
        sim_pool,
        config.regressor_loss,
        config.length_mm,
        content,
        physics,
    )
    sod = config.pose_distribution.sod_mm

    def elapsed() -> float:
        return time.perf_counter() - t0

    def validate(step: int) -> dict:
        tv = time.perf_counter()
        figures = {
            "step": step,
            "time_s": round(prior_time + elapsed(), 2),
            **val.evaluate(regressor, similarity),
        }
        figures["val_time_s"] = time.perf_counter() - tv
        history.append(figures)
        return figures

    first = validate(step0)
    best_r = (first["loss"], copy.deepcopy(regressor.state_dict()))
    best_s = (first["sim_loss"], copy.deepcopy(similarity.state_dict()))
    last_val_t, val_cost = elapsed(), first["val_time_s"]

    def stop_now(step: int) -> bool:
        if config.max_steps is not None and step - step0 >= config.max_steps:
            return True
        return config.budget_s is not None and elapsed() + val_cost + 5.0 > config.budget_s

    def progress_fraction(step: int) -> float:
        fr = []
        if config.max_steps:
            fr.append((step - step0) / config.max_steps)
        if config.budget_s:
            fr.append(elapsed() / config.budget_s)
        return max(fr) if fr else 1.0

    bar_total = int(config.budget_s) if config.budget_s else config.max_steps
    fmt = (
        "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"
        if config.budget_s
        else "{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]"
    )
    bar = tqdm(
        total=bar_total,
        disable=not progress,
        desc="train",
        dynamic_ncols=True,
        leave=True,
        bar_format=fmt,
    )
    ema_r = ema_s = None
    step, consumed, train_time = step0, 0, 0.0
    while not stop_now(step):
        frac = progress_fraction(step)
        ts = time.perf_counter()
        if config.train_regressor and config.render_per_step > 0:
            pool.add(config.render_per_step, gen)
            rendered += config.render_per_step
        if config.train_similarity and (step + 1) % config.sim_render_every == 0:
            sim_pool.add(1, gen)
            rendered += 2
        tr = time.perf_counter()
        render_time += tr - ts
        if config.train_regressor:
            for grp in opt_r.param_groups:
                grp["lr"] = config.lr * _lr_factor(frac, step - step0, config.warmup_steps)
            images, poses = pool.draw(config.batch_size, gen)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                pred = regressor(images)
            loss = regressor_loss(
                pred.double(),
                poses.to(pred.device),
                config.regressor_loss,
                center=scene.center_world,
                sod_mm=sod,
                length_mm=config.length_mm,
            )
            opt_r.zero_grad(set_to_none=True)
            loss.backward()
            opt_r.step()
            consumed += config.batch_size
            lr_ = loss.item()
            ema_r = lr_ if ema_r is None else 0.95 * ema_r + 0.05 * lr_
        if config.train_similarity and step % config.sim_every == 0:
            for grp in opt_s.param_groups:
                grp["lr"] = config.sim_lr * _lr_factor(frac, step - step0, config.warmup_steps)
            fixed, true, moving, mposes, jac = sim_pool.draw(config.sim_batch_size, gen)
            jac = centered_jacobian(jac, scene.center_world)
            g, _ = similarity_pose_gradient(similarity, moving, fixed, jac, create_graph=True)
            target = geodesic_pose_gradient(
                mposes,
                true,
                config.regressor_loss,
                center=scene.center_world,
                sod_mm=sod,
                length_mm=config.length_mm,
            )
            sloss = gradient_matching_loss(g, target.to(g.device))
            opt_s.zero_grad(set_to_none=True)
            sloss.backward()
            opt_s.step()
            consumed += config.sim_batch_size
            ls_ = sloss.item()
            ema_s = ls_ if ema_s is None else 0.95 * ema_s + 0.05 * ls_
        train_time += time.perf_counter() - tr
        step += 1

        due = (config.val_every_steps and (step - step0) % config.val_every_steps == 0) or (
            not config.val_every_steps and elapsed() - last_val_t >= config.val_every_s
        )
        if due and not stop_now(step):
            fig = validate(step)
            last_val_t, val_cost = elapsed(), fig["val_time_s"]
            if fig["loss"] < best_r[0]:
                best_r = (fig["loss"], copy.deepcopy(regressor.state_dict()))
            if fig["sim_loss"] < best_s[0]:
                best_s = (fig["sim_loss"], copy.deepcopy(similarity.state_dict()))
            if out is not None:
                _save(
                    out,
                    regressor,
                    similarity,
                    best_r[1],
                    best_s[1],
                    scene,
                    config,
                    history,
                    step,
                    prior_time + elapsed(),
                    opt_r,
                    opt_s,
                    gen,
                )
        post = {}
        if ema_r is not None:
            post["loss"] = f"{ema_r:.3f}"
        if ema_s is not None:
            post["sim"] = f"{ema_s:.2f}"
        post["val_mTRE"] = f"{history[-1]['mtre_median_mm']:.1f}mm"
        if config.budget_s:
            post["left"] = f"{max(0.0, config.budget_s - elapsed()) / 60:.1f}min"
            bar.update(int(elapsed()) - bar.n)
        else:
            bar.update(1)
        bar.set_postfix(post, refresh=False)

    fig = validate(step)
    if fig["loss"] < best_r[0]:
        best_r = (fig["loss"], copy.deepcopy(regressor.state_dict()))
    if fig["sim_loss"] < best_s[0]:
        best_s = (fig["sim_loss"], copy.deepcopy(similarity.state_dict()))
    bar.close()
    regressor.load_state_dict(best_r[1])
    similarity.load_state_dict(best_s[1])
    # the best weights' figures are what the checkpoint delivers: evaluate them once more
    best = validate(step)
    best["selected"] = True
    throughput = {
        "drrs_rendered": int(rendered),
        "render_s": round(render_time, 2),
        "drrs_per_s": round(rendered / render_time, 2) if render_time > 0 else float("nan"),
        "samples_trained": int(consumed),
        "train_s": round(train_time, 2),
        "samples_per_s": round(consumed / train_time, 2) if train_time > 0 else float("nan"),
        "steps_per_s": round((step - step0) / train_time, 3) if train_time > 0 else float("nan"),
    }
    wall = prior_time + elapsed()
    path = None
    if out is not None:
        path = _save(
            out,
            regressor,
            similarity,
            best_r[1],
            best_s[1],
            scene,
            config,
            history,
            step,
            wall,
            opt_r,
            opt_s,
            gen,
            throughput,
        )
    regressor.eval()
    similarity.eval()
    return TrainResult(regressor, similarity, history, step, wall, path, throughput)


def _save(
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
    sp = _state_path(out)
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
