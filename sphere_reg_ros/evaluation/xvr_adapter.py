"""xvr (PyPI ``xvreg``) as a peer baseline: its fixed-pose registration on our cases.

Why xvr and how it is compared: docs/ARCHITECTURE.md, Baselines and the physics gap.

For each case the X-ray is written as the 16-bit DICOM xvr reads, xvr's own ``Register`` runs
its fixed-pose registration (``FixedPose`` initializer, its defaults: Adam on gradient-multiscale
NCC, learning rates 1e-2 rad / 1 mm, plateau schedule) from exactly our initial pose on our
device, and its final pose comes back as our ``T_ct_from_carm``. xvr is imported lazily: the
module imports without it, :func:`xvr_available` says whether it is installed.

Conventions (each checked by ``test/evaluation/test_xvr_adapter.py``):

* **CT**: written as NIfTI (HU, our RAS affine) and read by xvr through ``diffdrr.data.read``,
  which centres the volume (world origin at the grid centre) and maps HU to its own density.
  xvr renders with ``voxel_shift=0`` (voxel *corner* at the integer index) where our renderer
  and the NIfTI affine put voxel *centres* there: xvr's anatomy sits half a voxel,
  ``A[:3, :3] @ (½, ½, ½)``, away from ours. Both offsets go into ``M``, our world from xvr's
  (:meth:`XvrRegistration.world_from_xvr`); at 2 mm the half voxel alone is 1.7 mm of mTRE.
* **Camera**: xvr's pose ``P`` is diffdrr's camera-to-world, composed with the orientation's
  ``reorient`` matrix ``Rr`` (``AP``: a 90° turn about x; ``PA``: a reflection). The detector
  frame is our optical frame with x and y reversed (``F = diag(-1, -1, 1)``) when
  ``reverse_x_axis=True``, and with only y reversed (a mirror) when False. So
  ``T = M · P · Rr · F`` for (AP, reverse_x_axis=True), which is what we use; xvr's defaults
  (AP, reverse_x_axis=False) image the mirror world (an improper map, refused here) and would
  need the image flipped left-right. With our choice the AP view is the identity rotation, far
  from the gimbal lock of the Euler angles.
* **Parameters**: ``FixedPose`` takes Euler angles in degrees, convention ZXY, and ``xyz`` with
  ``P = [R | R·xyz]`` (diffdrr's ``convert``); the optimiser works on the same angles in radians.
* **Intrinsics and pixels**: the DICOM file xvr reads (:mod:`.xvr_dicom`).

Scales: xvr's ``scales`` divide the DICOM's size (its default, 8, is meant for ~1000-px
clinical images). Our benchmark images are ``2R`` and our methods finish at ``R``; by default
xvr works coarse to fine at ``R/2`` then ``R`` (``scales = (2f, f)``, ``f`` = image side / R; a
level under 16 px is dropped: xvr's NCC patches are 9 and 11 px).
Timing: ``timings["total"]`` is the wall time of xvr's registration call (reading the DICOM,
building its DRR, optimising), as ours times ``Registrar.register``; writing the DICOM is
``timings["write_dicom"]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.registrar_inputs import failed_result
from sphere_reg_ros.core.result import RegistrationResult, Status
from sphere_reg_ros.core.volume import Volume, resample
from sphere_reg_ros.evaluation.xvr_config import (
    DETECTOR_FROM_OPTICAL,
    INSTALL_HINT,
    MIN_SIDE,
    REORIENT,
    XvrConfig,
    xvr_available,
)
from sphere_reg_ros.evaluation.xvr_dicom import read_dicom_values, write_xray_dicom

__all__ = [
    "XvrConfig",
    "XvrRegistration",
    "xvr_available",
    "write_xray_dicom",
    "read_dicom_values",
    "INSTALL_HINT",
    "REORIENT",
    "DETECTOR_FROM_OPTICAL",
    "MIN_SIDE",
]

log = logging.getLogger(__name__)


class XvrRegistration:
    """xvr's fixed-pose registration as a runner ``register(image, geometry, init) -> RegistrationResult``.

    Args:
        ct: the CT (HU); resampled to ``spacing_mm`` (the grid our renderers use) when given.
        config: xvr settings.
        resolution: our methods' registration resolution ``R`` (for the default scales).
        workdir: folder for the NIfTI and DICOM files (default: a temporary folder, removed
            with this object).
    """

    def __init__(
        self,
        ct: Volume,
        config: XvrConfig = XvrConfig(),
        resolution: int | None = None,
        spacing_mm: float | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        from xvr.register import FixedPose, Register  # optional peer package

        self.config = config
        self.resolution = resolution
        self._tmp = (
            None if workdir is not None else tempfile.TemporaryDirectory(prefix="sphere-reg-xvr-")
        )
        self.workdir = Path(workdir if workdir is not None else self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        vol = ct if spacing_mm is None else resample(ct, float(spacing_mm))
        self.ct_path = self.workdir / "ct.nii.gz"
        nib.save(nib.Nifti1Image(vol.data, vol.affine), str(self.ct_path))
        self._FixedPose = FixedPose
        self.register_xvr = Register(
            initializer=FixedPose(
                rot=(0.0, 0.0, 0.0),
                xyz=(0.0, 0.0, 0.0),
                orientation=config.orientation,
                reverse_x_axis=config.reverse_x_axis,
                device=config.device,
            ),
            imagepath=str(self.ct_path),
            metric=config.metric,
            scales=[1.0],
            n_itrs=[config.n_itrs],
            lr_rot=config.lr_rot,
            lr_xyz=config.lr_xyz,
            lr_reduce_factor=0.1,
            patience=config.patience,
            threshold=config.threshold,
            max_n_plateaus=config.max_n_plateaus,
            device=config.device,
        )
        self._M = self._world_from_xvr(
            vol.affine, np.asarray(self.register_xvr.subject.volume.affine)
        )
        self._tail = (
            REORIENT[config.orientation] @ DETECTOR_FROM_OPTICAL[bool(config.reverse_x_axis)]
        )

    # ------------------------------------------------------------------ frames
    @staticmethod
    def _world_from_xvr(affine: np.ndarray, affine_xvr: np.ndarray) -> np.ndarray:
        """``M`` (4, 4): our world RAS mm from xvr's (centred) world, half-voxel shift included."""
        M = np.asarray(affine, dtype=np.float64) @ np.linalg.inv(
            np.asarray(affine_xvr, dtype=np.float64)
        )
        if np.abs(M[:3, :3] - np.eye(3)).max() > 1e-5:
            raise ValueError(
                f"xvr read the CT with another grid orientation (our affine x its inverse = {M.tolist()})"
            )
        M[:3, :3] = np.eye(3)
        M[:3, 3] -= np.asarray(affine, dtype=np.float64)[:3, :3] @ np.full(
            3, 0.5
        )  # voxel_shift 0 vs 0.5
        return M

    @property
    def world_from_xvr(self) -> np.ndarray:
        """``(4, 4)`` our CT world (RAS mm) from xvr's world."""
        return self._M.copy()

    def to_xvr(self, pose: np.ndarray) -> np.ndarray:
        """xvr's pose matrix ``P`` ``(4, 4)`` for our ``T_ct_from_carm``: ``M⁻¹ T (Rr F)⁻¹``."""
        return (
            np.linalg.inv(self._M) @ np.asarray(pose, dtype=np.float64) @ np.linalg.inv(self._tail)
        )

    def from_xvr(self, P: np.ndarray) -> np.ndarray:
        """Our ``T_ct_from_carm`` ``(..., 4, 4)`` for xvr pose matrices ``P``: ``M P Rr F``."""
        return self._M @ np.asarray(P, dtype=np.float64) @ self._tail

    def fixed_pose_parameters(
        self, pose: np.ndarray
    ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """``FixedPose``'s ``(rot, xyz)``: Euler ZXY in degrees and translation, for our pose."""
        from diffdrr.pose import RigidTransform

        P = torch.as_tensor(self.to_xvr(pose), dtype=torch.float64)[None]
        rot, xyz = RigidTransform(P).convert("euler_angles", "ZXY", degrees=True)
        return tuple(float(v) for v in rot[0]), tuple(float(v) for v in xyz[0])

    def scales(self, image_side: int) -> list[float]:
        """xvr's scales for an image of ``image_side`` pixels: the config's, else ``(2f, f)``
        without levels under ``MIN_SIDE`` px (xvr's NCC patches are 9 and 11 px wide)."""
        if self.config.scales is not None:
            return [float(s) for s in self.config.scales]
        f = image_side / float(self.resolution or image_side)
        return [s for s in (2.0 * f,) if image_side / s >= MIN_SIDE] + [f]

    # ------------------------------------------------------------------ registration
    def _run(
        self,
        image: np.ndarray,
        geometry: CarmGeometry,
        init_pose: np.ndarray,
        init_only: bool = False,
    ):
        """Write the DICOM, set xvr's schedule and initial pose, call xvr; ``(result, t_write, t_call, warnings)``."""
        t0 = time.perf_counter()
        path = write_xray_dicom(
            self.workdir / "xray.dcm", image, geometry, self.config.reverse_x_axis
        )
        t_write = time.perf_counter() - t0
        rot, xyz = self.fixed_pose_parameters(init_pose)
        reg = self.register_xvr
        reg.initializer = self._FixedPose(
            rot=rot,
            xyz=xyz,
            orientation=self.config.orientation,
            reverse_x_axis=self.config.reverse_x_axis,
            device=self.config.device,
        )
        scales = self.scales(max(geometry.height, geometry.width))
        reg.scales, reg.n_itrs = scales, [int(self.config.n_itrs)] * len(scales)
        reg.patience = [int(self.config.patience)] * len(scales)
        reg.max_scale_len = max(len(str(s)) for s in scales)
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("always")
            t1 = time.perf_counter()  # the registration call, timed like ours (Registrar.register)
            out = reg(
                str(path),
                linearize=self.config.linearize,
                parameterization="euler_angles",
                convention="ZXY",
                init_only=init_only,
            )
            t_call = time.perf_counter() - t1
        return out, t_write, t_call, [str(w.message) for w in caught], scales

    def render(self, pose: np.ndarray, geometry: CarmGeometry) -> np.ndarray:
        """xvr's own DRR ``(H, W)`` of our pose on ``geometry`` (its full pipeline, no optimisation)."""
        dummy = np.zeros((geometry.height, geometry.width))
        dummy[0, 0] = 1.0
        out, *_ = self._run(dummy, geometry, pose, init_only=True)
        with torch.no_grad():
            return out.drr(out.final_pose)[0, 0].cpu().numpy()

    def register(
        self, image: np.ndarray, geometry: CarmGeometry, init_pose: np.ndarray
    ) -> RegistrationResult:
        """Register one image ``(H, W)`` (line integrals) from ``init_pose`` (4, 4) with xvr; never raises."""
        init = np.asarray(init_pose, dtype=np.float64)
        t0 = time.perf_counter()
        try:
            out, t_write, t_call, caught, scales = self._run(image, geometry, init)
        except Exception as exc:  # a bad case must not take the evaluation down
            log.warning("xvr failed: %s", exc)
            status = Status.INVALID_INPUT if isinstance(exc, ValueError) else Status.DIVERGED
            return failed_result(
                init,
                status,
                f"xvr: {type(exc).__name__}: {exc}",
                {"total": time.perf_counter() - t0},
            )
        timings = {"total": t_call, "write_dicom": t_write}
        if out.log is None:  # xvr's guard: the initial DRR is blank
            return failed_result(
                init, Status.INVALID_INPUT, "xvr: " + "; ".join(caught or ["no log"]), timings
            )
        history = self._history(out.log, init, geometry, t_call)
        timings["optimisation"] = float(sum(out.log.times))
        pose = self.from_xvr(out.final_pose.matrix[0].detach().cpu().double().numpy())
        n = len(out.log.losses)
        finite = bool(np.all(np.isfinite(pose))) and all(math.isfinite(v) for v in out.log.losses)
        status, why = self._outcome(finite, out.log.scales, scales)
        px = [_side(geometry, s) for s in scales]
        msg = (
            f"xvr {self.config.metric} Adam, {n} iterations at {'/'.join(str(p) for p in px)} px: {why}"
            + ("; " + "; ".join(caught) if caught else "")
        )
        return RegistrationResult(
            pose=pose if finite else init,
            covariance=np.full((6, 6), math.nan),
            cost=history[-1]["cost"],
            initial_cost=history[0]["cost"],
            iterations=n,
            status=status,
            message=msg,
            timings=timings,
            history=history,
        )

    def _outcome(self, finite: bool, log_scales, scales: list[float]) -> tuple[Status, str]:
        """Status and reason of a run: diverged (non-finite), converged (stopped by the plateaus
        before the iteration cap at the finest scale) or the iteration cap."""
        n_last = sum(1 for s in log_scales if s == scales[-1])
        if not finite:
            return Status.DIVERGED, "non-finite pose or similarity"
        if n_last < self.config.n_itrs:
            return (
                Status.CONVERGED,
                f"stopped after {self.config.max_n_plateaus} learning-rate plateaus",
            )
        return Status.MAX_ITERATIONS, "iteration cap reached"

    def _history(self, xlog, init: np.ndarray, geometry: CarmGeometry, total: float) -> list[dict]:
        """Per-iteration records for evaluate's curves.

        Record 0 is the initial pose; record ``k`` the pose after Adam step ``k``. ``cost`` is
        ``1 − similarity`` (xvr maximises the similarity) where xvr measured it at that pose, at
        the scale ``scale`` (px) it was measured; xvr never scores its final pose, so the last
        record repeats the last measured value. ``elapsed_s``: xvr's per-iteration times, with
        everything else of the call (reading, DRR set-up) placed before the first iteration.
        """
        from diffdrr.pose import convert

        losses = [float(v) for v in xlog.losses]
        n = len(losses)
        P = convert(
            xlog.rots.double(),
            xlog.xyzs.double(),
            parameterization="euler_angles",
            convention="ZXY",
        ).matrix.numpy()
        poses = [init] + list(self.from_xvr(P))
        times = np.asarray(xlog.times, dtype=float)
        setup = max(total - float(times.sum()), 0.0)
        elapsed = setup + np.concatenate([[0.0], np.cumsum(times)])
        hist = []
        for k in range(n + 1):
            j = min(k, n - 1)
            hist.append(
                {
                    "iteration": k,
                    "cost": 1.0 - losses[j],
                    "scale": _side(geometry, xlog.scales[j]),
                    "time_s": float(times[k - 1]) if k else 0.0,
                    "elapsed_s": float(elapsed[k]),
                    "pose": np.asarray(poses[k], dtype=np.float64),
                }
            )
        return hist


def _side(geometry: CarmGeometry, scale: float) -> int:
    """Image height (px) at an xvr scale (its ``rescale_detector_`` truncates)."""
    return int(geometry.height / float(scale))
