"""Echo node for the DDS round-trip tests: runs in its own process (see test_roundtrip.py).

    python echo_relay.py TYPE IN_TOPIC OUT_TOPIC      TYPE: sensor_msgs/msg/Image, ...

Subscribes to IN_TOPIC and republishes every message it receives, unchanged, on OUT_TOPIC (so
each message is deserialised here and serialised again). Prints ``READY`` once both endpoints
exist and ``ECHOED n`` per message. Exits on SIGINT/SIGTERM.
"""

from __future__ import annotations

import importlib
import sys


def _load_type(name: str):
    pkg, kind, cls = name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), cls)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    type_name, in_topic, out_topic = argv
    msg_type = _load_type(type_name)

    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    rclpy.init()
    node = rclpy.create_node("echo_relay")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(msg_type, out_topic, qos)
    count = 0

    def on_msg(msg) -> None:
        nonlocal count
        pub.publish(msg)
        count += 1
        print(f"ECHOED {count}", flush=True)

    node.create_subscription(msg_type, in_topic, on_msg, qos)
    print("READY", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
