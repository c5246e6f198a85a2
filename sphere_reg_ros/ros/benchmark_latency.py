"""End-to-end latency of the registration node, image published → TF received (not a test).

    python -m sphere_reg_ros.ros.benchmark_latency [--frames 10] [--memory-frames 500] [--devices cpu,cuda]
    sphere-reg benchmark-node ...            (the same, wired by the command line)

Per device it starts the node in a subprocess (``python -m sphere_reg_ros.ros.registration_node``)
at its default settings (embedded example CT at 2 mm, 64 px registration, learning-free residuals
unless a checkpoint ships) on a private ``ROS_DOMAIN_ID``, and plays the C-arm from this process:
X-rays rendered with ``DrrRenderer`` (``--image-size`` px, 32FC1 line integrals) plus CameraInfo.

* cold: ``tracking:=false``; poses drawn around the AP view (±``--cold-rot-deg``,
  ±``--cold-trans-mm``); the node starts from its default (regressor, else the AP view);
* tracking: ``tracking:=true``; a slow trajectory (``--step-mm``, ``--step-deg`` per frame, back
  and forth), so every frame warm-starts from the last accepted pose.

Every frame is sent after the previous one's result (no drops), and its latency is the time from
``publish`` to the TF with its stamp arriving here (a frame whose registration fails a gate has
no TF and is counted as failed). The node's resident memory (``/proc/<pid>/status`` VmRSS) is
read after start-up, after the warm-up frame and after ``--memory-frames`` further tracking
frames. The issue's targets are printed beside the numbers: CPU ≤ 3 s per cold frame, tracking
≥ 2× faster than cold; GPU ≤ 0.3 s cold, ≥ 10 Hz tracking; memory flat.

Several views (``--views N --view-angle DEG``): the same modes with one view and then with N views
registered together, and their ratio (:mod:`.benchmark_biplane`).

Soak mode (``--soak-minutes M --rate-hz R``, instead of the modes above): ``tracking:=true``, one
warm-up frame, then frames of a slow tracking trajectory (rendered ahead of time: the tracking
mode's poses, one ``--step-mm``/``--step-deg`` step a second, back and forth; each image is sent
with fresh stamps until the next step) are published at R Hz for M minutes whether or not the
node keeps up (it keeps only the newest frame and counts the others as dropped). Every
``--soak-window-s`` (10 s) a row is recorded: frames sent, TFs received, the node's
``/diagnostics`` counters (received, processed, dropped, failed registrations), the latency
percentiles (p50/p95/max) of the frames whose TF arrived in that window and the node's resident
memory. At the end: the table, a summary (totals, overall latency percentiles, memory of the first
window ending after 60 s vs at the end) and a PNG (latency and memory against time) in ``--out``
(default: next to ``--json``, else the current folder).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys

import numpy as np
import torch

from ..core.geometry import se3_exp
from . import conversions as conv
from .benchmark_biplane import (
    add_view_arguments,
    bench_mono_and_views,
    check_view_options,
    render_views,
    report_ratios,
)
from .benchmark_node import _large_frame, _ready_line, _rss_mb, _running_node, _scene
from .benchmark_soak import _soak_device, _soak_paths, _soak_plot, _soak_report

__all__ = ["main", "run", "add_arguments"]

_DEFAULTS = dict(
    frames=10,
    memory_frames=500,
    devices="",
    image_size=128,
    ct=None,
    spacing=2.0,
    resolution=64,
    cold_rot_deg=3.0,
    cold_trans_mm=8.0,
    step_mm=0.5,
    step_deg=0.1,
    timeout=300.0,
    json=None,
    seed=0,
    soak_minutes=0.0,
    rate_hz=30.0,
    soak_window_s=10.0,
    out=None,
    large_frame_px=0,
    views=1,
    view_angle=90.0,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``main`` and ``sphere-reg benchmark-node``)."""
    d = _DEFAULTS
    parser.add_argument(
        "--frames", type=int, default=d["frames"], help="timed frames per mode (default 10)"
    )
    parser.add_argument(
        "--memory-frames",
        type=int,
        default=d["memory_frames"],
        help="tracking frames between the memory readings (default 500; 0 skips)",
    )
    parser.add_argument(
        "--devices",
        default=d["devices"],
        help="comma-separated devices (default: cpu, plus cuda when available)",
    )
    parser.add_argument(
        "--image-size", type=int, default=d["image_size"], help="published image side, px (128)"
    )
    parser.add_argument("--ct", default=d["ct"], help="CT file (default: the embedded example CT)")
    parser.add_argument(
        "--spacing", type=float, default=d["spacing"], help="node's ct_spacing_mm (2.0)"
    )
    parser.add_argument(
        "--resolution", type=int, default=d["resolution"], help="node's resolution (64)"
    )
    parser.add_argument(
        "--cold-rot-deg", type=float, default=d["cold_rot_deg"], help="cold poses: ± deg (3)"
    )
    parser.add_argument(
        "--cold-trans-mm", type=float, default=d["cold_trans_mm"], help="cold poses: ± mm (8)"
    )
    parser.add_argument(
        "--step-mm", type=float, default=d["step_mm"], help="tracking motion per frame, mm"
    )
    parser.add_argument(
        "--step-deg", type=float, default=d["step_deg"], help="tracking rotation per frame, deg"
    )
    parser.add_argument(
        "--timeout", type=float, default=d["timeout"], help="s to wait for start-up / one frame"
    )
    parser.add_argument(
        "--json", default=d["json"], help="also write the results to this JSON file"
    )
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of the cold poses")
    add_soak_arguments(parser)
    add_large_frame_argument(parser)
    add_view_arguments(parser, d["views"], d["view_angle"])


def add_large_frame_argument(parser: argparse.ArgumentParser) -> None:
    """``--large-frame-px`` (also on ``sphere-reg benchmark-node``)."""
    parser.add_argument(
        "--large-frame-px",
        type=int,
        default=_DEFAULTS["large_frame_px"],
        help="after the timed frames, send one N x N mono16 frame and report how much it raised the "
        "node's peak resident memory (VmHWM), against the frame's size (default 0: skip)",
    )


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    """The soak mode's options (also on ``sphere-reg benchmark-node``)."""
    d = _DEFAULTS
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=d["soak_minutes"],
        help="soak mode: publish tracking frames at --rate-hz for this many minutes, whether or "
        "not the node keeps up (default 0: the cold/tracking modes instead)",
    )
    parser.add_argument(
        "--rate-hz", type=float, default=d["rate_hz"], help="soak mode: publishing rate (30)"
    )
    parser.add_argument(
        "--soak-window-s",
        type=float,
        default=d["soak_window_s"],
        help="soak mode: one table row per this many seconds (10)",
    )
    parser.add_argument(
        "--out",
        default=d["out"],
        help="soak mode: folder of soak_<device>.png/.json (default: next to --json, else .)",
    )


def _frames(opts, device: str):
    """Geometry, cold poses and images, a tracking trajectory and its images."""
    geometry, ap, trajectory, render = _scene(opts, device)
    rng = np.random.default_rng(opts.seed)
    cold, n = [], max(1, opts.frames) + 1  # +1: the warm-up frame
    for _ in range(n):
        xi = np.r_[
            rng.uniform(-1, 1, 3) * opts.cold_trans_mm,
            rng.uniform(-1, 1, 3) * math.radians(opts.cold_rot_deg),
        ]
        cold.append((se3_exp(torch.as_tensor(xi)) @ ap)[0])
    track = trajectory(max(2, min(opts.frames, 20)))
    return (
        geometry,
        cold,
        render_views(render, cold, opts),
        track,
        render_views(render, track, opts),
    )


def _stats(latencies: list[float | None]) -> dict:
    ok = [v for v in latencies if v is not None]
    if not ok:
        return {"frames": len(latencies), "failed": len(latencies)}
    return {
        "frames": len(latencies),
        "failed": len(latencies) - len(ok),
        "median_s": float(np.median(ok)),
        "mean_s": float(np.mean(ok)),
        "p95_s": float(np.percentile(ok, 95)),
        "max_s": float(np.max(ok)),
    }


def _cold_frames(player, info, opts, poses, images) -> tuple[list, list[float], list[dict]]:
    """Send the cold frames one by one: their latencies (s or None), the translation errors (mm)
    of the TFs that came, and the node's diagnostics of each."""
    cold, errors, diags = [], [], []
    for T, image in zip(poses, images):
        lat, diag, tf = player.frame(image, info, opts.timeout)
        cold.append(lat)
        diags.append(diag)
        if tf is not None:
            T_true = conv.invert_pose(T.numpy())
            errors.append(
                float(np.linalg.norm(conv.transform_stamped_to_pose(tf)[:3, 3] - T_true[:3, 3]))
            )
    return cold, errors, diags


def _bench_device(opts, device: str) -> dict:
    import rclpy  # noqa: F401  (fail early without ROS)

    geometry, cold_poses, cold_images, track_poses, track_images = _frames(
        opts, device if device != "auto" else "cpu"
    )
    info = conv.geometry_to_camera_info(geometry)
    with _running_node(opts, device, tracking=False) as (node, player, startup_s):
        rss_start = _rss_mb(node.proc.pid)
        warm, _, _ = player.frame(cold_images[0], info, opts.timeout)
        rss_warm = _rss_mb(node.proc.pid)
        cold, errors, diags = _cold_frames(player, info, opts, cold_poses[1:], cold_images[1:])
        player.set_params(tracking=True)
        track, track_inits = [], []
        order = list(range(len(track_images))) + list(range(len(track_images) - 2, 0, -1))
        for i in range(opts.frames):
            lat, diag, _ = player.frame(track_images[order[i % len(order)]], info, opts.timeout)
            track.append(lat)
            track_inits.append(diag.get("last_init", "?"))
        rss_before = _rss_mb(node.proc.pid)
        mem_failed = 0
        for i in range(opts.memory_frames):
            lat, _, _ = player.frame(track_images[order[i % len(order)]], info, opts.timeout)
            mem_failed += lat is None
        rss_after = _rss_mb(node.proc.pid)
        ready = _ready_line(node)
        out = {
            "device": device,
            "views": opts.views,
            "registrar": ready,
            "startup_s": startup_s,
            "warmup_s": warm,
            "cold": _stats(cold),
            "tracking": _stats(track),
            "tracking_fell_back": sum("fell back" in how for how in track_inits),
            "cold_translation_error_mm_median": float(np.median(errors)) if errors else None,
            "node_register_ms_median": float(
                np.median(
                    [float(d["latency_register_ms"]) for d in diags if "latency_register_ms" in d]
                    or [math.nan]
                )
            ),
            "rss_mb": {
                "start": rss_start,
                "after_warmup": rss_warm,
                "before_memory_run": rss_before,
                f"after_{opts.memory_frames}_frames": rss_after,
            },
            "memory_frames_failed": mem_failed,
        }
        if opts.large_frame_px > 0:
            out["large_frame"] = _large_frame(
                player, node, opts, np.asarray(cold_images[0], dtype=np.float32)
            )
        c, t = out["cold"].get("median_s"), out["tracking"].get("median_s")
        out["tracking_speedup"] = (c / t) if c and t else None
        return out


def _report(results: list[dict], opts) -> None:
    print(
        f"registration node latency, image published -> TF received ({platform.node()}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__})"
    )
    print(
        f"image {opts.image_size}px, registration {opts.resolution}px, CT {opts.ct or 'embedded example'} "
        f"at {opts.spacing} mm"
    )
    for r in results:
        gpu = r["device"] != "cpu"
        c, t = r["cold"], r["tracking"]
        views = f", {r['views']} views" if r.get("views", 1) > 1 else ""
        print(f"\n[{r['device']}{views}] {r['registrar']}")
        print(
            f"  start-up {r['startup_s']:.1f} s, warm-up frame "
            f"{r['warmup_s'] if r['warmup_s'] is None else round(r['warmup_s'], 2)} s"
        )
        for name, s in (("cold", c), ("tracking", t)):
            if "median_s" in s:
                print(
                    f"  {name:9s} median {s['median_s']:.3f} s  mean {s['mean_s']:.3f}  p95 {s['p95_s']:.3f}  "
                    f"max {s['max_s']:.3f}  ({s['frames']} frames, {s['failed']} without TF)"
                )
            else:
                print(f"  {name:9s} no frame registered ({s['frames']} frames)")
        if "median_s" in t:
            print(
                f"  tracking frames that fell back to a cold registration: {r['tracking_fell_back']} of {t['frames']}"
            )
        if r["cold_translation_error_mm_median"] is not None:
            print(
                f"  cold TF translation error, median {r['cold_translation_error_mm_median']:.2f} mm"
            )
        speed = r["tracking_speedup"]
        cold_target, track_target = (0.3, "10 Hz") if gpu else (3.0, "2x cold")
        if "median_s" in c:
            print(
                f"  target cold <= {cold_target} s: {'met' if c['median_s'] <= cold_target else 'NOT met'}"
            )
        if speed:
            ok = (1.0 / t["median_s"] >= 10.0) if gpu else speed >= 2.0
            print(
                f"  tracking speed-up {speed:.2f}x; target {track_target}: {'met' if ok else 'NOT met'}"
            )
        mem = r["rss_mb"]
        print("  resident memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()))
        if r.get("large_frame"):
            _report_large_frame(r["large_frame"])
    report_ratios(results)


def _report_large_frame(big: dict) -> None:
    """Print what one large mono16 frame cost the node's peak memory (:func:`_large_frame`)."""
    if big["status"] != "ok":
        print(
            f"  one {big['px']}x{big['px']} mono16 frame: not registered (status {big['status']}), no memory "
            "figure"
        )
    else:
        print(
            f"  one {big['px']}x{big['px']} mono16 frame ({big['frame_mb']:.0f} MiB, status {big['status']}): peak "
            f"resident memory rose {big['peak_rise_mb']:.0f} MB above the {big['rss_before_mb']:.0f} MB before it, "
            f"a frame of --image-size {big['baseline_rise_mb']:.0f} MB"
            f"{'' if big['peak_reset'] else ' (peak not reset: upper bounds)'}: the large frame cost "
            f"+{big['peak_increase_mb']:.0f} MB = {big['peak_increase_mb'] / big['frame_mb']:.2f}x "
            "the frame "
            f"(target <= 2x: {'met' if big['peak_increase_mb'] <= 2 * big['frame_mb'] else 'NOT met'})"
        )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with ``args`` (missing attributes take the defaults)."""
    opts = argparse.Namespace(**{k: getattr(args, k, v) for k, v in _DEFAULTS.items()})
    check_view_options(opts)
    devices = (
        [d.strip() for d in opts.devices.split(",") if d.strip()]
        if opts.devices
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    results = []
    if opts.soak_minutes > 0:
        json_path = opts.json
        for device in devices:
            r = _soak_device(opts, device)
            r["plot"], json_default = _soak_paths(opts, device)
            json_path = json_path or json_default
            _soak_plot(r, r["plot"])
            results.append(r)
        _soak_report(results, opts)
    else:
        json_path = opts.json
        for device in devices:
            if opts.views > 1:
                results += bench_mono_and_views(opts, device, _bench_device)
            else:
                results.append(_bench_device(opts, device))
        _report(results, opts)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(
                {"host": platform.node(), "options": vars(opts), "results": results}, fh, indent=2
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark_latency", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
