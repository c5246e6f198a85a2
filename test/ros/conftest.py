"""Shared fixtures for the tests that talk over DDS with real rclpy nodes (no mocks).

- ``ros_domain_id`` (session, autouse): a distinct ``ROS_DOMAIN_ID`` (1..100, from the pid) for
  this test run, put into ``os.environ`` before any ``rclpy.init`` so concurrent runs on one
  machine stay apart; discovery is kept on this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``).
- ``ros_env``: the environment for subprocesses (same domain id, same library paths).
- ``rclpy_context``: a fresh, initialised ``rclpy`` context, shut down after the test.
- ``spawn_ros_process``: starts a Python subprocess (``sys.executable``) with ``ros_env`` and
  always terminates it afterwards.
- ``ct_file_at``: writes the example CT resampled to a given spacing as NIfTI (nodes read files).
- :class:`NodeClient`, :func:`assert_nothing_published`: the client side of the registration
  node's DDS tests (``test_registration_node.py``, ``test_hostile_input.py``), which load this
  file with importlib to reach them.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent

_ROS_ENV_KEYS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")


@pytest.fixture(scope="session", autouse=True)
def ros_domain_id() -> Iterator[int]:
    saved = {k: os.environ.get(k) for k in _ROS_ENV_KEYS}
    domain_id = 1 + os.getpid() % 100
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    try:
        yield domain_id
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def ros_env(ros_domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(ros_domain_id)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def rclpy_context(ros_domain_id: int):
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


class RosProcess:
    """A child Python process; a reader thread collects its stdout+stderr lines."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._eof = True
            self._new_line.notify_all()

    def wait_for_line(self, marker: str, timeout: float) -> None:
        """Wait for an output line containing ``marker``; fail with the output on timeout/exit."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    if marker in line:
                        return
                seen = len(self.lines)
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"subprocess {self.args} printed no {marker!r} within {timeout:.0f} s; "
                        f"output so far:\n{self.output()}"
                    )
                self._new_line.wait(timeout=left)
        self.proc.wait(timeout=5)
        pytest.fail(
            f"subprocess {self.args} exited (rc={self.proc.returncode}) before printing "
            f"{marker!r}; output:\n{self.output()}"
        )

    def output(self) -> str:
        with self._new_line:
            return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                # a clean stop takes 2-3 s on an idle 2-core machine; under load (other runs beside the
                # tests) tearing down torch and DDS took over 5 s, so allow 20 before killing
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def spawn_ros_process(ros_env: dict[str, str]) -> Iterator[Callable[..., RosProcess]]:
    procs: list[RosProcess] = []

    def spawn(*args: str) -> RosProcess:
        proc = RosProcess(list(args), ros_env)
        procs.append(proc)
        return proc

    try:
        yield spawn
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="session")
def ct_file_at(tmp_path_factory, small_ct) -> Callable[[float], Path]:
    """``ct_file_at(spacing_mm)``: the example CT resampled to ``spacing_mm`` as a NIfTI file (cached)."""
    import nibabel as nib

    from sphere_reg_ros.core.volume import resample

    files: dict[float, Path] = {}

    def make(spacing_mm: float) -> Path:
        if spacing_mm not in files:
            path = tmp_path_factory.mktemp("ct") / f"ct_{spacing_mm:g}mm.nii.gz"
            ct = resample(small_ct[0], spacing_mm)
            nib.save(nib.Nifti1Image(ct.data, ct.affine), str(path))
            files[spacing_mm] = path
        return files[spacing_mm]

    return make


# ----------------------------------------------------------------------------- registration node client
class NodeClient:
    """A test's rclpy node talking to one registration node (``node``) over DDS, spun in a
    background thread; collects what the node publishes (TF, pose, diagnostics, overlay)."""

    def __init__(
        self,
        context,
        proc,
        node: str,
        carm_frame: str = "carm_optical",
        wait_s: float = 90.0,
        name: str = "reg_test_client",
        image_topic: str = "/image",
        info_topic: str = "/camera_info",
    ):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from std_srvs.srv import Trigger
        from tf2_msgs.msg import TFMessage

        from sphere_reg_ros.ros.tf_publisher import TF_QOS

        self.proc, self.node_name, self.carm_frame, self.wait_s = proc, node, carm_frame, wait_s
        self.node = Node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.cv = threading.Condition()
        self.inbox: dict[str, list] = {"tf": [], "pose": [], "diag": [], "overlay": []}
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(TFMessage, "/tf", lambda m: self._put("tf", m), TF_QOS)
        self.node.create_subscription(
            PoseWithCovarianceStamped,
            f"/{self.node_name}/pose",
            lambda m: self._put("pose", m),
            reliable,
        )
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", lambda m: self._put("diag", m), reliable
        )
        self.image_pub = self.node.create_publisher(Image, image_topic, reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, info_topic, reliable)
        self.reset = self.node.create_client(Trigger, f"/{self.node_name}/reset")
        self.params = AsyncParameterClient(self.node, self.node_name)
        self._Image, self._Trigger = Image, Trigger
        self._stamps = itertools.count(1)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.wait(
            lambda: (
                self.image_pub.get_subscription_count() > 0
                and self.info_pub.get_subscription_count() > 0
            ),
            30.0,
            "the node's subscriptions",
        )

    def _put(self, key, msg):
        with self.cv:
            self.inbox[key].append(msg)
            self.cv.notify_all()

    def wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"timed out after {timeout:.0f} s waiting for {what}; node output:\n"
                        f"{self.proc.output()[-6000:]}"
                    )
                self.cv.wait(timeout=min(left, 0.2))

    def subscribe_overlay(self, topic: str | None = None, key: str = "overlay"):
        """Collect the node's overlay (``topic``, default ``~/overlay``) in ``inbox[key]``."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.inbox.setdefault(key, [])
        return self.node.create_subscription(
            self._Image,
            topic or f"/{self.node_name}/overlay",
            lambda m: self._put(key, m),
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
        )

    # --- frames -------------------------------------------------------------------------------
    def stamp(self, age_s: float = 0.0):
        """A fresh, unique stamp (system time minus ``age_s``)."""
        from builtin_interfaces.msg import Time

        t = time.time() - age_s
        sec = int(t)
        return Time(
            sec=sec, nanosec=int((t - sec) * 1e9) // 1000 * 1000 + next(self._stamps) % 1000
        )

    def image_msg(self, pixels, encoding="32FC1", frame_id=None, stamp=None):
        from std_msgs.msg import Header

        frame_id = self.carm_frame if frame_id is None else frame_id
        header = Header(frame_id=frame_id, stamp=stamp or self.stamp())
        from sphere_reg_ros.ros import conversions as conv

        return conv.numpy_to_image(pixels, encoding, header)

    def info_msg(self, geometry, frame_id=None, stamp=None):
        """CameraInfo of ``geometry``; unstamped unless ``stamp`` (:meth:`send` stamps it)."""
        from std_msgs.msg import Header

        frame_id = self.carm_frame if frame_id is None else frame_id
        header = (
            Header(frame_id=frame_id) if stamp is None else Header(frame_id=frame_id, stamp=stamp)
        )
        from sphere_reg_ros.ros import conversions as conv

        return conv.geometry_to_camera_info(geometry, header)

    def send(self, image, info):
        """CameraInfo, then the image; an unstamped CameraInfo gets the image's stamp (a driver's)."""
        if (info.header.stamp.sec, info.header.stamp.nanosec) == (0, 0):
            info.header.stamp = image.header.stamp
        self.info_pub.publish(info)
        self.image_pub.publish(image)

    # --- outputs ------------------------------------------------------------------------------
    def tf_for(self, stamp, timeout=None):
        """The transform published for the image with ``stamp``."""
        timeout = self.wait_s if timeout is None else timeout

        def find():
            for msg in self.inbox["tf"]:
                for t in msg.transforms:
                    if (t.header.stamp.sec, t.header.stamp.nanosec) == (stamp.sec, stamp.nanosec):
                        return t
            return None

        self.wait(
            lambda: find() is not None, timeout, f"a TF stamped {stamp.sec}.{stamp.nanosec:09d}"
        )
        return find()

    def pose_for(self, stamp, timeout=10.0):
        def find():
            return next(
                (
                    m
                    for m in self.inbox["pose"]
                    if (m.header.stamp.sec, m.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
                ),
                None,
            )

        self.wait(lambda: find() is not None, timeout, "the pose of the frame")
        return find()

    def _diag(self, key: str, value: str, start: int, timeout: float, what: str):
        """The first of the node's diagnostic statuses (after inbox index ``start``) whose value
        ``key`` is ``value``: ``(status, values)``."""

        def find():
            for msg in self.inbox["diag"][start:]:
                for st in msg.status:
                    values = {kv.key: kv.value for kv in st.values}
                    if st.name.startswith(self.node_name) and values.get(key) == value:
                        return st, values
            return None

        self.wait(lambda: find() is not None, timeout, what)
        return find()

    def diag_since(self, start: int, reason: str, timeout=None):
        """The first diagnostic status (after inbox index ``start``) whose ``status`` is ``reason``."""
        timeout = self.wait_s if timeout is None else timeout
        return self._diag("status", reason, start, timeout, f"diagnostics status {reason!r}")

    def diag_for(self, stamp, timeout=10.0):
        """The diagnostic values published after the frame with ``stamp`` was processed."""
        key = f"{stamp.sec}.{stamp.nanosec:09d}"
        return self._diag("last_stamp", key, 0, timeout, f"diagnostics of the frame stamped {key}")

    def mark(self, key="diag"):
        with self.cv:
            return len(self.inbox[key])

    def register_good(self, scene, timeout=None, frame_id=None):
        """Send a good frame (with its CameraInfo) and return (stamp, TF) once it is registered."""
        timeout = self.wait_s if timeout is None else timeout
        frame_id = self.carm_frame if frame_id is None else frame_id
        image = self.image_msg(scene["image"], frame_id=frame_id)
        self.send(image, self.info_msg(scene["geometry"], frame_id))
        return image.header.stamp, self.tf_for(image.header.stamp, timeout)

    def warm_up(self, scene, timeout=180.0):
        """Register a first frame (the node's first registration also pays one-time costs).

        CameraInfo goes out alone first: ``image`` and ``camera_info`` are separate topics, so an
        image sent with its CameraInfo can reach the node first; the node waits a moment for its
        CameraInfo, else rejects it for lack of intrinsics, as documented. Frames are sent until
        one is registered."""
        deadline = time.monotonic() + timeout
        self.info_pub.publish(self.info_msg(scene["geometry"]))
        while True:
            time.sleep(0.5)
            image = self.image_msg(scene["image"])
            self.send(image, self.info_msg(scene["geometry"]))
            _, values = self.diag_for(
                image.header.stamp, timeout=max(5.0, deadline - time.monotonic())
            )
            if values["status"] == "ok":
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no frame registered in {timeout:.0f} s; last status {values['status']}"
                )

    def set_params(self, **values):
        from rclpy.parameter import Parameter

        future = self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        self.wait(future.done, 30.0, f"set_parameters {values}")
        return future.result().results

    def get_param(self, name):
        future = self.params.get_parameters([name])
        self.wait(future.done, 30.0, f"get_parameters {name}")
        from rclpy.parameter import parameter_value_to_python

        return parameter_value_to_python(future.result().values[0])

    def close(self):
        self.executor.shutdown()
        self._thread.join(timeout=10)
        self.node.destroy_node()


def assert_nothing_published(client: NodeClient, image) -> None:
    """No TF and no pose carry ``image``'s stamp (they would precede its diagnostics)."""
    stamp = (image.header.stamp.sec, image.header.stamp.nanosec)
    with client.cv:
        assert not any(
            (t.header.stamp.sec, t.header.stamp.nanosec) == stamp
            for m in client.inbox["tf"]
            for t in m.transforms
        )
        assert not any(
            (m.header.stamp.sec, m.header.stamp.nanosec) == stamp for m in client.inbox["pose"]
        )


# ----------------------------------------------------------------------------- a node under test
def registration_scene(ct, size: int) -> dict:
    """A ``size`` px X-ray of ``ct`` at a known pose ``truth`` (``T_ct_from_carm``, the AP view
    moved by a few mm and about a degree) and a start ``init`` a few mm and about a degree from it,
    standing in for the regressor: ``geometry``, ``truth``, ``image`` (float32), ``init``."""
    import numpy as np
    import torch

    from sphere_reg_ros.core.drr import DrrRenderer
    from sphere_reg_ros.core.geometry import se3_exp
    from sphere_reg_ros.core.views import ap_pose, default_geometry
    from sphere_reg_ros.core.volume import hu_to_attenuation

    geometry = default_geometry(size)
    delta = se3_exp(torch.tensor([3.0, -2.0, 4.0, 0.02, -0.01, 0.015], dtype=torch.float64))
    truth = (delta @ ap_pose(ct.center_world))[0].numpy()
    renderer = DrrRenderer(hu_to_attenuation(ct.data), ct.affine, geometry)
    with torch.no_grad():
        image = renderer(torch.as_tensor(truth, dtype=torch.float32)[None])[0, 0].numpy()
    init = (
        se3_exp(torch.tensor([3.0, 2.5, -3.0, 0.012, 0.015, -0.01], dtype=torch.float64)).numpy()
        @ truth
    )
    return dict(geometry=geometry, truth=truth, image=image.astype(np.float32), init=init)


def registration_node_args(
    node: str, ct_path, spacing_mm: float, size: int, init, *extra: str
) -> list[str]:
    """``python`` arguments of a registration node for the DDS tests: ``ct_path`` at ``spacing_mm``,
    ``size`` px in one scale, no tracking, started at ``init`` (``initial_pose_mm``), stale only
    after 30 s, reliable QoS deep enough that a burst reaches the callback; ``extra`` parameters
    (``"name:=value"``) after those."""
    import torch

    from sphere_reg_ros.core.geometry import pose_to_translation_quaternion

    t, q = pose_to_translation_quaternion(torch.as_tensor(init, dtype=torch.float64), unit="mm")
    pose = "[" + ",".join(repr(float(v)) for v in [*t.tolist(), *q.tolist()]) + "]"
    params = [
        f"ct_path:={ct_path}",
        f"ct_spacing_mm:={spacing_mm}",
        f"resolution:={size}",
        "lm_scales:=[1.0]",
        "tracking:=false",
        "use_initial_pose:=true",
        f"initial_pose_mm:={pose}",
        "max_image_age_s:=30.0",
        "diagnostics_period_s:=0.5",
        "qos_reliability:=reliable",
        "qos_depth:=10",
        *extra,
    ]
    args = ["-m", "sphere_reg_ros.ros.registration_node", "--ros-args", "-r", f"__node:={node}"]
    for p in params:
        args += ["-p", p]
    return args
