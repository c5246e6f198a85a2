"""``sphere-reg calibrate-trust``: choose the quality gates and the covariance scale from the
``cases.csv`` of ``sphere-reg evaluate`` runs on *validation* benchmarks (never on the cases a
table reports; docs/TRUST.md).

For every pair of thresholds on the normalised cost and on the standard deviation at the region
of interest (the masked-share and consistency gates as configured, taken from the rows' own
verdicts), it counts the failures (mTRE > ``bad_mm``) flagged and the good registrations
(mTRE < ``good_mm``) passed, and picks the pair that flags the most failures while passing at least
``min_good_passed`` of the good ones. The covariance scale is the factor that puts the true error
at the region of interest of 95 % of the passed cases inside the 95 % ellipsoid.

Exit codes: 0 success; 1 the job ran but failed (no thresholds pass enough of the good
registrations); 2 bad input or usage (one line on stderr naming the file and the problem).
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sphere_reg_ros.cli_errors import EXIT_CODES, failed, one_line, refuse
from sphere_reg_ros.core.result import CHI2_3_95

__all__ = ["Calibration", "CalibrationError", "calibrate", "add_calibrate_parser", "run_calibrate"]

NC_GRID = tuple(np.round(np.arange(0.5, 1.0001, 0.05), 2))
STD_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)


class CalibrationError(ValueError):
    """The rows were read but no thresholds meet the required pass rate of good registrations."""


@dataclass(frozen=True)
class Calibration:
    max_normalised_cost: float
    max_position_std_mm: float
    failed_flagged: float
    good_passed: float
    covariance_factor: float  # multiply the current covariance scale by this
    n: int
    n_bad: int
    n_good: int
    table: str


_COLUMNS = ("mtre_mm", "normalised_cost", "position_std_mm", "mahalanobis2")


def _read_file(path: Path, method: str) -> list[dict[str, float | str]]:
    """The rows of ``method`` in one cases.csv, numbers parsed; ``ValueError`` naming the file (and
    line) for a missing, empty, binary or malformed file."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if not fields:
                raise ValueError(
                    f"{path}: empty file (expected the cases.csv of sphere-reg evaluate)"
                )
            if not {"method", "mtre_mm"} <= set(fields):
                raise ValueError(
                    f"{path}: not a cases.csv of sphere-reg evaluate (no 'method' and 'mtre_mm' "
                    "columns)"
                )
            missing = {*_COLUMNS, "rejected_by"} - set(fields)
            if missing:
                raise ValueError(
                    f"{path} lacks {sorted(missing)}: rerun sphere-reg evaluate with this version"
                )
            raw = [(reader.line_num, r) for r in reader if r["method"] == method]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV file ({one_line(exc)})") from exc
    rows = []
    for line, r in raw:
        row: dict[str, float | str] = {"rejected_by": r["rejected_by"] or ""}
        for name in _COLUMNS:
            value = r[name]
            try:
                row[name] = math.nan if value in ("", "None") else float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: line {line}: {name} is {value!r}, not a number"
                ) from None
        rows.append(row)
    return rows


def _read(paths, method: str) -> dict[str, np.ndarray]:
    rows = []
    for path in paths:
        rows += _read_file(Path(path), method)
    if not rows:
        raise ValueError(f"no rows of method {method!r} in {', '.join(map(str, paths))}")

    def col(name):
        return np.array([r[name] for r in rows], dtype=np.float64)

    key = np.array([r["rejected_by"] for r in rows])
    return {
        "mtre": col("mtre_mm"),
        "nc": col("normalised_cost"),
        "std": col("position_std_mm"),
        "d2": col("mahalanobis2"),
        # converged: no verdict, or a gate's (only converged registrations reach the gates)
        "converged": np.array([k == "" or k.startswith("rejected") for k in key]),
        # the gates this calibration does not choose (masked share, consistency)
        "other_gate": np.isin(key, ("rejected_masked", "rejected_inconsistent")),
    }


def calibrate(
    paths,
    method: str = "lm-intensity",
    good_mm: float = 1.0,
    bad_mm: float = 2.0,
    min_good_passed: float = 0.9,
) -> Calibration:
    d = _read(paths, method)
    bad, good = d["mtre"] > bad_mm, d["mtre"] < good_mm
    base = d["converged"] & ~d["other_gate"]
    lines = [
        f"{'normalised cost ≤':>18} | " + " | ".join(f"std ≤ {t:g} mm" for t in STD_GRID),
        "-" * 19 + "|" + "|".join("-" * (len(f"std ≤ {t:g} mm") + 2) for t in STD_GRID),
    ]
    best = None
    for t_nc in NC_GRID:
        cells = []
        for t_sd in STD_GRID:
            passed = base & (d["nc"] <= t_nc) & (d["std"] <= t_sd)
            fb = float((~passed[bad]).mean()) if bad.any() else math.nan
            gp = float(passed[good].mean()) if good.any() else math.nan
            cells.append(f"{100 * fb:3.0f}/{100 * gp:3.0f}")
            if gp >= min_good_passed and (
                best is None or fb > best[2] + 1e-12 or (abs(fb - best[2]) < 1e-12 and gp > best[3])
            ):
                best = (float(t_nc), float(t_sd), fb, gp)
        lines.append(
            f"{t_nc:>18g} | "
            + " | ".join(c.center(len(f"std ≤ {t:g} mm")) for c, t in zip(cells, STD_GRID))
        )
    if best is None:
        raise CalibrationError(
            f"no thresholds pass {100 * min_good_passed:.0f} % of the good registrations"
        )
    passed = base & (d["nc"] <= best[0]) & (d["std"] <= best[1])
    d2 = d["d2"][passed & np.isfinite(d["d2"])]
    factor = float(np.quantile(d2, 0.95) / CHI2_3_95) if len(d2) else math.nan
    table = "\n".join(
        [
            f"cells: % of failures (mTRE > {bad_mm:g} mm) flagged / % of good (mTRE < {good_mm:g} mm) passed",
            "",
        ]
        + lines
    )
    return Calibration(
        best[0],
        best[1],
        best[2],
        best[3],
        factor,
        len(d["mtre"]),
        int(bad.sum()),
        int(good.sum()),
        table,
    )


def add_calibrate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate-trust",
        help="choose quality-gate thresholds and the covariance scale from validation runs",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "cases",
        type=Path,
        nargs="+",
        help="cases.csv files of sphere-reg evaluate on validation benchmarks",
    )
    p.add_argument(
        "--method",
        default="lm-intensity",
        help="the method whose rows to use (default lm-intensity)",
    )
    p.add_argument("--good-mm", type=float, default=1.0)
    p.add_argument("--bad-mm", type=float, default=2.0)
    p.add_argument("--min-good-passed", type=float, default=0.9)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``calibrate-trust``; returns 0, 1 (no thresholds found) or 2 (bad input, one line on stderr)."""
    try:
        cal = calibrate(args.cases, args.method, args.good_mm, args.bad_mm, args.min_good_passed)
    except CalibrationError as exc:
        return failed("calibrate-trust", str(exc))
    except (ValueError, OSError) as exc:
        return refuse("calibrate-trust", exc)
    print(
        f"{cal.n} cases ({cal.n_bad} with mTRE > {args.bad_mm:g} mm, {cal.n_good} < {args.good_mm:g} mm)\n"
    )
    print(cal.table)
    print(
        f"\nchosen: max_normalised_cost {cal.max_normalised_cost:g}, max_position_std_mm {cal.max_position_std_mm:g}"
        f" -> failures flagged {100 * cal.failed_flagged:.0f} %, good passed {100 * cal.good_passed:.0f} %"
    )
    print(
        f"covariance: multiply the current covariance scale by {cal.covariance_factor:.3g} for 95 % coverage "
        "of the passed cases (the standard deviations scale with its square root)"
    )
    return 0
