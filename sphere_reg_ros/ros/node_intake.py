"""The registration node's inputs: images, CameraInfo and ``~/register_next`` calls.

:class:`FrameIntake` is a part of :class:`.registration_node.RegistrationNode` (a mixin; the
node creates the state it uses in its ``__init__``): the image callback keeps only the newest
frame for the worker (an older one still waiting is counted as dropped), the CameraInfo callback
keeps the last ``CAMERA_INFO_BUFFER`` messages, and the worker takes a frame with :meth:`_take`
and pairs it with a CameraInfo with :meth:`_camera_info_for` (the rule is in :mod:`.frame_input`).
"""

from __future__ import annotations

import json
import threading
import time

from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from .frame_input import match_camera_info, paired_camera_info, stamp_ns
from .node_answers import Frame, Request, refusal
from .params import Settings

__all__ = ["FrameIntake", "CAMERA_INFO_WAIT_S"]

#: How long after an image's arrival the worker waits for its CameraInfo (the topics race).
CAMERA_INFO_WAIT_S = 0.25


class FrameIntake:
    """Callbacks of the node's inputs and the worker's hand-over (see the module docstring)."""

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
            frame = Frame(msg, time.monotonic(), age, requests)
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
        req = Request()
        timeout = float(self._settings.request_timeout_s)
        with self._frame_cv:
            active = self._active
            if active:
                self._requests.append(req)
        if not active:
            req.finish(refusal("not_active", f"node is {self._state}: activate it first"))
        elif not req.taken.wait(timeout):
            with self._frame_cv:
                if req in self._requests:  # still no frame: withdraw the request
                    self._requests.remove(req)
                    req.finish(refusal("no_frame", f"no image arrived within {timeout:g} s"))
        while not req.done.wait(0.2):
            if self._stop.is_set():
                req.finish(refusal("not_active", "node stopped"))
        response.success = bool(req.answer["published"])
        response.message = json.dumps(req.answer)
        return response

    def _stop_processing(self, why: str) -> None:
        """Stop registering: drop the pending frame and answer the waiting requests."""
        self._active = False
        with self._frame_cv:
            pending, self._pending = self._pending, None
            requests, self._requests = self._requests, []
            if getattr(self, "_pairer", None) is not None:  # several views: frames waiting
                self._pairer.clear()  # for their partners are dropped too
        for r in requests + (pending.requests if pending is not None else []):
            r.finish(refusal("not_active", f"node {why} before a frame was registered"))

    def _take(self, cv: threading.Condition, slot: str):
        """Wait (until stopped) for ``self.<slot>`` to be set under ``cv``; take it and clear the slot.
        None when the node stops first."""
        with cv:
            while getattr(self, slot) is None and not self._stop.is_set():
                cv.wait(0.2)
            value = getattr(self, slot)
            setattr(self, slot, None)
        return value

    def _camera_info_for(self, frame: Frame, s: Settings, infos=None) -> CameraInfo | None:
        """The CameraInfo paired with ``frame`` (None: use the intrinsics parameters), from the
        buffer ``infos`` (a view's; None: the node's ``camera_info`` buffer).

        Waits until ``CAMERA_INFO_WAIT_S`` after the image's arrival for one within
        ``camera_info_tolerance_s`` unless a CameraInfo stamped later than that has already come
        (then the image's own will not). Raises FrameRejected (``unmatched_camera_info``).
        """
        if not s.use_camera_info:
            return None
        image_ns = stamp_ns(frame.msg.header.stamp)
        tolerance_ns = s.camera_info_tolerance_s * 1e9
        deadline = frame.received_mono + CAMERA_INFO_WAIT_S
        buffer = self._camera_infos if infos is None else infos
        with self._info_cv:
            while True:
                infos = tuple(buffer)
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
