"""Real DDS round trips between two processes (rclpy over Fast DDS, no mocks).

The test node publishes on ``<prefix>/in``; ``echo_relay.py``, started with the same Python in a
subprocess, republishes each message on ``<prefix>/out``; the test node receives that echo and
compares it with what it sent, field by field (every pixel bit-exactly for images).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

ECHO_SCRIPT = str(Path(__file__).resolve().parent / "echo_relay.py")
TIMEOUT_S = 20.0  # overall limit for discovery + delivery of one round trip
REPUBLISH_S = 1.0  # resend while no echo came back (covers late endpoint matching)


def _unique_prefix(name: str) -> str:
    return f"/roundtrip_{name}_{os.getpid()}_{time.monotonic_ns() % 10**9}"


def _round_trip(context, spawn_ros_process, msg_type, type_name: str, msg, name: str):
    """Publish ``msg`` to an echo node in another process and return the echoed message."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    prefix = _unique_prefix(name)
    echo = spawn_ros_process(ECHO_SCRIPT, type_name, f"{prefix}/in", f"{prefix}/out")
    echo.wait_for_line("READY", timeout=TIMEOUT_S)

    node = Node(f"roundtrip_{name}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        received = []
        node.create_subscription(msg_type, f"{prefix}/out", received.append, qos)
        pub = node.create_publisher(msg_type, f"{prefix}/in", qos)

        deadline = time.monotonic() + TIMEOUT_S
        while pub.get_subscription_count() < 1:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the echo process never subscribed to {prefix}/in within {TIMEOUT_S:.0f} s "
                    f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')}); its output:\n"
                    f"{echo.output()}"
                )
            executor.spin_once(timeout_sec=0.05)

        sent = 0
        next_send = 0.0
        while not received:
            now = time.monotonic()
            if now > deadline:
                pytest.fail(
                    f"no echo of {type_name} on {prefix}/out within {TIMEOUT_S:.0f} s after "
                    f"{sent} publish(es); echo process output:\n{echo.output()}"
                )
            if now >= next_send:
                pub.publish(msg)
                sent += 1
                next_send = now + REPUBLISH_S
            executor.spin_once(timeout_sec=0.05)
        assert echo.proc.poll() is None, f"echo process died:\n{echo.output()}"
        return received[0]
    finally:
        executor.remove_node(node)
        executor.shutdown()
        node.destroy_node()


# ---------------------------------------------------------------------------------------------
# sensor_msgs/Image, mono16


def _image_to_array(msg) -> np.ndarray:
    """Decode a mono16 Image honouring ``step`` (row padding) and ``is_bigendian``."""
    assert msg.encoding == "mono16"
    row_bytes = msg.width * 2
    assert msg.step >= row_bytes
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    assert raw.size == msg.step * msg.height, (raw.size, msg.step, msg.height)
    rows = raw.reshape(msg.height, msg.step)[:, :row_bytes]
    dtype = np.dtype(">u2") if msg.is_bigendian else np.dtype("<u2")
    return np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width).astype(np.uint16)


def _array_to_image(img: np.ndarray, *, bigendian: bool, pad: int):
    from sensor_msgs.msg import Image

    h, w = img.shape
    dtype = np.dtype(">u2") if bigendian else np.dtype("<u2")
    rows = img.astype(dtype).view(np.uint8).reshape(h, w * 2)
    if pad:
        # padding bytes hold junk on purpose: a decoder that ignores `step` reads them as pixels
        rows = np.concatenate([rows, np.full((h, pad), 0xA5, dtype=np.uint8)], axis=1)
    msg = Image()
    msg.header.frame_id = "carm_detector"
    msg.header.stamp.sec = 1_700_000_123
    msg.header.stamp.nanosec = 456_789_012
    msg.height, msg.width = h, w
    msg.encoding = "mono16"
    msg.is_bigendian = 1 if bigendian else 0
    msg.step = w * 2 + pad
    msg.data = rows.tobytes()
    return msg


@pytest.mark.parametrize(
    "bigendian,pad", [(False, 0), (True, 16)], ids=["little-endian-tight", "big-endian-padded"]
)
def test_mono16_image_round_trip_is_bit_exact(rclpy_context, spawn_ros_process, bigendian, pad):
    from sensor_msgs.msg import Image

    rng = np.random.default_rng(20240611)
    img = rng.integers(0, 65536, size=(512, 512), dtype=np.uint16)
    img[0, 0], img[0, 1], img[0, 2], img[511, 511] = 65535, 0, 256, 65535
    img[100, :] = 65535
    assert (img > 255).any() and (img == 65535).any()

    msg = _array_to_image(img, bigendian=bigendian, pad=pad)
    assert np.array_equal(_image_to_array(msg), img)  # the encoder/decoder pair itself

    echoed = _round_trip(
        rclpy_context, spawn_ros_process, Image, "sensor_msgs/msg/Image", msg, "image"
    )

    assert (echoed.height, echoed.width) == (512, 512)
    assert echoed.encoding == "mono16"
    assert echoed.is_bigendian == msg.is_bigendian
    assert echoed.step == msg.step
    assert echoed.header.frame_id == "carm_detector"
    assert (echoed.header.stamp.sec, echoed.header.stamp.nanosec) == (1_700_000_123, 456_789_012)
    out = _image_to_array(echoed)
    diff = int(np.count_nonzero(out != img))
    assert diff == 0, f"{diff} of {img.size} pixels differ after the round trip"
    same_bytes = bytes(echoed.data) == bytes(msg.data)
    assert same_bytes, "raw image bytes (incl. row padding) changed in transit"


# ---------------------------------------------------------------------------------------------
# tf2_msgs/TFMessage


def test_tf_message_round_trip(rclpy_context, spawn_ros_process):
    from geometry_msgs.msg import TransformStamped

    try:
        from tf2_msgs.msg import TFMessage
    except ImportError as exc:  # not on PyPI: built into the venv by tools/build_tf2_msgs.sh
        pytest.fail(f"tf2_msgs is not importable ({exc}); run: bash tools/build_tf2_msgs.sh .venv")

    specs = [
        (
            "world",
            "carm_source",
            (0.125, -2.5, 1000.75),
            (0.0, 0.0, 0.38268343236508984, 0.9238795325112867),
        ),
        (
            "ct_volume",
            "carm_detector",
            (-12.0, 3.0e-4, -0.5),
            (0.18257418583505536, 0.3651483716701107, 0.5477225575051661, 0.7302967433402214),
        ),
    ]
    msg = TFMessage()
    for i, (parent, child, t, q) in enumerate(specs):
        ts = TransformStamped()
        ts.header.frame_id = parent
        ts.header.stamp.sec = 1_700_000_000 + i
        ts.header.stamp.nanosec = 999_999_999 - i
        ts.child_frame_id = child
        ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = t
        (
            ts.transform.rotation.x,
            ts.transform.rotation.y,
            ts.transform.rotation.z,
            ts.transform.rotation.w,
        ) = q
        msg.transforms.append(ts)

    echoed = _round_trip(
        rclpy_context, spawn_ros_process, TFMessage, "tf2_msgs/msg/TFMessage", msg, "tf"
    )

    assert len(echoed.transforms) == 2
    for i, ((parent, child, t, q), ts) in enumerate(zip(specs, echoed.transforms)):
        assert ts.header.frame_id == parent
        assert ts.child_frame_id == child
        assert (ts.header.stamp.sec, ts.header.stamp.nanosec) == (
            1_700_000_000 + i,
            999_999_999 - i,
        )
        tr, rot = ts.transform.translation, ts.transform.rotation
        assert (tr.x, tr.y, tr.z) == t  # float64 on the wire: exact
        assert (rot.x, rot.y, rot.z, rot.w) == q
