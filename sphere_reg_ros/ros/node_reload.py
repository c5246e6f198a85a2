"""The registration node's registrar: building it, swapping it on a parameter change.

:class:`RegistrarReloads` is a part of :class:`.registration_node.RegistrationNode` (a mixin;
the node creates the state it uses in its ``__init__``). A change of a ``registrar`` parameter
is checked before it is accepted (:func:`.params.validate`, bounded file probes); the registrar
is then rebuilt in a background thread and swapped in when ready, while the old one serves. A
rebuild that fails reverts the parameters and keeps the old registrar (``ct_load_failed``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter

from ..core.trust import Tracker
from .diagnostics import ERROR, OK, WARN
from .params import SPECS, ParameterError, Settings, freeze, validate
from .registrar_factory import build_registrar
from .tf_prior import TfPrior

__all__ = ["Service", "RegistrarReloads"]


@dataclass(frozen=True)
class Service:
    registrar: Any
    key: tuple
    source: str
    warning: str | None = None  # why the registrar is not what model_path asked for


class RegistrarReloads:
    """The registrar's construction, background reloads and parameter changes (module docstring)."""

    def _update_prior(self, settings: Settings) -> None:
        """Create the TF prior's listener the first time prior frames are set."""
        if self._prior is None and settings.prior_parent_frame:
            self._prior = TfPrior(self)
            self.get_logger().info(f"TF prior via {self._prior.backend}")
        if not settings.prior_parent_frame:
            self.stats.set_values(tf_prior="off")

    def _build(self, settings: Settings) -> Service:
        built = build_registrar(settings)
        return Service(built.registrar, settings.registrar_key(), built.source, built.warning)

    def _report_model(self, service: Service) -> bool:
        """Log and show on /diagnostics that ``service`` is not the model asked for; True if so."""
        self.stats.set_values(model_warning=service.warning or "")
        if service.warning is None:
            return False
        self.get_logger().warning(service.warning)
        self.stats.set_outcome(WARN, service.warning, "model_warning")
        return True

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
