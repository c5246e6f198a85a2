"""One training run step by step (:class:`TrainingRun`, driven by :func:`.train.train`): set-up
(networks fresh or resumed, optimisers, pools, validation set), a training step (new pool items, a
regressor batch, a similarity batch), validation with the best weights kept, and the end."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sphere_reg_ros.core.augment import DomainRandomization
from sphere_reg_ros.core.checkpoint import load_checkpoint
from sphere_reg_ros.core.registrar import resolve_device
from sphere_reg_ros.core.regressor import PoseRegressor, RegressorConfig
from sphere_reg_ros.core.sampling import split_seed
from sphere_reg_ros.core.similarity import SimilarityNet
from sphere_reg_ros.core.volume import Volume

from .content import ContentAugmentation
from .dataset import DrrPool, SimilarityPool, TrainingScene
from .losses import (
    centered_jacobian,
    geodesic_pose_gradient,
    gradient_matching_loss,
    regressor_loss,
    similarity_pose_gradient,
)
from .physics import PhysicsConfig, PhysicsRandomization
from .train_config import TrainConfig, TrainResult
from .train_save import save_run, state_path
from .validation import ValidationSet

__all__ = ["TrainingRun"]

log = logging.getLogger(__name__)


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % over ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress)))))


class TrainingRun:
    """One training run: the scene, both networks and their optimisers, the pools, the
    validation set, and the counters; :func:`train` drives it step by step.

    The order of construction is the order of the draws from the seeded generators (torch's
    global one for the initial weights, ``gen`` for the pools): changing it changes the weights.
    """

    def __init__(
        self,
        ct: Volume,
        config: TrainConfig,
        labels: Volume | None,
        structures: dict[int, str] | None,
        out: Path | None,
    ) -> None:
        self.t0 = time.perf_counter()
        self.ct, self.config, self.out = ct, config, out
        self.device = resolve_device(config.device)
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        torch.manual_seed(config.seed)
        self.geometry = config.geometry()
        self.scene = TrainingScene.build(
            ct,
            self.geometry,
            config.pose_distribution,
            labels=labels,
            structures=structures,
            spacing_mm=config.spacing_mm,
            bone_channel=config.physics,
            step_mm=config.effective_step_mm(),
            jitter_tilt_deg=config.jitter_tilt_deg,
            jitter_roll_deg=config.jitter_roll_deg,
            device=self.device,
        )
        self.regressor = PoseRegressor(
            RegressorConfig(
                config.backbone, config.resolution, config.resolution, config.channel_scale
            ),
            self.scene.center_world,
            config.pose_distribution,
        )
        self.similarity = SimilarityNet(config.similarity)
        self.step0, self.history, self.prior_time = 0, [], 0.0
        self.gen = torch.Generator().manual_seed(split_seed("train", config.seed))
        self.ema_r = self.ema_s = None
        self.consumed, self.train_time = 0, 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------ set-up
    def start(self, resume: bool, force: bool) -> None:
        """Networks (fresh or resumed), optimisers, pools, validation set, first validation."""
        state = self._resume(force) if resume else None
        self.regressor.to(self.device).train()
        self.similarity.to(self.device).train()
        config = self.config
        self.opt_r = torch.optim.AdamW(
            self.regressor.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            foreach=True,
        )
        self.opt_s = torch.optim.AdamW(
            self.similarity.parameters(),
            lr=config.sim_lr,
            weight_decay=config.weight_decay,
            foreach=True,
        )
        if state is not None:
            self.opt_r.load_state_dict(state["opt_regressor"])
            self.opt_s.load_state_dict(state["opt_similarity"])
        content, physics = self._pools()
        self.val = ValidationSet(
            self.scene,
            config.n_val,
            config.n_val_sim,
            config.seed,
            self.sim_pool,
            config.regressor_loss,
            config.length_mm,
            content,
            physics,
        )
        first = self.validate(self.step0)
        self.best_r = (first["loss"], copy.deepcopy(self.regressor.state_dict()))
        self.best_s = (first["sim_loss"], copy.deepcopy(self.similarity.state_dict()))
        self.last_val_t, self.val_cost = self.elapsed(), first["val_time_s"]
        self.step = self.step0

    def _resume(self, force: bool) -> dict | None:
        """The checkpoint's networks, history, step and time; the optimiser and generator state
        from the file beside it (None when it is missing)."""
        if self.out is None:
            raise ValueError("resume needs the checkpoint path (out)")
        bundle = load_checkpoint(self.out, ct=self.ct, geometry=self.geometry, force=force)
        self.regressor, self.similarity = bundle.regressor, bundle.similarity
        self.history = list(bundle.training.get("validation", []))
        self.step0 = int(bundle.training.get("steps", 0))
        self.prior_time = float(bundle.training.get("wall_time_s", 0.0))
        sp = state_path(self.out)
        if not sp.exists():
            log.warning("%s missing: resuming with fresh optimisers", sp)
            return None
        state = torch.load(sp, map_location="cpu", weights_only=True)
        self.gen.set_state(state["generator"])
        return state

    def _pools(self) -> tuple[ContentAugmentation, PhysicsRandomization | None]:
        """The regressor's DRR pool and the similarity pool with their initial items; returns
        the X-ray simulation they use (content, physics) for the validation set."""
        config, scene = self.config, self.scene
        augmentation = DomainRandomization()
        if config.physics:  # the physics has its own shutters and metal
            physics = PhysicsRandomization(
                PhysicsConfig(metal=config.physics_metal, collimation=config.physics_collimation)
            )
            content = ContentAugmentation(0.0, 0.0)
        else:
            physics, content = None, ContentAugmentation(config.p_collimation, config.p_metal)
        self.pool = DrrPool(
            scene,
            config.pool_size,
            config.jitter_tilt_deg,
            config.jitter_roll_deg,
            augmentation,
            content,
            physics,
        )
        self.sim_pool = SimilarityPool(
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
            self.pool.add(min(config.initial_pool, config.pool_size), self.gen)
        if config.train_similarity:
            self.sim_pool.add(min(config.initial_sim_pool, config.sim_pool_size), self.gen)
        self.render_time = time.perf_counter() - t_render
        self.rendered = self.pool.rendered + 2 * self.sim_pool.size
        return content, physics

    # ------------------------------------------------------------------ steps
    def stop_now(self, step: int) -> bool:
        config = self.config
        if config.max_steps is not None and step - self.step0 >= config.max_steps:
            return True
        return (
            config.budget_s is not None and self.elapsed() + self.val_cost + 5.0 > config.budget_s
        )

    def progress_fraction(self, step: int) -> float:
        fr = []
        if self.config.max_steps:
            fr.append((step - self.step0) / self.config.max_steps)
        if self.config.budget_s:
            fr.append(self.elapsed() / self.config.budget_s)
        return max(fr) if fr else 1.0

    def train_step(self) -> None:
        """New pool items, then a regressor batch and (every ``sim_every`` steps) a similarity
        batch."""
        config, step = self.config, self.step
        frac = self.progress_fraction(step)
        ts = time.perf_counter()
        if config.train_regressor and config.render_per_step > 0:
            self.pool.add(config.render_per_step, self.gen)
            self.rendered += config.render_per_step
        if config.train_similarity and (step + 1) % config.sim_render_every == 0:
            self.sim_pool.add(1, self.gen)
            self.rendered += 2
        tr = time.perf_counter()
        self.render_time += tr - ts
        if config.train_regressor:
            self._regressor_step(frac, step)
        if config.train_similarity and step % config.sim_every == 0:
            self._similarity_step(frac, step)
        self.train_time += time.perf_counter() - tr
        self.step += 1

    def _regressor_step(self, frac: float, step: int) -> None:
        config = self.config
        for grp in self.opt_r.param_groups:
            grp["lr"] = config.lr * _lr_factor(frac, step - self.step0, config.warmup_steps)
        images, poses = self.pool.draw(config.batch_size, self.gen)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.use_amp):
            pred = self.regressor(images)
        loss = regressor_loss(
            pred.double(),
            poses.to(pred.device),
            config.regressor_loss,
            center=self.scene.center_world,
            sod_mm=config.pose_distribution.sod_mm,
            length_mm=config.length_mm,
        )
        self.opt_r.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_r.step()
        self.consumed += config.batch_size
        lr_ = loss.item()
        self.ema_r = lr_ if self.ema_r is None else 0.95 * self.ema_r + 0.05 * lr_

    def _similarity_step(self, frac: float, step: int) -> None:
        config, scene = self.config, self.scene
        for grp in self.opt_s.param_groups:
            grp["lr"] = config.sim_lr * _lr_factor(frac, step - self.step0, config.warmup_steps)
        fixed, true, moving, mposes, jac = self.sim_pool.draw(config.sim_batch_size, self.gen)
        jac = centered_jacobian(jac, scene.center_world)
        g, _ = similarity_pose_gradient(self.similarity, moving, fixed, jac, create_graph=True)
        target = geodesic_pose_gradient(
            mposes,
            true,
            config.regressor_loss,
            center=scene.center_world,
            sod_mm=config.pose_distribution.sod_mm,
            length_mm=config.length_mm,
        )
        sloss = gradient_matching_loss(g, target.to(g.device))
        self.opt_s.zero_grad(set_to_none=True)
        sloss.backward()
        self.opt_s.step()
        self.consumed += config.sim_batch_size
        ls_ = sloss.item()
        self.ema_s = ls_ if self.ema_s is None else 0.95 * self.ema_s + 0.05 * ls_

    # ------------------------------------------------------------------ validation
    def validate(self, step: int) -> dict:
        """The validation figures now (appended to ``history``)."""
        tv = time.perf_counter()
        figures = {
            "step": step,
            "time_s": round(self.prior_time + self.elapsed(), 2),
            **self.val.evaluate(self.regressor, self.similarity),
        }
        figures["val_time_s"] = time.perf_counter() - tv
        self.history.append(figures)
        return figures

    def _keep_best(self, fig: dict) -> None:
        if fig["loss"] < self.best_r[0]:
            self.best_r = (fig["loss"], copy.deepcopy(self.regressor.state_dict()))
        if fig["sim_loss"] < self.best_s[0]:
            self.best_s = (fig["sim_loss"], copy.deepcopy(self.similarity.state_dict()))

    def validate_when_due(self) -> None:
        """Every ``val_every_steps`` steps (else ``val_every_s`` seconds), unless the run ends
        now: validate, keep the best weights, save the checkpoint so far."""
        config, step = self.config, self.step
        due = (config.val_every_steps and (step - self.step0) % config.val_every_steps == 0) or (
            not config.val_every_steps and self.elapsed() - self.last_val_t >= config.val_every_s
        )
        if not due or self.stop_now(step):
            return
        fig = self.validate(step)
        self.last_val_t, self.val_cost = self.elapsed(), fig["val_time_s"]
        self._keep_best(fig)
        if self.out is not None:
            self._save(self.prior_time + self.elapsed())

    def _save(self, wall: float, throughput: dict | None = None) -> Path:
        return save_run(
            self.out,
            self.regressor,
            self.similarity,
            self.best_r[1],
            self.best_s[1],
            self.scene,
            self.config,
            self.history,
            self.step,
            wall,
            self.opt_r,
            self.opt_s,
            self.gen,
            throughput,
        )

    # ------------------------------------------------------------------ end
    def finish(self, bar: tqdm) -> TrainResult:
        """Last validation, the best weights loaded and validated once more (the figures the
        checkpoint delivers), throughput, the checkpoint."""
        self._keep_best(self.validate(self.step))
        bar.close()
        self.regressor.load_state_dict(self.best_r[1])
        self.similarity.load_state_dict(self.best_s[1])
        # the best weights' figures are what the checkpoint delivers: evaluate them once more
        best = self.validate(self.step)
        best["selected"] = True
        throughput = self._throughput()
        wall = self.prior_time + self.elapsed()
        path = None if self.out is None else self._save(wall, throughput)
        self.regressor.eval()
        self.similarity.eval()
        return TrainResult(
            self.regressor, self.similarity, self.history, self.step, wall, path, throughput
        )

    def _throughput(self) -> dict:
        rendered, render_time = self.rendered, self.render_time
        consumed, train_time = self.consumed, self.train_time
        return {
            "drrs_rendered": int(rendered),
            "render_s": round(render_time, 2),
            "drrs_per_s": round(rendered / render_time, 2) if render_time > 0 else float("nan"),
            "samples_trained": int(consumed),
            "train_s": round(train_time, 2),
            "samples_per_s": round(consumed / train_time, 2) if train_time > 0 else float("nan"),
            "steps_per_s": round((self.step - self.step0) / train_time, 3)
            if train_time > 0
            else float("nan"),
        }
