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
"""

from __future__ import annotations

import collections
import gc
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from ..core.trust import Tracker, rejection_key
from . import conversions as conv
from .diagnostics import ERROR, OK, WARN, NodeStats
from .frame_input import (
    CAMERA_INFO_BUFFER,
    REASONS,
    FrameRejected,
    check_stamp,
    match_camera_info,
    paired_camera_info,
    prepare_frame,
    stamp_ns,
)
from .overlay import make_overlay
from .params import (
    PARAMS,
    SPECS,
    ParameterError,
    Settings,
    check_renamed,
    descriptor,
    freeze,
    trust_config,
    validate,
)
from .registrar_factory import build_registrar
from .tf_prior import TfPrior
from .tf_publisher import TfPublisher

__all__ = ["RegistrationNode", "main"]

_LOG_THROTTLE_S = 5.0
#: How long after an image's arrival the worker waits for its CameraInfo (the topics race).
_CAMERA_INFO_WAIT_S = 0.25
_MM_PER_M = 1000.0


class _Request:
    """One ``~/register_next`` call: ``taken`` once a frame is assigned to it, ``done`` once answered."""

    def __init__(self) -> None:
        self.taken = threading.Event()
        self.done = threading.Event()
        self.answer: dict = {
            "published": False,
            "status": "internal_error",
            "message": "no answer",
        }

    def finish(self, answer: dict) -> None:
        self.answer = answer
        self.taken.set()
        self.done.set()


@dataclass
class _Frame:
    msg: Image
    received_mono: float
    age_s: float
    requests: list = None  # the _Requests this frame answers


def _refusal(status: str, message: str, stamp=None) -> dict:
    """A ``~/register_next`` answer without a pose: ``status`` is the /diagnostics status key."""
    answer = {"published": False, "status": status, "message": message}
    if stamp is not None:
        answer["stamp"] = f"{stamp.sec}.{stamp.nanosec:09d}"
    return answer


@dataclass(frozen=True)
class _Service:
    registrar: Any
    key: tuple
    source: str
    warning: str | None = None  # why the registrar is not what model_path asked for


class RegistrationNode(LifecycleNode):
    """See the module docstring. ``parameter_overrides`` as for ``rclpy.node.Node``.

    Constructed unconfigured (parameters declared and their values checked; raises
    ParameterError on a bad one); ``main`` then configures and activates it when ``autostart``.
    """

    def __init__(self, node_name: str = "registration_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._stop = threading.Event()
        self.finalized = threading.Event()  # set by the shutdown transition: main() then returns
        self._frame_cv = threading.Condition()
        self._load_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        check_renamed(
            getattr(self, "_parameter_overrides", {})
        )  # raises ParameterError: main() exits
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        values = {p.name: self.get_parameter(p.name).value for p in PARAMS}
        # the values only: configure checks the files (and main() exits on them with autostart)
        self._settings: Settings = validate(values, changed=set())  # raises ParameterError
        if self._settings.threads > 0:
            torch.set_num_threads(int(self._settings.threads))
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
        self._service: _Service | None = None  # the registrar: set by configure, freed by cleanup
        self._active = False
        self._state = "unconfigured"
        self.configure_error: str | None = None  # why the last configure failed
        self._prior: TfPrior | None = None  # created when prior frames are first set
        self._requests: list[_Request] = []  # ~/register_next calls waiting for a frame
        self._load_request: Settings | None = None
        self._pending: _Frame | None = None

        s = self._settings
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

        # background loader for registrar rebuilds (ct_path etc. changed at run time)
        self._loader = threading.Thread(
            target=self._loader_loop, name="registrar_loader", daemon=True
        )
        self._worker = threading.Thread(
            target=self._worker_loop, name="registration_worker", daemon=True
        )
        self._loader.start()
        self._worker.start()
        if not s.autostart:
            self.get_logger().info(
                "unconfigured: waiting for the lifecycle transitions (autostart false)"
            )

    # ------------------------------------------------------------------ lifecycle transitions
    def _set_state(self, state: str) -> None:
        self._state = state
        self.stats.set_values(lifecycle_state=state)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Check the parameters and files, load the CT and the model; on failure stay unconfigured."""
        values = {p.name: self.get_parameter(p.name).value for p in PARAMS}
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

    def _stop_processing(self, why: str) -> None:
        """Stop registering: drop the pending frame and answer the waiting requests."""
        self._active = False
        with self._frame_cv:
            pending, self._pending = self._pending, None
            requests, self._requests = self._requests, []
        for r in requests + (pending.requests if pending is not None else []):
            r.finish(_refusal("not_active", f"node {why} before a frame was registered"))

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

    def _update_prior(self, settings: Settings) -> None:
        """Create the TF prior's listener the first time prior frames are set."""
        if self._prior is None and settings.prior_parent_frame:
            self._prior = TfPrior(self)
            self.get_logger().info(f"TF prior via {self._prior.backend}")
        if not settings.prior_parent_frame:
            self.stats.set_values(tf_prior="off")

    # ------------------------------------------------------------------ registrar life cycle
    def _build(self, settings: Settings) -> _Service:
        built = build_registrar(settings)
        return _Service(built.registrar, settings.registrar_key(), built.source, built.warning)

    def _report_model(self, service: _Service) -> bool:
        """Log and show on /diagnostics that ``service`` is not the model asked for; True if so."""
        self.stats.set_values(model_warning=service.warning or "")
        if service.warning is None:
            return False
        self.get_logger().warning(service.warning)
        self.stats.set_outcome(WARN, service.warning, "model_warning")
        return True

    def _take(self, cv: threading.Condition, slot: str):
        """Wait (until stopped) for ``self.<slot>`` to be set under ``cv``; take it and clear the slot.
        None when the node stops first."""
        with cv:
            while getattr(self, slot) is None and not self._stop.is_set():
                cv.wait(0.2)
            value = getattr(self, slot)
            setattr(self, slot, None)
        return value

    def _loader_loop(self) -> None:
        while not self._stop.is_set():
            request = self._take(self._load_cv, "_load_request")
            if request is None:
                continue
            self.stats.set_values(ct_loading="true")
            t0 = time.monotonic()
            try:
                service = self._build(request)
            except Exception as exc:  # a CT/model that cannot be used: keep the old one
                self._reload_failed(request, exc)
                continue
            finally:
                self.stats.set_values(ct_loading="false")
            with self._load_cv:
                superseded = self._load_request is not None
            if superseded:
                continue
            with self._lock:
                if self._service is None:  # cleaned up meanwhile: configure loads afresh
                    continue
                self._service = service
                self._tracker = Tracker()
            msg = f"registrar swapped in after {time.monotonic() - t0:.1f} s: {service.source}"
            self.get_logger().info(msg)
            if not self._report_model(service):
                self.stats.set_outcome(OK, msg, "ct_loaded")
            self._publish_diagnostics()

    def _reload_failed(self, request: Settings, exc: Exception) -> None:
        old = self._service
        if old is None:  # cleaned up meanwhile
            return
        msg = (
            f"CT/registrar reload failed ({type(exc).__name__}: {exc}); still serving {old.source}"
        )
        self.get_logger().error(msg)
        self.stats.set_outcome(ERROR, msg, "ct_load_failed")
        with self._load_cv:
            if self._load_request is not None:
                return  # a newer request is queued: let it decide
        served = dict(old.key)
        revert = [
            Parameter(k, value=list(v) if isinstance(v, tuple) else v)
            for k, v in served.items()
            if freeze(request.values[k]) != v
        ]
        if revert:
            self.set_parameters(revert)
        self._publish_diagnostics()

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in SPECS}
        if not changes:
            return SetParametersResult(successful=True)
        values = {**self._settings.values, **changes}
        served = self._service
        # the CT in service, when the new model_path will serve with it: its fingerprint is checked too
        ct = (
            getattr(served.registrar, "ct", None)
            if served is not None and values["ct_path"] == dict(served.key)["ct_path"]
            else None
        )
        try:  # file checks (bounded: headers, data sizes, the checkpoint on the CPU) before answering
            new = validate(values, changed=set(changes), ct=ct)
        except ParameterError as exc:
            self.get_logger().warning(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        old_key = self._settings.registrar_key()
        self._settings = new
        if self._prior is None and new.prior_parent_frame:
            self._update_prior(new)
        elif not new.prior_parent_frame:
            self.stats.set_values(tf_prior="off")
        if self._service is None:  # unconfigured: configure loads what the parameters say
            return SetParametersResult(successful=True)
        if new.registrar_key() != old_key:
            with self._load_cv:
                self._load_request = None if new.registrar_key() == self._service.key else new
                self._load_cv.notify_all()
            if self._load_request is not None:
                self.get_logger().info(
                    f"rebuilding the registrar in the background ({sorted(changes)})"
                )
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ callbacks
    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Buffer the CameraInfo (the last CAMERA_INFO_BUFFER); a worker waiting for it wakes up."""
        with self._info_cv:
            self._camera_infos.append(msg)
            self._info_cv.notify_all()

    def _on_image(self, msg: Image) -> None:
        """Store the frame for the worker when active and it is wanted (the stream is processed,
        or a ``~/register_next`` call waits); otherwise count it in ``frames_ignored``."""
        age = (self.get_clock().now().nanoseconds - stamp_ns(msg.header.stamp)) * 1e-9
        with self._frame_cv:
            requests, self._requests = self._requests, []
            if not self._active or not (self._settings.process_stream or requests):
                self._requests = requests
                self.stats.count("frames_ignored")
                return
            self.stats.mark_input()
            frame = _Frame(msg, time.monotonic(), age, requests)
            if self._pending is not None:
                self.stats.count("frames_dropped")
                frame.requests = self._pending.requests + requests  # the newer frame answers them
            for r in requests:
                r.taken.set()
            self._pending = frame
            self._frame_cv.notify()

    def _on_register_next(
        self, request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        """Register the next frame that arrives; answer with its outcome (module docstring)."""
        req = _Request()
        timeout = float(self._settings.request_timeout_s)
        with self._frame_cv:
            active = self._active
            if active:
                self._requests.append(req)
        if not active:
            req.finish(_refusal("not_active", f"node is {self._state}: activate it first"))
        elif not req.taken.wait(timeout):
            with self._frame_cv:
                if req in self._requests:  # still no frame: withdraw the request
                    self._requests.remove(req)
                    req.finish(_refusal("no_frame", f"no image arrived within {timeout:g} s"))
        while not req.done.wait(0.2):
            if self._stop.is_set():
                req.finish(_refusal("not_active", "node stopped"))
        response.success = bool(req.answer["published"])
        response.message = json.dumps(req.answer)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            had, self._tracker = self._tracker.active, Tracker()
        self.stats.set_values(tracking_state="cold")
        response.success = True
        response.message = "tracking state cleared" + ("" if had else " (there was none)")
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ worker
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            frame = self._take(self._frame_cv, "_pending")
            if frame is None:
                continue
            stamp = frame.msg.header.stamp
            answer = _refusal("internal_error", "internal error", stamp)
            try:
                try:
                    answer = self._process(frame)
                except FrameRejected as exc:
                    self.stats.count("frames_rejected")
                    if exc.reason == "unmatched_camera_info":
                        self.stats.count("frames_unmatched_camera_info")
                    self.stats.set_values(last_stamp=f"{stamp.sec}.{stamp.nanosec:09d}")
                    self._report(exc.reason, str(exc))
                    answer = _refusal(exc.reason, str(exc), stamp)
                if self.context.ok():
                    self._publish_diagnostics()
            except Exception as exc:  # keep serving whatever happens to one frame
                text = f"internal error: {type(exc).__name__}: {exc}"
                answer = _refusal("internal_error", text, stamp)
                self.stats.set_outcome(ERROR, text, "internal_error")
                if self.context.ok():
                    self.get_logger().error(text)
            finally:
                for r in frame.requests or ():
                    r.finish(answer)

    def _report(self, reason: str, message: str) -> None:
        level = REASONS[reason]
        self.stats.set_outcome(level, message, reason)
        now = time.monotonic()
        if now - self._log_times.get(reason, -1e9) >= _LOG_THROTTLE_S:
            self._log_times[reason] = now
            log = self.get_logger()  # rclpy: one severity per call site, hence three calls
            if level == ERROR:
                log.error(message)
            elif level == WARN:
                log.warning(message)
            else:
                log.info(message)

    def _initial(self, s: Settings) -> tuple[np.ndarray | None, str]:
        """The cold start: the TF prior when found and fresh, else ``initial_pose_mm`` when
        ``use_initial_pose``, else the registrar's own."""
        if s.prior_parent_frame and self._prior is not None:
            prior = self._prior.lookup(
                s.prior_parent_frame, s.prior_child_frame, float(s.prior_max_age_s)
            )
            self.stats.set_values(tf_prior=prior.note)
            if prior.pose is not None:
                return prior.pose, "tf_prior"
        if s.use_initial_pose:  # [x, y, z (mm), qx, qy, qz, qw]; the conversion takes metres
            p = np.asarray(s.initial_pose_mm, dtype=np.float64)
            return conv.pose_from_translation_quaternion(
                p[:3] / _MM_PER_M, p[3:]
            ), "initial_pose_mm"
        return None, "registrar_default"

    def _camera_info_for(self, frame: _Frame, s: Settings) -> CameraInfo | None:
        """The CameraInfo paired with ``frame`` (None: use the intrinsics parameters).

        Waits until ``_CAMERA_INFO_WAIT_S`` after the image's arrival for one within
        ``camera_info_tolerance_s`` unless a CameraInfo stamped later than that has already come
        (then the image's own will not). Raises FrameRejected (``unmatched_camera_info``).
        """
        if not s.use_camera_info:
            return None
        image_ns = stamp_ns(frame.msg.header.stamp)
        tolerance_ns = s.camera_info_tolerance_s * 1e9
        deadline = frame.received_mono + _CAMERA_INFO_WAIT_S
        with self._info_cv:
            while True:
                infos = tuple(self._camera_infos)
                left = deadline - time.monotonic()
                if (
                    left <= 0
                    or self._stop.is_set()
                    or paired_camera_info(infos, image_ns, s.camera_info_tolerance_s) is not None
                    or any(stamp_ns(i.header.stamp) > image_ns + tolerance_ns for i in infos)
                ):
                    break
                self._info_cv.wait(left)
        info = match_camera_info(
            infos, image_ns, s.camera_info_tolerance_s, s.camera_info_max_age_s
        )
        if info is not None:
            self.stats.set_values(
                camera_info_offset_ms=f"{(image_ns - stamp_ns(info.header.stamp)) * 1e-6:.1f}"
            )
        return info

    def _prepare(self, frame: _Frame, s: Settings) -> tuple[np.ndarray, Any]:
        """Stamp checks, CameraInfo pairing, then :func:`prepare_frame`: (image, geometry)."""
        check_stamp(frame.age_s, s)  # before waiting for a CameraInfo the frame does not need
        info = self._camera_info_for(frame, s)
        image, geometry = prepare_frame(frame.msg, info, s, frame.age_s)
        note = None if info is None else conv.camera_info_note(info)
        if note != self._camera_info_note:
            self._camera_info_note = note
            self.stats.set_values(camera_info_note=note or "")
            if note is not None:
                self.get_logger().warning(note)  # once, until a CameraInfo without it is used
        return image, geometry

    @staticmethod
    def _gate(result) -> tuple[str, str] | None:
        """``(diagnostic key, message)`` of a result that may not be published, else None."""
        key = rejection_key(result)
        if not key:
            return None
        if key == "registration_failed":
            return key, f"registration failed ({result.status.value}): {result.message}"
        return key, f"registration rejected by a quality gate: {result.message}"

    def _process(self, frame: _Frame) -> dict:
        """Register ``frame`` and publish what may be published; the answer for ``~/register_next``.
        Raises FrameRejected."""
        s, service = self._settings, self._service
        if service is None or not self._active:
            raise FrameRejected("not_active", f"node is {self._state}: frame not registered")
        t0 = time.monotonic()
        lat = {"queue": t0 - frame.received_mono}
        image, geometry = self._prepare(frame, s)
        header = frame.msg.header
        carm_frame = header.frame_id.lstrip("/") or s.default_carm_frame
        if carm_frame == s.ct_frame:
            raise FrameRejected("frame_conflict", f"image frame_id {carm_frame!r} equals ct_frame")
        t1 = time.monotonic()
        lat["convert"] = t1 - t0

        init, how = self._initial(s)
        registrar = service.registrar
        registrar.trust = trust_config(s)  # gate parameters apply from this frame on
        with self._lock:
            tracker = self._tracker if s.tracking and service is self._service else None
        if tracker is not None:
            tracker.cost_factor = float(s.tracking_cost_factor)
            result, how = tracker.register(registrar, image, geometry, init, how)
        else:
            result = registrar.register(image, geometry, init)
        t2 = time.monotonic()
        lat["register"] = t2 - t1
        lat.update({f"registrar_{k}": v for k, v in result.timings.items() if k != "total"})
        self.stats.count("frames_processed")
        gate = self._gate(result)
        stamp = header.stamp
        if not self._active:  # deactivated while registering: publish nothing
            raise FrameRejected("not_active", f"node is {self._state}: result not published")
        if gate is None:
            T_ct_from_carm = np.asarray(result.pose, dtype=np.float64)
            if s.publish_inverse:
                parent, child, T = s.ct_frame, carm_frame, T_ct_from_carm
            else:
                parent, child, T = carm_frame, s.ct_frame, conv.invert_pose(T_ct_from_carm)
            if s.publish_tf:
                self.tf.send(conv.pose_to_transform_stamped(T, parent, child, stamp))
            cov = conv.covariance_to_ros(
                T_ct_from_carm, result.covariance, inverse=s.publish_inverse
            )
            pose_msg = conv.pose_to_pose_with_covariance(T, cov, parent, stamp)
            self._pose_pub.publish(pose_msg)
            self.stats.mark_output()
            text = (
                f"registered: normalised cost {result.normalised_cost:.3g}, {result.iterations} it, "
                f"std {result.position_std_mm:.2g} mm at the ROI, {lat['register']:.2f} s ({how})"
            )
            self._report("ok", text)
            p = pose_msg.pose.pose
            answer = {
                **_refusal("ok", text, stamp),
                "published": True,
                "init": how,
                "parent": parent,
                "child": child,
                "translation_m": [p.position.x, p.position.y, p.position.z],
                "rotation_xyzw": [
                    p.orientation.x,
                    p.orientation.y,
                    p.orientation.z,
                    p.orientation.w,
                ],
                "covariance": [float(v) for v in pose_msg.pose.covariance],
                "normalised_cost": float(result.normalised_cost),
                "position_std_mm": float(result.position_std_mm),
            }
        else:
            self.stats.count("registrations_failed")
            self._report(*gate)
            answer = {**_refusal(gate[0], gate[1], stamp), "init": how}
        t3 = time.monotonic()
        lat["publish"] = t3 - t2
        lat["total"] = t3 - frame.received_mono
        if self._overlay_pub.get_subscription_count() > 0:
            self._publish_overlay(service, result, image, geometry, header, gate)
        self.stats.set_latencies(lat)
        with self._lock:
            tracking_state = "tracking" if self._tracker.active else "cold"
        self.stats.set_values(
            last_cost=f"{result.cost:.6g}",
            last_iterations=result.iterations,
            last_normalised_cost=f"{result.normalised_cost:.4g}",
            last_consistency_mm=f"{result.consistency_mm:.4g}",
            last_masked_fraction=f"{result.masked_fraction:.3f}",
            last_position_std_mm=f"{result.position_std_mm:.4g}",
            last_init=how,
            last_registration_status=result.status.value,
            tracking_state=tracking_state,
            image_age_ms=f"{1000 * frame.age_s:.1f}",
            last_stamp=f"{header.stamp.sec}.{header.stamp.nanosec:09d}",
        )
        return answer

    def _publish_overlay(self, service: _Service, result, image, geometry, header, gate) -> None:
        scale = max(1.0, max(geometry.height, geometry.width) / float(self._settings.resolution))
        small = geometry.resized(
            max(1, round(geometry.height / scale)), max(1, round(geometry.width / scale))
        )
        pose = np.asarray(result.pose, dtype=np.float64)
        drr = None
        if np.all(np.isfinite(pose)):  # a failed registration may carry no pose at all
            drr = np.asarray(service.registrar.render(pose, small), dtype=np.float32)
            drr = drr.reshape(small.height, small.width)
        status = (
            f"OK norm. cost {result.normalised_cost:.2g} std {result.position_std_mm:.2g} mm"
            if gate is None
            else f"{gate[0]}: {result.message}"
        )
        valid = getattr(result, "valid_mask", None)
        bgr = make_overlay(
            image,
            drr,
            status,
            ok=gate is None,
            valid=valid if valid is not None and valid.shape == np.shape(image) else None,
        )
        self._overlay_pub.publish(conv.numpy_to_image(bgr, "bgr8", header))

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
