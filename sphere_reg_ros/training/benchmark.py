"""Regressor-only benchmark and training throughput (a command, not a timed test).

Test cases: ``n`` poses of the ``test`` split of the checkpoint's pose distribution
(``sampling.split_seed("test", seed)``: disjoint from the training and validation draws). Their
"X-rays" are made differently from the training data on purpose (:func:`synthetic_xrays`):
rendered at twice the resolution with half the ray step and area-averaged down, then passed
through a photon-counting model the augmentations never apply — an anode heel effect (a ±15 %
linear ramp of the incident photons across the detector, not corrected), Poisson noise at
5000 photons per pixel, ``-log`` back to line integrals — and a detector blur (Gaussian,
σ = 0.6 px). The regressor's mTRE (mm, landmarks of ``evaluation.cases.default_landmarks``) is
summarised as in the seed's Table 1 (``core.metrics.summarize``).

Throughput: DRRs per second rendered at the training resolution (pool DRRs, with their margin,
and plain ones), and training samples per second of regressor steps, measured on the spot.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from sphere_reg_ros.core.augment import DomainRandomization
from sphere_reg_ros.core.checkpoint import Bundle
from sphere_reg_ros.core.drr import DrrRenderer
from sphere_reg_ros.core.metrics import summarize
from sphere_reg_ros.core.sampling import split_seed
from sphere_reg_ros.core.volume import Volume, hu_to_attenuation

from .dataset import DrrPool, TrainingScene
from .losses import regressor_loss
from .train import evaluate_regressor

__all__ = ["synthetic_xrays", "run_regressor_benchmark", "measure_throughput", "regressor_on_cases"]

PHOTONS = 5000.0
HEEL = 0.15
BLUR_SIGMA_PX = 0.6


def synthetic_xrays(
    scene: TrainingScene, poses: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Realistic-ish X-rays ``(N, 1, H, W)`` (line-integral units) of poses ``(N, 4, 4)`` (module doc)."""
    g = scene.geometry
    fine = g.resized(2 * g.height, 2 * g.width)
    step = (scene.renderer.step_mm or 2.0) / 2
    renderer = DrrRenderer(
        hu_to_attenuation(scene.ct.data), scene.ct.affine, fine, step_mm=step
    ).to(scene.device)
    images = []
    with torch.no_grad():
        for i in range(0, len(poses), 8):
            images.append(
                F.avg_pool2d(renderer(poses[i : i + 8].to(scene.device, torch.float32)), 2).cpu()
            )
    line = torch.cat(images).double()
    ramp = torch.linspace(1 - HEEL, 1 + HEEL, g.width, dtype=torch.float64)[None, None, None, :]
    counts = torch.poisson(PHOTONS * ramp * torch.exp(-line), generator=generator)
    noisy = -torch.log(counts.clamp_min(1.0) / PHOTONS)
    x = torch.arange(-2, 3, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / BLUR_SIGMA_PX) ** 2)
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :])[None, None]
    blurred = F.conv2d(F.pad(noisy, (2, 2, 2, 2), mode="replicate"), kernel)
    return blurred.float()


def measure_throughput(
    bundle: Bundle, scene: TrainingScene, steps: int = 5, batch_size: int = 32, n_render: int = 32
) -> dict:
    """DRRs/s (plain and pool DRRs with margin) and regressor training samples/s on ``scene.device``."""
    g = torch.Generator().manual_seed(0)
    poses = scene.sample_poses(n_render, g)
    scene.render(poses[:2])
    t = time.perf_counter()
    scene.render(poses)
    plain = n_render / (time.perf_counter() - t)
    pool = DrrPool(scene, n_render, augmentation=DomainRandomization())
    t = time.perf_counter()
    pool.add(n_render, g)
    margin = n_render / (time.perf_counter() - t)
    reg = copy.deepcopy(bundle.regressor).to(scene.device).train()
    opt = torch.optim.AdamW(reg.parameters(), lr=1e-4, foreach=True)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        images, T = pool.draw(batch_size, g)
        loss = regressor_loss(
            reg(images).double(),
            T.to(scene.device),
            center=scene.center_world,
            sod_mm=scene.pose_distribution.sod_mm,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    per_step = float(np.mean(times[1:]))
    return {
        "device": str(scene.device),
        "drrs_per_s": round(plain, 2),
        "pool_drrs_per_s": round(margin, 2),
        "regressor_samples_per_s": round(batch_size / per_step, 2),
        "regressor_step_s": round(per_step, 4),
    }


def regressor_on_cases(
    bundle: Bundle,
    images: torch.Tensor,
    poses: torch.Tensor,
    landmarks,
    device: str | torch.device = "cpu",
) -> dict:
    """Regressor-only figures on given cases (e.g. a ``sphere-reg make-benchmark`` file).

    ``images (N, 1, h, w)`` are resized (area) to the regressor's resolution when they differ;
    ``poses (N, 4, 4)`` true ``T_ct_from_carm``; ``landmarks (K, 3)`` world mm. Returns
    ``summary`` (Table-1 dict), ``mtre_mm`` (per case) and ``initial_mtre_median_mm`` (of the
    reference pose).
    """
    from sphere_reg_ros.core.metrics import mtre

    h, w = bundle.resolution
    if tuple(images.shape[-2:]) != (h, w):
        images = F.interpolate(images.float(), size=(h, w), mode="area")
    reg = bundle.regressor.to(device).eval()
    n = len(images)
    with torch.no_grad():
        reg(images[:1].to(device))
    t = time.perf_counter()
    errors = evaluate_regressor(reg, images, poses, landmarks)
    per_case = (time.perf_counter() - t) / n
    reference = bundle.pose_distribution.reference(bundle.center_world).expand(n, 4, 4)
    initial = mtre(
        reference, poses.to(torch.float64), torch.as_tensor(landmarks, dtype=torch.float64)
    )
    return {
        "summary": asdict(summarize(errors, [per_case] * n)),
        "mtre_mm": [round(float(e), 3) for e in errors],
        "initial_mtre_median_mm": float(np.median(initial.numpy())),
    }


def run_regressor_benchmark(
    bundle: Bundle,
    ct: Volume,
    labels: Volume | None = None,
    structures: dict[int, str] | None = None,
    n: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    throughput: bool = True,
    throughput_steps: int = 5,
) -> dict:
    """Regressor-only mTRE on ``n`` held-out test poses, plus throughput; returns a plain dict.

    Keys: ``summary`` (``core.metrics.Summary`` as a dict: n, smsr, median/p75/p95 mm, run time
    per case s), ``mtre_mm`` (per case), ``initial_mtre_mm`` (of the reference pose, i.e. the
    untrained prediction), ``throughput`` (see :func:`measure_throughput`), ``cases``.
    """
    dev = torch.device(device)
    spacing = bundle.working_spacing_mm
    scene = TrainingScene.build(
        ct,
        bundle.geometry,
        bundle.pose_distribution,
        labels=labels,
        structures=structures,
        spacing_mm=spacing,
        step_mm=bundle.training.get("step_mm"),
        device=dev,
    )
    g = torch.Generator().manual_seed(split_seed("test", seed))
    poses = scene.sample_poses(n, g)
    images = synthetic_xrays(scene, poses, g)
    res = regressor_on_cases(bundle, images, poses, scene.landmarks, dev)
    out = {
        "checkpoint": str(bundle.path),
        "cases": n,
        "seed": seed,
        "resolution": list(bundle.resolution),
        **res,
        "landmarks": len(scene.landmarks),
    }
    if throughput:
        out["throughput"] = measure_throughput(
            bundle,
            scene,
            steps=throughput_steps,
            batch_size=32 if throughput_steps > 2 else 4,
            n_render=32 if throughput_steps > 2 else 4,
        )
    return out
