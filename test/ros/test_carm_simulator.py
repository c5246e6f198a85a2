"""The carm_simulator node over DDS: images, CameraInfo and the true pose arrive, consistent."""

import time

import numpy as np
import pytest

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.volume import load_volume
from sphere_reg_ros.evaluation.simulate import Trajectory, XraySimulator


@pytest.fixture(scope="module")
def ct_file(ct_file_at):
    return ct_file_at(8.0)


def test_trajectory_sweeps_and_moves_smoothly():
    trajectory = Trajectory(sweep_deg=10.0, sweep_period_s=40.0, motion_mm=(2.0, 1.0, 3.0))
    center = np.array([1.0, -2.0, 3.0])
    poses = np.stack([trajectory.pose(t, center) for t in np.arange(0.0, 40.0, 1.0)])
    angles = np.degrees(
        np.arctan2(poses[:, 1, 2], poses[:, 0, 2])
    )  # beam direction in the axial plane
    assert angles.max() - angles.min() == pytest.approx(20.0, abs=0.5)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 20.0  # mm per second of trajectory time at 650 mm from the isocentre
    with pytest.raises(ValueError):
        Trajectory(sweep_period_s=0.0)


def test_simulator_is_reproducible_and_degrades(small_ct):
    from sphere_reg_ros.core.volume import resample

    ct = resample(small_ct[0], 8.0)
    geometry = CarmGeometry(sdd=1020.0, height=32, width=32, delx=12.0, dely=12.0)
    pose = Trajectory().pose(0.0, ct.center_world)
    clean = XraySimulator(ct, geometry, "none").render(pose, frame=0)
    mild_a = XraySimulator(ct, geometry, "mild", seed=3).render(pose, frame=1)
    mild_b = XraySimulator(ct, geometry, "mild", seed=3).render(pose, frame=1)
    assert np.isfinite(clean).all() and clean.max() > 1.0
    np.testing.assert_array_equal(mild_a, mild_b)
    assert np.abs(mild_a - clean).mean() > 1e-3
    with pytest.raises(ValueError, match="degradation"):
        XraySimulator(ct, geometry, "heavy")


def test_simulator_node_publishes_image_info_and_truth(ct_file, spawn_ros_process, rclpy_context):
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from sphere_reg_ros.ros.conversions import (
        camera_info_to_geometry,
        image_to_numpy,
        transform_stamped_to_pose,
    )
    from sphere_reg_ros.ros.tf_publisher import TF_QOS

    node = Node("simulator_probe", context=rclpy_context)
    got = {"image": [], "info": [], "tf": []}
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    # own topic and frame names, so that nothing else on this machine's DDS can interfere
    node.create_subscription(Image, "sim_test/image", lambda m: got["image"].append(m), qos)
    node.create_subscription(
        CameraInfo, "sim_test/camera_info", lambda m: got["info"].append(m), qos
    )
    node.create_subscription(TFMessage, "/tf", lambda m: got["tf"].extend(m.transforms), TF_QOS)
    proc = spawn_ros_process(
        "-m",
        "sphere_reg_ros.ros.carm_simulator",
        "--ros-args",
        "-p",
        f"ct_path:={ct_file}",
        "-p",
        "ct_spacing_mm:=8.0",
        "-p",
        "resolution:=32",
        "-p",
        "rate_hz:=2.0",
        "-p",
        "frames:=0",
        "-p",
        "degradation:=none",
        "-p",
        "frame_id:=sim_test_carm",
        "-p",
        "truth_frame:=sim_test_truth",
        "-p",
        "ct_frame:=sim_test_ct",
        "-r",
        "image:=sim_test/image",
        "-r",
        "camera_info:=sim_test/camera_info",
    )
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(got["image"]) < 2 or len(got["info"]) < 2):
        executor.spin_once(timeout_sec=0.2)
    assert len(got["image"]) >= 2, proc.output()
    image = got["image"][0]
    assert image.encoding == "32FC1" and image.header.frame_id == "sim_test_carm"
    array = image_to_numpy(image)
    assert array.shape == (32, 32) and np.isfinite(array).all()
    info = next(i for i in got["info"] if i.header.stamp == image.header.stamp)
    geometry = camera_info_to_geometry(info, sdd_mm=1020.0)
    assert (geometry.height, geometry.width) == (32, 32)
    truth = next(
        t
        for t in got["tf"]
        if t.header.stamp == image.header.stamp and t.child_frame_id == "sim_test_truth"
    )
    assert truth.header.frame_id == "sim_test_ct"
    # the truth is the trajectory's pose of one of the frames (the first ones may be missed while the
    # nodes discover each other), and the image is that pose's rendering
    ct = load_volume(ct_file)
    trajectory = Trajectory(motion_mm=(1.8, 0.9, 3.0))
    received = transform_stamped_to_pose(truth)
    errors = [
        np.abs(received - trajectory.pose(float(k), ct.center_world)).max() for k in range(60)
    ]
    k = int(np.argmin(errors))
    assert errors[k] < 1e-3, errors
    rendered = XraySimulator(ct, geometry, "none").render(
        trajectory.pose(float(k), ct.center_world), k
    )
    np.testing.assert_allclose(array, rendered, atol=1e-3)
    executor.remove_node(node)
    node.destroy_node()


@pytest.mark.parametrize(
    "param,reason",
    [
        ("degradation:=heavy", "degradation 'heavy' is not one of"),
        ("truth_frame:=/carm_truth", "truth_frame '/carm_truth': frame ids have no leading '/'"),
        ("views:=[1, 2]", "views: Trying to set parameter"),
        ("views:=[view_a, view_a]", "name a namespace twice"),
    ],
)
def test_simulator_node_refuses_a_bad_parameter_naming_it(spawn_ros_process, param, reason):
    """Its parameter table is checked like the registration node's (``params.check_values``,
    ``params.check_frame_id``): the node exits with status 2 and the reason, before loading a CT."""
    proc = spawn_ros_process("-m", "sphere_reg_ros.ros.carm_simulator", "--ros-args", "-p", param)
    proc.wait_for_line(reason, timeout=60)
    assert proc.proc.wait(timeout=30) == 2, proc.output()


def test_simulator_parameters_are_read_only_with_ranges_and_valid_defaults():
    from sphere_reg_ros.ros import params as P
    from sphere_reg_ros.ros.carm_simulator import PARAMS

    P.check_values({spec.name: spec.default for spec in PARAMS}, PARAMS)
    for spec in PARAMS:
        d = P.descriptor(spec)
        assert d.read_only and d.description, spec.name
        if isinstance(spec.default, (int, float)):
            assert d.floating_point_range or d.integer_range, spec.name


def test_simulated_views_name_frames_and_turn_about_the_isocentre():
    from sphere_reg_ros.core.views import orbit_offset
    from sphere_reg_ros.ros.carm_simulator import PARAMS, simulated_views
    from sphere_reg_ros.ros.params import ParameterError

    params = {spec.name: spec.default for spec in PARAMS}
    (single,) = simulated_views(params)
    assert (single.name, single.frame_id, single.truth_frame) == ("", "carm_optical", "carm_truth")
    assert single.topic("image") == "image"
    np.testing.assert_array_equal(single.offset, np.eye(4))
    a, b, c = simulated_views(dict(params, views=["a", "b", "c"], view_angle_deg=30.0))
    assert (b.frame_id, b.truth_frame, b.topic("camera_info")) == (
        "carm_optical_b",
        "carm_truth_b",
        "b/camera_info",
    )
    np.testing.assert_array_equal(a.offset, orbit_offset(0.0))
    np.testing.assert_allclose(c.offset, orbit_offset(60.0), atol=1e-12)
    assert simulated_views(dict(params, views=["x/y", "z"]))[0].frame_id == "carm_optical_x_y"
    for bad, reason in (
        ([" a"], "not a relative ROS namespace"),
        (["/a"], "not a relative ROS namespace"),
        (["a", "a"], "twice"),
    ):
        with pytest.raises(ParameterError, match=reason):
            simulated_views(dict(params, views=bad))


def _key(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def _collect_views(node_context, names, enough, timeout=90.0):
    """Spin a probe node subscribed to ``<name>/image`` and ``<name>/camera_info`` of each view,
    /tf and /tf_static until ``enough(got)``; ``got``: ``{"image": {name: [...]}, "info": {name:
    [...]}, "tf": [...], "static": [...]}``."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from sphere_reg_ros.ros.tf_prior import TF_STATIC_QOS
    from sphere_reg_ros.ros.tf_publisher import TF_QOS

    node = Node("simulator_views_probe", context=node_context)
    got = {"image": {n: [] for n in names}, "info": {n: [] for n in names}, "tf": [], "static": []}
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for n in names:
        node.create_subscription(Image, f"{n}/image", got["image"][n].append, qos)
        node.create_subscription(CameraInfo, f"{n}/camera_info", got["info"][n].append, qos)
    node.create_subscription(TFMessage, "/tf", lambda m: got["tf"].extend(m.transforms), TF_QOS)
    node.create_subscription(
        TFMessage, "/tf_static", lambda m: got["static"].extend(m.transforms), TF_STATIC_QOS
    )
    executor = SingleThreadedExecutor(context=node_context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not enough(got):
        executor.spin_once(timeout_sec=0.2)
    executor.remove_node(node)
    node.destroy_node()
    return got


@pytest.mark.ros
def test_simulator_node_publishes_two_views_with_one_stamp(
    ct_file, spawn_ros_process, rclpy_context
):
    """``views:=[sv_a, sv_b]``: per view an image and CameraInfo under its namespace, both views of a
    frame with the same stamp; the truths on /tf differ by orbit_offset(view_angle_deg), which is
    also on /tf_static between the views' frames; each image is its view's rendering."""
    from sphere_reg_ros.core.views import orbit_offset
    from sphere_reg_ros.ros.conversions import (
        camera_info_to_geometry,
        image_to_numpy,
        transform_stamped_to_pose,
    )

    names = ["sv_a", "sv_b"]
    proc = spawn_ros_process(
        "-m",
        "sphere_reg_ros.ros.carm_simulator",
        "--ros-args",
        *("-p", f"ct_path:={ct_file}", "-p", "ct_spacing_mm:=8.0", "-p", "resolution:=32"),
        *("-p", "rate_hz:=2.0", "-p", "degradation:=none", "-p", "frame_id:=sv_carm"),
        *("-p", "truth_frame:=sv_truth", "-p", "ct_frame:=sv_ct", "-p", "view_angle_deg:=75.0"),
        *("-p", f"views:=[{', '.join(names)}]"),
    )

    def complete(got):
        """Stamps of which every view's image and CameraInfo and every truth arrived."""
        sets = [{_key(m) for m in got[k][n]} for k in ("image", "info") for n in names]
        sets += [{_key(t) for t in got["tf"] if t.child_frame_id == f"sv_truth_{n}"} for n in names]
        return sorted(set.intersection(*sets))

    got = _collect_views(rclpy_context, names, lambda g: len(complete(g)) >= 2 and g["static"])
    common = complete(got)
    assert len(common) >= 2, proc.output()
    first, last = common[0], common[-1]
    between = [{_key(m) for m in got["image"][n] if first <= _key(m) <= last} for n in names]
    assert between[0] == between[1], "every frame has one stamp for both views"
    static = {(t.header.frame_id, t.child_frame_id): t for t in got["static"]}
    assert list(static) == [("sv_carm_sv_a", "sv_carm_sv_b")], static
    offset = transform_stamped_to_pose(static[("sv_carm_sv_a", "sv_carm_sv_b")])
    np.testing.assert_allclose(offset, orbit_offset(75.0), atol=1e-6)

    ct = load_volume(ct_file)
    stamp = common[-1]
    truths = {}
    for n in names:
        image = next(m for m in got["image"][n] if _key(m) == stamp)
        info = next(m for m in got["info"][n] if _key(m) == stamp)
        assert image.header.frame_id == info.header.frame_id == f"sv_carm_{n}"
        truth = next(
            t for t in got["tf"] if _key(t) == stamp and t.child_frame_id == f"sv_truth_{n}"
        )
        assert truth.header.frame_id == "sv_ct"
        truths[n] = transform_stamped_to_pose(truth)
        geometry = camera_info_to_geometry(info, sdd_mm=1020.0)
        array = image_to_numpy(image)
        assert array.shape == (32, 32) == (geometry.height, geometry.width)
        rendered = XraySimulator(ct, geometry, "none").render(truths[n], 0)
        np.testing.assert_allclose(array, rendered, atol=1e-3)
    np.testing.assert_allclose(truths["sv_b"], truths["sv_a"] @ orbit_offset(75.0), atol=1e-3)
    # the first view's truth is a pose of the single-view trajectory
    trajectory = Trajectory(motion_mm=(1.8, 0.9, 3.0))
    errors = [
        np.abs(truths["sv_a"] - trajectory.pose(float(k), ct.center_world)).max() for k in range(60)
    ]
    assert min(errors) < 1e-3, errors
