"""The one-command demo with a biplane C-arm: two views, one patient pose per pair of X-rays.

    ros2 launch sphere_reg_ros demo_biplane.launch.py
    ros2 launch sphere_reg_ros demo_biplane.launch.py view_angle_deg:=60 frames:=10 min_frames:=10

What ``sphere-reg demo --views 2`` runs, as a launch file: the demo of ``demo.launch.py`` (the
same arguments, processes and exit code) with the views ``view_a`` and ``view_b``.
``carm_simulator`` publishes ``view_a/image``, ``view_a/camera_info``, ``view_b/image`` and
``view_b/camera_info`` with one stamp per pair, the second view turned by ``view_angle_deg`` about
the first view's isocentre; the relative pose ``carm_optical_view_a -> carm_optical_view_b`` is on
``/tf_static`` and the truth of each view on TF (``ct -> carm_truth_view_a``, ``ct ->
carm_truth_view_b``). ``registration_node`` (``views: [view_a, view_b]``, relative pose from TF)
registers each pair as one pose and publishes ``carm_optical_view_a -> ct``; ``demo_evaluator``
compares it with the first view's truth and saves the overlays of both views.

Arguments: those of ``demo.launch.py`` (``frames``, ``rate_hz``, ``resolution``, ``degradation``,
``ct_path``, ``model_path``, ``out``, ``timeout_s``, ``min_frames``, ``launch_rviz``) and
``view_angle_deg`` (90: the angle between the two views, degrees).
"""

import importlib.util
from pathlib import Path

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

VIEWS = ("view_a", "view_b")  # as sphere_reg_ros.ros.carm_simulator.view_names(2)


def _demo_launch_module():
    """demo.launch.py, which sits beside this file (in the source tree and in the share folder)."""
    path = Path(__file__).resolve().with_name("demo.launch.py")
    spec = importlib.util.spec_from_file_location("sphere_reg_ros_demo_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_launch_description() -> LaunchDescription:
    angle = DeclareLaunchArgument(
        "view_angle_deg", default_value="90.0", description="angle between the two views (deg)"
    )
    return _demo_launch_module().demo_description(
        views=VIEWS,
        extra_arguments=[angle],
        simulator_extra={
            "view_angle_deg": ParameterValue(
                LaunchConfiguration("view_angle_deg"), value_type=float
            )
        },
    )
