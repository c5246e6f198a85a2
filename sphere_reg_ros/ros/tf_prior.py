"""A prior pose from TF: the one transform ``parent -> child``, looked up when a cold start needs it.

The node's one TF listener: with several C-arm views it also looks up the views' relative poses
(:mod:`.view_offsets`).

``tf2_ros`` (a ``Buffer`` and a ``TransformListener``) where it imports: any chain of transforms
between the two frames. Elsewhere (the pip venv, where tf2_ros is not on PyPI) subscriptions to
``/tf`` (reliable, volatile) and ``/tf_static`` (reliable, transient local), with tf2_ros's
listener QoS, keep the newest transform of every edge; a lookup finds the edge ``parent -> child``
or its reverse (inverted). For a prior published as one edge, which is what a C-arm's kinematics
or a tracker bridge publishes, both give the same answer.

Freshness, the same on both paths: a transform from ``/tf_static`` (tf2_ros: a stamp of zero) is
always fresh; a dynamic one is fresh when ``now - stamp <= max_age_s`` (0 = any age; a stamp in
the future counts as fresh).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time

from . import conversions as conv
from .tf_publisher import TF_QOS

__all__ = ["Prior", "TfPrior", "TF_STATIC_QOS"]

#: tf2_ros's ``StaticListenerQoS``: reliable, transient local, keep-last 100.
TF_STATIC_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


@dataclass(frozen=True)
class Prior:
    """A lookup's outcome: ``pose`` (``T_parent_from_child``, 4x4, mm) when found and fresh, else
    None; ``note`` says which (shown on /diagnostics as ``tf_prior``)."""

    pose: np.ndarray | None
    note: str


class TfPrior:
    """Looks up one transform on TF for a node; ``backend`` is ``tf2_ros`` or ``subscriptions``.

    Create it once per node (it subscribes to TF); :meth:`lookup` is thread-safe.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._dynamic: dict[tuple[str, str], object] = {}
        self._static: dict[tuple[str, str], object] = {}
        try:
            from tf2_ros import Buffer, TransformListener  # a ROS 2 install
        except ImportError:
            from tf2_msgs.msg import TFMessage  # built into the venv by tools/build_tf2_msgs.sh

            self._buffer = None
            self._subscriptions = [
                node.create_subscription(
                    TFMessage, "/tf", lambda m: self._store(m, self._dynamic), TF_QOS
                ),
                node.create_subscription(
                    TFMessage, "/tf_static", lambda m: self._store(m, self._static), TF_STATIC_QOS
                ),
            ]
            self.backend = "subscriptions"
        else:
            self._buffer = Buffer()
            self._listener = TransformListener(self._buffer, node)
            self.backend = "tf2_ros"

    def _store(self, msg, table: dict) -> None:
        with self._lock:
            for t in msg.transforms:
                key = (t.header.frame_id.lstrip("/"), t.child_frame_id.lstrip("/"))
                old = table.get(key)
                if old is None or _ns(t.header.stamp) >= _ns(old.header.stamp):
                    table[key] = t

    def _find(self, parent: str, child: str):
        """``(TransformStamped, inverted, static)`` of the newest edge between the frames, or None."""
        with self._lock:
            for table, static in ((self._dynamic, False), (self._static, True)):
                for key, inverted in (((parent, child), False), ((child, parent), True)):
                    if key in table:
                        return table[key], inverted, static
        return None

    def lookup(self, parent: str, child: str, max_age_s: float, now: Time | None = None) -> Prior:
        """``T_parent_from_child`` (mm) when TF holds it and it is fresh (see the module docstring)."""
        now = self._node.get_clock().now() if now is None else now
        name = f"{parent} -> {child}"
        if self._buffer is not None:
            try:
                t = self._buffer.lookup_transform(parent, child, Time())
            except (
                Exception
            ) as exc:  # LookupException, ConnectivityException, ExtrapolationException
                return Prior(None, f"{name} not on TF ({type(exc).__name__})")
            static = _ns(t.header.stamp) == 0
            pose = conv.transform_stamped_to_pose(t)
        else:
            found = self._find(parent, child)
            if found is None:
                return Prior(None, f"{name} not on TF")
            t, inverted, static = found
            pose = conv.transform_stamped_to_pose(t)
            if inverted:
                pose = conv.invert_pose(pose)
        if static:
            return Prior(pose, f"{name} (static)")
        age = (now.nanoseconds - _ns(t.header.stamp)) * 1e-9
        if max_age_s > 0 and age > max_age_s:
            return Prior(None, f"{name} stale: {age:.3g} s old > prior_max_age_s {max_age_s:g}")
        return Prior(pose, f"{name} ({age:.3g} s old)")


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
