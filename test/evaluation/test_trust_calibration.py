"""calibrate-trust: the thresholds and covariance factor chosen from cases.csv rows."""

import csv

import numpy as np
import pytest

from sphere_reg_ros.cli import main
from sphere_reg_ros.evaluation.trust_calibration import CHI2_3_95, calibrate

FIELDS = [
    "method",
    "case",
    "mtre_mm",
    "status",
    "normalised_cost",
    "position_std_mm",
    "rejected_by",
    "mahalanobis2",
]


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow(
                {"method": "lm-intensity", "case": i, "status": "converged", "rejected_by": "", **r}
            )


def test_picks_the_thresholds_that_flag_most_failures_at_the_required_pass_rate(tmp_path):
    rng = np.random.default_rng(0)
    good = [
        {"mtre_mm": 0.3, "normalised_cost": nc, "position_std_mm": 1.0, "mahalanobis2": d2}
        for nc, d2 in zip(np.linspace(0.40, 0.70, 20), rng.uniform(0, 2 * CHI2_3_95, 20))
    ]
    bad = [
        {"mtre_mm": 5.0, "normalised_cost": 0.9, "position_std_mm": 1.0, "mahalanobis2": 100.0},
        {"mtre_mm": 3.0, "normalised_cost": 0.6, "position_std_mm": 6.0, "mahalanobis2": 100.0},
        {
            "mtre_mm": 3.0,
            "normalised_cost": 0.5,
            "position_std_mm": 1.0,
            "mahalanobis2": 100.0,
            "status": "max_iterations",
            "rejected_by": "registration_failed",
        },
    ]
    _write(tmp_path / "a.csv", good[:10] + bad[:2])
    _write(tmp_path / "b.csv", good[10:] + bad[2:])
    cal = calibrate([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert cal.n == 23 and cal.n_bad == 3 and cal.n_good == 20
    # every good case passes at nc <= 0.70, std <= 5; all three failures are flagged there
    assert cal.failed_flagged == 1.0 and cal.good_passed == 1.0
    assert 0.7 <= cal.max_normalised_cost < 0.9 and 1.0 <= cal.max_position_std_mm < 6.0
    passed_d2 = [r["mahalanobis2"] for r in good]
    assert cal.covariance_factor == pytest.approx(np.quantile(passed_d2, 0.95) / CHI2_3_95)


def test_the_command_prints_the_choice_and_refuses_old_csvs(tmp_path, capsys):
    _write(
        tmp_path / "a.csv",
        [
            {"mtre_mm": 0.2, "normalised_cost": 0.5, "position_std_mm": 0.5, "mahalanobis2": 1.0},
            {"mtre_mm": 4.0, "normalised_cost": 0.95, "position_std_mm": 0.5, "mahalanobis2": 90.0},
        ],
    )
    assert main(["calibrate-trust", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    assert "chosen: max_normalised_cost" in out and "failures flagged 100 %" in out
    (tmp_path / "old.csv").write_text(
        "method,case,mtre_mm,status,cost\nlm-intensity,0,0.3,converged,0.1\n"
    )
    assert main(["calibrate-trust", str(tmp_path / "old.csv")]) == 2
    assert "rerun sphere-reg evaluate" in capsys.readouterr().err
