"""The one-command demo for ROS users: simulated C-arm, registration node and evaluator.

    ros2 launch sphere_reg_ros demo.launch.py
    ros2 launch sphere_reg_ros demo.launch.py frames:=40 rate_hz:=0.5 degradation:=benchmark launch_rviz:=true

What ``make demo`` / ``sphere-reg demo`` runs, as a launch file: ``carm_simulator`` publishes
degraded X-rays of the embedded example CT (``image``, ``camera_info``, truth on TF as
``ct -> carm_truth``) once the registration node subscribes; ``registration_node`` (parameters
from ``config/register.yaml``, tracking on) registers them; ``demo_evaluator`` compares the
published TF with the truth, prints one line per frame and the summary, writes overlays, CSV and
``summary.png`` to ``out``, and the whole launch shuts down when it is done (its exit code says
whether the README's expectation was met: median mTRE < 1 mm over at least 20 frames).

Arguments: ``frames`` (24), ``rate_hz`` (0.2), ``resolution`` (128 px simulated images),
``degradation`` (mild | none | benchmark), ``ct_path`` ('' = the example CT), ``model_path``
(none = learning-free LM; '' = the shipped checkpoint), ``out`` (demo_output), ``timeout_s``
(600), ``min_frames`` (20: registered frames the expectation needs; lower it for quick runs with
few ``frames``), ``launch_rviz`` (false).

The launch's exit code is the verdict: 0 when the evaluator exits 0 (expectation met); non-zero
when the evaluator exits non-zero or the simulator or the registration node dies before the
evaluator is done (then the launch shuts down at once instead of waiting for ``timeout_s``).

``demo_biplane.launch.py`` builds the same demo with two C-arm views (:func:`demo_description`).
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "sphere_reg_ros"
SIM_FRAME, CT_FRAME, TRUTH_FRAME = "carm_optical", "ct", "carm_truth"  # as sphere_reg_ros.ros.demo


def generate_launch_description() -> LaunchDescription:
    return demo_description()


def demo_description(
    views: tuple[str, ...] = (), extra_arguments=(), simulator_extra=None
) -> LaunchDescription:
    """The demo; with ``views`` (namespaces) the simulator, the node and the evaluator run with
    these views (their ``views`` parameters); ``extra_arguments``: more launch arguments,
    ``simulator_extra``: more simulator parameters."""
    share = FindPackageShare(PACKAGE)
    arg = LaunchConfiguration
    # the first view's C-arm frame, as sphere_reg_ros.ros.carm_simulator names it
    carm_frame = f"{SIM_FRAME}_{views[0].replace('/', '_')}" if views else SIM_FRAME
    several = {"views": list(views)} if views else {}
    arguments = [
        DeclareLaunchArgument(
            "frames", default_value="24", description="registered frames to collect"
        ),
        DeclareLaunchArgument(
            "rate_hz", default_value="0.2", description="simulator frame rate (Hz)"
        ),
        DeclareLaunchArgument(
            "resolution", default_value="128", description="simulated image size (px)"
        ),
        DeclareLaunchArgument(
            "degradation",
            default_value="mild",
            choices=["none", "mild", "benchmark"],
            description="image degradations of the simulator",
        ),
        DeclareLaunchArgument(
            "ct_path", default_value="", description="CT file ('' = the embedded example CT)"
        ),
        DeclareLaunchArgument(
            "model_path",
            default_value="none",
            description="checkpoint: none = learning-free LM, '' = the shipped checkpoint",
        ),
        DeclareLaunchArgument("out", default_value="demo_output", description="output folder"),
        DeclareLaunchArgument(
            "timeout_s", default_value="600.0", description="stop after this many seconds"
        ),
        DeclareLaunchArgument(
            "min_frames",
            default_value="20",
            description="registered frames the expectation needs (exit code 0)",
        ),
        DeclareLaunchArgument("launch_rviz", default_value="false", description="also start RViz"),
        *extra_arguments,
    ]
    ct_path = ParameterValue(arg("ct_path"), value_type=str)
    simulator = Node(
        package=PACKAGE,
        executable="carm_simulator",
        name="carm_simulator",
        output="screen",
        parameters=[
            {
                "ct_path": ct_path,
                "rate_hz": ParameterValue(arg("rate_hz"), value_type=float),
                "resolution": ParameterValue(arg("resolution"), value_type=int),
                "degradation": ParameterValue(arg("degradation"), value_type=str),
                "frames": 0,
                "wait_for_subscribers": 1,
                "frame_id": SIM_FRAME,
                "ct_frame": CT_FRAME,
                "truth_frame": TRUTH_FRAME,
                **several,
                **(simulator_extra or {}),
            }
        ],
    )
    registration = Node(
        package=PACKAGE,
        executable="registration_node",
        name="registration_node",
        output="screen",
        parameters=[
            PathJoinSubstitution([share, "config", "register.yaml"]),
            {
                "ct_path": ct_path,
                "model_path": ParameterValue(arg("model_path"), value_type=str),
                "tracking": True,
                "default_carm_frame": carm_frame,
                "ct_frame": CT_FRAME,
                "max_image_age_s": 10.0,
                "image_domain": "line_integral",
                **several,
            },
        ],
    )
    evaluator = Node(
        package=PACKAGE,
        executable="demo_evaluator",
        name="demo_evaluator",
        output="screen",
        parameters=[
            {
                "frames": ParameterValue(arg("frames"), value_type=int),
                "timeout_s": ParameterValue(arg("timeout_s"), value_type=float),
                "min_frames": ParameterValue(arg("min_frames"), value_type=int),
                "out": ParameterValue(arg("out"), value_type=str),
                "ct_path": ct_path,
                **several,
            }
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        output="screen",
        arguments=["-d", PathJoinSubstitution([share, "config", "register.rviz"])],
        condition=IfCondition(arg("launch_rviz")),
    )
    done = RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=_evaluator_exited))
    peers = [
        RegisterEventHandler(OnProcessExit(target_action=peer, on_exit=_peer_exited))
        for peer in (simulator, registration)
    ]
    # rviz first: if rviz2 is missing, the launch fails before any node is started (else they can
    # be left running when the launch exits on that error).
    return LaunchDescription([*arguments, rviz, done, *peers, simulator, registration, evaluator])


# launch has no action that sets its return code: LaunchService.run() (and so `ros2 launch`)
# returns 1 when an exception escapes an event handler, after shutting everything down, else 0.


def _evaluator_exited(event, context):
    """Shut the demo down when the evaluator is done; fail the launch when it exited non-zero."""
    if event.returncode != 0:
        raise RuntimeError(
            f"demo evaluator exited with code {event.returncode} "
            "(expectation not met, or it failed; see its output above)"
        )
    return [EmitEvent(event=Shutdown(reason="demo evaluator finished"))]


def _peer_exited(event, context):
    """The simulator or the registration node died while the evaluator still waits for frames."""
    if context.is_shutdown:
        return None  # stopped by the shutdown that the evaluator's exit (or Ctrl-C) started
    raise RuntimeError(
        f"{event.process_name} exited (code {event.returncode}) before the demo evaluator "
        "finished; stopping the demo"
    )
