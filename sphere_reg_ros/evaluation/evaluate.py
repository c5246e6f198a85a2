"""Benchmark evaluation: every method in one process on the same cases (docs/ARCHITECTURE.md, Evaluation protocol).

Each method registers every case of a benchmark file from the same initial pose (the
benchmark's ``poses_init``; the regressor rows start from the regressor instead), one case at
a time so that the run time is per case. Scores: mTRE (mm, 3-D, on the benchmark's landmarks),
SMSR (mTRE < 1 mm), percentiles, the medians of mPD and mRPD (mm; docs/METRICS.md) and mean run
time in the seed's Table 1 layout
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
* ``lm-intensity-biplane``, ``ours-biplane``, ``ours-regressor-biplane``: on a benchmark with
  several C-arm views (``make-benchmark --views 2``), the same on every view of a case at once
  (``Registrar.register_views``); the other rows register the first view alone, so the table
  has mono and biplane rows on the same cases. Every row also reports the depth error (along
  the first view's beam) and the in-plane error (across it; docs/METRICS.md);
* ``xvr``: the peer tool xvr's fixed-pose registration from the same initial poses
  (:mod:`.xvr_adapter`; its defaults, working up to the same resolution); listed unavailable with
  the install hint when its package (``pip install .[peers]``) is missing.

Besides the table: "iterations / time to final accuracy" per method (the first iteration after
which a case's mTRE stays within ``max(0.1 mm, 10 %)`` of its final value; median over cases),
a per-case CSV and the plots of :mod:`.plots`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from sphere_reg_ros.core.baselines import GradientConfig
from sphere_reg_ros.core.metrics import (
    Summary,
    depth_error,
    format_table,
    mpd,
    mrpd,
    mtre,
    summarize,
)
from sphere_reg_ros.core.registrar import RegistrarConfig
from sphere_reg_ros.core.result import RegistrationResult
from sphere_reg_ros.core.volume import Volume
from sphere_reg_ros.evaluation.evaluate_methods import (
    METHODS,
    build_runners,
    case_input,
    shipped_model,
    views_only_on_views,
)
from sphere_reg_ros.evaluation.evaluate_report import (
    _extra_table,
    _scored,
    trust_points,
    trust_table,
    write_csvs,
)
from sphere_reg_ros.evaluation.xvr_adapter import XvrConfig

__all__ = [
    "METHODS",
    "EvaluationConfig",
    "MethodRun",
    "EvaluationReport",
    "evaluate",
    "convergence_point",
    "write_csvs",
    "shipped_model",
    "trust_points",
    "trust_table",
]

log = logging.getLogger(__name__)


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
    mpd_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,), inf for failures
    mrpd_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,), inf for failures
    depth_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,), inf for failures

    @property
    def inplane_mm(self) -> np.ndarray:
        """(N,) in-plane error: the error across the beam, which is the mRPD (docs/METRICS.md)."""
        return self.mrpd_mm


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


def _score(
    result: RegistrationResult, true: np.ndarray, landmarks: torch.Tensor, sdd_mm: float
) -> tuple[float, float, float, float]:
    """``(mTRE, mPD, mRPD, depth error)`` in mm of one case (docs/METRICS.md; the in-plane error
    is the mRPD); inf for a failed case."""
    if not _scored(result):
        return math.inf, math.inf, math.inf, math.inf
    T_est, T_true = torch.as_tensor(result.pose)[None], torch.as_tensor(true)[None]
    return (
        float(mtre(T_est, T_true, landmarks)[0]),
        float(mpd(T_est, T_true, landmarks, sdd_mm)[0]),
        float(mrpd(T_est, T_true, landmarks)[0]),
        float(depth_error(T_est, T_true, landmarks)[0]),
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
    runners, unavailable, extra = build_runners(
        list(methods), ct, model, dict(models or {}), config, benchmark.resolution
    )
    views_only_on_views(runners, unavailable, benchmark.n_views)
    runs: dict[str, MethodRun] = {}
    bar = tqdm(total=n * len(runners), desc="evaluate", unit="case", disable=not progress)
    for name, run in runners.items():
        runs[name] = _run_method(name, run, benchmark, n, config, bar)
    bar.close()
    table = (
        format_table({k: r.summary for k, r in runs.items()}, title=_title(benchmark, n, config))
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
        _write_outputs(report, benchmark, n, config, extra, Path(out_dir))
    return report


def _run_method(
    name: str, run: Callable, benchmark, n: int, config: EvaluationConfig, bar: tqdm
) -> MethodRun:
    """One method on the first ``n`` cases, one case at a time (after an untimed warm-up when
    ``config.warmup``), scored on the benchmark's landmarks."""
    landmarks = torch.as_tensor(benchmark.landmarks, dtype=torch.float64)
    starts = benchmark.poses_true if config.start == "truth" else benchmark.poses_init
    geometry = benchmark.render_geometry
    if config.warmup:  # one untimed registration: one-time costs (vmap/AD set-up, caches) excluded
        bar.set_postfix_str(f"{name} warm-up")
        run(case_input(benchmark, run, 0), geometry, starts[0])
    results, m, t, curves, projected = [], [], [], [], []
    for i in range(n):
        bar.set_postfix_str(f"{name} case {i}")
        res = run(case_input(benchmark, run, i), geometry, starts[i])
        e, *pd_rpd = _score(res, benchmark.poses_true[i], landmarks, geometry.sdd)
        results.append(res)
        m.append(e)
        projected.append(pd_rpd)
        t.append(float(res.timings.get("total", math.nan)))
        curves.append(_curve(res, benchmark.poses_true[i], landmarks, e))
        bar.update(1)
    t_arr = np.nan_to_num(np.asarray(t), nan=0.0)
    conv = [convergence_point(c["mtre_mm"], c["elapsed_s"], c["iteration"]) for c in curves]
    pd_mm, rpd_mm, depth_mm = np.asarray(projected, dtype=float).reshape(n, 3).T
    return MethodRun(
        name=name,
        description=METHODS[name],
        results=results,
        mtre_mm=np.asarray(m),
        run_time_s=t_arr,
        curves=curves,
        summary=summarize(
            np.asarray(m), t_arr, config.threshold_mm, pd_mm, rpd_mm, depth_mm, rpd_mm
        ),
        iterations_to_final=np.array([c[0] for c in conv]),
        time_to_final_s=np.array([c[1] for c in conv]),
        mpd_mm=pd_mm,
        mrpd_mm=rpd_mm,
        depth_mm=depth_mm,
    )


def _title(benchmark, n: int, config: EvaluationConfig) -> str:
    """The accuracy table's title: the benchmark (source, split, seed, family, checksum), the
    number of cases, the resolution and the start."""
    from .benchmark import benchmark_checksum

    family = benchmark.config.get("family", "") if isinstance(benchmark.config, dict) else ""
    return (
        f"Benchmark {benchmark.ct_source} ({benchmark.split}, seed {benchmark.seed}"
        f"{', family ' + family if family else ''}, checksum {benchmark_checksum(benchmark)}): {n} cases, "
        f"{benchmark.resolution}x{benchmark.resolution} px, "
        + (
            f"{benchmark.n_views} views (-biplane rows: all; the others: the first), "
            if benchmark.n_views > 1
            else ""
        )
        + (
            "every method started AT THE TRUE POSE (mTRE = drift from the truth)"
            if config.start == "truth"
            else f"initial mTRE median {float(np.median(benchmark.initial_mtre_mm[:n])):.1f} mm"
        )
    )


def _write_outputs(
    report: EvaluationReport, benchmark, n: int, config: EvaluationConfig, extra: dict, out: Path
) -> None:
    """The CSVs, the plots and ``table.txt`` in ``out`` (listed in ``report.files``)."""
    out.mkdir(parents=True, exist_ok=True)
    report.files += write_csvs(report, out, benchmark.initial_mtre_mm[:n])
    from . import plots

    report.files += plots.convergence(report.runs, out / "convergence.png")
    report.files += plots.reliability(report.trust, out / "reliability.png")
    report.files += plots.depth_inplane(report.runs, out / "depth_inplane.png")
    if config.landscape and extra["registrars"]:
        try:
            report.files += plots.landscape_for_benchmark(benchmark, extra, out / "landscape.png")
        except Exception as exc:  # a plot must not lose the table
            log.warning("landscape plot failed: %s", exc)
    (out / "table.txt").write_text(report.text() + "\n")
    report.files.append(out / "table.txt")
