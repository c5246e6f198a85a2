"""Node parameters → a :class:`~sphere_reg_ros.core.registrar.Registrar` (CT, model, solver).

``model_path ''`` means: the checkpoint shipped with the package (:func:`shipped_checkpoint`)
when there is one and it fits the CT, else learning-free residuals; that fall-back is not silent:
:func:`build_registrar` returns the reason as ``warning``, which the node logs at WARN and reports
on ``/diagnostics`` (``model_warning``). ``'none'`` means learning-free residuals whatever is
shipped. A file named explicitly must load: any error is raised (the node refuses to start, or
keeps its old registrar when the change came at run time).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..core.registrar import Registrar, RegistrarConfig
from ..core.volume import VolumeError
from .params import parse_roi, trust_config

__all__ = ["Built", "build_registrar", "registrar_config", "shipped_checkpoint"]

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
        roi=parse_roi(settings.roi),
        polish=bool(settings.polish),
        trust=trust_config(settings),
    )


class Built(NamedTuple):
    """What :func:`build_registrar` made: the registrar, a one-line description of it, and why it
    is not what ``model_path`` asked for (None when it is)."""

    registrar: Registrar
    source: str
    warning: str | None = None


def build_registrar(settings) -> Built:
    """Load the CT and models named by ``settings``.

    Raises:
        VolumeError: the CT cannot be read; ValueError (``CheckpointError``)/OSError/RuntimeError:
            the model file named by ``model_path`` cannot be used, or the device.
    """
    config = registrar_config(settings)
    warning = None
    ct_path = settings.ct_path or None
    spacing = float(settings.ct_spacing_mm)
    if settings.model_path == "none":
        registrar = Registrar.from_files(ct_path, None, config, spacing_mm=spacing)
    elif settings.model_path:
        registrar = Registrar.from_files(ct_path, settings.model_path, config, spacing_mm=spacing)
    else:
        shipped = shipped_checkpoint()
        registrar = None
        if shipped is None:
            warning = (
                f"model_path '': no checkpoint shipped with the package (none in {DATA_DIR}); "
                "learning-free residuals"
            )
        else:
            try:
                registrar = Registrar.from_files(ct_path, str(shipped), config, spacing_mm=spacing)
            except VolumeError:
                raise
            except Exception as exc:  # e.g. the shipped model belongs to another CT
                warning = (
                    f"model_path '': shipped checkpoint {shipped.name} not used "
                    f"({type(exc).__name__}: {exc}); learning-free residuals"
                )
        if registrar is None:
            registrar = Registrar.from_files(ct_path, None, config, spacing_mm=spacing)
    source = getattr(registrar, "source", None) or f"CT {ct_path or 'embedded example'}"
    if not ct_path:
        source = source.replace("CT ", "CT (embedded example) ", 1)
    return Built(registrar, f"{source}; device {registrar.device}", warning)
