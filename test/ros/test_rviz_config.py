"""config/register.rviz shows what the registration node publishes, under the node's default name:
the overlay, the TF tree (fixed frame: the default C-arm frame) and the pose with covariance."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

RVIZ_FILE = Path(__file__).resolve().parents[2] / "config" / "register.rviz"


def test_rviz_shows_the_overlay_the_tf_tree_and_the_pose_with_covariance():
    from sphere_reg_ros.ros.params import SPECS
    from sphere_reg_ros.ros.registration_node import RegistrationNode

    name = inspect.signature(RegistrationNode.__init__).parameters["node_name"].default
    manager = yaml.safe_load(RVIZ_FILE.read_text())["Visualization Manager"]
    displays = {d["Class"]: d for d in manager["Displays"]}
    assert displays["rviz_default_plugins/TF"]["Enabled"]
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == f"/{name}/overlay"
    pose = displays["rviz_default_plugins/PoseWithCovariance"]
    assert pose["Topic"]["Value"] == f"/{name}/pose"
    assert pose["Covariance"]["Value"] and pose["Enabled"]
    assert pose["Topic"]["Reliability Policy"] == "Reliable"  # the node publishes reliable
    assert manager["Global Options"]["Fixed Frame"] == SPECS["default_carm_frame"].default
