"""What ``sphere-reg evaluate`` writes besides the accuracy table: the trust numbers per case
(:func:`trust_points`) and their table (:func:`trust_table`, docs/TRUST.md), the table of
iterations and time to final accuracy, and the CSV and JSON files (:func:`write_csvs`).
Re-exported by :mod:`.evaluate`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sphere_reg_ros.core.metrics import CSV_FIELDS, to_csv_rows
from sphere_reg_ros.core.result import CHI2_3_95, RegistrationResult, Status, point_error
from sphere_reg_ros.core.trust import rejection_key

if TYPE_CHECKING:
    from sphere_reg_ros.evaluation.evaluate import EvaluationReport, MethodRun

__all__ = ["trust_points", "trust_table", "write_csvs"]


def _scored(result: RegistrationResult) -> bool:
    """Whether a result carries the method's pose: the solver ended normally (converged, no
    progress, iteration cap) or a gate rejected it (the accuracy table scores the pose; the trust
    table says whether it would have been published)."""
    return (result.status.usable or result.status is Status.REJECTED) and bool(
        np.all(np.isfinite(result.pose))
    )


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
    return "\n".join(
        [
            "Trust: failures (mTRE > 2 mm) flagged, good registrations (mTRE < 1 mm) passed by the "
            "quality gates; coverage = share whose true error at the region of interest lies inside "
            "the 95 % ellipsoid",
            "",
        ]
        + _markdown_rows(head, rows)
    )


def _markdown_rows(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """The lines of a Markdown table: the head, the alignment rule (first column left, the others
    right) and the rows, every column as wide as its widest cell."""
    w = [max(len(x[i]) for x in (head, *rows)) for i in range(len(head))]

    def fmt(cells):
        return (
            "| "
            + " | ".join(c.ljust(w[0]) if j == 0 else c.rjust(w[j]) for j, c in enumerate(cells))
            + " |"
        )

    rule = "|" + "|".join([":" + "-" * (w[0] + 1)] + ["-" * (x + 1) + ":" for x in w[1:]]) + "|"
    return [fmt(head), rule] + [fmt(r) for r in rows]


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
    return "\n".join(
        [
            "Medians over cases (iterations to final accuracy: mTRE within max(0.1 mm, 10 %) of "
            "its final value from there on)",
            "",
        ]
        + _markdown_rows(head, rows)
        + ([""] + ratios if ratios else [])
    )


def write_csvs(report: EvaluationReport, out: Path, initial_mtre: np.ndarray) -> list[Path]:
    """``summary.csv`` (one row per method, unavailable ones with their reason), ``cases.csv``,
    ``curves.json`` (per method, per case: iteration, elapsed_s, cost, mtre_mm, scale (px); null = inf)
    and ``summary.json`` (per method, the columns of summary.csv's first part; null = inf or NaN)."""
    summary_path, cases_path = out / "summary.csv", out / "cases.csv"
    _write_summary(report, summary_path)
    _write_cases(report, cases_path, initial_mtre)
    curves_path = out / "curves.json"
    _write_curves(report, curves_path)
    json_path = out / "summary.json"
    rows = to_csv_rows({k: v.summary for k, v in report.runs.items()})
    json_path.write_text(json.dumps({r["method"]: _finite(r) for r in rows}, indent=1))
    return [summary_path, cases_path, curves_path, json_path]


def _finite(row: dict) -> dict:
    """A summary row for JSON: non-finite numbers as null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in row.items()
        if k != "method"
    }


def _write_summary(report: EvaluationReport, summary_path: Path) -> None:
    """One row per method (the table's columns, iterations, failures, its description), then the
    unavailable methods with their reason."""
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


def _write_cases(report: EvaluationReport, cases_path: Path, initial_mtre: np.ndarray) -> None:
    """One row per method and case: errors (mTRE, mPD, mRPD, depth and in-plane in mm;
    docs/METRICS.md), run time, status, trust numbers and message."""
    with open(cases_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "method",
                "case",
                "initial_mtre_mm",
                "mtre_mm",
                "mpd_mm",
                "mrpd_mm",
                "depth_mm",
                "inplane_mm",
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
                        r.mpd_mm[i] if i < len(r.mpd_mm) else math.nan,
                        r.mrpd_mm[i] if i < len(r.mrpd_mm) else math.nan,
                        r.depth_mm[i] if i < len(r.depth_mm) else math.nan,
                        r.inplane_mm[i] if i < len(r.inplane_mm) else math.nan,
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


def _write_curves(report: EvaluationReport, curves_path: Path) -> None:
    """Per method, per case: the convergence curve (null = inf)."""
    curves = {
        name: [
            {k: [None if not math.isfinite(v) else float(v) for v in c[k]] for k in c}
            for c in r.curves
        ]
        for name, r in report.runs.items()
    }
    curves_path.write_text(json.dumps(curves))
