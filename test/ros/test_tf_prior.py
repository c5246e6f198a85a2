"""ros.tf_prior over real DDS: a publisher node puts transforms on /tf and /tf_static, a second
node's :class:`TfPrior` looks them up. The tests do not depend on the backend (tf2_ros in a ROS 2
install, the /tf and /tf_static subscriptions elsewhere: the one that runs is in ``backend``)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from sphere_reg_ros.ros import conversions as conv

pytestmark = [pytest.mark.ros]

#: T_ct_from_carm in mm: 300 mm along z, turned about x (a C-arm looking at the CT).
POSE = conv.pose_from_translation_quaternion(
    [0.01, -0.02, 0.3], [np.sin(0.2), 0.0, 0.0, np.cos(0.2)]
)


@pytest.fixture
def nodes(rclpy_context):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from tf2_msgs.msg import TFMessage

    from sphere_reg_ros.ros.tf_prior import TF_STATIC_QOS, TfPrior
    from sphere_reg_ros.ros.tf_publisher import TF_QOS

    host = Node("tf_prior_host", context=rclpy_context)
    source = Node("tf_prior_source", context=rclpy_context)
    prior = TfPrior(host)
    pubs = {
        "tf": source.create_publisher(TFMessage, "/tf", TF_QOS),
        "tf_static": source.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS),
    }
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(host)
    executor.add_node(source)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while pubs["tf"].get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    def publish(parent, child, pose=POSE, age_s=0.0, topic="tf", static=False):
        stamp = None
        if not static:
            now = host.get_clock().now().nanoseconds - int(age_s * 1e9)
            from builtin_interfaces.msg import Time

            stamp = Time(sec=now // 10**9, nanosec=now % 10**9)
        t = conv.pose_to_transform_stamped(pose, parent, child, stamp)
        pubs[topic].publish(TFMessage(transforms=[t]))

    try:
        yield prior, publish
    finally:
        executor.shutdown()
        thread.join(timeout=5)
        host.destroy_node()
        source.destroy_node()


def _wait(prior, parent, child, max_age_s, until, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        found = prior.lookup(parent, child, max_age_s)
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_missing_fresh_reversed_and_stale_transforms(nodes):
    prior, publish = nodes
    assert prior.backend in ("tf2_ros", "subscriptions")
    missing = prior.lookup("ct", "carm_prior", 1.0)
    assert missing.pose is None and "ct -> carm_prior not on TF" in missing.note

    publish("ct", "carm_prior")
    found = _wait(prior, "ct", "carm_prior", 5.0, lambda f: f.pose is not None)
    assert found.pose is not None, found.note
    np.testing.assert_allclose(found.pose, POSE, atol=1e-6)
    assert "s old" in found.note

    reverse = prior.lookup("carm_prior", "ct", 5.0)  # the other direction: the inverse
    np.testing.assert_allclose(reverse.pose, conv.invert_pose(POSE), atol=1e-6)

    publish("ct", "carm_old", age_s=30.0)
    stale = _wait(prior, "ct", "carm_old", 5.0, lambda f: "not on TF" not in f.note)
    assert stale.pose is None and "stale" in stale.note and "prior_max_age_s 5" in stale.note
    any_age = prior.lookup("ct", "carm_old", 0.0)  # 0 = any age
    np.testing.assert_allclose(any_age.pose, POSE, atol=1e-6)


def test_a_static_transform_is_always_fresh(nodes):
    prior, publish = nodes
    publish("ct_static", "carm_static", topic="tf_static", static=True)
    found = _wait(prior, "ct_static", "carm_static", 0.001, lambda f: f.pose is not None)
    assert found.pose is not None, found.note
    assert "(static)" in found.note
    np.testing.assert_allclose(found.pose, POSE, atol=1e-6)


def test_the_newest_transform_of_an_edge_wins(nodes):
    prior, publish = nodes
    moved = POSE.copy()
    moved[0, 3] += 25.0
    publish("ct", "carm_moving", pose=POSE, age_s=1.0)
    publish("ct", "carm_moving", pose=moved, age_s=0.0)
    publish("ct", "carm_moving", pose=POSE, age_s=2.0)  # older, arrives last: not used
    found = _wait(
        prior,
        "ct",
        "carm_moving",
        10.0,
        lambda f: f.pose is not None and abs(f.pose[0, 3] - moved[0, 3]) < 1e-6,
    )
    np.testing.assert_allclose(found.pose, moved, atol=1e-6)
