"""The registration node: C-arm images in, the CT's pose (TF, pose with covariance) out.

Thin glue over :class:`sphere_reg_ros.core.registrar.Registrar`, as a managed (lifecycle) node::

    python -m sphere_reg_ros.ros.registration_node --ros-args --params-file config/register.yaml
    ros2 run sphere_reg_ros registration_node --ros-args --params-file config/register.yaml

Topics (relative names, remap in launch): subscribes ``image`` (mono8, mono16/16UC1, 32FC1) and
``camera_info`` (sensor-data QoS unless ``qos_reliability``/``qos_depth`` say otherwise; the last
10 CameraInfo messages are kept and each image is paired with one by stamp, see below);
publishes ``/tf``, ``~/pose`` (``PoseWithCovarianceStamped``), ``~/overlay`` (bgr8, only computed
while subscribed) and ``/diagnostics``; serves ``~/reset`` (``std_srvs/Trigger``: forget the
tracking state) and ``~/register_next`` (``std_srvs/Trigger``: register the next frame that
arrives and answer with the outcome, see below).

Lifecycle (``rclpy.lifecycle``; the standard ``lifecycle_msgs`` services ``~/change_state``,
``~/get_state``...). ``configure`` checks the parameters and files and loads the CT and the model
(a failure: back to unconfigured, the reason logged and on ``/diagnostics`` as
``configure_failed``); ``activate`` starts registering and publishing; ``deactivate`` stops both
(frames are ignored, counted in ``frames_ignored``) and keeps the registrar and the tracking
state; ``cleanup`` frees the CT and the model; ``shutdown`` stops the worker threads, and the
process ends (exit code 0). ``/diagnostics`` is published in every state (``lifecycle_state``).
With ``autostart`` (the default) the node configures and activates itself at start-up and exits
with code 2 and the reason when that fails, as a plain node would.

On request. ``~/register_next`` (active node only) takes the next image that arrives within
``request_timeout_s`` (also with ``process_stream: false``, when the stream is otherwise not
registered), registers it like any other and answers once it is done: ``success`` = the pose was
published; ``message`` = a JSON object with ``published``, ``status`` (the ``/diagnostics``
status key: ``ok``, a gate's key or a refused frame's reason), ``message``, ``stamp``, ``init``
and, only when published, ``parent``, ``child``, ``translation_m``, ``rotation_xyzw``,
``covariance`` (the 36 values of ``~/pose``), ``normalised_cost``, ``position_std_mm``. A
registration that did not converge or failed a gate publishes nothing and carries no pose.

TF direction. The registrar estimates ``T_ct_from_carm`` (maps C-arm optical-frame points to CT
points). A TF transform parent→child is the child's pose in the parent (it maps child points to
parent points). By default parent = the image's ``header.frame_id`` (``default_carm_frame`` when
empty), child = ``ct_frame``, transform = ``T_carm_from_ct = inverse(T_ct_from_carm)``; with
``publish_inverse`` parent = ``ct_frame``, child = the C-arm frame, transform = ``T_ct_from_carm``.
``~/pose`` is the same transform as a pose (``header.frame_id`` = TF parent) with the covariance
of ``(x, y, z, rx, ry, rz)`` in m², rad² (see :func:`conversions.covariance_to_ros`). Stamps are
the image's stamp. A registration that fails a gate publishes neither.

Processing. The image callback only stores the newest frame (an older one still waiting is
counted as dropped); a worker thread registers it: checks (stamp: not older than
``max_image_age_s``, not more than ``max_future_stamp_s`` ahead of the node clock) → the
CameraInfo paired with the image by stamp (``camera_info_tolerance_s``, else the newest one at
most ``camera_info_max_age_s`` older; when none is in tolerance yet the worker waits up to 0.25 s
after the image's arrival for it, as the two topics race; the rule is in :mod:`.frame_input`) →
encoding, size (``max_image_pixels``), layout, finite pixels, size against the intrinsics → line
integrals (``image_domain``; large frames reduced) → ``register`` → gates → outputs. A CameraInfo with an all-zero K (uncalibrated) is used through
its P; that is logged once at WARN and shown as ``camera_info_note`` on ``/diagnostics`` (the
frame's level is unchanged).
Initial pose (the policy of :class:`~sphere_reg_ros.core.trust.Tracker`): with ``tracking`` and a
last published pose, that pose (a cold restart follows when the result fails a gate or its
normalised cost exceeds ``tracking_cost_factor`` × the last published one; a rejected frame never
becomes the next start); otherwise (a cold start) the TF prior ``prior_parent_frame`` →
``prior_child_frame`` (taken as ``T_ct_from_carm``) when it is on TF and fresh
(``prior_max_age_s``; :mod:`.tf_prior`), else ``initial_pose_mm`` (translation in mm) when
``use_initial_pose``, else the registrar's own (regressor, or its default view). ``last_init`` on
``/diagnostics`` says which (``tracking``, ``tf_prior``, ``initial_pose_mm``,
``registrar_default``) and ``tf_prior`` the prior's state (found and how old, stale, missing). Input problems are logged (at most once per 5 s per reason)
and reported on ``/diagnostics`` (see :mod:`.frame_input` for the reasons and levels); the node
keeps serving. Frames without a paired CameraInfo are also counted in
``frames_unmatched_camera_info``.

Checkpoint. ``model_path ''`` (the shipped checkpoint) that is missing or does not fit the CT falls
back to learning-free residuals: logged at WARN, status ``model_warning`` (WARN) on
``/diagnostics`` at start-up or after the reload (until the next frame's outcome), and the value
``model_warning`` holds the reason while that registrar serves. A ``model_path`` file that cannot
be loaded is an error: at configure the node stays unconfigured with the reason (with
``autostart``: it exits, code 2), at run time the parameter service refuses the change (``successful=False``, the reason naming the file) and the
old registrar serves on. Before answering, a changed ``ct_path`` or ``model_path`` is checked
(bounded in time and memory: see :func:`.params.probe_volume_file` — header, 3-D shape, voxel
data as long as the header says — and :func:`.params.probe_model_file` — the checkpoint loaded
on the CPU with ``weights_only=True``, and its CT fingerprint against the CT in service when
``ct_path`` is unchanged). What only the full load finds (e.g. a checkpoint made for a new CT, a
DICOM series with bad slices) is reported after it: ``ct_load_failed`` (ERROR) on
``/diagnostics``, the parameters reverted, the old registrar kept.
Frame size: images over ``max_image_pixels`` are refused (``too_large``) before decoding; large
ones are reduced to a few times the registration resolution without full-size float copies
(see :mod:`.frame_input`; the overlay is drawn at that size).
Quality gates (:mod:`sphere_reg_ros.core.trust`, shared with ``sphere-reg register`` and
``evaluate``; ERROR, no TF/pose, the reason in the message): ``registration_failed`` (the solver did
not converge after real progress: no progress, iteration cap, divergence, singular system),
``rejected_cost`` (normalised cost > ``max_normalised_cost``), ``rejected_covariance`` (largest
standard deviation at the region of interest ``roi`` > ``max_position_std_mm``),
``rejected_masked`` (masked share > ``max_masked_fraction``), ``rejected_inconsistent`` (a second
start ended > ``max_inconsistency_mm`` away; cold registrations only). The gate parameters apply
from the next frame without a rebuild.

Several C-arm views (``views``, e.g. ``[view_a, view_b]``): ``<ns>/image`` and ``<ns>/camera_info``
per view instead of ``image``/``camera_info``, frames paired by stamp and registered together as
one pose of the first view's C-arm; one TF and ``~/pose``, an overlay per view (``~/overlay``,
``~/<ns>/overlay``): :mod:`.node_views`.

Code: inputs in :mod:`.node_intake`, the worker in :mod:`.node_worker`, the registrar and
parameter changes in :mod:`.node_reload`, the ``~/register_next`` answers in :mod:`.node_answers`;
this module holds the lifecycle and ``main`` (its length over 400 lines is this docstring, the
node's interface reference).
"""

from __future__ import annotations

import collections
import gc
import sys
import threading
import time

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from ..core.trust import Tracker
from .diagnostics import ERROR, OK, NodeStats
from .frame_input import CAMERA_INFO_BUFFER
from .node_answers import Frame, Request
from .node_intake import FrameIntake
from .node_reload import RegistrarReloads, Service
from .node_views import ViewNode
from .node_worker import FrameWorker
from .params import (
    PARAMS,
    ParameterError,
    Settings,
    check_renamed,
    declared_default,
    descriptor,
    parameter_values,
    validate,
)
from .tf_prior import TfPrior
from .tf_publisher import TfPublisher

__all__ = ["RegistrationNode", "main"]


class RegistrationNode(FrameIntake, FrameWorker, ViewNode, RegistrarReloads, LifecycleNode):
    """See the module docstring. ``parameter_overrides`` as for ``rclpy.node.Node``.

    Constructed unconfigured (parameters declared and their values checked; raises
    ParameterError on a bad one); ``main`` then configures and activates it when ``autostart``.
    Its parts: :class:`.node_intake.FrameIntake` (inputs), :class:`.node_worker.FrameWorker`
    (registering and publishing), :class:`.node_reload.RegistrarReloads` (the registrar and
    parameter changes); this class holds their state and the lifecycle transitions.
    """

    def __init__(self, node_name: str = "registration_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._stop = threading.Event()
        self.finalized = threading.Event()  # set by the shutdown transition: main() then returns
        self._frame_cv = threading.Condition()
        self._load_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        self._settings: Settings = self._declare_parameters()  # raises ParameterError
        if self._settings.threads > 0:
            torch.set_num_threads(int(self._settings.threads))
        self._init_state()
        self._create_interfaces(self._settings)
        self._start_threads()
        if not self._settings.autostart:
            self.get_logger().info(
                "unconfigured: waiting for the lifecycle transitions (autostart false)"
            )

    def _declare_parameters(self) -> Settings:
        """Declare every parameter of :data:`.params.PARAMS`; their values, checked (not the
        files: configure checks those, and main() exits on them with autostart)."""
        check_renamed(
            getattr(self, "_parameter_overrides", {})
        )  # raises ParameterError: main() exits
        for spec in PARAMS:
            self.declare_parameter(spec.name, declared_default(spec), descriptor(spec))
        values = parameter_values(self)
        return validate(values, changed=set())  # raises ParameterError

    def _init_state(self) -> None:
        """Statistics, the tracking state, the CameraInfo buffer, the frame and request slots."""
        self.stats = NodeStats()
        self.stats.set_values(torch_threads=str(torch.get_num_threads()))
        self._log_times: dict[str, float] = {}
        self._lock = threading.Lock()
        self._tracker = (
            Tracker()
        )  # replaced (under _lock) on reset and when the registrar is swapped
        self._info_cv = threading.Condition()
        self._camera_infos: collections.deque[CameraInfo] = collections.deque(
            maxlen=CAMERA_INFO_BUFFER
        )
        self._camera_info_note: str | None = None
        self.stats.set_values(camera_info_note="", tf_prior="off", lifecycle_state="unconfigured")
        self._service: Service | None = None  # the registrar: set by configure, freed by cleanup
        self._active = False
        self._state = "unconfigured"
        self.configure_error: str | None = None  # why the last configure failed
        self._prior: TfPrior | None = None  # created when prior frames are first set
        self._requests: list[Request] = []  # ~/register_next calls waiting for a frame
        self._load_request: Settings | None = None
        self._pending: Frame | None = None

    def _create_interfaces(self, s: Settings) -> None:
        """Publishers, subscriptions, services, the diagnostics timer, the parameter callback."""
        qos_in = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=int(s.qos_depth),
            reliability=ReliabilityPolicy.BEST_EFFORT
            if s.qos_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        qos_out = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.tf = TfPublisher(self)  # one broadcaster per node, created once; used while active
        self._pose_pub = self.create_lifecycle_publisher(
            PoseWithCovarianceStamped, "~/pose", qos_out
        )
        self._overlay_pub = self.create_lifecycle_publisher(Image, "~/overlay", qos_out)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos_out)
        if s.views:  # several C-arm views: <ns>/image, <ns>/camera_info each (node_views)
            self._create_view_interfaces(s, qos_in, qos_out)
        else:
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_in)
            self.create_subscription(Image, "image", self._on_image, qos_in)
        self.create_service(Trigger, "~/reset", self._on_reset)
        # its own group: the call waits for a frame that the image callback must still receive
        self.create_service(
            Trigger,
            "~/register_next",
            self._on_register_next,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        # steady clock: the heartbeat goes on under use_sim_time without /clock
        self.create_timer(
            float(s.diagnostics_period_s),
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _start_threads(self) -> None:
        """The background loader (registrar rebuilds at run time) and the registration worker."""
        self._loader = threading.Thread(
            target=self._loader_loop, name="registrar_loader", daemon=True
        )
        self._worker = threading.Thread(
            target=self._worker_loop, name="registration_worker", daemon=True
        )
        self._loader.start()
        self._worker.start()

    # ------------------------------------------------------------------ lifecycle transitions
    def _set_state(self, state: str) -> None:
        self._state = state
        self.stats.set_values(lifecycle_state=state)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Check the parameters and files, load the CT and the model; on failure stay unconfigured."""
        values = parameter_values(self)
        t0 = time.monotonic()
        try:
            settings = validate(values)  # files too (bounded probes), before the long load
            service = self._build(settings)
        except Exception as exc:  # bad parameters, unreadable CT, unusable model, device
            known = isinstance(exc, (ParameterError, ValueError, OSError))
            self.configure_error = str(exc) if known else f"{type(exc).__name__}: {exc}"
            msg = f"configure failed: {self.configure_error}"
            self.get_logger().error(msg)
            self.stats.set_outcome(ERROR, msg, "configure_failed")
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        with self._lock:
            self._settings = settings
            self._service = service
            self._tracker = Tracker()
        self._update_prior(settings)
        msg = f"configured in {time.monotonic() - t0:.1f} s: {service.source}"
        self.get_logger().info(msg)
        self._set_state("inactive")
        if not self._report_model(service):
            self.stats.set_outcome(OK, msg, "configured")
        self._publish_diagnostics()
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self._set_state("active")
        s = self._settings
        self.get_logger().info(
            f"ready: {self._service.source}; TF via {self.tf.backend}; "
            f"{'publish_inverse ' if s.publish_inverse else ''}ct_frame={s.ct_frame}"
        )
        self._publish_diagnostics()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing("deactivated")
        self._set_state("inactive")
        self.get_logger().info("deactivated: not registering or publishing; registrar kept")
        self._publish_diagnostics()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        self._set_state("unconfigured")
        self.stats.set_outcome(OK, "cleaned up: CT and model freed", "unconfigured")
        self.get_logger().info("cleaned up: CT and model freed")
        self._publish_diagnostics()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing("shutting down")
        self._free()
        self._set_state("finalized")
        self.get_logger().info("shut down")
        self.finalized.set()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing("error")
        self._free()
        self._set_state("unconfigured")
        self.get_logger().error(f"lifecycle error in {state.label}: back to unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def _free(self) -> None:
        """Drop the registrar (CT, model) and the tracking state; cancel a background reload."""
        self._active = False
        with self._load_cv:
            self._load_request = None
        with self._lock:
            self._service = None
            self._tracker = Tracker()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ services
    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            had, self._tracker = self._tracker.active, Tracker()
        self.stats.set_values(tracking_state="cold")
        response.success = True
        response.message = "tracking state cleared" + ("" if had else " (there was none)")
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        if not self.context.ok():
            return
        with self._lock:
            tracking_state = "tracking" if self._tracker.active else "cold"
        self.stats.set_values(
            tracking=str(bool(self._settings.tracking)).lower(), tracking_state=tracking_state
        )
        service = self._service
        msg = self.stats.to_message(
            self.get_clock().now().to_msg(),
            self.get_name(),
            service.source if service is not None else f"none ({self._state})",
        )
        try:
            self._diag_pub.publish(msg)
        except Exception:  # publisher destroyed during shutdown
            pass

    def destroy_node(self) -> None:
        self._stop.set()
        with self._frame_cv:
            self._frame_cv.notify_all()
        with self._load_cv:
            self._load_cv.notify_all()
        for thread in (self._worker, self._loader):
            if (
                thread is not None
                and thread.is_alive()
                and thread is not threading.current_thread()
            ):
                thread.join(timeout=30.0)
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Entry point (``ros2 run sphere_reg_ros registration_node`` / ``python -m``).

    With ``autostart`` the node configures and activates itself before spinning; a failed
    configure exits with code 2 and the reason. The shutdown transition ends the process (0).
    Ctrl-C (SIGINT) is left to Python (``KeyboardInterrupt`` in the main thread) instead of
    rclpy's signal handler, which shuts the context down asynchronously while the worker and
    loader threads may still use it (seen as a rare crash at shutdown); the node then stops its
    threads before the context goes away.
    """
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = RegistrationNode()
        if node._settings.autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise ParameterError(node.configure_error or "configure failed")
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise ParameterError("activate failed")
        # threads: ~/register_next waits for a frame while the image callback must still run
        executor = MultiThreadedExecutor(num_threads=3)
        executor.add_node(node)
        try:
            while not node.finalized.is_set():
                executor.spin_once(timeout_sec=0.2)
            grace = time.monotonic() + 0.5  # the change_state answer still goes out
            while time.monotonic() < grace:
                executor.spin_once(timeout_sec=0.1)
        finally:
            executor.shutdown()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ParameterError, ValueError, OSError) as exc:  # bad parameters, unreadable CT or model
        rclpy.logging.get_logger("registration_node").fatal(f"cannot start: {exc}")
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
