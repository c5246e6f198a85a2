"""Tests of sphere_reg_ros.core.geometry (SE(3) / SO(4) Lie group utilities), kornia style."""

import math

import numpy as np
import pytest
import torch
from diffdrr.pose import RigidTransform
from scipy.spatial.transform import Rotation

from sphere_reg_ros.core.geometry import (
    from_rigid_transform,
    geodesic_se3,
    geodesic_so4,
    hat,
    left_increment,
    make_pose,
    matrix_to_quaternion_xyzw,
    pose_to_translation_quaternion,
    quaternion_xyzw_to_matrix,
    random_poses,
    se3_adjoint,
    se3_exp,
    se3_inverse,
    se3_log,
    so3_exp,
    so3_log,
    so4_embed,
    to_rigid_transform,
    translation_quaternion_to_pose,
    vee,
)

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _unit(n: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    a = torch.randn(n, 3, generator=gen, dtype=dtype)
    return a / a.norm(dim=-1, keepdim=True)


def _twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    top = torch.cat([hat(xi[..., 3:]), xi[..., :3, None]], -1)
    return torch.cat([top, torch.zeros_like(top[..., :1, :])], -2)


def _translation(d) -> torch.Tensor:
    return make_pose(
        torch.eye(3, dtype=torch.float64)[None], torch.tensor([d], dtype=torch.float64)
    )


class TestHatVee:
    @pytest.mark.parametrize("batch", [1, 4])
    def test_cross_product_and_inverse(self, batch, gen):
        w, x = torch.randn(2, batch, 3, generator=gen)
        W = hat(w)
        assert W.shape == (batch, 3, 3)
        torch.testing.assert_close(W @ x[..., None], torch.cross(w, x, dim=-1)[..., None])
        torch.testing.assert_close(W, -W.mT)
        torch.testing.assert_close(vee(W), w)

    def test_bad_input(self):
        with pytest.raises(ValueError):
            hat(torch.zeros(2, 4))
        with pytest.raises(ValueError):
            vee(torch.zeros(3, 3, dtype=torch.int64))
        with pytest.raises(ValueError):
            so3_exp([0.0, 0.0, 0.0])  # type: ignore[arg-type]


class TestSO3:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_exp_matches_matrix_exp(self, dtype, gen):
        w = torch.randn(16, 3, generator=gen, dtype=torch.float64) * 1.5
        R = so3_exp(w.to(dtype))
        assert R.dtype == dtype
        torch.testing.assert_close(R.double(), torch.linalg.matrix_exp(hat(w)), **TOL[dtype])
        torch.testing.assert_close(
            R.mT @ R, torch.eye(3, dtype=dtype).expand(16, 3, 3), **TOL[dtype]
        )

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-4, 0.05, 0.1, 1.0, 2.5, 3.0])
    def test_log_exp_round_trip(self, dtype, angle, gen):
        w = (_unit(8, gen) * angle).to(dtype)
        w_back = so3_log(so3_exp(w))
        # tiny angles keep their relative accuracy, not just an absolute one
        torch.testing.assert_close(w_back, w, atol=1e-6 * angle + 1e-30, rtol=1e-5)

    @pytest.mark.parametrize(
        "dtype, eps",
        [
            (torch.float64, 1e-6),
            (torch.float64, 1e-3),
            (torch.float32, 1e-3),
            (torch.float32, 1e-2),
        ],
    )
    def test_log_near_pi(self, dtype, eps, gen):
        w = _unit(32, gen) * (math.pi - eps)
        R = torch.linalg.matrix_exp(hat(w)).to(dtype)
        w_back = so3_log(R)
        tol = 1e-9 if dtype == torch.float64 else 2e-6
        torch.testing.assert_close(w_back.double(), w, atol=tol, rtol=0)

    def test_log_at_pi_is_a_valid_log(self, gen):
        w = _unit(8, gen) * math.pi
        R = torch.linalg.matrix_exp(hat(w))
        w_back = so3_log(R)  # +-axis both valid at pi
        torch.testing.assert_close(
            w_back.norm(dim=-1), torch.full((8,), math.pi, dtype=torch.float64)
        )
        torch.testing.assert_close(so3_exp(w_back), R, atol=1e-10, rtol=0)


class TestSE3:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, 0.07, 1.0, 3.1])
    def test_exp_matches_matrix_exp_and_round_trip(self, dtype, angle, gen):
        v = torch.randn(8, 3, generator=gen, dtype=torch.float64) * 100
        xi = torch.cat([v, _unit(8, gen) * angle], -1)
        T = se3_exp(xi.to(dtype))
        assert T.shape == (8, 4, 4) and T.dtype == dtype
        ref = torch.linalg.matrix_exp(_twist_matrix(xi))
        torch.testing.assert_close(
            T.double(), ref, atol=1e-4 if dtype == torch.float32 else 1e-9, rtol=0
        )
        assert torch.equal(T[:, 3], torch.tensor([0, 0, 0, 1], dtype=dtype).expand(8, 4))
        xi_back = se3_log(T)
        atol = 2e-4 if dtype == torch.float32 else 1e-9
        torch.testing.assert_close(xi_back[:, :3].double(), v, atol=atol, rtol=0)
        torch.testing.assert_close(
            xi_back[:, 3:].double(), xi[:, 3:], atol=atol * 1e-2 + 1e-6 * angle, rtol=1e-5
        )

    def test_exp_log_exp_of_random_poses(self, gen):
        T = random_poses(32, 60.0, 100.0, gen, dtype=torch.float64)
        torch.testing.assert_close(se3_exp(se3_log(T)), T, atol=1e-10, rtol=0)

    def test_leading_batch_dims(self, gen):
        xi = torch.randn(2, 3, 6, generator=gen)
        T = se3_exp(xi)
        assert T.shape == (2, 3, 4, 4)
        torch.testing.assert_close(se3_log(T), xi, atol=1e-4, rtol=1e-4)

    def test_half_precision(self, gen):
        xi = torch.randn(4, 6, generator=gen) * 0.5
        T = se3_exp(xi.to(torch.bfloat16))
        assert T.dtype == torch.bfloat16 and torch.isfinite(T.float()).all()

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_inverse(self, dtype, gen):
        T = random_poses(8, 90.0, 200.0, gen, dtype=dtype)
        Ti = se3_inverse(T)
        torch.testing.assert_close(T @ Ti, torch.eye(4, dtype=dtype).expand(8, 4, 4), **TOL[dtype])
        atol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(Ti, torch.linalg.inv(T), atol=atol, rtol=1e-4)

    def test_log_of_inverse_is_minus_adjoint(self, gen):
        xi = torch.randn(8, 6, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(se3_log(se3_inverse(se3_exp(xi))), -xi)

    def test_adjoint_moves_a_tangent_vector_through_the_pose(self, gen):
        T = random_poses(5, 20.0, 50.0, gen, dtype=torch.float64)
        xi = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 0.1
        lhs = T @ se3_exp(xi) @ se3_inverse(T)
        torch.testing.assert_close(lhs, se3_exp((se3_adjoint(T) @ xi[..., None])[..., 0]))
        with pytest.raises(ValueError):
            se3_adjoint(T[:, :3])

    def test_left_increment(self, gen):
        T = random_poses(5, 20.0, 50.0, gen)
        d = torch.randn(5, 6, generator=gen) * 0.1
        torch.testing.assert_close(left_increment(T, d), se3_exp(d) @ T)
        torch.testing.assert_close(left_increment(T, torch.zeros(5, 6)), T)

    def test_make_pose_and_errors(self, gen):
        R = so3_exp(torch.randn(3, 3, generator=gen))
        t = torch.randn(3, 3, generator=gen)
        T = make_pose(R, t)
        assert torch.equal(T[:, :3, :3], R) and torch.equal(T[:, :3, 3], t)
        with pytest.raises(ValueError):
            make_pose(R, t[:2])
        with pytest.raises(ValueError):
            se3_exp(torch.zeros(3, 5))
        with pytest.raises(ValueError):
            se3_log(torch.zeros(3, 3, 4))


class TestGeodesicSE3:
    def test_values(self, gen):
        xi = torch.randn(6, 6, generator=gen, dtype=torch.float64)
        I = torch.eye(4, dtype=torch.float64).expand(6, 4, 4)
        torch.testing.assert_close(geodesic_se3(I, se3_exp(xi)), xi.norm(dim=-1))
        scaled = torch.cat([xi[:, :3] / 50.0, xi[:, 3:]], -1).norm(dim=-1)
        torch.testing.assert_close(geodesic_se3(I, se3_exp(xi), length_scale=50.0), scaled)
        zero = torch.zeros(6, dtype=torch.float64)
        torch.testing.assert_close(geodesic_se3(se3_exp(xi), se3_exp(xi)), zero)
        with pytest.raises(ValueError):
            geodesic_se3(I, I, length_scale=0.0)

    def test_symmetric_and_left_invariant(self, gen):
        Ta, Tb, G = (random_poses(16, 40.0, 100.0, gen, dtype=torch.float64) for _ in range(3))
        d = geodesic_se3(Ta, Tb, 100.0)
        torch.testing.assert_close(geodesic_se3(Tb, Ta, 100.0), d)
        torch.testing.assert_close(geodesic_se3(G @ Ta, G @ Tb, 100.0), d)

    def test_not_right_invariant(self):
        # T_a = I, T_b = 90 deg about z, G = 100 mm along x: G^-1 T_b G rotates about another
        # axis, so the relative motion gains a translation part.
        I = torch.eye(4, dtype=torch.float64)[None]
        Tb = se3_exp(torch.tensor([[0, 0, 0, 0, 0, math.pi / 2]], dtype=torch.float64))
        G = _translation([100.0, 0.0, 0.0])
        d = geodesic_se3(I, Tb)
        d_right = geodesic_se3(I @ G, Tb @ G)
        torch.testing.assert_close(d, torch.tensor([math.pi / 2], dtype=torch.float64))
        assert d_right.item() > d.item() + 100.0


class TestSO4:
    @pytest.mark.parametrize("f", [50.0, 200.0, 2000.0])
    def test_orthogonal_to_first_order(self, f, gen):
        T = random_poses(32, 60.0, 150.0, gen, dtype=torch.float64)
        M = so4_embed(T, f)
        r = T[:, :3, 3].norm(dim=-1) / f
        err = (M.mT @ M - torch.eye(4, dtype=torch.float64)).norm(dim=(-2, -1))
        # M^T M - I = diag(R^T a a^T R, |a|^2), a = t/(2f): |.|_F = sqrt(2)/4 (|t|/f)^2 exactly
        torch.testing.assert_close(err, math.sqrt(2) / 4 * r**2)
        torch.testing.assert_close(torch.linalg.det(M), 1 + r**2 / 4)
        # the off-diagonal block R^T a + b^T vanishes exactly (the 1/(2f) in the bottom row)
        torch.testing.assert_close((M.mT @ M)[:, :3, 3], torch.zeros(32, 3, dtype=torch.float64))

    def test_quadratic_scaling(self, gen):
        T = random_poses(16, 30.0, 100.0, gen, dtype=torch.float64)
        fs = torch.tensor([100.0, 1000.0, 10000.0], dtype=torch.float64)
        errs = torch.stack(
            [
                (
                    so4_embed(T, float(f)).mT @ so4_embed(T, float(f))
                    - torch.eye(4, dtype=torch.float64)
                )
                .norm(dim=(-2, -1))
                .mean()
                for f in fs
            ]
        )
        slope = torch.diff(torch.log(errs)) / torch.diff(torch.log(1 / fs))
        torch.testing.assert_close(slope, torch.full_like(slope, 2.0), atol=1e-6, rtol=0)

    def test_rotation_only_is_exact(self, gen):
        R = so3_exp(torch.randn(4, 3, generator=gen, dtype=torch.float64))
        M = so4_embed(make_pose(R, torch.zeros(4, 3, dtype=torch.float64)))
        e4 = torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(4, 4)
        assert torch.equal(M[:, :3, :3], R) and torch.equal(M[:, 3], e4)

    @pytest.mark.parametrize("project", [False, True])
    def test_invariance_improves_with_f(self, project, gen):
        Ta, Tb, G = (random_poses(64, 30.0, 100.0, gen, dtype=torch.float64) for _ in range(3))
        rel_left, rel_right = [], []
        for f in (200.0, 2000.0, 20000.0):
            d = geodesic_so4(Ta, Tb, f, project)
            rel_left.append(
                ((geodesic_so4(G @ Ta, G @ Tb, f, project) - d).abs() / d).mean().item()
            )
            rel_right.append(
                ((geodesic_so4(Ta @ G, Tb @ G, f, project) - d).abs() / d).mean().item()
            )
        for errs in (rel_left, rel_right):
            # |t|/f falls 10x per step: the invariance error falls like (|t|/f)^2 (>= 30x)
            assert errs[0] < 0.1 and errs[0] / errs[1] > 30 and errs[1] / errs[2] > 30

    def test_homomorphism_to_first_order(self, gen):
        T1, T2 = (random_poses(16, 30.0, 100.0, gen, dtype=torch.float64) for _ in range(2))
        errs = [
            (so4_embed(T1 @ T2, f) - so4_embed(T1, f) @ so4_embed(T2, f))
            .norm(dim=(-2, -1))
            .mean()
            .item()
            for f in (200.0, 2000.0)
        ]
        assert errs[0] / errs[1] == pytest.approx(100.0, rel=0.05)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_projection(self, dtype, gen):
        T = random_poses(16, 60.0, 300.0, gen, dtype=dtype)
        P = so4_embed(T, 200.0, project=True)
        assert P.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(
            P.mT @ P, torch.eye(4, dtype=dtype).expand(16, 4, 4), atol=tol, rtol=0
        )
        torch.testing.assert_close(
            torch.linalg.det(P), torch.ones(16, dtype=dtype), atol=tol, rtol=0
        )
        U, _, Vh = torch.linalg.svd(so4_embed(T.double(), 200.0))  # nearest orthogonal matrix
        torch.testing.assert_close(P.double(), U @ Vh, atol=tol * 10, rtol=0)

    def test_errors(self):
        I = torch.eye(4)[None]
        with pytest.raises(ValueError):
            so4_embed(I, f=0.0)
        with pytest.raises(ValueError):
            geodesic_so4(I, torch.eye(3)[None])


class TestGradients:
    def test_gradcheck_se3_exp(self, gen):
        xi = torch.randn(3, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(se3_exp, (xi,))
        tiny = torch.tensor(
            [[1.0, 2.0, 3.0, 1e-8, -2e-8, 0.0], [1, 2, 3, 0, 0, 0]],
            dtype=torch.float64,
            requires_grad=True,
        )
        assert torch.autograd.gradcheck(se3_exp, (tiny,))

    def test_gradcheck_se3_log(self, gen):
        xi = torch.randn(3, 6, generator=gen, dtype=torch.float64)
        xi[:, 3:] *= 2.0 / xi[:, 3:].norm(dim=-1, keepdim=True)  # |w| = 2 rad, away from pi
        xi[0, 3:] *= 1e-6  # and one tiny angle (Taylor branch)
        T = se3_exp(xi).requires_grad_(True)
        assert torch.autograd.gradcheck(se3_log, (T,))

    def test_gradients_finite_at_zero(self):
        for dtype in (torch.float32, torch.float64):
            xi = torch.zeros(2, 6, dtype=dtype, requires_grad=True)
            se3_log(se3_exp(xi)).sum().backward()
            torch.testing.assert_close(xi.grad, torch.ones(2, 6, dtype=dtype))
            T = torch.eye(4, dtype=dtype).repeat(2, 1, 1).requires_grad_(True)
            (
                geodesic_se3(T, T.detach()) + geodesic_so4(T, T.detach(), project=True)
            ).sum().backward()
            assert torch.isfinite(T.grad).all()

    @pytest.mark.parametrize("fn", ["se3", "so4", "so4_project"])
    def test_gradcheck_geodesics(self, fn, gen):
        Ta = random_poses(3, 40.0, 100.0, gen, dtype=torch.float64)
        Tb = random_poses(3, 40.0, 100.0, gen, dtype=torch.float64)
        xi = (torch.randn(3, 6, generator=gen, dtype=torch.float64) * 0.1).requires_grad_(True)

        def loss(x: torch.Tensor) -> torch.Tensor:
            T = se3_exp(x) @ Ta
            if fn == "se3":
                return geodesic_se3(T, Tb, length_scale=100.0)
            return geodesic_so4(T, Tb, 200.0, project=fn == "so4_project")

        assert torch.autograd.gradcheck(loss, (xi,))
        # and directly in the matrix entries
        A = Ta.clone().requires_grad_(True)
        f = (
            (lambda a: geodesic_se3(a, Tb, 100.0))
            if fn == "se3"
            else (lambda a: geodesic_so4(a, Tb, 200.0, fn == "so4_project"))
        )
        assert torch.autograd.gradcheck(f, (A,))


class TestQuaternions:
    def test_against_scipy(self, gen):
        R = random_poses(64, 100.0, 0.0, gen, dtype=torch.float64)[:, :3, :3]
        q = matrix_to_quaternion_xyzw(R)
        ref = Rotation.from_matrix(R.numpy()).as_quat()  # scipy: (x, y, z, w)
        ref = np.where(ref[:, 3:] < 0, -ref, ref)
        np.testing.assert_allclose(q.numpy(), ref, atol=1e-12)
        assert (q[:, 3] >= 0).all()
        q_rand = torch.tensor(Rotation.random(16, random_state=0).as_quat())
        np.testing.assert_allclose(
            quaternion_xyzw_to_matrix(q_rand).numpy(),
            Rotation.from_quat(q_rand.numpy()).as_matrix(),
            atol=1e-12,
        )

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_round_trips(self, dtype, gen):
        w = torch.cat(
            [
                torch.randn(16, 3, generator=gen, dtype=torch.float64),
                _unit(8, gen) * math.pi,
                torch.zeros(1, 3, dtype=torch.float64),
            ]
        )
        R = so3_exp(w).to(dtype)
        q = matrix_to_quaternion_xyzw(R)
        torch.testing.assert_close(q.norm(dim=-1), torch.ones(25, dtype=dtype))
        tol = TOL[dtype] if dtype == torch.float64 else dict(atol=1e-6, rtol=0)
        torch.testing.assert_close(quaternion_xyzw_to_matrix(q), R, **tol)
        torch.testing.assert_close(q[-1], torch.tensor([0, 0, 0, 1], dtype=dtype))
        qc = q[:16]  # away from pi (w > 0): q -> R -> q is the identity
        q_back = matrix_to_quaternion_xyzw(quaternion_xyzw_to_matrix(qc))
        torch.testing.assert_close(q_back, qc, atol=1e-6, rtol=0)

    def test_translation_quaternion(self, gen):
        T = random_poses(4, 30.0, 500.0, gen, dtype=torch.float64)
        t_m, q = pose_to_translation_quaternion(T)
        t_mm, q2 = pose_to_translation_quaternion(T, unit="mm")
        torch.testing.assert_close(t_m * 1000, t_mm)
        torch.testing.assert_close(q, q2)
        torch.testing.assert_close(translation_quaternion_to_pose(t_m, q), T)
        torch.testing.assert_close(translation_quaternion_to_pose(t_mm, q, unit="mm"), T)
        with pytest.raises(ValueError):
            pose_to_translation_quaternion(T, unit="cm")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            quaternion_xyzw_to_matrix(torch.zeros(1, 4))


class TestDiffDRR:
    def test_round_trip_and_action(self, gen):
        T = random_poses(5, 45.0, 300.0, gen)
        rt = to_rigid_transform(T)
        assert isinstance(rt, RigidTransform)
        assert torch.equal(from_rigid_transform(rt), T)
        pts = torch.randn(5, 7, 3, generator=gen) * 100
        torch.testing.assert_close(rt(pts), pts @ T[:, :3, :3].mT + T[:, None, :3, 3])
        torch.testing.assert_close(
            from_rigid_transform(rt.inverse()), se3_inverse(T), atol=1e-4, rtol=1e-5
        )
        assert from_rigid_transform(to_rigid_transform(T[0])).shape == (1, 4, 4)
        with pytest.raises(ValueError):
            from_rigid_transform(T)  # type: ignore[arg-type]


class TestRandomPoses:
    def test_shape_validity_and_reproducibility(self):
        a = random_poses(
            1000, 10.0, [5.0, 5.0, 20.0], torch.Generator().manual_seed(3), dtype=torch.float64
        )
        b = random_poses(
            1000, 10.0, [5.0, 5.0, 20.0], torch.Generator().manual_seed(3), dtype=torch.float64
        )
        assert a.shape == (1000, 4, 4) and torch.equal(a, b)
        R = a[:, :3, :3]
        torch.testing.assert_close(R.mT @ R, torch.eye(3, dtype=torch.float64).expand(1000, 3, 3))
        rot_std = torch.rad2deg(so3_log(R)).std(0)
        torch.testing.assert_close(
            rot_std, torch.full((3,), 10.0, dtype=torch.float64), rtol=0.1, atol=0
        )
        t_std = torch.tensor([5.0, 5.0, 20.0], dtype=torch.float64)
        torch.testing.assert_close(a[:, :3, 3].std(0), t_std, rtol=0.1, atol=0)

    def test_center_is_fixed(self, gen):
        c = torch.tensor([10.0, -20.0, 300.0], dtype=torch.float64)
        D = random_poses(8, 20.0, 0.0, gen, center=c, dtype=torch.float64)
        torch.testing.assert_close(D[:, :3, :3] @ c + D[:, :3, 3], c.expand(8, 3))

    def test_errors(self):
        with pytest.raises(ValueError):
            random_poses(4, -1.0, 1.0)
        with pytest.raises(ValueError):
            random_poses(4, 1.0, [1.0, 2.0])
        with pytest.raises(ValueError):
            random_poses(-1, 1.0, 1.0)
