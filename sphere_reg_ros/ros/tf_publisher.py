"""Publishing TF: ``tf2_ros.TransformBroadcaster`` where it imports, else a ``/tf`` publisher.

tf2_ros is part of every ROS 2 install but not on PyPI. Without it, a ``tf2_msgs/TFMessage``
publisher on ``/tf`` with tf2_ros's broadcaster QoS (reliable, volatile, keep-last 100) sends
exactly what a ``TransformBroadcaster`` sends, so every TF listener receives it. Create one
:class:`TfPublisher` per node, once (ROS 2 convention: one broadcaster per node).
:class:`StaticTfPublisher` does the same for ``/tf_static`` (``StaticTransformBroadcaster``, or a
transient-local publisher with its QoS), so that late listeners get the transforms too.
"""

from __future__ import annotations

from typing import Iterable

from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["TF_QOS", "TF_STATIC_BROADCAST_QOS", "TfPublisher", "StaticTfPublisher"]

#: The QoS of ``tf2_ros.TransformBroadcaster`` (``QoSProfile(depth=100)``: reliable, volatile).
TF_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

#: The QoS of ``tf2_ros.StaticTransformBroadcaster``: reliable, transient local, keep-last 1 (one
#: message holds every static transform of the node).
TF_STATIC_BROADCAST_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def _checked(transforms: TransformStamped | Iterable[TransformStamped]) -> list[TransformStamped]:
    items = [transforms] if isinstance(transforms, TransformStamped) else list(transforms)
    for t in items:
        if not t.header.frame_id or not t.child_frame_id:
            raise ValueError(
                f"TF with an empty frame id: {t.header.frame_id!r} -> {t.child_frame_id!r}"
            )
    return items


class TfPublisher:
    """Sends ``TransformStamped`` messages on ``/tf``; ``backend`` says how (``tf2_ros``/``tf2_msgs``)."""

    def __init__(self, node: Node) -> None:
        try:
            from tf2_ros import TransformBroadcaster  # a ROS 2 install
        except ImportError:
            from tf2_msgs.msg import TFMessage  # built into the venv by tools/build_tf2_msgs.sh

            self._message = TFMessage
            self._publisher = node.create_publisher(TFMessage, "/tf", TF_QOS)
            self._broadcaster = None
            self.backend = "tf2_msgs"
        else:
            self._broadcaster = TransformBroadcaster(node, qos=TF_QOS)
            self._publisher = None
            self.backend = "tf2_ros"

    def send(self, transforms: TransformStamped | Iterable[TransformStamped]) -> None:
        """Publish one transform or several in one message. Frame ids must be non-empty."""
        items = _checked(transforms)
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(items)
        else:
            self._publisher.publish(self._message(transforms=items))


class StaticTfPublisher:
    """Sends ``TransformStamped`` messages on ``/tf_static``; ``backend`` as :class:`TfPublisher`.

    As ``tf2_ros.StaticTransformBroadcaster``: each :meth:`send` publishes every static transform
    sent so far (a new one replaces the old one of the same child frame) in one latched message.
    """

    def __init__(self, node: Node) -> None:
        self._sent: dict[str, TransformStamped] = {}
        try:
            from tf2_ros import StaticTransformBroadcaster  # a ROS 2 install
        except ImportError:
            from tf2_msgs.msg import TFMessage  # built into the venv by tools/build_tf2_msgs.sh

            self._message = TFMessage
            self._publisher = node.create_publisher(
                TFMessage, "/tf_static", TF_STATIC_BROADCAST_QOS
            )
            self._broadcaster = None
            self.backend = "tf2_msgs"
        else:
            self._broadcaster = StaticTransformBroadcaster(node, qos=TF_STATIC_BROADCAST_QOS)
            self._publisher = None
            self.backend = "tf2_ros"

    def send(self, transforms: TransformStamped | Iterable[TransformStamped]) -> None:
        """Publish these static transforms (and those sent before). Frame ids must be non-empty."""
        items = _checked(transforms)
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(items)  # it keeps the earlier ones itself
            return
        self._sent.update({t.child_frame_id: t for t in items})
        self._publisher.publish(self._message(transforms=list(self._sent.values())))
