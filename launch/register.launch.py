"""Launch sphere_reg_ros' registration node (and optionally RViz with TF and the overlay).

    ros2 launch sphere_reg_ros register.launch.py image:=/carm/image camera_info:=/carm/camera_info
    ros2 launch sphere_reg_ros register.launch.py params_file:=/path/to/register.yaml launch_rviz:=true

Arguments: ``params_file`` (default: the package's config/register.yaml), ``namespace``
(default: none), ``image`` and ``camera_info`` (topics the node's ``image`` / ``camera_info``
subscriptions are remapped to), ``use_sim_time`` (false), ``launch_rviz`` (false; RViz opens
config/register.rviz, which shows TF and ``/registration_node/overlay``), ``respawn`` (false;
true restarts the node RESPAWN_DELAY_S (2) seconds after it exits or crashes; for production use).
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "sphere_reg_ros"
#: Seconds between the node's exit and its restart with ``respawn:=true`` (no tight crash loop).
RESPAWN_DELAY_S = 2.0


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "register.yaml"]),
            description="YAML file with the registration node's parameters",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument(
            "image",
            default_value="image",
            description="C-arm image topic (mono8, mono16/16UC1, 32FC1)",
        ),
        DeclareLaunchArgument(
            "camera_info",
            default_value="camera_info",
            description="CameraInfo topic of the C-arm images, each stamped like its "
            "image (the node pairs them by stamp)",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            description="Use /clock (simulation or bag replay) as the node's clock",
        ),
        DeclareLaunchArgument(
            "launch_rviz",
            default_value="false",
            description="Also start RViz showing TF and the overlay",
        ),
        DeclareLaunchArgument(
            "respawn",
            default_value="false",
            description=f"Restart the registration node {RESPAWN_DELAY_S:g} s after it exits "
            "or crashes (true for production use; it then loads the CT again)",
        ),
    ]
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    node = Node(
        package=PACKAGE,
        executable="registration_node",
        name="registration_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": use_sim_time}],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
        ],
        output="screen",
        emulate_tty=True,
        respawn=LaunchConfiguration("respawn"),  # a substitution, evaluated as a bool by launch
        respawn_delay=RESPAWN_DELAY_S,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([share, "config", "register.rviz"])],
        parameters=[{"use_sim_time": use_sim_time}],
        condition=IfCondition(LaunchConfiguration("launch_rviz")),
        output="screen",
    )
    # rviz first: if rviz2 is missing, the launch fails before the node is started (else the node
    # can be left running when the launch exits on that error).
    return LaunchDescription([*arguments, rviz, node])
