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
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.drr import DrrRenderer
from ..core.geometry import se3_exp
from ..core.views import ap_pose, default_geometry
from ..core.volume import hu_to_attenuation, load_example_ct, load_volume, resample
from . import conversions as conv

__all__ = ["main", "run", "add_arguments"]

_NODE = "benchmark_registration_node"
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
)
_SOAK_WARMUP_S = 60.0  # memory growth is measured from the first window ending after this
_SOAK_STEP_S = 1.0  # the soak trajectory advances one tracking step per this many seconds
_SOAK_COUNTERS = (
    "frames_received",
    "frames_processed",
    "frames_dropped",
    "frames_rejected",
    "registrations_failed",
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


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    """Resident memory of ``pid`` (MB); ``key="VmHWM"``: its peak so far."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def _peak_for_frame(
    player, node, opts, pixels: np.ndarray
) -> tuple[float, float, bool, str | None]:
    """Publish one mono16 frame of ``pixels`` (square) with its CameraInfo; (resident memory just before
    it, peak resident memory while it was processed, whether the peak could be reset, its status)."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    info = conv.geometry_to_camera_info(default_geometry(pixels.shape[0]))
    t = time.time()
    stamp = Time(sec=int(t), nanosec=int((t - int(t)) * 1e9))
    msg = conv.numpy_to_image(pixels, "mono16", Header(frame_id="carm", stamp=stamp))
    info.header.stamp = stamp
    try:
        with open(f"/proc/{node.proc.pid}/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident memory
        reset = True
    except OSError:
        reset = False
    rss_before = _rss_mb(node.proc.pid)
    player.info_pub.publish(info)
    player.image_pub.publish(msg)
    dkey = f"{stamp.sec}.{stamp.nanosec:09d}"
    player.wait(lambda: dkey in player.inbox.diag, opts.timeout)
    return (
        rss_before,
        _rss_mb(node.proc.pid, "VmHWM"),
        reset,
        player.inbox.diag.get(dkey, {}).get("status"),
    )


def _large_frame(player, node, opts, image: np.ndarray) -> dict:
    """What one ``N x N`` mono16 frame (``image`` enlarged, scaled to 16 bits) costs the node: the rise
    of its peak resident memory (VmHWM, reset first through ``/proc/<pid>/clear_refs``, Linux ≥ 4.0)
    above its resident memory just before the frame, minus the same rise for ``image`` at its own
    size (what any registration costs), against the frame's size. Where the peak cannot be reset the
    rises are upper bounds."""
    n = int(opts.large_frame_px)

    def mono16(a: np.ndarray) -> np.ndarray:
        return np.round(65535 * (a - a.min()) / max(float(np.ptp(a)), 1e-6)).astype(np.uint16)

    k = max(1, int(math.ceil(n / image.shape[0])))
    big = mono16(np.kron(image, np.ones((k, k), dtype=np.float32))[:n, :n])
    small_before, small_peak, _, _ = _peak_for_frame(player, node, opts, mono16(image))
    before, peak, reset, status = _peak_for_frame(player, node, opts, big)
    rise, base = max(0.0, peak - before), max(0.0, small_peak - small_before)
    size_mb = big.nbytes / 2**20
    return {
        "px": n,
        "frame_mb": size_mb,
        "rss_before_mb": before,
        "peak_after_mb": peak,
        "peak_rise_mb": rise,
        "baseline_rise_mb": base,
        "peak_increase_mb": max(0.0, rise - base),
        "peak_reset": reset,
        "status": status,
    }


@dataclass
class _Inbox:
    cv: threading.Condition = field(default_factory=threading.Condition)
    tf: dict = field(
        default_factory=dict
    )  # (sec, nanosec) -> (arrival monotonic, TransformStamped)
    diag: dict = field(default_factory=dict)  # "sec.nanosec" -> values
    last_diag: dict = field(default_factory=dict)  # the newest /diagnostics values (soak mode)


class _NodeProcess:
    def __init__(self, args: list[str], env: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sphere_reg_ros.ros.registration_node", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            stdin=subprocess.DEVNULL,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ready:" in line:
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Player:
    """This process's side: publishes frames, collects TF and diagnostics."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        from .tf_publisher import TF_QOS

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("benchmark_player", context=self.context)
        self.inbox = _Inbox()
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(TFMessage, "/tf", self._on_tf, TF_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos)
        self.image_pub = self.node.create_publisher(Image, "/image", qos)
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera_info", qos)
        self.params = AsyncParameterClient(self.node, _NODE)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_tf(self, msg) -> None:
        now = time.monotonic()
        with self.inbox.cv:
            for t in msg.transforms:
                self.inbox.tf[(t.header.stamp.sec, t.header.stamp.nanosec)] = (now, t)
            self.inbox.cv.notify_all()

    def _on_diag(self, msg) -> None:
        with self.inbox.cv:
            for st in msg.status:
                values = {kv.key: kv.value for kv in st.values}
                if "last_stamp" in values:
                    self.inbox.diag[values["last_stamp"]] = values
                if "frames_received" in values:
                    self.inbox.last_diag = values
            self.inbox.cv.notify_all()

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.inbox.cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.inbox.cv.wait(min(left, 0.2))
        return True

    def set_params(self, **values) -> None:
        from rclpy.parameter import Parameter

        future = self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        if not self.wait(future.done, 30.0) or not all(
            r.successful for r in future.result().results
        ):
            raise RuntimeError(f"could not set {values} on the node")

    def frame(self, image: np.ndarray, info, timeout: float) -> tuple[float | None, dict, object]:
        """Publish one frame; (latency s or None when no TF came, node diagnostics, TF)."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        t = time.time()
        stamp = Time(sec=int(t), nanosec=int((t - int(t)) * 1e9))
        msg = conv.numpy_to_image(image, "32FC1", Header(frame_id="carm", stamp=stamp))
        key, dkey = (stamp.sec, stamp.nanosec), f"{stamp.sec}.{stamp.nanosec:09d}"
        info.header.stamp = stamp  # the node pairs CameraInfo with its image by stamp
        self.info_pub.publish(info)
        t0 = time.monotonic()
        self.image_pub.publish(msg)
        self.wait(lambda: key in self.inbox.tf or dkey in self.inbox.diag, timeout)
        if dkey in self.inbox.diag and self.inbox.diag[dkey].get("status") == "ok":
            self.wait(lambda: key in self.inbox.tf, 5.0)
        self.wait(lambda: dkey in self.inbox.diag, 5.0)
        arrival = self.inbox.tf.get(key)
        return (
            (None if arrival is None else arrival[0] - t0),
            self.inbox.diag.get(dkey, {}),
            (None if arrival is None else arrival[1]),
        )

    def send(self, msg, info) -> tuple[tuple[int, int], float]:
        """Publish ``info`` and the image ``msg`` with a fresh stamp without waiting; (stamp, monotonic t)."""
        from builtin_interfaces.msg import Time

        t = time.time()
        stamp = Time(sec=int(t), nanosec=int((t - int(t)) * 1e9))
        msg.header.stamp = stamp
        info.header.stamp = stamp  # the node pairs CameraInfo with its image by stamp
        self.info_pub.publish(info)
        t0 = time.monotonic()
        self.image_pub.publish(msg)
        return (stamp.sec, stamp.nanosec), t0

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def _scene(opts, device: str):
    """Geometry, a renderer of the CT on it, the AP pose, the tracking trajectory's poses (at most
    ``n_track``) and ``render(poses) -> images``."""
    ct = load_example_ct()[0] if not opts.ct else load_volume(opts.ct)
    ct = resample(ct, opts.spacing)
    geometry = default_geometry(opts.image_size)
    renderer = DrrRenderer(hu_to_attenuation(ct.data), ct.affine, geometry).to(device)
    ap = ap_pose(ct.center_world)
    step = torch.tensor(
        [opts.step_mm, 0.3 * opts.step_mm, 0.0, 0.0, 0.0, math.radians(opts.step_deg)],
        dtype=torch.float64,
    )

    def track(n: int) -> list[torch.Tensor]:
        return [(se3_exp(step * k) @ ap)[0] for k in range(n)]

    def render(poses) -> list[np.ndarray]:
        with torch.no_grad():
            return [
                renderer(p.to(torch.float32).to(device)[None])[0, 0].cpu().numpy() for p in poses
            ]

    return geometry, ap, track, render


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
    return geometry, cold, render(cold), track, render(track)


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


def _node_setup(opts, device: str, tracking: bool) -> tuple[int, dict, list[str]]:
    """The node's private ROS_DOMAIN_ID, its environment and its command-line parameters."""
    domain = 150 + os.getpid() % 80
    env = dict(
        os.environ,
        ROS_DOMAIN_ID=str(domain),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
    )
    args = [
        "--ros-args",
        "-r",
        f"__node:={_NODE}",
        "-p",
        f"device:={device}",
        "-p",
        f"tracking:={str(tracking).lower()}",
        "-p",
        f"ct_spacing_mm:={opts.spacing}",
        "-p",
        f"resolution:={opts.resolution}",
        "-p",
        "qos_reliability:=reliable",
        "-p",
        "max_image_age_s:=0.0",
    ]
    if opts.ct:
        args += ["-p", f"ct_path:={opts.ct}"]
    return domain, env, args


@contextlib.contextmanager
def _running_node(opts, device: str, tracking: bool):
    """Start the node and a player on its private domain; yields ``(node, player, startup_s)`` once
    the node subscribes to the images; stops both on leaving."""
    domain, env, args = _node_setup(opts, device, tracking=tracking)
    node = _NodeProcess(args, env)
    player = None
    try:
        t0 = time.monotonic()
        if not node.ready.wait(opts.timeout):
            raise RuntimeError("the node did not start:\n" + "".join(node.lines[-30:]))
        startup_s = time.monotonic() - t0
        player = _Player(domain)
        if not player.wait(lambda: player.image_pub.get_subscription_count() > 0, 60.0):
            raise RuntimeError("the node never subscribed to /image")
        yield node, player, startup_s
    finally:
        if player is not None:
            player.close()
        node.stop()


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
        cold, errors, diags = [], [], []
        for T, image in zip(cold_poses[1:], cold_images[1:]):
            lat, diag, tf = player.frame(image, info, opts.timeout)
            cold.append(lat)
            diags.append(diag)
            if tf is not None:
                T_true = conv.invert_pose(T.numpy())
                errors.append(
                    float(np.linalg.norm(conv.transform_stamped_to_pose(tf)[:3, 3] - T_true[:3, 3]))
                )
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
        ready = next(
            (line.split("ready:", 1)[1].strip() for line in node.lines if "ready:" in line), ""
        )
        out = {
            "device": device,
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
        print(f"\n[{r['device']}] {r['registrar']}")
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
        big = r.get("large_frame")
        if big and big["status"] != "ok":
            print(
                f"  one {big['px']}x{big['px']} mono16 frame: not registered (status {big['status']}), no memory "
                "figure"
            )
        elif big:
            print(
                f"  one {big['px']}x{big['px']} mono16 frame ({big['frame_mb']:.0f} MiB, status {big['status']}): peak "
                f"resident memory rose {big['peak_rise_mb']:.0f} MB above the {big['rss_before_mb']:.0f} MB before it, "
                f"a frame of --image-size {big['baseline_rise_mb']:.0f} MB"
                f"{'' if big['peak_reset'] else ' (peak not reset: upper bounds)'}: the large frame cost "
                f"+{big['peak_increase_mb']:.0f} MB = {big['peak_increase_mb'] / big['frame_mb']:.2f}x "
                "the frame "
                f"(target <= 2x: {'met' if big['peak_increase_mb'] <= 2 * big['frame_mb'] else 'NOT met'})"
            )


# ----------------------------------------------------------------------------- soak mode
def _soak_frames(opts, device: str):
    """Geometry, and the tracking mode's trajectory rendered ahead of time (as in :func:`_frames`)."""
    geometry, _, trajectory, render = _scene(opts, device)
    return geometry, render(trajectory(20))


def _counters(diag: dict, base: dict) -> dict:
    """The node's counters from a /diagnostics status, minus those of ``base`` (after the warm-up)."""
    return {k: int(diag.get(k, 0)) - int(base.get(k, 0)) for k in _SOAK_COUNTERS}


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    return {
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "max_s": float(np.max(latencies)),
    }


def _soak_device(opts, device: str) -> dict:
    """Publish at ``opts.rate_hz`` for ``opts.soak_minutes``; one row per ``opts.soak_window_s``."""
    import rclpy  # noqa: F401  (fail early without ROS)
    from std_msgs.msg import Header

    if opts.rate_hz <= 0 or opts.soak_window_s <= 0:
        raise ValueError("--rate-hz and --soak-window-s must be > 0")
    geometry, images = _soak_frames(opts, device if device != "auto" else "cpu")
    info = conv.geometry_to_camera_info(geometry)
    with _running_node(opts, device, tracking=True) as (node, player, startup_s):
        rss_start = _rss_mb(node.proc.pid)
        warm, base, _ = player.frame(images[0], info, opts.timeout)
        rss_warm = _rss_mb(node.proc.pid)
        if not base:
            player.wait(lambda: bool(player.inbox.last_diag), 5.0)
            base = dict(player.inbox.last_diag)
        inbox = player.inbox
        msgs = [conv.numpy_to_image(image, "32FC1", Header(frame_id="carm")) for image in images]
        order = list(range(len(msgs))) + list(range(len(msgs) - 2, 0, -1))
        per_step = max(1, round(opts.rate_hz * _SOAK_STEP_S))
        period, duration, window = 1.0 / opts.rate_hz, 60.0 * opts.soak_minutes, opts.soak_window_s
        sent: dict[tuple[int, int], float] = {}
        rows: list[dict] = []
        everything: list[float] = []
        state = {"n": 0, "w_sent": 0, "tf": 0, "late": 0}
        prev = {k: 0 for k in _SOAK_COUNTERS}
        with inbox.cv:
            inbox.tf.clear()
            inbox.diag.clear()
        start = time.monotonic()
        w_start = next_t = start

        def close_window(now: float) -> None:
            nonlocal w_start, prev
            with inbox.cv:
                arrived, inbox.tf = inbox.tf, {}
                diag = dict(inbox.last_diag)
                inbox.diag.clear()  # frame() is not used here: keep this process's memory flat
            lats = [arrival - sent.pop(key) for key, (arrival, _) in arrived.items() if key in sent]
            everything.extend(lats)
            state["tf"] += len(lats)
            total = _counters(diag, base)
            span = max(now - w_start, 1e-9)
            row = {
                "window": len(rows) + 1,
                "t_s": now - start,
                "duration_s": span,
                "sent": state["w_sent"],
                "sent_total": state["n"],
                "rate_hz": state["w_sent"] / span,
                "tf": len(lats),
                "tf_total": state["tf"],
                "node": {k: total[k] - prev[k] for k in _SOAK_COUNTERS},
                "node_total": total,
                **_percentiles(lats),
                "rss_mb": _rss_mb(node.proc.pid),
            }
            rows.append(row)
            print(_soak_row(row), flush=True)
            prev, w_start, state["w_sent"] = total, now, 0

        print(
            f"[{device}] soak: {opts.rate_hz:g} Hz for {opts.soak_minutes:g} min, a row every {window:g} s",
            flush=True,
        )
        print(_SOAK_HEADER, flush=True)
        while True:
            now = time.monotonic()
            if now - start >= duration:
                break
            if now - w_start >= window:
                close_window(now)
                if node.proc.poll() is not None:
                    raise RuntimeError(
                        "the node exited during the soak:\n" + "".join(node.lines[-30:])
                    )
                continue
            if now < next_t:
                time.sleep(min(next_t - now, w_start + window - now, start + duration - now))
                continue
            key, t_pub = player.send(msgs[order[(state["n"] // per_step) % len(order)]], info)
            sent[key] = t_pub
            state["n"] += 1
            state["w_sent"] += 1
            next_t += period
            if (
                now - next_t > 1.0
            ):  # this process fell more than a second behind: no burst to catch up
                state["late"] += 1
                next_t = now
        # drain: until the node is idle (every received frame processed, dropped or rejected)
        end, n = time.monotonic(), state["n"]

        def idle() -> bool:
            c = _counters(inbox.last_diag, base)
            done = c["frames_processed"] + c["frames_dropped"] + c["frames_rejected"]
            return done == c["frames_received"] and (
                c["frames_received"] >= n or time.monotonic() - end > 5.0
            )

        drained = player.wait(idle, max(30.0, min(opts.timeout, 120.0)))
        time.sleep(0.5)  # a TF published just before the last diagnostics
        close_window(time.monotonic())
        ready = next(
            (line.split("ready:", 1)[1].strip() for line in node.lines if "ready:" in line), ""
        )
        warm_row = next((r for r in rows if r["t_s"] >= _SOAK_WARMUP_S), rows[0])
        total = rows[-1]["node_total"]
        growth = 100.0 * (rows[-1]["rss_mb"] - warm_row["rss_mb"]) / warm_row["rss_mb"]
        after = [r["rss_mb"] for r in rows[warm_row["window"] - 1 :]]  # one reading a window: noisy
        k = max(1, round(60.0 / window))
        first, last = float(np.median(after[:k])), float(np.median(after[-k:]))
        return {
            "device": device,
            "mode": "soak",
            "registrar": ready,
            "startup_s": startup_s,
            "warmup_s": warm,
            "rate_hz": opts.rate_hz,
            "soak_minutes": opts.soak_minutes,
            "window_s": window,
            "duration_s": end - start,
            "drain_s": rows[-1]["t_s"] - (end - start),
            "drained": drained,
            "sent": n,
            "sent_rate_hz": n / max(end - start, 1e-9),
            "schedule_resets": state["late"],
            "tf_received": state["tf"],
            "node": total,
            "latency": _percentiles(everything),
            "latency_mean_s": float(np.mean(everything)) if everything else None,
            "rss_mb": {
                "start": rss_start,
                "after_warmup_frame": rss_warm,
                "reference": warm_row["rss_mb"],
                "reference_t_s": warm_row["t_s"],
                "reference_after_warmup": warm_row["t_s"] >= _SOAK_WARMUP_S,
                "end": rows[-1]["rss_mb"],
                "growth_pct": growth,
                "after_reference_min": float(np.min(after)),
                "after_reference_max": float(np.max(after)),
                "median_first_minute": first,
                "median_last_minute": last,
                "median_growth_pct": 100.0 * (last - first) / first,
            },
            "windows": rows,
        }


_SOAK_HEADER = (
    f"{'win':>4} {'t s':>7} {'sent':>5} {'Hz':>5} {'TF':>4} {'recv':>5} {'proc':>5} {'drop':>5} "
    f"{'fail':>4} {'p50 s':>6} {'p95 s':>6} {'max s':>6} {'RSS MB':>7}"
)


def _soak_row(r: dict) -> str:
    c = r["node"]
    lat = " ".join(
        f"{'-':>6}" if r[k] is None else f"{r[k]:6.3f}" for k in ("p50_s", "p95_s", "max_s")
    )
    return (
        f"{r['window']:4d} {r['t_s']:7.1f} {r['sent']:5d} {r['rate_hz']:5.1f} {r['tf']:4d} "
        f"{c['frames_received']:5d} {c['frames_processed']:5d} {c['frames_dropped']:5d} "
        f"{c['registrations_failed']:4d} {lat} {r['rss_mb']:7.1f}"
    )


def _soak_report(results: list[dict], opts) -> None:
    print(
        f"\nregistration node soak ({platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}); image {opts.image_size}px, registration "
        f"{opts.resolution}px, CT {opts.ct or 'embedded example'} at {opts.spacing} mm"
    )
    for r in results:
        print(f"\n[{r['device']}] {r['registrar']}")
        print(
            f"  {r['rate_hz']:g} Hz for {r['soak_minutes']:g} min: one row per {r['window_s']:g} s "
            "(node counters and TFs per window; latency of the frames whose TF arrived in it)"
        )
        print("  " + _SOAK_HEADER)
        for row in r["windows"]:
            print("  " + _soak_row(row))
        c, lat, mem = r["node"], r["latency"], r["rss_mb"]
        print(
            f"  sent {r['sent']} frames in {r['duration_s']:.1f} s ({r['sent_rate_hz']:.2f} Hz), "
            f"TF received for {r['tf_received']}"
        )
        print(
            f"  node: received {c['frames_received']}, processed {c['frames_processed']}, dropped "
            f"{c['frames_dropped']}, rejected {c['frames_rejected']}, registrations failed "
            f"{c['registrations_failed']}"
            + ("" if r["drained"] else " (the node was still busy at the end)")
        )
        print(
            f"  processed + dropped + rejected = {c['frames_processed'] + c['frames_dropped'] + c['frames_rejected']}"
            f" (received {c['frames_received']}); received {c['frames_received']} of {r['sent']} sent"
        )
        if lat["p50_s"] is not None:
            print(
                f"  latency image -> TF: p50 {lat['p50_s']:.3f} s  p95 {lat['p95_s']:.3f} s  max "
                f"{lat['max_s']:.3f} s  mean {r['latency_mean_s']:.3f} s  ({r['tf_received']} frames)"
            )
        else:
            print("  latency image -> TF: no frame registered")
        which = (
            f"first window after {_SOAK_WARMUP_S:.0f} s"
            if mem["reference_after_warmup"]
            else f"first window: the soak is shorter than {_SOAK_WARMUP_S:.0f} s"
        )
        print(
            f"  resident memory: {mem['start']:.0f} MB at start, {mem['after_warmup_frame']:.0f} MB after the "
            f"warm-up frame, {mem['reference']:.1f} MB at {mem['reference_t_s']:.0f} s ({which}), "
            f"{mem['end']:.1f} MB at the end: {mem['growth_pct']:+.2f} % (single readings)"
        )
        # one reading a window jitters by several % (the allocator's caches): growth is judged on the
        # medians of the first and the last minute after warm-up
        print(
            f"  growth: median of the first minute after warm-up {mem['median_first_minute']:.0f} MB, of the last "
            f"minute {mem['median_last_minute']:.0f} MB: {mem['median_growth_pct']:+.2f} % "
            f"({'<= 5 %' if mem['median_growth_pct'] <= 5.0 else 'more than 5 %'}; single readings from then on "
            f"{mem['after_reference_min']:.0f}-{mem['after_reference_max']:.0f} MB)"
        )
        if r.get("plot"):
            print(f"  plot: {r['plot']}")


def _soak_plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["windows"]
    t = np.array([row["t_s"] for row in rows]) / 60.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key, label, style in (
        ("p50_s", "p50", "o-"),
        ("p95_s", "p95", "s-"),
        ("max_s", "max", "^:"),
    ):
        ax1.plot(
            t, [np.nan if row[key] is None else row[key] for row in rows], style, ms=3, label=label
        )
    ax1.set_ylabel("latency image → TF (s)")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="upper right", fontsize=8)
    ax1.grid(alpha=0.3)
    c, mem = r["node"], r["rss_mb"]
    ax1.set_title(
        f"node soak [{r['device']}]: {r['rate_hz']:g} Hz for {r['soak_minutes']:g} min; received "
        f"{c['frames_received']}, processed {c['frames_processed']}, dropped {c['frames_dropped']}",
        fontsize=9,
    )
    ax2.plot(t, [row["rss_mb"] for row in rows], "o-", ms=3, color="tab:purple")
    ax2.axvline(mem["reference_t_s"] / 60.0, color="gray", ls="--", lw=0.8)
    ax2.set_ylabel("node resident memory (MB)")
    ax2.set_xlabel("time since the soak started (min)")
    ax2.grid(alpha=0.3)
    ax2.set_title(
        f"growth after warm-up (medians of the first and last minute): {mem['median_first_minute']:.0f} -> "
        f"{mem['median_last_minute']:.0f} MB ({mem['median_growth_pct']:+.2f} %); single readings "
        f"{mem['reference']:.0f} -> {mem['end']:.0f} MB ({mem['growth_pct']:+.2f} %)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _soak_paths(opts, device: str) -> tuple[str, str | None]:
    """Where the PNG goes, and the JSON when ``--json`` does not name one."""
    if opts.out:
        os.makedirs(opts.out, exist_ok=True)
        return os.path.join(opts.out, f"soak_{device}.png"), None if opts.json else os.path.join(
            opts.out, "soak.json"
        )
    if opts.json:
        stem = os.path.splitext(opts.json)[0]
        return f"{stem}_{device}.png", None
    return f"soak_{device}.png", None


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with ``args`` (missing attributes take the defaults)."""
    opts = argparse.Namespace(**{k: getattr(args, k, v) for k, v in _DEFAULTS.items()})
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
