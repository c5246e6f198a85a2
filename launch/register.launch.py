"""Launch sphere_reg_ros' registration node (and optionally RViz with TF and the overlay).

    ros2 launch sphere_reg_ros register.launch.py image:=/carm/image camera_info:=/carm/camera_info
    ros2 launch sphere_reg_ros register.launch.py params_file:=/path/to/register.yaml launch_rviz:=true

Arguments: ``params_file`` (default: the package's config/register.yaml), ``namespace``
(default: none), ``image`` and ``camera_info`` (topics the node's ``image`` / ``camera_info``
subscriptions are remapped to), ``use_sim_time`` (false), ``launch_rviz`` (false; RViz opens
config/register.rviz, which shows TF, ``/registration_node/overlay`` and
``/registration_node/pose``), ``respawn`` (false; true restarts the node RESPAWN_DELAY_S (2)
seconds after it exits or crashes; for production use), ``lifecycle`` (who drives the node's
lifecycle transitions: ``auto``, the default, the node itself (its ``autostart`` parameter);
``launch``, this launch file: it starts the node with ``autostart: false``, emits ``configure``,
and ``activate`` once the node is inactive; ``manual``, nobody here: the node waits unconfigured
for a lifecycle manager or ``ros2 lifecycle set /registration_node configure``).

Several C-arm views (docs/ROS_INTERFACE.md): ``views`` (the view namespaces, e.g.
``views:=[view_a,view_b]``: the node subscribes ``<ns>/image`` and ``<ns>/camera_info`` per view,
relative to its namespace), ``view_pair_tolerance_s`` (frames of all views within this stamp span
form a set) and ``unpaired`` (``drop`` or ``mono``: what happens to a frame without partners).
Each defaults to ``''``: the value of ``params_file`` (one view, 0.05 s, drop in the package's
file); a value given here overrides it.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition, LaunchConfigurationEquals
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

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
        DeclareLaunchArgument(
            "views",
            default_value="",
            description="View namespaces of a several-view C-arm, e.g. [view_a,view_b] (each "
            "<ns>/image + <ns>/camera_info); '' = the params_file's (one view by default)",
        ),
        DeclareLaunchArgument(
            "view_pair_tolerance_s",
            default_value="",
            description="Frames of all views within this stamp span (s) form a set; '' = the "
            "params_file's",
        ),
        DeclareLaunchArgument(
            "unpaired",
            default_value="",
            choices=["", "drop", "mono"],
            description="A frame without partners: drop, or mono (registered alone); '' = the "
            "params_file's",
        ),
        DeclareLaunchArgument(
            "lifecycle",
            default_value="auto",
            choices=["auto", "launch", "manual"],
            description="Who drives the node's lifecycle: auto (the node configures and activates "
            "itself), launch (this launch file), manual (a lifecycle manager or ros2 lifecycle)",
        ),
    ]
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    nodes = OpaqueFunction(function=_registration_node, args=[use_sim_time])
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
    return LaunchDescription([*arguments, rviz, nodes])


def _view_parameters(context) -> dict:
    """The several-view parameters given as launch arguments (``''`` = not given), typed as the
    node declares them: ``views`` a list of strings, ``view_pair_tolerance_s`` a double."""
    given = {
        name: context.launch_configurations.get(name, "").strip()
        for name in ("views", "view_pair_tolerance_s", "unpaired")
    }
    out = {}
    if given["views"]:
        names = given["views"].strip("[]").replace(",", " ").split()
        out["views"] = [n.strip("'\"") for n in names]
    if given["view_pair_tolerance_s"]:
        out["view_pair_tolerance_s"] = float(given["view_pair_tolerance_s"])
    if given["unpaired"]:
        out["unpaired"] = given["unpaired"]
    return out


def _registration_node(context, use_sim_time):
    """The registration node, started as ``lifecycle`` says (with the view arguments given)."""
    common = dict(
        package=PACKAGE,
        executable="registration_node",
        name="registration_node",
        namespace=LaunchConfiguration("namespace"),
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
        ],
        output="screen",
        emulate_tty=True,
        respawn=LaunchConfiguration("respawn"),  # a substitution, evaluated as a bool by launch
        respawn_delay=RESPAWN_DELAY_S,
    )
    params = [LaunchConfiguration("params_file"), {"use_sim_time": use_sim_time}]
    views = _view_parameters(context)
    if views:  # only the arguments given: the others keep the params_file's values
        params.append(views)
    managed = [*params, {"autostart": False}]
    # lifecycle auto: the node configures and activates itself (autostart, its default)
    node = Node(
        parameters=params,
        condition=LaunchConfigurationEquals("lifecycle", "auto"),
        **common,
    )
    # lifecycle manual: the node waits unconfigured for a lifecycle manager
    waiting = Node(
        parameters=managed,
        condition=LaunchConfigurationEquals("lifecycle", "manual"),
        **common,
    )
    # lifecycle launch: configure at start, activate once inactive
    driven = LifecycleNode(
        parameters=managed,
        condition=LaunchConfigurationEquals("lifecycle", "launch"),
        **common,
    )
    is_launch = LaunchConfigurationEquals("lifecycle", "launch")
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(driven),
            transition_id=Transition.TRANSITION_CONFIGURE,
        ),
        condition=is_launch,
    )
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=driven,
            start_state="configuring",  # not after a later deactivate
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(driven),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                )
            ],
        ),
        condition=is_launch,
    )
    return [node, waiting, driven, activate, configure]
