"""The methods of ``sphere-reg evaluate`` (:data:`METHODS`) and the runners that register one
case with each: the learned LM from a checkpoint (with or without the regressor and the polish),
the checkpoint ablations, the learning-free LM and its ablations, the first-order baselines on the
same similarities and the xvr peer; on a benchmark with several C-arm views (``make-benchmark --views
2``) the ``-biplane`` rows register every view of a case at once (``Registrar.register_views``),
while the other rows see the first view alone. Re-exported by :mod:`.evaluate`."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from sphere_reg_ros.core.baselines import (
    GradientRegistration,
    MultiscaleNCC,
    SimilarityCost,
)
from sphere_reg_ros.core.lm import LevenbergMarquardt
from sphere_reg_ros.core.registrar import Registrar, resolve_device
from sphere_reg_ros.core.residuals import CombinedResiduals
from sphere_reg_ros.core.result import RegistrationResult, Status
from sphere_reg_ros.core.volume import Volume
from sphere_reg_ros.evaluation.xvr_adapter import (
    INSTALL_HINT,
    XvrRegistration,
    xvr_available,
)

if TYPE_CHECKING:
    from sphere_reg_ros.evaluation.evaluate import EvaluationConfig

__all__ = ["METHODS", "build_runners", "shipped_model", "case_input", "views_only_on_views"]

log = logging.getLogger(__name__)

METHODS: dict[str, str] = {
    "ours": "LM on the learned spherical similarity (--model), from the benchmark's initial poses",
    "ours-regressor": "the full pipeline: regressor initial pose, then LM on the learned similarity",
    "regressor": "the pose regressor alone (no refinement)",
    "ours-polish": "ours, then the learning-free LM from its end at the finest scale (polish)",
    "ours-regressor-polish": "the full pipeline with the polish: regressor, learned LM, polish",
    "ours-se3": "LM on the similarity of a model trained with the se(3) regressor loss",
    "ours-so4": "LM on the similarity of a model trained with the SO(4) regressor loss",
    "euclidean": "LM on a Euclidean-embedding similarity (ablation checkpoint)",
    "hyperbolic": "LM on a hyperbolic-embedding similarity (ablation checkpoint)",
    "ours+intensity": "LM on the learned similarity plus the learning-free intensity residuals (combined)",
    "lm-intensity": "learning-free LM on normalised-intensity residuals (masks and robust kernel as configured)",
    "lm-nomask": "ablation: lm-intensity without the masks of what the CT cannot explain",
    "lm-ls": "ablation: lm-intensity with plain least squares (masks kept, no robust kernel)",
    "lm-nofit": "ablation: lm-intensity without the fitted intensity model (bone weight, curve)",
    "adam": "Adam (DiffPose lr: rot 7.5e-3, trans 7.5) on the same similarity as 'ours'",
    "gd": "gradient descent (first step = DiffPose lr) on the same similarity as 'ours'",
    "ncc-adam": "Adam (DiffPose lr) on DiffPose's multiscale NCC (learning-free)",
    "xvr": "xvr (peer tool) fixed-pose registration, its defaults: Adam on gradient-multiscale NCC",
    "lm-intensity-biplane": "lm-intensity on all views of a case at once (a benchmark with --views 2)",
    "ours-biplane": "ours on all views of a case at once (a benchmark with --views 2)",
    "ours-regressor-biplane": "ours-regressor on all views: the regressor's best view's start, "
    "then LM on all views (a benchmark with --views 2)",
}
_VIEWS_SUFFIX = "-biplane"
_CHECKPOINT_METHODS = ("ours-se3", "ours-so4", "euclidean", "hyperbolic")
_MODEL_METHODS = (
    "ours",
    "ours-regressor",
    "regressor",
    "ours+intensity",
    "ours-polish",
    "ours-regressor-polish",
)


class _Regressor:
    """The regressor alone as a 'solver': returns its pose (no refinement)."""

    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar

    def register(self, image, geometry, init_pose=None) -> RegistrationResult:
        t0 = time.perf_counter()
        res = self.registrar.register(image, geometry, None, solver=_NoSolver())
        return replace(res, timings={**res.timings, "total": time.perf_counter() - t0})


class _NoSolver:
    """Solver that keeps the initial pose (for the regressor-only row)."""

    def solve(self, renderers, fixed, init_pose, center=None):
        from sphere_reg_ros.core.lm import LMResult

        B = init_pose.shape[0]
        nan = torch.full((B,), math.nan, dtype=torch.float64)
        return LMResult(
            pose=init_pose.to(torch.float64),
            covariance=torch.full((B, 6, 6), math.nan),
            cost=nan,
            initial_cost=nan,
            iterations=torch.zeros(B, dtype=torch.long),
            status=[Status.CONVERGED] * B,
            message=["regressor only"] * B,
            history=[
                [
                    {
                        "iteration": 0,
                        "cost": math.nan,
                        "elapsed_s": 0.0,
                        "pose": init_pose[i].to(torch.float64).numpy(),
                    }
                ]
                for i in range(B)
            ],
        )


def shipped_model() -> str | None:
    """The checkpoint shipped in ``sphere_reg_ros/data`` (``core.checkpoint``'s default path,
    else ``default.pt``, else the only ``*.pt`` there), or None."""
    data = Path(__file__).resolve().parents[1] / "data"
    candidates = []
    try:
        from sphere_reg_ros.core.checkpoint import default_checkpoint_path

        candidates.append(Path(default_checkpoint_path()))
    except ImportError:
        pass
    candidates.append(data / "default.pt")
    for c in candidates:
        if c.is_file():
            return str(c)
    found = sorted(data.glob("*.pt")) if data.is_dir() else []
    return str(found[0]) if len(found) == 1 else None


def build_runners(
    methods: Sequence[str],
    ct: Volume,
    model: str | None,
    models: dict[str, str],
    config: EvaluationConfig,
    resolution: int,
) -> tuple[dict[str, Callable], dict[str, str], dict]:
    """Runners ``(image, geometry, init) -> RegistrationResult`` per available method, the reasons
    of the unavailable ones, and ``{"similarities": ..., "registrars": ...}`` for the plots."""
    b = _Builder(ct, config, resolution)
    for name in methods:
        if name in b.runners or name in b.unavailable:
            continue
        if name not in METHODS:
            b.unavailable[name] = f"unknown method (known: {', '.join(METHODS)})"
            continue
        try:
            b.add(name, model, models)
        except Exception as exc:  # a broken checkpoint makes the method unavailable, not the run
            log.warning("method %s unavailable: %s", name, exc)
            b.unavailable[name] = f"{type(exc).__name__}: {exc}"
    return b.runners, b.unavailable, {"similarities": b.sims, "registrars": b.cache}


class _Views:
    """A runner on every view of a case: ``(CaseViews, geometry, init) -> RegistrationResult``
    with ``Registrar.register_views`` (the regressor's start instead of ``init`` when asked)."""

    views = True

    def __init__(self, registrar: Registrar, from_regressor: bool) -> None:
        self.registrar, self.from_regressor = registrar, from_regressor

    def __call__(self, case: tuple[list, list], geometry, init) -> RegistrationResult:
        images, offsets = case
        start = None if self.from_regressor else init
        return self.registrar.register_views(images, [geometry] * len(images), offsets, start)


def case_input(benchmark, run: Callable, i: int):
    """What ``run`` registers of case ``i``: the first view's image, or for a ``-biplane`` runner
    ``(images, offsets)`` of every view."""
    if getattr(run, "views", False):
        return benchmark.case_views(i), benchmark.view_offsets()
    return benchmark.images[i]


def views_only_on_views(runners: dict, unavailable: dict[str, str], n_views: int) -> None:
    """Move the ``-biplane`` runners to ``unavailable`` when the benchmark has one view."""
    if n_views > 1:
        return
    for name in [k for k, run in runners.items() if getattr(run, "views", False)]:
        del runners[name]
        unavailable[name] = "needs a benchmark with several views (make-benchmark --views 2)"


def _with_solver(reg: Registrar, solver) -> Callable:
    """``reg.register`` with another solver."""
    return lambda img, g, init: reg.register(img, g, init, solver=solver)


class _Builder:
    """The runners of one evaluation, with the registrars they share (one learning-free, one per
    checkpoint and polish setting)."""

    def __init__(self, ct: Volume, config: EvaluationConfig, resolution: int) -> None:
        self.ct, self.config, self.resolution = ct, config, resolution
        self.runners: dict[str, Callable] = {}
        self.unavailable: dict[str, str] = {}
        self.sims: dict[str, object] = {}
        self.rcfg = replace(config.registrar, resolution=resolution)
        self.lcfg = replace(config.learning_free, resolution=resolution)
        self.cache: dict[str, Registrar] = {}

    def learning_free(self) -> Registrar:
        if "free" not in self.cache:
            self.cache["free"] = Registrar(
                self.ct, config=self.lcfg, spacing_mm=self.config.spacing_mm
            )
        return self.cache["free"]

    def learned(self, name: str, path: str) -> Registrar:
        polish = name.endswith("-polish")
        key = f"{path} (polish)" if polish else path
        if key not in self.cache:  # refuses a checkpoint made for another CT
            spacing = self.config.spacing_mm
            reg = Registrar.from_checkpoint(
                self.ct, path, replace(self.rcfg, polish=polish), default_spacing_mm=spacing
            )
            if reg.spacing_mm != spacing:
                log.warning(
                    "%s: rendering the CT at %g mm, the spacing the model was trained with",
                    path,
                    reg.spacing_mm,
                )
            self.cache[key] = reg
        return self.cache[key]

    def add(self, name: str, model: str | None, models: dict[str, str]) -> None:
        """The runner of the known method ``name`` (or its reason in ``unavailable``)."""
        if name.endswith(_VIEWS_SUFFIX):
            self._add_views(name, model)
        elif name in _MODEL_METHODS or name in _CHECKPOINT_METHODS:
            self._add_learned(name, model, models)
        elif name == "lm-intensity":
            reg = self.learning_free()
            self.runners[name] = reg.register
            self.sims["intensity"] = reg.similarity
        elif name in ("lm-nomask", "lm-ls", "lm-nofit"):
            variant = {
                "lm-nomask": replace(self.lcfg, masking=False),
                "lm-ls": replace(self.lcfg, robust="none"),
                "lm-nofit": replace(self.lcfg, intensity_fit="none"),
            }[name]
            self.runners[name] = Registrar(
                self.ct, config=variant, spacing_mm=self.config.spacing_mm
            ).register
        elif name in ("adam", "gd"):
            reg = self.learned("ours", model) if model else self.learning_free()
            gcfg = replace(self.config.gradient, optimizer=name)
            solver = GradientRegistration(SimilarityCost(reg.similarity), gcfg)
            self.runners[name] = _with_solver(reg, solver)
        elif name == "ncc-adam":
            reg = self.learning_free()
            solver = GradientRegistration(
                MultiscaleNCC(), replace(self.config.gradient, optimizer="adam")
            )
            self.runners[name] = _with_solver(reg, solver)
            self.sims["mNCC"] = MultiscaleNCC()
        elif name == "xvr":
            self._add_xvr(name)

    def _add_learned(self, name: str, model: str | None, models: dict[str, str]) -> None:
        """A method on a checkpoint's networks: ``--model`` or the ablation's own checkpoint."""
        path = model if name in _MODEL_METHODS else models.get(name)
        if not path:
            self.unavailable[name] = (
                "needs --model (a checkpoint)"
                if name in _MODEL_METHODS
                else f"needs a checkpoint for it (--models {name}=PATH)"
            )
            return
        reg = self.learned(name, path)
        if name == "ours+intensity":
            free = self.learning_free().similarity
            combo = CombinedResiduals([reg.similarity, free], [1.0, self.config.intensity_weight])
            solver = LevenbergMarquardt(combo, reg.config.lm_config(learned=True))
            self.runners[name] = _with_solver(reg, solver)
        elif name == "regressor":
            self.runners[name] = _Regressor(reg).register
        elif name in ("ours-regressor", "ours-regressor-polish"):
            self.runners[name] = (lambda r: lambda img, g, init: r.register(img, g, None))(reg)
        else:
            self.runners[name] = reg.register
            self.sims[name] = reg.similarity

    def _add_views(self, name: str, model: str | None) -> None:
        """``lm-intensity``, ``ours`` or ``ours-regressor`` on every view of a case."""
        base = name[: -len(_VIEWS_SUFFIX)]
        if base == "lm-intensity":
            self.runners[name] = _Views(self.learning_free(), from_regressor=False)
            return
        if not model:
            self.unavailable[name] = "needs --model (a checkpoint)"
            return
        reg = self.learned(base, model)  # every checkpoint holds a regressor
        self.runners[name] = _Views(reg, from_regressor=base == "ours-regressor")

    def _add_xvr(self, name: str) -> None:
        if not xvr_available():
            self.unavailable[name] = f"xvr is not installed ({INSTALL_HINT})"
            return
        device = str(resolve_device(self.config.registrar.device))
        xcfg = replace(self.config.xvr, device=device)
        self.runners[name] = XvrRegistration(
            self.ct, xcfg, resolution=self.resolution, spacing_mm=self.config.spacing_mm
        ).register
