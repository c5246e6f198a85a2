"""``carm_simulator``: a simulated C-arm publishing X-rays of a CT along a pose trajectory.

Publishes ``image`` (``sensor_msgs/Image``, ``32FC1`` log-domain line integrals, the
registration node's ``image_domain: line_integral``), ``camera_info`` and, for evaluation, the
true pose on TF as ``ct_frame -> truth_frame`` (the C-arm's true pose in the CT: a separate
branch of the tree, so it never conflicts with the registration node's ``carm -> ct``), all
with the image's stamp. See :mod:`sphere_reg_ros.evaluation.simulate` for the trajectory and
degradations.

Several views (a biplane C-arm): with ``views`` = ``[ns_0, ns_1, ...]`` every view ``ns_k``
publishes ``ns_k/image`` and ``ns_k/camera_info``, all views of a frame with the same stamp,
images in the frame ``<frame_id>_<ns_k>`` and the truth ``T_ct_from_carm_k`` on TF as
``<ct_frame> -> <truth_frame>_<ns_k>``. View ``k`` is turned by ``k * view_angle_deg`` about the
first view's isocentre, ``T_ct_from_carm_k = T_ct_from_carm_0 @ orbit_offset(k * angle)``
(:func:`sphere_reg_ros.core.views.orbit_offset`), and that relative pose is on ``/tf_static`` as
``<frame_id>_<ns_0> -> <frame_id>_<ns_k>``. Each view's degradations are drawn independently.

Run: ``python -m sphere_reg_ros.ros.carm_simulator --ros-args -p rate_hz:=0.5`` (biplane: add
``-p "views:=[view_a, view_b]"``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.exceptions import InvalidParameterTypeException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core.views import default_geometry, orbit_offset
from ..core.volume import VolumeError, load_example_ct, load_volume, resample
from ..evaluation.simulate import DEGRADATION_PRESETS, Trajectory, XraySimulator
from .conversions import geometry_to_camera_info, numpy_to_image, pose_to_transform_stamped
from .params import (
    ParameterError,
    ParamSpec,
    check_frame_id,
    check_values,
    check_views,
    declared_default,
    descriptor,
)
from .tf_publisher import StaticTfPublisher, TfPublisher

#: The simulator's parameters (read-only: fixed when it starts), in the table format of
#: :mod:`.params`, which declares them with their ranges and checks them.
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("ct_path", "", "CT to simulate from ('' = the embedded example CT).", kind="startup"),
    ParamSpec(
        "ct_spacing_mm",
        2.0,
        "Voxel size the CT is resampled to for rendering (mm).",
        (0.5, 10.0),
        kind="startup",
    ),
    ParamSpec(
        "resolution",
        128,
        "Published image size (pixels, square detector of detector_mm).",
        (16, 1024),
        kind="startup",
    ),
    ParamSpec("detector_mm", 384.0, "Detector side length (mm).", (50.0, 1000.0), kind="startup"),
    ParamSpec(
        "sdd_mm", 1020.0, "Source-to-detector distance (mm).", (200.0, 2000.0), kind="startup"
    ),
    ParamSpec("rate_hz", 0.5, "Frames per second.", (0.01, 30.0), kind="startup"),
    ParamSpec(
        "frames",
        0,
        "Frames to publish before stopping (0 = forever).",
        (0, 1000000),
        kind="startup",
    ),
    ParamSpec(
        "degradation",
        "mild",
        "Degradations of the simulated X-rays (evaluation.simulate presets).",
        choices=tuple(sorted(DEGRADATION_PRESETS)),
        kind="startup",
    ),
    ParamSpec("seed", 0, "Seed of the per-frame degradations.", (0, 2**31 - 1), kind="startup"),
    ParamSpec(
        "sweep_deg",
        10.0,
        "Amplitude of the C-arm's LAO/RAO sweep (deg).",
        (0.0, 90.0),
        kind="startup",
    ),
    ParamSpec(
        "sweep_period_s",
        40.0,
        "Period of the sweep (s of trajectory time).",
        (1.0, 3600.0),
        kind="startup",
    ),
    ParamSpec(
        "motion_mm", 3.0, "Amplitude of the slow patient motion (mm).", (0.0, 50.0), kind="startup"
    ),
    ParamSpec(
        "time_step_s", 1.0, "Trajectory time between frames (s).", (0.01, 60.0), kind="startup"
    ),
    ParamSpec(
        "wait_for_subscribers",
        0,
        "Start publishing only once the image topic has at least this many subscribers "
        "(0 = at once).",
        (0, 100),
        kind="startup",
    ),
    ParamSpec(
        "frame_id",
        "carm_optical",
        "Frame of the published images (the C-arm's optical frame).",
        kind="startup",
    ),
    ParamSpec("ct_frame", "ct", "Frame of the CT.", kind="startup"),
    ParamSpec(
        "truth_frame",
        "carm_truth",
        "Frame of the true C-arm pose published on TF (child of ct_frame).",
        kind="startup",
    ),
    ParamSpec(
        "views",
        [],
        "View namespaces of a multi-view (biplane) C-arm, e.g. [view_a, view_b]: view ns "
        "publishes ns/image and ns/camera_info (the same stamp for every view), images in frame "
        "<frame_id>_ns ('/' in ns as '_'), its truth as <ct_frame> -> <truth_frame>_ns, and the first view's frame -> view k's on /tf_static; [] = one view on image "
        "and camera_info.",
        kind="startup",
        item="string",
    ),
    ParamSpec(
        "view_angle_deg",
        90.0,
        "With views: view k is turned by k times this about the first view's image-row axis "
        "through its isocentre (core.views.orbit_offset); the relative poses go on /tf_static.",
        (-180.0, 180.0),
        kind="startup",
    ),
)
_FRAMES = ("frame_id", "ct_frame", "truth_frame")


@dataclass(frozen=True)
class View:
    """One simulated view: ``name`` (its namespace, '' for the single view), the frame of its
    images, the child frame of its truth and ``offset`` = ``T_carm0_from_carmk`` (4, 4) mm."""

    name: str
    frame_id: str
    truth_frame: str
    offset: np.ndarray

    def topic(self, base: str) -> str:
        return f"{self.name}/{base}" if self.name else base


def view_names(n: int) -> list[str]:
    """Namespaces of ``n`` views as the demo and the node benchmark name them: ``[]`` for one
    view, else ``view_a``, ``view_b``, ... (at most 26)."""
    if not 1 <= n <= 26:
        raise ValueError(f"the number of views must be 1 to 26, got {n}")
    return [] if n == 1 else [f"view_{chr(ord('a') + k)}" for k in range(n)]


def view_offsets(n: int, angle_deg: float) -> list[np.ndarray]:
    """``T_carm0_from_carmk`` (4, 4) mm of ``n`` views: view ``k`` turned by ``k * angle_deg``
    about the first view's isocentre (:func:`sphere_reg_ros.core.views.orbit_offset`)."""
    return [orbit_offset(k * float(angle_deg)) for k in range(n)]


def simulated_views(params: dict) -> list[View]:
    """The views of the simulator's parameters (``views``, ``view_angle_deg``, ``frame_id``,
    ``truth_frame``): one unnamed view when ``views`` is empty.

    A namespace ``a/b`` gives the frames ``<frame_id>_a_b`` and ``<truth_frame>_a_b``.

    Raises:
        ParameterError: a view name that is no relative ROS namespace, or a repeated one.
    """
    names = list(params["views"])
    if not names:
        return [View("", params["frame_id"], params["truth_frame"], np.eye(4))]
    check_views({"views": names, "view_frames": [], "view_offsets_mm": []})  # as the node does
    offsets = view_offsets(len(names), params["view_angle_deg"])
    return [
        View(
            name,
            f"{params['frame_id']}_{name.replace('/', '_')}",
            f"{params['truth_frame']}_{name.replace('/', '_')}",
            offset,
        )
        for name, offset in zip(names, offsets)
    ]


def _declare(node: Node, spec: ParamSpec):
    """Declare ``spec`` on ``node`` and return its value (an unset empty list: its default)."""
    try:
        node.declare_parameter(spec.name, declared_default(spec), descriptor(spec))
        return node.get_parameter(spec.name).value
    except InvalidParameterTypeException as exc:
        raise ParameterError(f"{spec.name}: {exc}") from exc
    except ParameterUninitializedException:
        return list(spec.default)


class CarmSimulatorNode(Node):
    """Publishes simulated X-rays, ``CameraInfo`` and the true pose at ``rate_hz``."""

    def __init__(self, **kwargs) -> None:
        super().__init__("carm_simulator", **kwargs)
        p = {spec.name: _declare(self, spec) for spec in PARAMS}
        check_values(p, PARAMS)  # ParameterError (a ValueError) naming the parameter
        for name in _FRAMES:
            check_frame_id(name, p[name])
        self.params = p
        self.views = simulated_views(p)
        ct = load_example_ct()[0] if not p["ct_path"] else load_volume(p["ct_path"])
        self.ct = resample(ct, p["ct_spacing_mm"])
        self.geometry = default_geometry(p["resolution"], p["detector_mm"], p["sdd_mm"])
        self.simulator = XraySimulator(self.ct, self.geometry, p["degradation"], p["seed"])
        m = p["motion_mm"]
        self.trajectory = Trajectory(
            sweep_deg=p["sweep_deg"],
            sweep_period_s=p["sweep_period_s"],
            motion_mm=(m * 0.6, m * 0.3, m),
        )
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pubs = [self.create_publisher(Image, v.topic("image"), qos) for v in self.views]
        self.info_pubs = [
            self.create_publisher(CameraInfo, v.topic("camera_info"), qos) for v in self.views
        ]
        self.image_pub, self.info_pub = self.image_pubs[0], self.info_pubs[0]
        self.tf = TfPublisher(self)
        self.static_tf = None
        if len(self.views) > 1:
            self.static_tf = StaticTfPublisher(self)
            stamp = self.get_clock().now().to_msg()
            first = self.views[0].frame_id
            self.static_tf.send(
                [
                    pose_to_transform_stamped(v.offset, first, v.frame_id, stamp)
                    for v in self.views[1:]
                ]
            )
        self.frame = 0
        self.done = False
        self.timer = self.create_timer(1.0 / p["rate_hz"], self._publish)
        truths = ", ".join(f"{p['ct_frame']} -> {v.truth_frame}" for v in self.views)
        views = "" if not p["views"] else f"{len(self.views)} views {p['views']}, "
        self.get_logger().info(
            f"simulating {self.ct.source} ({self.ct.shape}) at {p['resolution']} px, {p['rate_hz']} Hz, "
            f"{views}degradation '{p['degradation']}', truth on TF {truths}"
        )

    def pose_at(self, frame: int, view: int = 0) -> np.ndarray:
        """True ``T_ct_from_carm`` (4, 4) mm of frame number ``frame`` (of view ``view``)."""
        pose = self.trajectory.pose(frame * self.params["time_step_s"], self.ct.center_world)
        return pose @ self.views[view].offset

    def _publish(self) -> None:
        frames = self.params["frames"]
        if frames and self.frame >= frames:
            if not self.done:
                self.get_logger().info(f"published {self.frame} frames; stopping in 2 s")
                self.done = True
                self.create_timer(2.0, lambda: rclpy.try_shutdown(context=self.context))
            return
        waiting = self.params["wait_for_subscribers"]
        if self.frame == 0 and any(p.get_subscription_count() < waiting for p in self.image_pubs):
            topics = ", ".join(p.topic_name for p in self.image_pubs)
            self.get_logger().info(
                f"waiting for {waiting} subscriber(s) of {topics} before the first frame",
                once=True,
            )
            return
        start = time.perf_counter()
        n = len(self.views)
        poses = [self.pose_at(self.frame, k) for k in range(n)]
        # view k of frame f draws its degradations as frame f * n + k: independent per view, and
        # the single view (n = 1) draws exactly as before
        images = [self.simulator.render(pose, self.frame * n + k) for k, pose in enumerate(poses)]
        stamp = self.get_clock().now().to_msg()
        self.tf.send(
            [
                pose_to_transform_stamped(pose, self.params["ct_frame"], view.truth_frame, stamp)
                for pose, view in zip(poses, self.views)
            ]
        )
        for k, view in enumerate(self.views):
            header = Header(frame_id=view.frame_id, stamp=stamp)
            self.info_pubs[k].publish(geometry_to_camera_info(self.geometry, header))
        for k, view in enumerate(self.views):
            header = Header(frame_id=view.frame_id, stamp=stamp)
            self.image_pubs[k].publish(numpy_to_image(images[k], "32FC1", header))
        self.get_logger().debug(
            f"frame {self.frame} rendered in {time.perf_counter() - start:.2f} s"
        )
        self.frame += 1


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        node = CarmSimulatorNode()
    except (ValueError, VolumeError) as exc:
        rclpy.logging.get_logger("carm_simulator").error(str(exc))
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # Ctrl-C (or a launch shutting down) while the CT is still loading
        rclpy.try_shutdown()
        return 0
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
