"""The harness of the node benchmarks (:mod:`.benchmark_latency`, :mod:`.benchmark_soak`): the
registration node in a subprocess on a private ``ROS_DOMAIN_ID``, this process's player that
publishes frames and collects TF and ``/diagnostics``, the rendered scene, and the node's memory.

With ``opts.views`` > 1 the node registers several C-arm views together (its ``views`` parameter,
``carm_simulator.view_names``; the relative poses ``carm_simulator.view_offsets``, given as
``view_offsets_mm``) and the
player publishes every view of a frame with one stamp on ``/<ns>/image`` and ``/<ns>/camera_info``.
"""

from __future__ import annotations

import contextlib
import math
import os
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
from ..core.pose_formats import pose_to_translation_quaternion
from ..core.views import ap_pose, default_geometry
from ..core.volume import hu_to_attenuation, load_example_ct, load_volume, resample
from . import conversions as conv
from .carm_simulator import view_names, view_offsets

_NODE = "benchmark_registration_node"


def _offsets_param(offsets: list[np.ndarray]) -> str:
    """The node's ``view_offsets_mm`` of the views after the first (7 numbers each)."""
    numbers = []
    for T in offsets[1:]:
        t, q = pose_to_translation_quaternion(torch.as_tensor(T), unit="mm")
        numbers += [*t.tolist(), *q.tolist()]
    return "[" + ",".join(repr(float(v)) for v in numbers) + "]"


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

    def __init__(self, domain_id: int, views: list[str] | None = None) -> None:
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
        prefixes = [f"/{ns}" for ns in views] if views else [""]
        self.image_pubs = [self.node.create_publisher(Image, f"{p}/image", qos) for p in prefixes]
        self.info_pubs = [
            self.node.create_publisher(CameraInfo, f"{p}/camera_info", qos) for p in prefixes
        ]
        self.frame_ids = [f"carm_{ns}" for ns in views] if views else ["carm"]
        self.image_pub, self.info_pub = self.image_pubs[0], self.info_pubs[0]
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

    def frame(self, image, info, timeout: float) -> tuple[float | None, dict, object]:
        """Publish one frame (``image``: an array, or one per view, all sent with one stamp);
        (latency s or None when no TF came, node diagnostics, TF)."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        images = [image] if isinstance(image, np.ndarray) else list(image)
        t = time.time()
        stamp = Time(sec=int(t), nanosec=int((t - int(t)) * 1e9))
        msgs = [
            conv.numpy_to_image(a, "32FC1", Header(frame_id=f, stamp=stamp))
            for a, f in zip(images, self.frame_ids, strict=True)
        ]
        key, dkey = (stamp.sec, stamp.nanosec), f"{stamp.sec}.{stamp.nanosec:09d}"
        for pub, f in zip(self.info_pubs, self.frame_ids):
            info.header.stamp = stamp  # the node pairs CameraInfo with its image by stamp
            info.header.frame_id = f
            pub.publish(info)
        t0 = time.monotonic()
        for pub, msg in zip(self.image_pubs, msgs):
            pub.publish(msg)
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
    views = view_names(getattr(opts, "views", 1))
    if views:
        offsets = view_offsets(len(views), opts.view_angle)
        args += ["-p", f"views:=[{', '.join(views)}]"]
        args += ["-p", f"view_offsets_mm:={_offsets_param(offsets)}"]
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
        player = _Player(domain, view_names(getattr(opts, "views", 1)))
        if not player.wait(
            lambda: all(p.get_subscription_count() > 0 for p in player.image_pubs), 60.0
        ):
            topics = ", ".join(p.topic_name for p in player.image_pubs)
            raise RuntimeError(f"the node never subscribed to {topics}")
        yield node, player, startup_s
    finally:
        if player is not None:
            player.close()
        node.stop()


def _ready_line(node: _NodeProcess) -> str:
    """The registrar the node described in its ``ready:`` line ('' before it)."""
    return next((line.split("ready:", 1)[1].strip() for line in node.lines if "ready:" in line), "")
