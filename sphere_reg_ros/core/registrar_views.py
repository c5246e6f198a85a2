"""The registrar's detectors and DRRs (methods of :class:`~.registrar.Registrar`): the
registration geometry of a detector and its coarse-to-fine scales, the cache of DRR renderers per
geometry, the default start (the AP view) and :meth:`RegistrarViews.render`.

:class:`RegistrarViews` is a mixin: it uses the registrar's ``config``, ``similarity``,
``device``, ``center_world`` and the rendered CT (``_mu``, ``_affine``, ``_channels``)."""

from __future__ import annotations

import numpy as np
import torch

from .carm import CarmGeometry
from .drr import DrrRenderer
from .lm import resize_images
from .registrar_inputs import _check_pose
from .views import ap_pose

__all__ = ["RegistrarViews"]

#: renderers kept per registrar (one per detector geometry and scale); the oldest goes first
_MAX_RENDERERS = 12


class RegistrarViews:
    """Geometry, renderer cache and rendering of :class:`~.registrar.Registrar` (see the module)."""

    @property
    def _multiple(self) -> int:
        """Image sizes must be multiples of this (the similarity network's downsampling)."""
        cfg = getattr(self.similarity, "config", None)
        return int(getattr(cfg, "downsample", 1) or 1)

    def registration_geometry(self, geometry: CarmGeometry) -> CarmGeometry:
        """``geometry`` resized to the registration resolution (same field of view)."""
        m = self._multiple
        h = max(m, int(round(self.config.resolution / m)) * m)
        w = max(m, int(round(self.config.resolution * geometry.width / geometry.height / m)) * m)
        return geometry.resized(h, w)

    def scale_geometries(self, geometry: CarmGeometry) -> list[CarmGeometry]:
        """Coarse-to-fine geometries for a registration geometry (sizes multiples of the model's)."""
        m, out = self._multiple, []
        for s in self.config.scales:
            h = max(m, int(round(geometry.height * s / m)) * m)
            w = max(m, int(round(geometry.width * s / m)) * m)
            g = geometry.resized(h, w)
            if not out or out[-1] != g:
                out.append(g)
        return out

    def _view_inputs(
        self, arrays: list[np.ndarray], geometry: CarmGeometry, fine_only: bool
    ) -> tuple[CarmGeometry, torch.Tensor, torch.Tensor, list[DrrRenderer]]:
        """One view's checked images ``(H, W)`` of ``geometry`` made ready for the solver:
        ``(registration geometry, images (n, 1, H, W) on the device, images at the registration
        size, renderers coarse to fine (the finest only with ``fine_only``))``."""
        reg_geometry = self.registration_geometry(geometry)
        full = torch.from_numpy(np.stack(arrays))[:, None].to(self.device)
        fixed = resize_images(full, reg_geometry.height, reg_geometry.width)
        scales = self.scale_geometries(reg_geometry)
        renderers = [self.renderer(g) for g in (scales[-1:] if fine_only else scales)]
        return reg_geometry, full, fixed, renderers

    def renderer(self, geometry: CarmGeometry) -> DrrRenderer:
        """The (cached) DRR renderer of ``geometry``."""
        r = self._renderers.get(geometry)
        if r is None:
            if len(self._renderers) >= _MAX_RENDERERS:
                self._renderers.pop(next(iter(self._renderers)))
            # the bone's DRR only where the residuals fit it (see IntensityResiduals.fit_min_height)
            fits = geometry.height >= getattr(self.similarity, "fit_min_height", 0)
            r = DrrRenderer(
                self._mu,
                self._affine,
                geometry,
                step_mm=self.config.ray_step_mm,
                channels=self._channels if fits else None,
            ).to(self.device)
            self._renderers[geometry] = r
        return r

    def default_pose(self) -> np.ndarray:
        """The AP view aimed at the CT's centre (``views.ap_pose``), (4, 4)."""
        return ap_pose(self.center_world)[0].numpy()

    def render(self, pose: np.ndarray, geometry: CarmGeometry) -> np.ndarray:
        """DRR ``(H, W)`` float32 (line integrals) of the CT at ``pose`` (4, 4) on ``geometry``.

        Rendered at most ``config.render_max_size`` pixels per side and resized to ``(H, W)``.
        Raises ValueError for a bad pose or geometry.
        """
        T = _check_pose(pose)
        if not isinstance(geometry, CarmGeometry):
            raise ValueError(f"geometry must be a CarmGeometry, got {type(geometry).__name__}")
        side = max(geometry.height, geometry.width)
        g = geometry
        if side > self.config.render_max_size:
            f = self.config.render_max_size / side
            g = geometry.resized(
                max(1, round(geometry.height * f)), max(1, round(geometry.width * f))
            )
        r = self.renderer(g)
        with torch.no_grad():
            img = r(torch.as_tensor(T, dtype=r.dtype, device=self.device)[None])
            img = resize_images(img, geometry.height, geometry.width)
        return img[0, 0].cpu().numpy().astype(np.float32)
