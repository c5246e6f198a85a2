"""A stack of residual models for the LM solver (:class:`CombinedResiduals`), e.g. a learned
similarity plus the learning-free intensity residuals of :mod:`.residuals`. Re-exported by
:mod:`.residuals`."""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["CombinedResiduals"]


class CombinedResiduals(torch.nn.Module):
    """Several residual models stacked: ``R = [√w₁ R₁, √w₂ R₂, ...]``, cost ``Σ wᵢ ½|Rᵢ|²``.

    E.g. a learned similarity (wide basin, robust to the physics gap) plus the learning-free
    intensity residuals (pixel-level precision). ``embed`` returns the flattened embeddings
    concatenated ``(B, N₁ + N₂ + ...)`` (one tensor, as the solver expects); ``residuals`` splits
    them again (the split sizes are found per image size with one probe).
    """

    def __init__(self, models: Sequence[torch.nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if (
            len(models) < 1
            or len(models) != len(weights)
            or not all(math.isfinite(w) and w >= 0 for w in weights)
        ):
            raise ValueError("need one finite weight >= 0 per model")
        self.models = torch.nn.ModuleList(models)
        self.weights = [float(w) for w in weights]
        self._shapes: dict[tuple[int, int], list[tuple[int, ...]]] = {}
        #: DRR channels the stack compares (each model gets the first ones it takes)
        self.drr_channels = max(getattr(m, "drr_channels", 1) for m in models)
        cfgs = [getattr(m, "config", None) for m in models]
        self.config = next((c for c in cfgs if c is not None and hasattr(c, "downsample")), None)

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        embs = []
        for m in self.models:
            x = images[:, : getattr(m, "drr_channels", 1)]
            embs.append(m.embed(x) if mask is None else m.embed(x, mask=mask))
        self._shapes[tuple(images.shape[-2:])] = [tuple(e.shape[1:]) for e in embs]
        return torch.cat([e.flatten(1) for e in embs], dim=1)

    def _split(self, emb: torch.Tensor) -> list[torch.Tensor]:
        n = emb.shape[1]
        for shapes in self._shapes.values():
            sizes = [math.prod(s) for s in shapes]
            if sum(sizes) == n:
                return [
                    p.reshape(emb.shape[0], *s) for p, s in zip(emb.split(sizes, dim=1), shapes)
                ]
        raise ValueError(f"embedding of width {n} matches no image size embedded so far")

    def residuals(self, emb_moving: torch.Tensor, emb_fixed: torch.Tensor) -> torch.Tensor:
        parts = [
            m.residuals(a, b) * math.sqrt(w)
            for m, a, b, w in zip(
                self.models, self._split(emb_moving), self._split(emb_fixed), self.weights
            )
        ]
        return torch.cat(parts, dim=1)

    def similarity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        r = self.residuals(self.embed(moving), self.embed(fixed))
        return 0.5 * r.square().sum(-1)

    def residual_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Mask weights ``(B, M)`` of the stacked residuals (each model's own layout)."""
        return torch.cat([m.residual_weights(mask) for m in self.models], dim=1)
