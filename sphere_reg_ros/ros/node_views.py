"""The registration node with several C-arm views (the ``views`` parameter set, e.g. biplane).

:class:`ViewNode` is a part of :class:`.registration_node.RegistrationNode` (a mixin, like
:mod:`.node_intake` and :mod:`.node_worker`), used instead of the ``image``/``camera_info``
subscriptions when ``views`` names view namespaces:

* **Inputs.** Per view ``<ns>``: ``<ns>/image`` and ``<ns>/camera_info`` (relative names,
  remappable; the QoS of the one-view inputs), a CameraInfo buffer per view paired with that
  view's images by the one-view rule (:mod:`.frame_input`).
* **Pairing** (:mod:`.view_pairing`): frames of all views within ``view_pair_tolerance_s`` form a
  set; a frame without partners is counted (``frames_unpaired``) and dropped, or with
  ``unpaired: mono`` registered alone. The worker takes the newest set (an older one still
  waiting is counted in ``frames_dropped``, one per frame).
* **Checks.** Each view's frame is checked as a one-view frame; a bad one refuses the whole set
  with its reason (``unsupported_encoding``, ``non_finite``, ...) and a message naming the view
  (``last_rejected_view`` on ``/diagnostics``). The views' C-arm frames and their relative poses:
  :mod:`.view_offsets` (``view_offset_missing`` when one is not to be had).
* **Registration.** :class:`ViewRegistrar`: the set with ``Registrar.register_views``, a lone
  frame with ``Registrar.register``; both give ``T_ct_from_carm0``, the pose of the first view's
  C-arm, so tracking warm-starts every set and lone frame from the one shared pose.
* **Outputs** (only when the result passes the gates, as with one view): one TF and one
  ``~/pose``, parent = the first view's C-arm frame (also for a lone frame of another view, so
  the CT keeps one parent), stamped with the set's first frame's stamp; an overlay per view,
  ``~/overlay`` for the first and ``~/<ns>/overlay`` for the others, each drawn at that view's
  pose ``T_ct_from_carm0 · T_carm0_from_carmk``; ``/diagnostics`` values ``views``,
  ``view_sets`` (sets registered), ``view_mono`` (lone frames registered), ``frames_unpaired``,
  ``view_pair_spread_ms`` (stamp span of the last set), ``view_offsets`` (where the offsets came
  from), ``last_views``, ``last_rejected_view`` and per view ``view_<ns>_frames_received``,
  ``view_<ns>_frames_unpaired``, ``view_<ns>_frames_rejected`` (``/`` in ``<ns>`` as ``_``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from sensor_msgs.msg import CameraInfo, Image

from . import conversions as conv
from .frame_input import CAMERA_INFO_BUFFER, FrameRejected, stamp_ns
from .node_answers import Frame, FrameSet
from .params import Settings
from .tf_prior import TfPrior
from .view_offsets import view_frame, view_offsets
from .view_pairing import ViewPairer, Waiting

__all__ = ["ViewNode", "ViewRegistrar"]

#: How often waiting frames are checked for a lost partner (s).
_EXPIRE_PERIOD_S = 0.1


class ViewRegistrar:
    """Registers a frame set through ``registrar`` with the offsets ``T_carm0_from_carmk`` of its
    views: several with ``register_views``, one (view ``k``) with ``register`` from the shared
    start moved into its frame (``init · offset``) and its pose brought back,
    ``T_ct_from_carm0 = T_ct_from_carmk · offset⁻¹`` (the covariance, of a left increment in the
    CT frame, is the same for both). The ``register`` signature is the registrar's, so
    :class:`~sphere_reg_ros.core.trust.Tracker` tracks the shared pose through it."""

    def __init__(self, registrar, offsets: list[np.ndarray]) -> None:
        self.registrar = registrar
        self.offsets = [np.asarray(o, dtype=np.float64) for o in offsets]

    def register(self, images, geometries, init=None, *, fine_only: bool = False):
        if len(images) > 1:
            return self.registrar.register_views(
                list(images), list(geometries), self.offsets, init, fine_only=fine_only
            )
        offset = self.offsets[0]
        if np.allclose(offset, np.eye(4)):
            return self.registrar.register(images[0], geometries[0], init, fine_only=fine_only)
        start = None if init is None else np.asarray(init, dtype=np.float64) @ offset
        result = self.registrar.register(images[0], geometries[0], start, fine_only=fine_only)
        pose = np.asarray(result.pose, dtype=np.float64) @ conv.invert_pose(offset)
        return dataclasses.replace(result, pose=pose)


def _key(ns: str) -> str:
    return ns.replace("/", "_")


class ViewNode:
    """Inputs, pairing and registration of several views (see the module docstring)."""

    def _create_view_interfaces(self, s: Settings, qos_in, qos_out) -> None:
        """Per view: the image and CameraInfo subscriptions, an overlay publisher (the first
        view's is ``~/overlay``); the pairing, its expiry timer and the TF listener."""
        names = list(s.views)
        self._view_names = names
        self._pairer = ViewPairer(len(names))
        self._view_infos = [collections.deque(maxlen=CAMERA_INFO_BUFFER) for _ in names]
        self._view_frame0: str | None = None  # the first view's last image frame id
        self._view_counts: collections.Counter = collections.Counter()
        self._view_overlay_pubs = [self._overlay_pub] + [
            self.create_lifecycle_publisher(Image, f"~/{ns}/overlay", qos_out) for ns in names[1:]
        ]
        for k, ns in enumerate(names):
            self.create_subscription(
                CameraInfo, f"{ns}/camera_info", functools.partial(self._on_view_info, k), qos_in
            )
            self.create_subscription(
                Image, f"{ns}/image", functools.partial(self._on_view_image, k), qos_in
            )
        self.create_timer(
            _EXPIRE_PERIOD_S, self._expire_views, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        if self._prior is None:
            self._prior = TfPrior(self)  # the view offsets from TF (also serves the TF prior)
        self.stats.set_values(
            views=",".join(names), view_offsets="", last_views="", last_rejected_view=""
        )
        self._publish_view_counts()

    # ------------------------------------------------------------------ inputs and pairing
    def _on_view_info(self, view: int, msg: CameraInfo) -> None:
        with self._info_cv:
            self._view_infos[view].append(msg)
            self._info_cv.notify_all()

    def _on_view_image(self, view: int, msg: Image) -> None:
        """Give the frame to the pairing when active and wanted (else ``frames_ignored``)."""
        now = time.monotonic()
        age = (self.get_clock().now().nanoseconds - stamp_ns(msg.header.stamp)) * 1e-9
        with self._frame_cv:
            if not self._active or not (self._settings.process_stream or self._requests):
                self.stats.count("frames_ignored")
                return
            self.stats.mark_input()
            self._count_view(view, "frames_received")
            if view == 0:
                self._view_frame0 = msg.header.frame_id
            waiting = Waiting(view, stamp_ns(msg.header.stamp), now, Frame(msg, now, age))
            out = self._pairer.add(waiting, float(self._settings.view_pair_tolerance_s))
            self._settle(out.complete, out.unpaired)
        self._publish_view_counts()

    def _expire_views(self) -> None:
        with self._frame_cv:
            gone = self._pairer.expire(time.monotonic())
            if gone:
                self._settle(None, gone)
        if gone:
            self._publish_view_counts()

    def _settle(self, complete, unpaired) -> None:
        """Count the unpaired frames; hand the set, or (``unpaired: mono``) each unpaired frame,
        to the worker. Called under ``_frame_cv``."""
        for w in unpaired:
            self._count_view(w.view, "frames_unpaired")
            self.stats.count("frames_unpaired")
        if self._settings.unpaired == "mono" and complete is None:
            for w in unpaired:
                self._hand_over(FrameSet([w.item], [w.view]))
        if complete is not None:
            spread = max(w.stamp_ns for w in complete) - min(w.stamp_ns for w in complete)
            self.stats.set_values(view_pair_spread_ms=f"{spread * 1e-6:.1f}")
            self._hand_over(FrameSet([w.item for w in complete], [w.view for w in complete]))

    def _hand_over(self, frames: FrameSet) -> None:
        """Make ``frames`` the pending item unless a newer one is pending (the newest wins; the
        other is counted in ``frames_dropped``). Called under ``_frame_cv``."""
        requests, self._requests = self._requests, []
        pending = self._pending
        for r in requests:
            r.taken.set()
        if pending is not None and stamp_ns(pending.msg.header.stamp) > stamp_ns(
            frames.msg.header.stamp
        ):
            self.stats.count("frames_dropped", len(frames.frames))
            pending.requests = (pending.requests or []) + requests
            return
        if pending is not None:
            self.stats.count("frames_dropped", len(getattr(pending, "frames", [pending])))
            requests = (pending.requests or []) + requests
        frames.requests = requests
        self._pending = frames
        self._frame_cv.notify()

    def _count_view(self, view: int, what: str) -> None:
        self._view_counts[f"view_{_key(self._view_names[view])}_{what}"] += 1

    def _publish_view_counts(self) -> None:
        counts = {
            f"view_{_key(ns)}_{what}": self._view_counts[f"view_{_key(ns)}_{what}"]
            for ns in self._view_names
            for what in ("frames_received", "frames_unpaired", "frames_rejected")
        }
        self.stats.set_values(
            frames_unpaired=self.stats.counters["frames_unpaired"],
            view_sets=self._view_counts["sets"],
            view_mono=self._view_counts["mono"],
            **counts,
        )

    # ------------------------------------------------------------------ the worker's side
    def _process_set(self, frames: FrameSet) -> dict:
        """Register a frame set (or a lone frame) and publish what may be published; the answer
        for ``~/register_next``. Raises FrameRejected."""
        s, service = self._settings, self._service
        if service is None or not self._active:
            raise FrameRejected("not_active", f"node is {self._state}: frames not registered")
        t0 = time.monotonic()
        lat = {"queue": t0 - frames.received_mono}
        images, geometries, carm = self._prepare_views(frames, s)
        offsets, source = view_offsets(s, carm, self._prior.lookup)
        self.stats.set_values(view_offsets=source)
        t1 = time.monotonic()
        lat["convert"] = t1 - t0
        chosen = [offsets[k] for k in frames.views]
        via = ViewRegistrar(service.registrar, chosen)
        result, how = self._register(service, s, images, geometries, via)
        self._view_counts["sets" if len(frames.views) > 1 else "mono"] += 1
        self.stats.set_values(last_views=",".join(self._view_names[k] for k in frames.views))
        self._publish_view_counts()
        shared = np.asarray(result.pose, dtype=np.float64)
        overlays = [
            (image, geometry, shared @ offset, self._view_overlay_pubs[k], frame.msg.header)
            for image, geometry, offset, k, frame in zip(
                images, geometries, chosen, frames.views, frames.frames
            )
        ]
        return self._conclude(frames, s, service, result, how, carm[0], lat, t1, overlays)

    def _prepare_views(self, frames: FrameSet, s: Settings):
        """Each view's checks and conversion (:meth:`_prepare`); ``(images, geometries,
        {view: C-arm frame})``, view 0's frame included. Raises FrameRejected naming the view."""
        images, geometries, carm = [], [], {}
        for k, frame in zip(frames.views, frames.frames):
            try:
                image, geometry = self._prepare(frame, s, self._view_infos[k])
            except FrameRejected as exc:
                self._count_view(k, "frames_rejected")
                self._publish_view_counts()
                self.stats.set_values(last_rejected_view=self._view_names[k])
                raise FrameRejected(exc.reason, f"view {self._view_names[k]}: {exc}") from exc
            images.append(image)
            geometries.append(geometry)
            carm[k] = view_frame(s, k, frame.msg.header.frame_id)
        if 0 not in carm:
            carm[0] = view_frame(s, 0, self._view_frame0)
        for k, frame_id in carm.items():
            if frame_id == s.ct_frame:
                raise FrameRejected(
                    "frame_conflict",
                    f"view {self._view_names[k]}: C-arm frame {frame_id!r} equals ct_frame",
                )
        return images, geometries, carm
