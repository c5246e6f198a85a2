"""Run-time statistics of the registration node and their ``diagnostic_msgs/DiagnosticArray``.

:class:`NodeStats` is thread-safe (the image callback, the worker thread and the diagnostics
timer all touch it). One ``DiagnosticStatus`` is published, named ``<node name>: registration``
with ``hardware_id`` = the CT in use; its ``level``/``message`` is the outcome of the last frame
(or of the last CT load: ``ct_loaded``, ``ct_load_failed``, or ``model_warning`` at WARN when
``model_path ''`` fell back to learning-free residuals; or of the last lifecycle transition:
``configured``, ``configure_failed``, ``unconfigured``) and its ``values`` hold:

``status``, ``lifecycle_state`` (unconfigured, inactive, active, finalized), ``last_init`` (how
the last registration started: tracking, tf_prior, initial_pose_mm, registrar_default),
``tf_prior`` (the TF prior at the last cold start: found and how old, stale, not on TF, or off),
``ct``, ``ct_loading``, ``model_warning`` (why the registrar in service is not the
model ``model_path`` asked for; empty when it is), ``tracking``, ``frames_received``,
``frames_processed``, ``frames_dropped`` (overwritten by a newer frame before the worker took
them), ``frames_ignored`` (not wanted: the node inactive, or ``process_stream`` off and no
``~/register_next`` waiting), ``frames_rejected`` (bad input), ``frames_unmatched_camera_info`` (of those, no CameraInfo
paired with the image by stamp), ``registrations_failed`` (failed a quality gate),
``camera_info_offset_ms`` (image stamp minus the stamp of the CameraInfo used for the last
frame), ``camera_info_note`` (e.g. an all-zero K whose P was used; empty otherwise), ``input_rate_hz``,
``output_rate_hz`` (published poses per second, over the last 10 s), ``torch_threads``, ``last_cost``,
``last_normalised_cost``, ``last_position_std_mm`` (at the region of interest),
``last_consistency_mm`` (nan when not checked), ``last_iterations``, ``last_masked_fraction`` (share of the image masked), ``latency_<stage>_ms`` of the last frame
(``queue``, ``convert``, ``register`` and the registrar's own stages, ``publish``, ``total`` =
receipt to TF published), and ``image_age_ms`` (receipt time minus the image stamp).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["OK", "WARN", "ERROR", "STALE", "NodeStats", "Outcome"]

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE

_RATE_WINDOW_S = 10.0


def _level_byte(level) -> bytes:
    return level if isinstance(level, bytes) else bytes([int(level)])


@dataclass
class Outcome:
    """What happened to the last frame (or CT load): level, one-line message, stable reason key."""

    level: bytes = OK
    message: str = "waiting for images"
    reason: str = "waiting"


class NodeStats:
    """Counters, rates, latencies and the last outcome; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters = collections.Counter()
        self._inputs: collections.deque[float] = collections.deque()
        self._outputs: collections.deque[float] = collections.deque()
        self.latency_ms: dict[str, float] = {}
        self.values: dict[str, str] = {}
        self.outcome = Outcome()

    @staticmethod
    def _trim(times: collections.deque, now: float) -> None:
        while times and now - times[0] > _RATE_WINDOW_S:
            times.popleft()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def mark_input(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.counters["frames_received"] += 1
            self._inputs.append(now)
            self._trim(self._inputs, now)

    def mark_output(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._outputs.append(now)
            self._trim(self._outputs, now)

    def set_latencies(self, latency_s: dict[str, float]) -> None:
        with self._lock:
            self.latency_ms = {k: 1000.0 * float(v) for k, v in latency_s.items()}

    def set_values(self, **values) -> None:
        with self._lock:
            self.values.update({k: str(v) for k, v in values.items()})

    def set_outcome(self, level, message: str, reason: str) -> None:
        with self._lock:
            self.outcome = Outcome(_level_byte(level), message, reason)

    def rate(self, which: str) -> float:
        now = time.monotonic()
        with self._lock:
            times = self._inputs if which == "input" else self._outputs
            self._trim(times, now)
            if len(times) < 2:
                return 0.0
            span = max(now - times[0], 1e-6)
            return (len(times) - 1) / span if span < _RATE_WINDOW_S else len(times) / _RATE_WINDOW_S

    def to_message(self, stamp, node_name: str, ct_source: str) -> DiagnosticArray:
        """The ``DiagnosticArray`` (one status) describing the node now."""
        rate_in, rate_out = self.rate("input"), self.rate("output")
        with self._lock:
            outcome = self.outcome
            kv = {"status": outcome.reason}
            for name in (
                "frames_received",
                "frames_processed",
                "frames_dropped",
                "frames_ignored",
                "frames_rejected",
                "frames_unmatched_camera_info",
                "registrations_failed",
            ):
                kv[name] = str(self.counters[name])
            kv["input_rate_hz"] = f"{rate_in:.3f}"
            kv["output_rate_hz"] = f"{rate_out:.3f}"
            kv.update(self.values)
            kv.update({f"latency_{k}_ms": f"{v:.1f}" for k, v in self.latency_ms.items()})
        kv["ct"] = ct_source
        status = DiagnosticStatus(
            level=outcome.level,
            name=f"{node_name}: registration",
            message=outcome.message,
            hardware_id=ct_source,
        )
        status.values = [KeyValue(key=k, value=v) for k, v in kv.items()]
        msg = DiagnosticArray()
        msg.header.stamp = stamp
        msg.status = [status]
        return msg
