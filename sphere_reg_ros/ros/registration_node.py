"""The registration node: C-arm images in, the CT's pose (TF, pose with covariance) out.

Thin glue over :class:`sphere_reg_ros.core.registrar.Registrar`::

    python -m sphere_reg_ros.ros.registration_node --ros-args --params-file config/register.yaml
    ros2 run sphere_reg_ros registration_node --ros-args --params-file config/register.yaml

Topics (relative names, remap in launch): subscribes ``image`` (mono8, mono16/16UC1, 32FC1) and
``camera_info`` (sensor-data QoS unless ``qos_reliability``/``qos_depth`` say otherwise; the last
10 CameraInfo messages are kept and each image is paired with one by stamp, see below);
publishes ``/tf``, ``~/pose`` (``PoseWithCovarianceStamped``), ``~/overlay`` (bgr8, only computed
while subscribed) and ``/diagnostics``; serves ``~/reset`` (``std_srvs/Trigger``: forget the
tracking state).

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
becomes the next start); otherwise ``initial_pose_mm`` (translation in mm) when ``use_initial_pose``, else the registrar's
own (regressor, or its default view). Input problems are logged (at most once per 5 s per reason)
and reported on ``/diagnostics`` (see :mod:`.frame_input` for the reasons and levels); the node
keeps serving. Frames without a paired CameraInfo are also counted in
``frames_unmatched_camera_info``.

Checkpoint. ``model_path ''`` (the shipped checkpoint) that is missing or does not fit the CT falls
back to learning-free residuals: logged at WARN, status ``model_warning`` (WARN) on
``/diagnostics`` at start-up or after the reload (until the next frame's outcome), and the value
``model_warning`` holds the reason while that registrar serves. A ``model_path`` file that cannot
be loaded is an error: at start-up the node exits (code 2) with the reason, at run time the
parameter service refuses the change (``successful=False``, the reason naming the file) and the
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
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
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
from .tf_publisher import TfPublisher

__all__ = ["RegistrationNode", "main"]

_LOG_THROTTLE_S = 5.0
#: How long after an image's arrival the worker waits for its CameraInfo (the topics race).
_CAMERA_INFO_WAIT_S = 0.25
_MM_PER_M = 1000.0


@dataclass
class _Frame:
    msg: Image
    received_mono: float
    age_s: float


@dataclass(frozen=True)
class _Service:
    registrar: Any
    key: tuple
    source: str
    warning: str | None = None  # why the registrar is not what model_path asked for


class RegistrationNode(Node):
    """See the module docstring. ``parameter_overrides`` as for ``rclpy.node.Node``."""

    def __init__(self, node_name: str = "registration_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._stop = threading.Event()
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
        self._settings: Settings = validate(values)  # raises ParameterError: main() exits
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
        self.stats.set_values(camera_info_note="")

        t0 = time.monotonic()
        self._service = self._build(self._settings)
        self.get_logger().info(
            f"registrar built in {time.monotonic() - t0:.1f} s: {self._service.source}"
        )
        self._report_model(self._service)

        # background loader for registrar rebuilds (ct_path etc. changed at run time)
        self._load_request: Settings | None = None
        self._loader = threading.Thread(
            target=self._loader_loop, name="registrar_loader", daemon=True
        )

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
        self.tf = TfPublisher(self)  # one broadcaster per node, created once
        self._pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", qos_out)
        self._overlay_pub = self.create_publisher(Image, "~/overlay", qos_out)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos_out)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_in)
        self.create_subscription(Image, "image", self._on_image, qos_in)
        self.create_service(Trigger, "~/reset", self._on_reset)
        # steady clock: the heartbeat goes on under use_sim_time without /clock
        self.create_timer(
            float(s.diagnostics_period_s),
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._pending: _Frame | None = None
        self._worker = threading.Thread(
            target=self._worker_loop, name="registration_worker", daemon=True
        )
        self._loader.start()
        self._worker.start()
        self.get_logger().info(
            f"ready: {self._service.source}; TF via {self.tf.backend}; "
            f"{'publish_inverse ' if s.publish_inverse else ''}ct_frame={s.ct_frame}"
        )

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
                self._service = service
                self._tracker = Tracker()
            msg = f"registrar swapped in after {time.monotonic() - t0:.1f} s: {service.source}"
            self.get_logger().info(msg)
            if not self._report_model(service):
                self.stats.set_outcome(OK, msg, "ct_loaded")
            self._publish_diagnostics()

    def _reload_failed(self, request: Settings, exc: Exception) -> None:
        old = self._service
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
            if values["ct_path"] == dict(served.key)["ct_path"]
            else None
        )
        try:  # file checks (bounded: headers, data sizes, the checkpoint on the CPU) before answering
            new = validate(values, changed=set(changes), ct=ct)
        except ParameterError as exc:
            self.get_logger().warning(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        old_key = self._settings.registrar_key()
        self._settings = new
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
        self.stats.mark_input()
        age = (self.get_clock().now().nanoseconds - stamp_ns(msg.header.stamp)) * 1e-9
        frame = _Frame(msg, time.monotonic(), age)
        with self._frame_cv:
            if self._pending is not None:
                self.stats.count("frames_dropped")
            self._pending = frame
            self._frame_cv.notify()

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
            try:
                try:
                    self._process(frame)
                except FrameRejected as exc:
                    self.stats.count("frames_rejected")
                    if exc.reason == "unmatched_camera_info":
                        self.stats.count("frames_unmatched_camera_info")
                    stamp = frame.msg.header.stamp
                    self.stats.set_values(last_stamp=f"{stamp.sec}.{stamp.nanosec:09d}")
                    self._report(exc.reason, str(exc))
                if self.context.ok():
                    self._publish_diagnostics()
            except Exception as exc:  # keep serving whatever happens to one frame
                self.stats.set_outcome(
                    ERROR, f"internal error: {type(exc).__name__}: {exc}", "internal_error"
                )
                if self.context.ok():
                    self.get_logger().error(f"internal error: {type(exc).__name__}: {exc}")

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
        """The cold start: ``initial_pose_mm`` when ``use_initial_pose``, else the registrar's own."""
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

    def _process(self, frame: _Frame) -> None:
        s, service = self._settings, self._service
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
            self._pose_pub.publish(conv.pose_to_pose_with_covariance(T, cov, parent, stamp))
            self.stats.mark_output()
            text = (
                f"registered: normalised cost {result.normalised_cost:.3g}, {result.iterations} it, "
                f"std {result.position_std_mm:.2g} mm at the ROI, {lat['register']:.2f} s ({how})"
            )
            self._report("ok", text)
        else:
            self.stats.count("registrations_failed")
            self._report(*gate)
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
        msg = self.stats.to_message(
            self.get_clock().now().to_msg(), self.get_name(), self._service.source
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

    Ctrl-C (SIGINT) is left to Python (``KeyboardInterrupt`` in the main thread, within one
    diagnostics period) instead of rclpy's signal handler, which shuts the context down
    asynchronously while the worker and loader threads may still use it (seen as a rare crash
    at shutdown); the node then stops its threads before the context goes away.
    """
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = RegistrationNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
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
