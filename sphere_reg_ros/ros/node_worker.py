"""The registration node's worker: one frame from its checks to the published pose.

:class:`FrameWorker` is a part of :class:`.registration_node.RegistrationNode` (a mixin; the
node creates the state it uses in its ``__init__``). For each frame the worker takes it checks
the stamp, pairs a CameraInfo and converts the image (:meth:`_prepare`), picks the initial pose
(:meth:`_initial`), registers (:meth:`_register`), applies the quality gates (:func:`gate_of`),
publishes TF and ``~/pose`` (:meth:`_publish_pose`) and the overlay when subscribed, and
records the outcome on ``/diagnostics``; a refused frame is reported with its reason.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..core.trust import rejection_key
from . import conversions as conv
from .diagnostics import ERROR, WARN
from .frame_input import REASONS, FrameRejected, check_stamp, prepare_frame
from .node_answers import Frame, FrameSet, published_answer, refusal
from .node_reload import Service
from .overlay import make_overlay
from .params import Settings, trust_config

__all__ = ["FrameWorker", "gate_of"]

_LOG_THROTTLE_S = 5.0
_MM_PER_M = 1000.0


def gate_of(result) -> tuple[str, str] | None:
    """``(diagnostic key, message)`` of a result that may not be published, else None."""
    key = rejection_key(result)
    if not key:
        return None
    if key == "registration_failed":
        return key, f"registration failed ({result.status.value}): {result.message}"
    return key, f"registration rejected by a quality gate: {result.message}"


def _valid_mask(result, view: int, image) -> np.ndarray | None:
    """The result's mask of valid pixels for view ``view`` (one array, or one per view) when it
    has the image's shape, else None."""
    valid = getattr(result, "valid_mask", None)
    if isinstance(valid, (list, tuple)):
        valid = valid[view] if view < len(valid) else None
    return valid if valid is not None and np.shape(valid) == np.shape(image) else None


def _registered_text(result, seconds: float, how: str) -> str:
    """The ``/diagnostics`` message of a published registration."""
    return (
        f"registered: normalised cost {result.normalised_cost:.3g}, {result.iterations} it, "
        f"std {result.position_std_mm:.2g} mm at the ROI, {seconds:.2f} s ({how})"
    )


class FrameWorker:
    """The worker thread's loop and steps (see the module docstring)."""

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            frame = self._take(self._frame_cv, "_pending")
            if frame is None:
                continue
            stamp = frame.msg.header.stamp
            answer = refusal("internal_error", "internal error", stamp)
            try:
                try:
                    process = self._process_set if isinstance(frame, FrameSet) else self._process
                    answer = process(frame)
                except FrameRejected as exc:
                    self.stats.count("frames_rejected")
                    if exc.reason == "unmatched_camera_info":
                        self.stats.count("frames_unmatched_camera_info")
                    self.stats.set_values(last_stamp=f"{stamp.sec}.{stamp.nanosec:09d}")
                    self._report(exc.reason, str(exc))
                    answer = refusal(exc.reason, str(exc), stamp)
                if self.context.ok():
                    self._publish_diagnostics()
            except Exception as exc:  # keep serving whatever happens to one frame
                text = f"internal error: {type(exc).__name__}: {exc}"
                answer = refusal("internal_error", text, stamp)
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

    def _prepare(self, frame: Frame, s: Settings, infos=None) -> tuple[np.ndarray, Any]:
        """Stamp checks, CameraInfo pairing (from ``infos``, the view's buffer; None: the node's),
        then :func:`prepare_frame`: (image, geometry)."""
        check_stamp(frame.age_s, s)  # before waiting for a CameraInfo the frame does not need
        info = self._camera_info_for(frame, s, infos)
        image, geometry = prepare_frame(frame.msg, info, s, frame.age_s)
        note = None if info is None else conv.camera_info_note(info)
        if note != self._camera_info_note:
            self._camera_info_note = note
            self.stats.set_values(camera_info_note=note or "")
            if note is not None:
                self.get_logger().warning(note)  # once, until a CameraInfo without it is used
        return image, geometry

    def _process(self, frame: Frame) -> dict:
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

        result, how = self._register(service, s, image, geometry)
        pose = np.asarray(result.pose, dtype=np.float64)
        overlay = (image, geometry, pose, self._overlay_pub, header)
        return self._conclude(frame, s, service, result, how, carm_frame, lat, t1, [overlay])

    def _conclude(
        self, frame, s: Settings, service: Service, result, how, carm_frame, lat, t1, overlays
    ) -> dict:
        """After registering ``frame`` (started at ``t1``): the gates, TF and ``~/pose`` when they
        pass, the overlays ``(image, geometry, pose, publisher, header)`` with subscribers, latencies and
        ``/diagnostics`` values; the ``~/register_next`` answer. Raises FrameRejected."""
        t2 = time.monotonic()
        lat["register"] = t2 - t1
        lat.update({f"registrar_{k}": v for k, v in result.timings.items() if k != "total"})
        self.stats.count("frames_processed")
        gate = gate_of(result)
        header = frame.msg.header
        stamp = header.stamp
        if not self._active:  # deactivated while registering: publish nothing
            raise FrameRejected("not_active", f"node is {self._state}: result not published")
        if gate is None:
            answer = self._publish_pose(result, s, carm_frame, stamp, how, lat["register"])
        else:
            self.stats.count("registrations_failed")
            self._report(*gate)
            answer = {**refusal(gate[0], gate[1], stamp), "init": how}
        t3 = time.monotonic()
        lat["publish"] = t3 - t2
        lat["total"] = t3 - frame.received_mono
        for i, (image, geometry, pose, publisher, view_header) in enumerate(overlays):
            if publisher.get_subscription_count() > 0:
                valid = _valid_mask(result, i, image)
                self._publish_overlay(
                    service, result, pose, image, geometry, valid, view_header, gate, publisher
                )
        self.stats.set_latencies(lat)
        self._record(result, how, frame)
        return answer

    def _register(
        self, service: Service, s: Settings, image, geometry, via=None
    ) -> tuple[Any, str]:
        """``(result, how the initial pose was chosen)``: tracking from the last published pose
        when ``tracking`` (and ``service`` still serves), else a cold registration. ``via``: what
        registers instead of the registrar itself (an object with its ``register`` signature,
        e.g. :class:`.node_views.ViewRegistrar`)."""
        init, how = self._initial(s)
        registrar = service.registrar
        registrar.trust = trust_config(s)  # gate parameters apply from this frame on
        engine = registrar if via is None else via
        with self._lock:
            tracker = self._tracker if s.tracking and service is self._service else None
        if tracker is not None:
            tracker.cost_factor = float(s.tracking_cost_factor)
            return tracker.register(engine, image, geometry, init, how)
        return engine.register(image, geometry, init), how

    def _publish_pose(
        self, result, s: Settings, carm_frame: str, stamp, how: str, seconds: float
    ) -> dict:
        """Publish a result that passed the gates on TF and ``~/pose``; the published answer."""
        T_ct_from_carm = np.asarray(result.pose, dtype=np.float64)
        if s.publish_inverse:
            parent, child, T = s.ct_frame, carm_frame, T_ct_from_carm
        else:
            parent, child, T = carm_frame, s.ct_frame, conv.invert_pose(T_ct_from_carm)
        if s.publish_tf:
            self.tf.send(conv.pose_to_transform_stamped(T, parent, child, stamp))
        cov = conv.covariance_to_ros(T_ct_from_carm, result.covariance, inverse=s.publish_inverse)
        pose_msg = conv.pose_to_pose_with_covariance(T, cov, parent, stamp)
        self._pose_pub.publish(pose_msg)
        self.stats.mark_output()
        text = _registered_text(result, seconds, how)
        self._report("ok", text)
        return published_answer(text, stamp, how, parent, child, pose_msg, result)

    def _record(self, result, how: str, frame: Frame) -> None:
        """The registration's numbers on ``/diagnostics`` (``last_*``, tracking state)."""
        header = frame.msg.header
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

    def _publish_overlay(
        self, service: Service, result, pose, image, geometry, valid, header, gate, publisher
    ) -> None:
        """Draw the DRR at ``pose`` (``T_ct_from_carm`` of this view) over ``image`` and publish
        it on ``publisher``."""
        scale = max(1.0, max(geometry.height, geometry.width) / float(self._settings.resolution))
        small = geometry.resized(
            max(1, round(geometry.height / scale)), max(1, round(geometry.width / scale))
        )
        drr = None
        if np.all(np.isfinite(pose)):  # a failed registration may carry no pose at all
            drr = np.asarray(service.registrar.render(pose, small), dtype=np.float32)
            drr = drr.reshape(small.height, small.width)
        status = (
            f"OK norm. cost {result.normalised_cost:.2g} std {result.position_std_mm:.2g} mm"
            if gate is None
            else f"{gate[0]}: {result.message}"
        )
        bgr = make_overlay(image, drr, status, ok=gate is None, valid=valid)
        publisher.publish(conv.numpy_to_image(bgr, "bgr8", header))
