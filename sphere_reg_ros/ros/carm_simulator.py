"""``carm_simulator``: a simulated C-arm publishing X-rays of a CT along a pose trajectory.

Publishes ``image`` (``sensor_msgs/Image``, ``32FC1`` log-domain line integrals, the
registration node's ``image_domain: line_integral``), ``camera_info`` and, for evaluation, the
true pose on TF as ``ct_frame -> truth_frame`` (the C-arm's true pose in the CT: a separate
branch of the tree, so it never conflicts with the registration node's ``carm -> ct``), all
with the image's stamp. See :mod:`sphere_reg_ros.evaluation.simulate` for the trajectory and
degradations.

Run: ``python -m sphere_reg_ros.ros.carm_simulator --ros-args -p rate_hz:=0.5``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core.views import default_geometry
from ..core.volume import VolumeError, load_example_ct, load_volume, resample
from ..evaluation.simulate import DEGRADATION_PRESETS, Trajectory, XraySimulator
from .conversions import geometry_to_camera_info, numpy_to_image, pose_to_transform_stamped
from .params import ParamSpec, check_frame_id, check_values, descriptor
from .tf_publisher import TfPublisher

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
)
_FRAMES = ("frame_id", "ct_frame", "truth_frame")


class CarmSimulatorNode(Node):
    """Publishes simulated X-rays, ``CameraInfo`` and the true pose at ``rate_hz``."""

    def __init__(self, **kwargs) -> None:
        super().__init__("carm_simulator", **kwargs)
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        p = {spec.name: self.get_parameter(spec.name).value for spec in PARAMS}
        check_values(p, PARAMS)  # ParameterError (a ValueError) naming the parameter
        for name in _FRAMES:
            check_frame_id(name, p[name])
        self.params = p
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
        self.image_pub = self.create_publisher(Image, "image", qos)
        self.info_pub = self.create_publisher(CameraInfo, "camera_info", qos)
        self.tf = TfPublisher(self)
        self.frame = 0
        self.done = False
        self.timer = self.create_timer(1.0 / p["rate_hz"], self._publish)
        self.get_logger().info(
            f"simulating {self.ct.source} ({self.ct.shape}) at {p['resolution']} px, {p['rate_hz']} Hz, "
            f"degradation '{p['degradation']}', truth on TF {p['ct_frame']} -> {p['truth_frame']}"
        )

    def pose_at(self, frame: int) -> np.ndarray:
        """True ``T_ct_from_carm`` (4, 4) mm of frame number ``frame``."""
        return self.trajectory.pose(frame * self.params["time_step_s"], self.ct.center_world)

    def _publish(self) -> None:
        frames = self.params["frames"]
        if frames and self.frame >= frames:
            if not self.done:
                self.get_logger().info(f"published {self.frame} frames; stopping in 2 s")
                self.done = True
                self.create_timer(2.0, lambda: rclpy.try_shutdown(context=self.context))
            return
        if (
            self.frame == 0
            and self.image_pub.get_subscription_count() < self.params["wait_for_subscribers"]
        ):
            self.get_logger().info(
                f"waiting for {self.params['wait_for_subscribers']} subscriber(s) of "
                f"{self.image_pub.topic_name} before the first frame",
                once=True,
            )
            return
        start = time.perf_counter()
        pose = self.pose_at(self.frame)
        image = self.simulator.render(pose, self.frame)
        header = Header(frame_id=self.params["frame_id"])
        header.stamp = self.get_clock().now().to_msg()
        self.tf.send(
            pose_to_transform_stamped(
                pose, self.params["ct_frame"], self.params["truth_frame"], header.stamp
            )
        )
        self.info_pub.publish(geometry_to_camera_info(self.geometry, header))
        self.image_pub.publish(numpy_to_image(image, "32FC1", header))
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
