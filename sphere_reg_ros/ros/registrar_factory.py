"""Node parameters → a :class:`~sphere_reg_ros.core.registrar.Registrar` (CT, model, solver).

``model_path ''`` means: the checkpoint shipped with the package (:func:`shipped_checkpoint`)
when there is one and it fits the CT, else learning-free residuals (logged); ``'none'`` means
learning-free residuals whatever is shipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.registrar import Registrar, RegistrarConfig
from ..core.volume import VolumeError

__all__ = ["build_registrar", "registrar_config", "shipped_checkpoint"]

log = logging.getLogger(__name__)

#: Where a checkpoint shipped with the package lies (installed as package data).
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SHIPPED_NAME = "default.pt"


def shipped_checkpoint() -> Path | None:
    """``sphere_reg_ros/data/default.pt``, else the only ``*.pt`` there, else None."""
    preferred = DATA_DIR / SHIPPED_NAME
    if preferred.is_file():
        return preferred
    found = sorted(DATA_DIR.glob("*.pt")) if DATA_DIR.is_dir() else []
    return found[0] if len(found) == 1 else None


def registrar_config(settings) -> RegistrarConfig:
    """The :class:`RegistrarConfig` of the node's parameters (``settings``: params.Settings)."""
    return RegistrarConfig(
        resolution=int(settings.resolution),
        scales=tuple(float(v) for v in settings.lm_scales),
        max_iterations=int(settings.lm_max_iterations),
        step_tol_mm=float(settings.lm_step_tol_mm),
        cost_tol=float(settings.lm_cost_tol),
        damping=str(settings.lm_damping),
        lambda_init=float(settings.lm_lambda_init),
        residuals=str(settings.residuals),
        robust=str(settings.lm_robust),
        robust_scale=float(settings.lm_robust_scale),
        masking=bool(settings.masking),
        intensity_fit=str(settings.intensity_fit),
        restarts=int(settings.lm_restarts),
        device=str(settings.device),
    )


def build_registrar(settings) -> tuple[Registrar, str]:
    """Load the CT and models named by ``settings``; returns the registrar and a description.

    Raises:
        VolumeError: the CT cannot be read; ValueError/OSError/RuntimeError: bad model or device.
    """
    config = registrar_config(settings)
    ct_path = settings.ct_path or None
    spacing = float(settings.ct_spacing_mm)
    if settings.model_path == "none":
        registrar = Registrar.from_files(ct_path, None, config, spacing_mm=spacing)
    elif settings.model_path:
        registrar = Registrar.from_files(ct_path, settings.model_path, config, spacing_mm=spacing)
    else:
        shipped = shipped_checkpoint()
        registrar = None
        if shipped is not None:
            try:
                registrar = Registrar.from_files(ct_path, str(shipped), config, spacing_mm=spacing)
            except VolumeError:
                raise
            except Exception as exc:  # e.g. the shipped model belongs to another CT
                log.warning("shipped checkpoint %s not used (%s: %s); learning-free residuals",
                            shipped, type(exc).__name__, exc)
        if registrar is None:
            registrar = Registrar.from_files(ct_path, None, config, spacing_mm=spacing)
    source = getattr(registrar, "source", None) or f"CT {ct_path or 'embedded example'}"
    if not ct_path:
        source = source.replace("CT ", "CT (embedded example) ", 1)
    return registrar, f"{source}; device {registrar.device}"
