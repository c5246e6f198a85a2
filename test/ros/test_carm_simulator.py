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
