"""Tests of sphere_reg_ros.core.metrics (mTRE, mPD, mRPD, pose errors, SMSR, Table 1 layout)."""

import csv
import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.geometry import make_pose, random_poses, se3_exp, se3_inverse, so3_exp
from sphere_reg_ros.core.metrics import (
    CSV_FIELDS,
    TABLE_COLUMNS,
    Summary,
    depth_error,
    format_table,
    mpd,
    mrpd,
    mtre,
    rotation_error_deg,
    smsr,
    summarize,
    to_csv_rows,
    translation_error_mm,
)
from sphere_reg_ros.core.views import ap_pose


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def landmarks(gen) -> torch.Tensor:
    return torch.randn(12, 3, generator=gen) * 50 + torch.tensor([10.0, -30.0, 80.0])


def _about(center: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rotation by rotation vector ``w`` (3,) about the point ``center`` (3,), as (1, 4, 4)."""
    R = so3_exp(w)
    return make_pose(R[None], (center - R @ center)[None])


class TestMTRE:
    def test_identical_poses(self, gen, landmarks):
        T = random_poses(4, 30.0, 200.0, gen)
        torch.testing.assert_close(mtre(T, T, landmarks), torch.zeros(4))

    def test_one_mm_translation(self, gen, landmarks):
        T = random_poses(4, 30.0, 200.0, gen)
        d = torch.randn(4, 3, generator=gen)
        d = d / d.norm(dim=-1, keepdim=True)  # 1 mm in the CT world ...
        shift = make_pose(torch.eye(3).expand(4, 3, 3), d)
        # (float32 at ~200 mm resolves ~2e-5 mm)
        torch.testing.assert_close(mtre(shift @ T, T, landmarks), torch.ones(4), atol=1e-4, rtol=0)
        # ... or in the C-arm frame: 1 mm either way, never scaled by a pixel spacing
        torch.testing.assert_close(mtre(T @ shift, T, landmarks), torch.ones(4), atol=1e-4, rtol=0)

    def test_rotation_about_centroid(self, gen, landmarks):
        T = random_poses(1, 30.0, 200.0, gen, dtype=torch.float64)
        p = landmarks.double()
        c = p.mean(0)
        axis = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3
        angle = math.radians(3.0)
        T_est = _about(c, axis * angle) @ T
        # each landmark moves on a circle about the axis through c: chord 2 r sin(angle / 2)
        r = ((p - c) - ((p - c) @ axis)[:, None] * axis).norm(dim=-1)
        expected = (2 * math.sin(angle / 2) * r).mean()
        torch.testing.assert_close(mtre(T_est, T, p), expected[None])
        torch.testing.assert_close(
            rotation_error_deg(T_est, T), torch.tensor([3.0], dtype=torch.float64)
        )

    def test_batched_landmarks_and_broadcast(self, gen, landmarks):
        T = random_poses(3, 10.0, 20.0, gen)
        T_est = random_poses(3, 1.0, 1.0, gen) @ T
        per = mtre(T_est, T, landmarks.expand(3, 12, 3))
        torch.testing.assert_close(per, mtre(T_est, T, landmarks))
        torch.testing.assert_close(mtre(T_est, T[:1].expand(3, 4, 4), landmarks)[0], per[0])
        assert mtre(T_est[:1], T[:1], landmarks).shape == (1,)

    def test_non_finite_pose_gives_nan(self, landmarks):
        T = torch.eye(4)[None]
        bad = T.clone()
        bad[0, 0, 3] = float("nan")
        assert torch.isnan(mtre(bad, T, landmarks)).all()

    def test_errors(self, landmarks):
        T = torch.eye(4).expand(2, 4, 4)
        with pytest.raises(ValueError):
            mtre(T, T, torch.zeros(0, 3))
        with pytest.raises(ValueError):
            mtre(T, T, torch.zeros(5, 2))
        with pytest.raises(ValueError):
            mtre(T, T, torch.zeros(3, 5, 3))
        with pytest.raises(ValueError):
            mtre(T, torch.eye(4).expand(3, 4, 4), landmarks)
        with pytest.raises(ValueError):
            mtre(torch.eye(4), torch.eye(4), landmarks)


class TestPoseErrors:
    def test_rotation_and_translation(self, gen):
        T = random_poses(5, 30.0, 200.0, gen, dtype=torch.float64)
        xi = torch.tensor(
            [[3.0, 4.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 0, 0, math.radians(30), 0]], dtype=torch.float64
        )
        d = se3_exp(xi)
        T_est = T[:2] @ d  # T_est^-1 T_true = d^-1
        f64 = dict(dtype=torch.float64)
        torch.testing.assert_close(
            rotation_error_deg(T_est, T[:2]), torch.tensor([0.0, 30.0], **f64)
        )
        torch.testing.assert_close(
            translation_error_mm(T_est, T[:2]), torch.tensor([5.0, 0.0], **f64)
        )
        torch.testing.assert_close(translation_error_mm(T, T), torch.zeros(5, dtype=torch.float64))
        big = se3_exp(torch.tensor([[0, 0, 0, math.pi - 1e-4, 0, 0]], dtype=torch.float64))
        err = rotation_error_deg(big, torch.eye(4, dtype=torch.float64)[None]).item()
        assert err == pytest.approx(180 - math.degrees(1e-4))


class TestSMSR:
    def test_counts_failures(self):
        assert smsr([0.5, 2.0, float("nan"), float("inf"), 0.99]) == pytest.approx(2 / 5)
        assert smsr(torch.tensor([0.2, 1.0])) == 0.5  # strictly below the threshold
        assert smsr(np.array([0.2, 1.5]), threshold_mm=2.0) == 1.0

    def test_errors(self):
        with pytest.raises(ValueError):
            smsr([])
        with pytest.raises(ValueError):
            smsr([[0.1]])
        with pytest.raises(ValueError):
            smsr([0.1], threshold_mm=0.0)


class TestSummary:
    def test_percentiles_match_numpy(self):
        rng = np.random.default_rng(0)
        m = rng.lognormal(-0.5, 0.8, size=101)
        t = rng.uniform(1, 10, size=101)
        s = summarize(torch.tensor(m), t)
        assert s.n == 101
        assert s.smsr == pytest.approx(np.mean(m < 1.0))
        np.testing.assert_allclose(
            [s.median_mm, s.p75_mm, s.p95_mm], np.percentile(m, [50, 75, 95])
        )
        assert s.run_time_s == pytest.approx(t.mean())
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.n = 3  # type: ignore[misc]

    def test_failures_rank_last(self):
        m = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, float("nan"), float("inf")]
        s = summarize(m, None)
        finite = np.array(m[:8] + [1e9, 1e9])
        assert s.n == 10 and s.smsr == pytest.approx(0.8)
        assert s.median_mm == pytest.approx(np.percentile(finite, 50))
        assert s.p75_mm == pytest.approx(np.percentile(finite, 75))
        assert s.p95_mm == math.inf and math.isnan(s.run_time_s)

    def test_errors(self):
        with pytest.raises(ValueError):
            summarize([0.1, 0.2], [1.0])
        with pytest.raises(ValueError):
            summarize([0.1], [float("nan")])
        with pytest.raises(ValueError):
            summarize([], [])


class TestTable:
    @pytest.fixture
    def rows(self) -> dict[str, Summary]:
        return {
            "DiffPose": Summary(366, 0.831, 0.60, 0.89, 1.47, 5.3),
            "Ours-SO(4)": Summary(366, 0.861, 0.51, 0.85, 1.42, 6.2),
            "PoseNet": Summary(366, 0.043, 16.6, 22.0, math.inf, 0.01),
        }

    def test_layout(self, rows):
        text = format_table(rows, title="Table 1. DeepFluoro")
        lines = text.splitlines()
        assert lines[0] == "Table 1. DeepFluoro"
        table = lines[2:]
        assert len(table) == 2 + len(rows)
        assert [c.strip() for c in table[0].strip("|").split("|")] == list(TABLE_COLUMNS)
        assert len({len(line) for line in table}) == 1  # aligned
        for name in rows:
            assert sum(line.startswith(f"| {name} ") for line in table) == 1
        ours = next(line for line in table if "Ours" in line)
        cells = [c.strip() for c in ours.strip("|").split("|")]
        assert cells[1:] == ["86.1%", "0.51", "0.85", "1.42", "-", "-", "-", "-", "6.2 s"]
        posenet = next(line for line in table if "PoseNet" in line)
        assert "16.6" in posenet and "inf" in posenet and "<0.1 s" in posenet
        assert format_table(rows).splitlines()[0].startswith("| Method")
        with pytest.raises(ValueError):
            format_table({})

    def test_csv_rows(self, rows):
        out = to_csv_rows(rows)
        assert [r["method"] for r in out] == list(rows)
        assert all(tuple(r) == CSV_FIELDS for r in out)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(out)
        back = list(csv.DictReader(io.StringIO(buf.getvalue())))
        assert float(back[1]["smsr"]) == pytest.approx(0.861) and back[2]["p95_mm"] == "inf"


class TestProjectionDistances:
    """mPD and mRPD on hand-built cases (docs/METRICS.md)."""

    SDD, SOD = 1020.0, 650.0

    @pytest.fixture
    def scene(self, gen):
        """The AP view of a point ``c`` and landmarks in the plane through ``c`` parallel to the
        detector (depth SOD from the source), within 40 mm of the central ray."""
        c = torch.tensor([5.0, -20.0, 30.0], dtype=torch.float64)
        T = ap_pose(c.numpy(), self.SOD)
        xy = (torch.rand(10, 2, generator=gen, dtype=torch.float64) - 0.5) * 56
        p_carm = torch.cat([xy, torch.full((10, 1), self.SOD, dtype=torch.float64)], 1)
        p = p_carm @ T[0, :3, :3].T + T[0, :3, 3]
        return T, p

    @staticmethod
    def _shift(v) -> torch.Tensor:
        """The C-arm moved by ``v`` (mm, in its own frame): right-multiplied onto a pose."""
        return make_pose(torch.eye(3, dtype=torch.float64)[None], torch.tensor([v]).double())

    def test_zero_at_the_true_pose(self, scene):
        T, p = scene
        torch.testing.assert_close(mpd(T, T, p, self.SDD), torch.zeros(1, dtype=torch.float64))
        torch.testing.assert_close(mrpd(T, T, p), torch.zeros(1, dtype=torch.float64))

    def test_in_plane_shift_is_magnified_on_the_detector(self, scene):
        T, p = scene
        T_est = T @ self._shift([3.0, -4.0, 0.0])  # 5 mm parallel to the detector
        assert mtre(T_est, T, p).item() == pytest.approx(5.0)
        # every landmark sits at the isocentre's depth: magnification SDD / SOD
        assert mpd(T_est, T, p, self.SDD).item() == pytest.approx(5.0 * self.SDD / self.SOD)
        # the true projection's ray of the shifted C-arm passes 5 mm * cos(ray angle) away
        assert mrpd(T_est, T, p).item() == pytest.approx(5.0, rel=2e-3)

    def test_depth_shift_barely_moves_the_projections(self, scene):
        T, p = scene
        T_est = T @ self._shift([0.0, 0.0, 10.0])  # 10 mm along the central ray
        assert mtre(T_est, T, p).item() == pytest.approx(10.0)
        in_plane = mpd(T @ self._shift([10.0, 0.0, 0.0]), T, p, self.SDD).item()
        assert 0 < mpd(T_est, T, p, self.SDD).item() < 0.05 * in_plane
        # a landmark on the central ray stays on its ray: the mRPD is small too
        assert 0 < mrpd(T_est, T, p).item() < 0.6

    def test_mpd_is_the_pixel_distance_times_the_spacing(self, gen, landmarks):
        g = CarmGeometry(sdd=self.SDD, height=200, width=300, delx=0.7, dely=1.3, x0=9.0)
        T = ap_pose([10.0, -30.0, 80.0], self.SOD)
        T_est = random_poses(1, 3.0, 8.0, gen, dtype=torch.float64) @ T
        p = landmarks.double()
        uv = [
            g.project((p @ se3_inverse(X)[0, :3, :3].T + se3_inverse(X)[0, :3, 3]).numpy())
            for X in (T, T_est)
        ]
        expected = np.linalg.norm((uv[1] - uv[0]) * [g.delx, g.dely], axis=1).mean()
        assert mpd(T_est, T, p, g.sdd).item() == pytest.approx(expected)

    def test_mrpd_is_the_distance_to_the_back_projected_ray(self, gen, landmarks):
        """The ray built explicitly: the true projection (pixels) placed on the estimated C-arm's
        detector, joined to the estimated source, in the CT world."""
        g = CarmGeometry(sdd=self.SDD, height=64, width=80, delx=2.0, dely=1.5, y0=-7.0)
        T = ap_pose([10.0, -30.0, 80.0], self.SOD)
        T_est = random_poses(1, 5.0, 10.0, gen, dtype=torch.float64) @ T
        p = landmarks.double().numpy()
        Ti = se3_inverse(T)[0].numpy()
        uv = g.project(p @ Ti[:3, :3].T + Ti[:3, 3])
        on_det = np.stack(
            [(uv[:, 0] - g.cx) * g.delx, (uv[:, 1] - g.cy) * g.dely, np.full(len(uv), g.sdd)], 1
        )
        E = T_est[0].numpy()
        src, det = E[:3, 3], on_det @ E[:3, :3].T + E[:3, 3]
        d = (det - src) / np.linalg.norm(det - src, axis=1, keepdims=True)
        v = p - src
        expected = np.linalg.norm(v - (v * d).sum(1, keepdims=True) * d, axis=1).mean()
        assert mrpd(T_est, T, torch.as_tensor(p)).item() == pytest.approx(expected)

    def test_behind_the_source_is_inf_and_bad_sdd_refused(self, scene):
        T, p = scene
        flipped = T @ self._shift([0.0, 0.0, 2 * self.SOD])  # the landmarks now behind the source
        assert math.isinf(mpd(flipped, T, p, self.SDD).item())
        with pytest.raises(ValueError, match="sdd_mm"):
            mpd(T, T, p, 0.0)

    def test_summary_medians_in_table_and_csv(self):
        s = summarize(
            [0.5, 0.7, math.inf], None, mpd_mm=[1.0, 2.0, 3.0], mrpd_mm=[0.4, math.nan, 0.1]
        )
        assert s.mpd_median_mm == 2.0 and s.mrpd_median_mm == 0.4  # NaN ranks as a failure (inf)
        row = format_table({"m": s}).splitlines()[2]
        assert [c.strip() for c in row.strip("|").split("|")][5:7] == ["2.00", "0.40"]
        assert to_csv_rows({"m": s})[0]["mpd_median_mm"] == 2.0
        with pytest.raises(ValueError, match="mpd_mm"):
            summarize([0.5], None, mpd_mm=[1.0, 2.0])


class TestDepthError:
    """The error split along the beam (depth) and across it (in-plane = mRPD) on hand-built poses."""

    SOD = 650.0

    @staticmethod
    def _shift(v) -> torch.Tensor:
        """The C-arm moved by ``v`` (mm, in its own frame): right-multiplied onto a pose."""
        return make_pose(torch.eye(3, dtype=torch.float64)[None], torch.as_tensor([v]).double())

    def test_pure_depth_shift_on_the_central_ray(self):
        T = ap_pose([5.0, -20.0, 30.0], self.SOD)
        p = (T[0, :3, :3] @ torch.tensor([0.0, 0.0, self.SOD]).double() + T[0, :3, 3])[None]
        for s in (0.5, 4.0, -7.0):
            T_est = T @ self._shift([0.0, 0.0, s])
            assert depth_error(T_est, T, p).item() == pytest.approx(abs(s), abs=1e-6)
            assert mrpd(T_est, T, p).item() == pytest.approx(0.0, abs=1e-6)  # in-plane

    def test_shift_along_an_oblique_ray_is_all_depth_and_across_it_all_in_plane(self, gen):
        T = ap_pose([5.0, -20.0, 30.0], self.SOD)
        for _ in range(5):
            q = torch.cat(
                [
                    (torch.rand(2, generator=gen).double() - 0.5) * 200,
                    torch.tensor([600.0]).double(),
                ]
            )
            p = (T[0, :3, :3] @ q + T[0, :3, 3])[None]
            ray = q / q.norm()
            across = torch.linalg.cross(ray, torch.tensor([1.0, 0.0, 0.0]).double())
            across = across / across.norm()
            along = T @ self._shift((3.0 * ray).tolist())
            assert depth_error(along, T, p).item() == pytest.approx(3.0, abs=1e-6)
            assert mrpd(along, T, p).item() == pytest.approx(0.0, abs=1e-6)
            sideways = T @ self._shift((2.0 * across).tolist())
            assert depth_error(sideways, T, p).item() == pytest.approx(0.0, abs=1e-6)
            assert mrpd(sideways, T, p).item() == pytest.approx(2.0, abs=1e-6)

    def test_depth_and_in_plane_make_up_the_error_of_each_landmark(self, gen, landmarks):
        T = ap_pose([10.0, -30.0, 80.0], self.SOD)
        T_est = random_poses(1, 5.0, 10.0, gen, dtype=torch.float64) @ T
        for p in landmarks.double()[:5]:
            d, i = depth_error(T_est, T, p[None]).item(), mrpd(T_est, T, p[None]).item()
            assert math.hypot(d, i) == pytest.approx(mtre(T_est, T, p[None]).item())
            assert d > 0 and i > 0

    def test_summary_medians_in_table_and_csv(self):
        s = summarize([0.5, 0.7, 0.9], None, depth_mm=[0.4, 0.1, 0.3], inplane_mm=[0.2, 0.6, 0.5])
        assert (s.depth_median_mm, s.inplane_median_mm) == (0.3, 0.5)
        cells = [c.strip() for c in format_table({"m": s}).splitlines()[2].strip("|").split("|")]
        assert cells[TABLE_COLUMNS.index("Depth (mm)")] == "0.30"
        assert cells[TABLE_COLUMNS.index("In-plane (mm)")] == "0.50"
        row = to_csv_rows({"m": s})[0]
        assert (row["depth_median_mm"], row["inplane_median_mm"]) == (0.3, 0.5)
        assert math.isnan(summarize([0.5], None).depth_median_mm)
        with pytest.raises(ValueError, match="depth_mm"):
            summarize([0.5], None, depth_mm=[1.0, 2.0])
