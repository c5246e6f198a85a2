"""Settings of the xvr peer (:class:`XvrConfig`), its frame conventions (diffdrr's ``reorient``
matrices and detector frame; :mod:`.xvr_adapter` explains them) and whether it is installed.
Re-exported by :mod:`.xvr_adapter`."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

__all__ = [
    "XvrConfig",
    "xvr_available",
    "INSTALL_HINT",
    "REORIENT",
    "DETECTOR_FROM_OPTICAL",
    "MIN_SIDE",
]

INSTALL_HINT = "pip install .[peers] (or make peers)"

#: diffdrr's ``reorient`` matrices (``diffdrr.data.read``) by orientation.
REORIENT = {
    "AP": np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
    "PA": np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
}

#: diffdrr's detector frame from our optical frame, by ``reverse_x_axis``.
DETECTOR_FROM_OPTICAL = {
    True: np.diag([-1.0, -1.0, 1.0, 1.0]),
    False: np.diag([1.0, -1.0, 1.0, 1.0]),
}

#: Smallest image side (px) of a default xvr scale.
MIN_SIDE = 16


def xvr_available() -> bool:
    """True when xvr (PyPI ``xvreg``) can be imported."""
    return importlib.util.find_spec("xvr") is not None


@dataclass(frozen=True)
class XvrConfig:
    """xvr's fixed-pose registration settings (defaults: xvr 0.1.0's ``Register`` defaults).

    Attributes:
        scales: xvr's downsampling divisors of the DICOM image, coarse to fine; None: ``(2f, f)``
            with ``f`` = image side / registration resolution (our methods' final resolution).
        n_itrs: Adam iterations per scale (a cap: xvr stops a scale after ``max_n_plateaus``
            learning-rate reductions).
        lr_rot, lr_xyz: learning rates (rad, mm) of the first scale; xvr divides them by 2, 8,
            ... at finer scales.
        patience, threshold, max_n_plateaus: xvr's ReduceLROnPlateau schedule.
        metric: ``"gmncc"`` (gradient + multiscale NCC), ``"mncc"`` or ``"gncc"``.
        orientation, reverse_x_axis: xvr's frame conventions (module docstring).
        linearize: xvr's log transform of raw intensities (False: our images are line integrals).
        device: torch device for xvr (the one our methods use).
    """

    scales: tuple[float, ...] | None = None
    n_itrs: int = 500
    lr_rot: float = 1e-2
    lr_xyz: float = 1.0
    patience: int = 5
    threshold: float = 1e-4
    max_n_plateaus: int = 2
    metric: str = "gmncc"
    orientation: str = "AP"
    reverse_x_axis: bool = True
    linearize: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.orientation not in REORIENT:
            raise ValueError(
                f"orientation must be one of {sorted(REORIENT)}, got {self.orientation!r}"
            )
        sign = np.linalg.det(REORIENT[self.orientation][:3, :3]) * np.linalg.det(
            DETECTOR_FROM_OPTICAL[bool(self.reverse_x_axis)][:3, :3]
        )
        if sign < 0:
            raise ValueError(
                f"orientation {self.orientation} with reverse_x_axis={self.reverse_x_axis} renders the "
                "mirror image of a C-arm (improper camera); use AP with reverse_x_axis=True or PA "
                "with reverse_x_axis=False"
            )
        if self.scales is not None and (not self.scales or any(not s >= 1 for s in self.scales)):
            raise ValueError(f"scales must be divisors >= 1, got {self.scales}")
        if self.n_itrs < 1:
            raise ValueError(f"n_itrs must be >= 1, got {self.n_itrs}")
