"""Benchmark evaluation: every method in one process on the same cases (docs/ARCHITECTURE.md, Evaluation protocol).

Each method registers every case of a benchmark file from the same initial pose (the
benchmark's ``poses_init``; the regressor rows start from the regressor instead), one case at
a time so that the run time is per case. Scores: mTRE (mm, 3-D, on the benchmark's landmarks),
SMSR (mTRE < 1 mm), percentiles and mean run time in the seed's Table 1 layout
(:func:`~sphere_reg_ros.core.metrics.format_table`). A failed case (diverged, singular, invalid
input, or a non-finite pose) counts with mTRE = inf and is never dropped; a registration a quality
gate rejected is scored by its pose (the accuracy table measures the method's estimate). The trust
table (:func:`trust_table`, docs/TRUST.md) says which of them the gates would let through. An
unknown or unavailable method is listed with the reason.

Methods (:data:`METHODS`):

* ``ours``: LM on the learned similarity of ``--model``; ``ours-regressor``: the full pipeline
  (regressor initial pose, then LM); ``regressor``: the regressor alone;
* ``ours-se3``, ``ours-so4``, ``euclidean``, ``hyperbolic``: LM on the similarity of the
  checkpoint named for that method (``models={"euclidean": path, ...}``: the ablations);
* ``lm-intensity``: learning-free LM (normalised-intensity residuals, :mod:`~sphere_reg_ros.core.residuals`);
  ``lm-nomask`` / ``lm-ls`` / ``lm-nofit``: the same without masks / without the robust kernel /
  without the fitted intensity model (ablation rows);
* ``adam`` / ``gd``: Adam / gradient descent with DiffPose's learning rates on the same
  similarity as ``ours`` (the learning-free residuals when no model is given);
* ``ncc-adam``: Adam on DiffPose's multiscale NCC (learning-free);
* ``xvr``: the peer tool xvr's fixed-pose registration from the same initial poses
  (:mod:`.xvr_adapter`; its defaults, working up to the same resolution); listed unavailable with
  the install hint when its package (``pip install .[peers]``) is missing.

Besides the table: "iterations / time to final accuracy" per method (the first iteration after
which a case's mTRE stays within ``max(0.1 mm, 10 %)`` of its final value; median over cases),
a per-case CSV and the plots of :mod:`.plots`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from sphere_reg_ros.core.baselines import (
    GradientConfig,
    GradientRegistration,
    MultiscaleNCC,
    SimilarityCost,
)
from sphere_reg_ros.core.lm import LevenbergMarquardt
from sphere_reg_ros.core.metrics import (
    CSV_FIELDS,
    Summary,
    format_table,
    mtre,
    summarize,
    to_csv_rows,
)
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig, resolve_device
from sphere_reg_ros.core.residuals import CombinedResiduals
from sphere_reg_ros.core.result import CHI2_3_95, RegistrationResult, Status, point_error
from sphere_reg_ros.core.trust import rejection_key
from sphere_reg_ros.core.volume import Volume
from sphere_reg_ros.evaluation.xvr_adapter import (
    INSTALL_HINT,
    XvrConfig,
    XvrRegistration,
    xvr_available,
)

__all__ = [
    "METHODS",
    "EvaluationConfig",
    "MethodRun",
    "EvaluationReport",
    "evaluate",
    "convergence_point",
    "write_csvs",
    "shipped_model",
]

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
}
_CHECKPOINT_METHODS = ("ours-se3", "ours-so4", "euclidean", "hyperbolic")
_MODEL_METHODS = (
    "ours",
    "ours-regressor",
    "regressor",
    "ours+intensity",
    "ours-polish",
    "ours-regressor-polish",
)


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings shared by all methods.

    Attributes:
        registrar: LM / resolution settings (``resolution`` is replaced by the benchmark's).
        learning_free: settings of the learning-free LM (``lm-intensity``).
        gradient: Adam / GD settings (iterations per scale etc.).
        spacing_mm: CT voxel size for rendering.
        cases: evaluate the first N cases only (None: all).
        threshold_mm: SMSR threshold.
        landscape: draw the similarity landscape (costs extra renders).
        warmup: run each method once on case 0 before timing (one-time set-up costs excluded).
        intensity_weight: weight of the intensity residuals in ``ours+intensity``.
        xvr: settings of the ``xvr`` peer (its device follows ``registrar.device``).
        start: ``"init"`` (the benchmark's initial poses) or ``"truth"``: every method starts at
            the true pose, and the mTRE is its drift -- large drift means the cost's minimum is not
            at the truth (a physics gap the residuals do not absorb), which no optimiser can fix.
    """

    registrar: RegistrarConfig = RegistrarConfig()
    learning_free: RegistrarConfig = RegistrarConfig(residuals="intensity+gradient")
    gradient: GradientConfig = GradientConfig()
    spacing_mm: float = 2.0
    cases: int | None = None
    threshold_mm: float = 1.0
    landscape: bool = True
    warmup: bool = True
    intensity_weight: float = 5.0
    xvr: XvrConfig = XvrConfig()
    start: str = "init"

    def __post_init__(self) -> None:
        if self.start not in ("init", "truth"):
            raise ValueError(f"start must be 'init' or 'truth', got {self.start!r}")


@dataclass
class MethodRun:
    """One method's results on the evaluated cases."""

    name: str
    description: str
    results: list[RegistrationResult]
    mtre_mm: np.ndarray  # (N,), inf for failures
    run_time_s: np.ndarray  # (N,)
    curves: list[dict[str, np.ndarray]]  # per case: iteration, elapsed_s, cost, mtre_mm
    summary: Summary
    iterations_to_final: np.ndarray  # (N,)
    time_to_final_s: np.ndarray  # (N,)


@dataclass
class EvaluationReport:
    runs: dict[str, MethodRun]
    unavailable: dict[str, str]
    table: str
    extra_table: str
    files: list[Path] = field(default_factory=list)
    trust_table: str = ""
    trust: dict = field(default_factory=dict)  # trust_points()

    def text(self) -> str:
        lines = [self.table, "", self.extra_table] + (
            ["", self.trust_table] if self.trust_table else []
        )
        if self.unavailable:
            lines += ["", "Unavailable methods:"] + [
                f"  {k}: {v}" for k, v in self.unavailable.items()
            ]
        return "\n".join(lines)


def convergence_point(
    mtres: np.ndarray,
    elapsed: np.ndarray,
    iterations: np.ndarray,
    rel: float = 0.1,
    abs_mm: float = 0.1,
) -> tuple[float, float]:
    """``(iteration, elapsed_s)`` of the first record after which the mTRE stays within
    ``max(abs_mm, rel · final)`` of its final value; ``(nan, nan)`` for an empty curve."""
    if len(mtres) == 0:
        return math.nan, math.nan
    final = mtres[-1]
    if not math.isfinite(final):
        return float(iterations[-1]), float(elapsed[-1])
    tol = max(abs_mm, rel * abs(final))
    outside = np.nonzero(~(np.abs(mtres - final) <= tol))[0]
    k = 0 if not len(outside) else min(int(outside[-1]) + 1, len(mtres) - 1)
    return float(iterations[k]), float(elapsed[k])


def _scored(result: RegistrationResult) -> bool:
    """Whether a result carries the method's pose: the solver ended normally (converged, no
    progress, iteration cap) or a gate rejected it (the accuracy table scores the pose; the trust
    table says whether it would have been published)."""
    return (result.status.usable or result.status is Status.REJECTED) and bool(
        np.all(np.isfinite(result.pose))
    )


def _score(result: RegistrationResult, true: np.ndarray, landmarks: torch.Tensor) -> float:
    if not _scored(result):
        return math.inf
    return float(
        mtre(torch.as_tensor(result.pose)[None], torch.as_tensor(true)[None], landmarks)[0]
    )


def _curve(
    result: RegistrationResult, true: np.ndarray, landmarks: torch.Tensor, final_mtre: float
) -> dict:
    hist = [h for h in result.history if "pose" in h]
    if not hist:
        return {k: np.zeros(0) for k in ("iteration", "elapsed_s", "cost", "mtre_mm", "scale")}
    poses = torch.as_tensor(np.stack([h["pose"] for h in hist]))
    m = mtre(poses, torch.as_tensor(true)[None].expand_as(poses), landmarks).numpy()
    it = np.array([h["iteration"] for h in hist], dtype=float)
    el = np.array([h.get("elapsed_s", 0.0) for h in hist], dtype=float)
    cost = np.array([h["cost"] for h in hist], dtype=float)
    scale = np.array([h.get("scale", 0) for h in hist], dtype=float)
    if not math.isfinite(final_mtre):  # a failed case ends at inf in the curve too
        m = np.append(m, math.inf)
        it, el, cost, scale = (np.append(a, a[-1]) for a in (it, el, cost, scale))
    return {"iteration": it, "elapsed_s": el, "cost": cost, "mtre_mm": m, "scale": scale}


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


def _build(
    methods: Sequence[str],
    ct: Volume,
    model: str | None,
    models: dict[str, str],
    config: EvaluationConfig,
    resolution: int,
) -> tuple[dict[str, Callable], dict[str, str], dict]:
    """Runners ``(image, geometry, init) -> RegistrationResult`` per available method."""
    runners: dict[str, Callable] = {}
    unavailable: dict[str, str] = {}
    sims: dict[str, object] = {}
    rcfg = replace(config.registrar, resolution=resolution)
    lcfg = replace(config.learning_free, resolution=resolution)
    cache: dict[str, Registrar] = {}

    def learning_free() -> Registrar:
        if "free" not in cache:
            cache["free"] = Registrar(ct, config=lcfg, spacing_mm=config.spacing_mm)
        return cache["free"]

    def learned(name: str, path: str) -> Registrar:
        polish = name.endswith("-polish")
        key = f"{path} (polish)" if polish else path
        if key not in cache:  # refuses a checkpoint made for another CT
            reg = Registrar.from_checkpoint(
                ct, path, replace(rcfg, polish=polish), default_spacing_mm=config.spacing_mm
            )
            if reg.spacing_mm != config.spacing_mm:
                log.warning(
                    "%s: rendering the CT at %g mm, the spacing the model was trained with",
                    path,
                    reg.spacing_mm,
                )
            cache[key] = reg
        return cache[key]

    for name in methods:
        if name in runners or name in unavailable:
            continue
        if name not in METHODS:
            unavailable[name] = f"unknown method (known: {', '.join(METHODS)})"
            continue
        try:
            if name in _MODEL_METHODS or name in _CHECKPOINT_METHODS:
                path = model if name in _MODEL_METHODS else models.get(name)
                if not path:
                    unavailable[name] = (
                        "needs --model (a checkpoint)"
                        if name in _MODEL_METHODS
                        else f"needs a checkpoint for it (--models {name}=PATH)"
                    )
                    continue
                reg = learned(name, path)
                if name == "ours+intensity":
                    free = learning_free().similarity
                    combo = CombinedResiduals(
                        [reg.similarity, free], [1.0, config.intensity_weight]
                    )
                    solver = LevenbergMarquardt(combo, reg.config.lm_config(learned=True))
                    runners[name] = (
                        lambda r, s: lambda img, g, init: r.register(img, g, init, solver=s)
                    )(reg, solver)
                elif name == "regressor":
                    runners[name] = _Regressor(reg).register
                elif name in ("ours-regressor", "ours-regressor-polish"):
                    runners[name] = (lambda r: lambda img, g, init: r.register(img, g, None))(reg)
                else:
                    runners[name] = reg.register
                    sims[name] = reg.similarity
            elif name == "lm-intensity":
                reg = learning_free()
                runners[name] = reg.register
                sims["intensity"] = reg.similarity
            elif name in ("lm-nomask", "lm-ls", "lm-nofit"):
                variant = {
                    "lm-nomask": replace(lcfg, masking=False),
                    "lm-ls": replace(lcfg, robust="none"),
                    "lm-nofit": replace(lcfg, intensity_fit="none"),
                }[name]
                runners[name] = Registrar(ct, config=variant, spacing_mm=config.spacing_mm).register
            elif name in ("adam", "gd"):
                reg = learned("ours", model) if model else learning_free()
                gcfg = replace(config.gradient, optimizer=name)
                solver = GradientRegistration(SimilarityCost(reg.similarity), gcfg)
                runners[name] = (
                    lambda r, s: lambda img, g, init: r.register(img, g, init, solver=s)
                )(reg, solver)
            elif name == "ncc-adam":
                reg = learning_free()
                solver = GradientRegistration(
                    MultiscaleNCC(), replace(config.gradient, optimizer="adam")
                )
                runners[name] = (
                    lambda r, s: lambda img, g, init: r.register(img, g, init, solver=s)
                )(reg, solver)
                sims["mNCC"] = MultiscaleNCC()
            elif name == "xvr":
                if not xvr_available():
                    unavailable[name] = f"xvr is not installed ({INSTALL_HINT})"
                else:
                    device = str(resolve_device(config.registrar.device))
                    xcfg = replace(config.xvr, device=device)
                    runners[name] = XvrRegistration(
                        ct, xcfg, resolution=resolution, spacing_mm=config.spacing_mm
                    ).register
        except Exception as exc:  # a broken checkpoint makes the method unavailable, not the run
            log.warning("method %s unavailable: %s", name, exc)
            unavailable[name] = f"{type(exc).__name__}: {exc}"
    return runners, unavailable, {"similarities": sims, "registrars": cache}


def evaluate(
    benchmark,
    ct: Volume,
    methods: Sequence[str],
    model: str | None = None,
    models: dict[str, str] | None = None,
    config: EvaluationConfig = EvaluationConfig(),
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Run ``methods`` on the benchmark's cases; print nothing, return the report (and write the
    CSVs and plots to ``out_dir`` when given)."""
    n = benchmark.n_cases if config.cases is None else min(int(config.cases), benchmark.n_cases)
    if n < 1:
        raise ValueError("no cases to evaluate")
    runners, unavailable, extra = _build(
        list(methods), ct, model, dict(models or {}), config, benchmark.resolution
    )
    landmarks = torch.as_tensor(benchmark.landmarks, dtype=torch.float64)
    starts = benchmark.poses_true if config.start == "truth" else benchmark.poses_init
    geometry = benchmark.render_geometry
    runs: dict[str, MethodRun] = {}
    total = n * len(runners)
    bar = tqdm(total=total, desc="evaluate", unit="case", disable=not progress)
    for name, run in runners.items():
        if (
            config.warmup
        ):  # one untimed registration: one-time costs (vmap/AD set-up, caches) excluded
            bar.set_postfix_str(f"{name} warm-up")
            run(benchmark.images[0], geometry, starts[0])
        results, m, t, curves = [], [], [], []
        for i in range(n):
            bar.set_postfix_str(f"{name} case {i}")
            res = run(benchmark.images[i], geometry, starts[i])
            e = _score(res, benchmark.poses_true[i], landmarks)
            results.append(res)
            m.append(e)
            t.append(float(res.timings.get("total", math.nan)))
            curves.append(_curve(res, benchmark.poses_true[i], landmarks, e))
            bar.update(1)
        t_arr = np.nan_to_num(np.asarray(t), nan=0.0)
        conv = [convergence_point(c["mtre_mm"], c["elapsed_s"], c["iteration"]) for c in curves]
        runs[name] = MethodRun(
            name=name,
            description=METHODS[name],
            results=results,
            mtre_mm=np.asarray(m),
            run_time_s=t_arr,
            curves=curves,
            summary=summarize(np.asarray(m), t_arr, config.threshold_mm),
            iterations_to_final=np.array([c[0] for c in conv]),
            time_to_final_s=np.array([c[1] for c in conv]),
        )
    bar.close()
    from .benchmark import benchmark_checksum

    family = benchmark.config.get("family", "") if isinstance(benchmark.config, dict) else ""
    title = (
        f"Benchmark {benchmark.ct_source} ({benchmark.split}, seed {benchmark.seed}"
        f"{', family ' + family if family else ''}, checksum {benchmark_checksum(benchmark)}): {n} cases, "
        f"{benchmark.resolution}x{benchmark.resolution} px, "
        + (
            "every method started AT THE TRUE POSE (mTRE = drift from the truth)"
            if config.start == "truth"
            else f"initial mTRE median {float(np.median(benchmark.initial_mtre_mm[:n])):.1f} mm"
        )
    )
    table = (
        format_table({k: r.summary for k, r in runs.items()}, title=title)
        if runs
        else "(no method ran)"
    )
    trust = trust_points(runs, benchmark.poses_true[:n])
    report = EvaluationReport(
        runs=runs,
        unavailable=unavailable,
        table=table,
        extra_table=_extra_table(runs),
        trust_table=trust_table(trust),
        trust=trust,
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.files += write_csvs(report, out, benchmark.initial_mtre_mm[:n])
        from . import plots

        report.files += plots.convergence(runs, out / "convergence.png")
        report.files += plots.reliability(trust, out / "reliability.png")
        if config.landscape and extra["registrars"]:
            try:
                report.files += plots.landscape_for_benchmark(
                    benchmark, extra, out / "landscape.png"
                )
            except Exception as exc:  # a plot must not lose the table
                log.warning("landscape plot failed: %s", exc)
        (out / "table.txt").write_text(report.text() + "\n")
        report.files.append(out / "table.txt")
    return report


def trust_points(
    runs: dict[str, MethodRun], poses_true: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Per method and case: ``passed`` (may be published), ``mtre_mm``, ``actual_mm`` (the true
    error's length at the region of interest), ``predicted_mm`` (95 % radius along the predicted
    error's worst axis) and ``inside`` (the true error inside the 95 % ellipsoid; False without a
    covariance)."""
    out = {}
    for name, r in runs.items():
        rows = {
            k: []
            for k in ("passed", "mtre_mm", "actual_mm", "predicted_mm", "inside", "mahalanobis2")
        }
        for res, true, m in zip(r.results, poses_true, r.mtre_mm):
            C = res.roi_covariance
            if _scored(res):
                e = point_error(res.pose, true, res.roi_mm)
            else:
                e = np.full(3, math.inf)
            finite = bool(np.all(np.isfinite(C)) and np.all(np.isfinite(e)))
            d2 = math.inf
            if finite:
                try:
                    d2 = float(e @ np.linalg.solve(C, e))
                except np.linalg.LinAlgError:
                    d2 = math.inf
            inside = d2 <= CHI2_3_95
            rows["passed"].append(bool(res.ok))
            rows["mtre_mm"].append(float(m))
            rows["actual_mm"].append(float(np.linalg.norm(e)))
            rows["predicted_mm"].append(math.sqrt(CHI2_3_95) * res.position_std_mm)
            rows["inside"].append(inside)
            rows["mahalanobis2"].append(d2)
        out[name] = {k: np.asarray(v) for k, v in rows.items()}
    return out


def trust_table(points: dict[str, dict[str, np.ndarray]]) -> str:
    """The trust table: per method, the share of failures (mTRE > 2 mm) flagged, of good
    registrations (mTRE < 1 mm) passed, and the 95 % ellipsoid's coverage of the true error at the
    region of interest over the passed cases (and over every case with a pose)."""
    if not points:
        return ""
    head = (
        "Method",
        "Failed flagged",
        "Good passed",
        "Passed",
        "Coverage (passed)",
        "Coverage (all)",
    )
    rows = []

    def share(sel: np.ndarray, of: np.ndarray) -> str:
        return (
            "n/a (0 cases)"
            if not of.any()
            else f"{100 * sel[of].mean():.1f} % ({int(sel[of].sum())}/{int(of.sum())})"
        )

    for name, p in points.items():
        bad, good, passed = p["mtre_mm"] > 2.0, p["mtre_mm"] < 1.0, p["passed"]
        posed = np.isfinite(p["actual_mm"])
        rows.append(
            (
                name,
                share(~passed, bad),
                share(passed, good),
                share(passed, np.ones_like(passed)),
                share(p["inside"], passed),
                share(p["inside"], posed),
            )
        )
    w = [max(len(x[i]) for x in (head, *rows)) for i in range(len(head))]

    def fmt(cells):
        return (
            "| "
            + " | ".join(c.ljust(w[0]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(cells))
            + " |"
        )

    rule = "|" + "|".join([":" + "-" * (w[0] + 1)] + ["-" * (x + 1) + ":" for x in w[1:]]) + "|"
    return "\n".join(
        [
            "Trust: failures (mTRE > 2 mm) flagged, good registrations (mTRE < 1 mm) passed by the "
            "quality gates; coverage = share whose true error at the region of interest lies inside "
            "the 95 % ellipsoid",
            "",
            fmt(head),
            rule,
        ]
        + [fmt(r) for r in rows]
    )


def _extra_table(runs: dict[str, MethodRun]) -> str:
    if not runs:
        return ""
    head = ("Method", "Iterations", "It. to final", "Time to final", "Run time", "Failed")
    rows = []
    for name, r in runs.items():
        its = np.array([res.iterations for res in r.results], dtype=float)
        failed = int(np.sum(~np.isfinite(r.mtre_mm)))
        rows.append(
            (
                name,
                f"{np.median(its):.0f}",
                f"{np.nanmedian(r.iterations_to_final):.0f}",
                f"{np.nanmedian(r.time_to_final_s):.1f} s",
                f"{np.median(r.run_time_s):.1f} s",
                f"{failed}/{len(r.results)}",
            )
        )
    ratios = []
    for lm_name in ("ours", "ours-se3", "ours-so4", "euclidean", "hyperbolic", "lm-intensity"):
        if lm_name in runs and "adam" in runs:
            a, b = runs["adam"], runs[lm_name]
            it_a, it_b = np.nanmedian(a.iterations_to_final), np.nanmedian(b.iterations_to_final)
            t_a, t_b = np.nanmedian(a.time_to_final_s), np.nanmedian(b.time_to_final_s)
            ratios.append(
                f"{lm_name} vs adam: {it_a / max(it_b, 1e-9):.1f}x fewer iterations and "
                f"{t_a / max(t_b, 1e-9):.1f}x less time to final accuracy (medians)"
            )
    w = [max(len(x[i]) for x in (head, *rows)) for i in range(len(head))]

    def fmt(cells):
        return (
            "| "
            + " | ".join(c.ljust(w[0]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(cells))
            + " |"
        )

    rule = "|" + "|".join([":" + "-" * (w[0] + 1)] + ["-" * (x + 1) + ":" for x in w[1:]]) + "|"
    return "\n".join(
        [
            "Medians over cases (iterations to final accuracy: mTRE within max(0.1 mm, 10 %) of "
            "its final value from there on)",
            "",
            fmt(head),
            rule,
        ]
        + [fmt(r) for r in rows]
        + ([""] + ratios if ratios else [])
    )


def write_csvs(report: EvaluationReport, out: Path, initial_mtre: np.ndarray) -> list[Path]:
    """``summary.csv`` (one row per method, unavailable ones with their reason), ``cases.csv`` and
    ``curves.json`` (per method, per case: iteration, elapsed_s, cost, mtre_mm, scale (px); null = inf)."""
    summary_path, cases_path = out / "summary.csv", out / "cases.csv"
    fields = list(CSV_FIELDS) + [
        "iterations_median",
        "iterations_to_final_median",
        "time_to_final_s_median",
        "failed",
        "note",
    ]
    with open(summary_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for row, (name, r) in zip(
            to_csv_rows({k: v.summary for k, v in report.runs.items()}), report.runs.items()
        ):
            its = [res.iterations for res in r.results]
            w.writerow(
                {
                    **row,
                    "iterations_median": float(np.median(its)),
                    "iterations_to_final_median": float(np.nanmedian(r.iterations_to_final)),
                    "time_to_final_s_median": float(np.nanmedian(r.time_to_final_s)),
                    "failed": int(np.sum(~np.isfinite(r.mtre_mm))),
                    "note": r.description,
                }
            )
        for name, reason in report.unavailable.items():
            w.writerow({"method": name, "n": 0, "note": f"unavailable: {reason}"})
    with open(cases_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "method",
                "case",
                "initial_mtre_mm",
                "mtre_mm",
                "run_time_s",
                "iterations",
                "status",
                "cost",
                "normalised_cost",
                "position_std_mm",
                "masked_fraction",
                "consistency_mm",
                "passed",
                "rejected_by",
                "roi_error_mm",
                "mahalanobis2",
                "message",
            ]
        )
        for name, r in report.runs.items():
            p = report.trust.get(name, {})
            for i, res in enumerate(r.results):
                w.writerow(
                    [
                        name,
                        i,
                        float(initial_mtre[i]),
                        r.mtre_mm[i],
                        r.run_time_s[i],
                        res.iterations,
                        res.status.value,
                        res.cost,
                        res.normalised_cost,
                        res.position_std_mm,
                        res.masked_fraction,
                        res.consistency_mm,
                        int(res.ok),
                        rejection_key(res),
                        p["actual_mm"][i] if p else math.nan,
                        p["mahalanobis2"][i] if p else math.nan,
                        res.message,
                    ]
                )
    curves_path = out / "curves.json"
    curves = {
        name: [
            {k: [None if not math.isfinite(v) else float(v) for v in c[k]] for k in c}
            for c in r.curves
        ]
        for name, r in report.runs.items()
    }
    curves_path.write_text(json.dumps(curves))
    return [summary_path, cases_path, curves_path]
