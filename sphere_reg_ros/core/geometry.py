"""Rigid-body geometry: SE(3) exp/log, geodesic distances on SE(3) and SO(4), random poses;
conversions to other pose formats in :mod:`.pose_formats` (reachable from here too).

Conventions (see :mod:`sphere_reg_ros.core`):

* A pose is a ``(B, 4, 4)`` tensor ``T_ct_from_carm`` (mm); any number of leading batch
  dimensions ``...`` is accepted, any float dtype and device. Half precision is computed in
  float32 internally and cast back.
* Tangent vectors are ``(B, 6)`` = ``(v, w)``: translation part first (mm), rotation part
  second (rad). ``se3_exp`` maps them to poses; increments are left-multiplied,
  ``T <- se3_exp(delta) @ T``, so ``delta`` is expressed in the CT world frame.
* Small angles use Taylor series below ``theta < eps**(1/6)`` (eps of the dtype, ~2.5e-3 rad in
  float64, ~0.07 rad in float32), where the truncation error is below eps; every branch is
  finite for every input, so gradients are finite at zero angle. ``so3_log`` takes the rotation
  axis from the symmetric part of ``R`` near ``pi``.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "hat",
    "vee",
    "so3_exp",
    "so3_log",
    "se3_exp",
    "se3_log",
    "se3_inverse",
    "se3_adjoint",
    "left_increment",
    "make_pose",
    "geodesic_se3",
    "so4_embed",
    "geodesic_so4",
    "DEFAULT_SO4_LENGTH_MM",
    "random_poses",
]

#: Characteristic length ``f`` (mm) of the SO(4) embedding: about the size of the anatomy.
DEFAULT_SO4_LENGTH_MM = 200.0

#: the conversions to other pose formats, which live in :mod:`.pose_formats` (they build on this
#: module) and are reached from here too (``from .geometry import pose_to_translation_quaternion``)
_FORMATS = (
    "to_rigid_transform",
    "from_rigid_transform",
    "matrix_to_quaternion_xyzw",
    "quaternion_xyzw_to_matrix",
    "pose_to_translation_quaternion",
    "translation_quaternion_to_pose",
)

_PI_BRANCH_COS = -0.7  # so3_log takes the axis from sym(R) when cos(theta) < this (theta > 2.35)


# ----------------------------------------------------------------------------- helpers
def _check(x: torch.Tensor, tail: tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() < len(tail) or tuple(x.shape[x.dim() - len(tail) :]) != tail:
        want = "(..., " + ", ".join(map(str, tail)) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def _up(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> float32 for the computation; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _small(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps ** (1.0 / 6.0)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dim with gradient 0 (not NaN) at x = 0."""
    sq = (x * x).sum(-1)
    pos = sq > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq)
    )


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


def _coeffs(theta2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 of t^2 = ``theta2``."""
    small = theta2 < _small(theta2.dtype) ** 2
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    th = torch.sqrt(t2)
    s = torch.sin(th)
    a = torch.where(small, 1 - theta2 / 6 + theta2**2 / 120, s / th)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2**2 / 720, 2 * torch.sin(th / 2) ** 2 / t2)
    c = torch.where(small, 1.0 / 6 - theta2 / 120 + theta2**2 / 5040, (th - s) / (t2 * th))
    return a, b, c


# ----------------------------------------------------------------------------- SO(3)
def hat(w: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric matrix of ``w`` (..., 3) -> (..., 3, 3), ``hat(w) @ x = w x x``."""
    _check(w, (3,), "w")
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*w.shape[:-1], 3, 3)


def vee(W: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hat`: vector (..., 3) of the skew-symmetric part of ``W`` (..., 3, 3)."""
    _check(W, (3, 3), "W")
    return 0.5 * torch.stack(
        [W[..., 2, 1] - W[..., 1, 2], W[..., 0, 2] - W[..., 2, 0], W[..., 1, 0] - W[..., 0, 1]], -1
    )


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) of the rotation vector ``w`` (..., 3, rad), Rodrigues."""
    _check(w, (3,), "w")
    x = _up(w)
    a, b, _ = _coeffs((x * x).sum(-1))
    W = hat(x)
    R = _eye(3, x) + a[..., None, None] * W + b[..., None, None] * (W @ W)
    return R.to(w.dtype)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Rotation vector (..., 3, rad, norm in [0, pi]) of the rotation matrix ``R`` (..., 3, 3)."""
    _check(R, (3, 3), "R")
    M = _up(R)
    s = vee(M)  # sin(theta) * axis
    c = ((M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2] - 1) / 2).clamp(-1.0, 1.0)
    s2 = (s * s).sum(-1)
    sn = _safe_norm(s)
    theta = torch.atan2(sn, c)
    # small angle: theta / sin(theta) = asin(x) / x, x = |s|
    small = (s2 < _small(M.dtype) ** 2) & (c > 0)
    w_small = s * (1 + s2 / 6 + 3 * s2**2 / 40)[..., None]
    # generic: theta / sin(theta) * s
    w_gen = s * (theta / torch.where(sn > 0, sn, torch.ones_like(sn)))[..., None]
    # near pi: (sym(R) - c I) / (1 - c) = k k^T, axis from its largest column, sign from s
    near_pi = c < _PI_BRANCH_COS
    one_m_c = torch.where(near_pi, 1 - c, torch.ones_like(c))
    Bk = (0.5 * (M + M.transpose(-1, -2)) - c[..., None, None] * _eye(3, M)) / one_m_c[
        ..., None, None
    ]
    diag = torch.diagonal(Bk, dim1=-2, dim2=-1)
    i = diag.argmax(-1, keepdim=True)
    col = torch.gather(Bk, -1, i[..., None, :].expand(*Bk.shape[:-1], 1)).squeeze(-1)
    k = col / torch.sqrt(torch.gather(diag, -1, i).clamp_min(1e-6))
    k = torch.where((k * s).sum(-1, keepdim=True) < 0, -k, k)
    w_pi = k * theta[..., None]
    w = torch.where(small[..., None], w_small, torch.where(near_pi[..., None], w_pi, w_gen))
    return w.to(R.dtype)


# ----------------------------------------------------------------------------- SE(3)
def make_pose(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Homogeneous pose (..., 4, 4) from rotation ``R`` (..., 3, 3) and translation ``t`` (..., 3)."""
    _check(R, (3, 3), "R")
    _check(t, (3,), "t")
    if R.shape[:-2] != t.shape[:-1]:
        raise ValueError(f"batch shapes differ: R {tuple(R.shape)}, t {tuple(t.shape)}")
    top = torch.cat([R, t.to(R.dtype)[..., None]], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Pose (..., 4, 4) of the tangent vector ``xi`` = (v [mm], w [rad]) of shape (..., 6)."""
    _check(xi, (6,), "xi")
    x = _up(xi)
    v, w = x[..., :3], x[..., 3:]
    a, b, c = _coeffs((w * w).sum(-1))
    W = hat(w)
    W2 = W @ W
    I3 = _eye(3, x)
    R = I3 + a[..., None, None] * W + b[..., None, None] * W2
    V = I3 + b[..., None, None] * W + c[..., None, None] * W2
    return make_pose(R, (V @ v[..., None])[..., 0]).to(xi.dtype)


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """Tangent vector (..., 6) = (v [mm], w [rad], |w| <= pi) of the pose ``T`` (..., 4, 4)."""
    _check(T, (4, 4), "T")
    M = _up(T)
    R, t = M[..., :3, :3], M[..., :3, 3]
    w = so3_log(R)
    theta2 = (w * w).sum(-1)
    small = theta2 < _small(M.dtype) ** 2
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    half = torch.sqrt(t2) / 2  # theta / 2 <= pi / 2: sin(half) > 0
    d_gen = (1 - half * torch.cos(half) / torch.sin(half)) / t2
    d = torch.where(small, 1.0 / 12 + theta2 / 720 + theta2**2 / 30240, d_gen)
    W = hat(w)
    V_inv = _eye(3, M) - 0.5 * W + d[..., None, None] * (W @ W)
    v = (V_inv @ t[..., None])[..., 0]
    return torch.cat([v, w], -1).to(T.dtype)


def se3_inverse(T: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse (..., 4, 4) of the rigid pose ``T`` (..., 4, 4): (R^T, -R^T t)."""
    _check(T, (4, 4), "T")
    Rt = T[..., :3, :3].transpose(-1, -2)
    return make_pose(Rt, -(Rt @ T[..., :3, 3:])[..., 0])


def se3_adjoint(T: torch.Tensor) -> torch.Tensor:
    """Adjoint (..., 6, 6) of the rigid pose ``T`` (..., 4, 4) for tangent vectors ``(v, w)``:
    ``[[R, hat(t) R], [0, R]]``, so that ``T exp(xi) T^-1 = exp(Ad_T xi)``."""
    _check(T, (4, 4), "T")
    R, t = T[..., :3, :3], T[..., :3, 3]
    top = torch.cat([R, hat(t) @ R], -1)
    bottom = torch.cat([torch.zeros_like(R), R], -1)
    return torch.cat([top, bottom], -2)


def left_increment(T: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``se3_exp(delta) @ T``: apply the increment ``delta`` (..., 6; world frame) to ``T`` (..., 4, 4)."""
    _check(T, (4, 4), "T")
    _check(delta, (6,), "delta")
    return se3_exp(delta.to(T.dtype)) @ T


# ----------------------------------------------------------------------------- distances
def geodesic_se3(T_a: torch.Tensor, T_b: torch.Tensor, length_scale: float = 1.0) -> torch.Tensor:
    """Left-invariant distance ``|(v / length_scale, w)|`` of ``se3_log(T_a^-1 T_b)``, shape (...).

    ``T_a``, ``T_b``: (..., 4, 4) poses, broadcastable. ``length_scale`` (mm per rad) converts the
    translation part (mm) to the scale of the rotation part (rad): e.g. 1.0 weighs 1 mm like 1 rad,
    200.0 weighs 200 mm like 1 rad. Invariant under ``T -> G T`` (a change of the CT world frame),
    not under ``T -> T G``. The gradient at ``T_a == T_b`` is 0 (a subgradient).
    """
    _check(T_a, (4, 4), "T_a")
    _check(T_b, (4, 4), "T_b")
    if not length_scale > 0:
        raise ValueError(f"length_scale must be > 0, got {length_scale}")
    xi = se3_log(se3_inverse(T_a) @ T_b.to(T_a.dtype))
    return _safe_norm(torch.cat([xi[..., :3] / length_scale, xi[..., 3:]], -1))


def _polar(M: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor of non-singular ``M`` (..., n, n) by scaled Newton iteration.

    Same result as ``U @ Vh`` of the SVD, but differentiable where singular values repeat (the
    SVD's backward divides by their differences and gives NaN for the SO(4) embedding).
    """
    X = M
    tol = torch.finfo(M.dtype).eps ** 0.5
    converged = False
    for _ in range(30):
        Xi = torch.linalg.inv(X)
        g = torch.sqrt(torch.linalg.matrix_norm(Xi) / torch.linalg.matrix_norm(X))[..., None, None]
        X_new = 0.5 * (g * X + Xi.transpose(-1, -2) / g)
        step = (X_new - X).abs().amax() if X.numel() else torch.zeros(())
        X = X_new
        if converged:  # one more step after |step| < sqrt(eps): quadratic convergence -> eps
            break
        converged = bool(step < tol)
    return X


def so4_embed(
    T: torch.Tensor, f: float = DEFAULT_SO4_LENGTH_MM, project: bool = False
) -> torch.Tensor:
    """SO(4) embedding M = [[R, t/(2f)], [-(t/(2f))^T R, 1]] (..., 4, 4) of ``T`` (..., 4, 4).

    ``f`` (mm) is the characteristic length: translations are measured in units of ``2 f``, so a
    translation of ``f`` weighs about like a rotation of 0.5 rad. Choose it about the size of
    the anatomy / working volume (default 200 mm). ``M`` is orthogonal up to ``O(|t|^2/f^2)``
    (``M^T M = I + diag(R^T a a^T R, |a|^2)``, ``a = t/(2f)``) and ``det M = 1 + |a|^2 > 0``, and
    ``M(T1 T2) = M(T1) M(T2)`` up to the same order. With ``project=True`` the nearest orthogonal
    matrix (polar factor, det +1) is returned, computed by Newton iteration (see ``_polar``).
    """
    _check(T, (4, 4), "T")
    if not f > 0:
        raise ValueError(f"f must be > 0 (mm), got {f}")
    R, a = T[..., :3, :3], T[..., :3, 3] / (2 * f)
    b = -(a[..., None, :] @ R)  # (..., 1, 3)
    top = torch.cat([R, a[..., None]], -1)
    bottom = torch.cat([b, torch.ones_like(b[..., :1])], -1)
    M = torch.cat([top, bottom], -2)
    if project:
        M = _polar(_up(M)).to(T.dtype)
    return M


def geodesic_so4(
    T_a: torch.Tensor, T_b: torch.Tensor, f: float = DEFAULT_SO4_LENGTH_MM, project: bool = False
) -> torch.Tensor:
    """Chordal SO(4) distance ``|M(T_a) - M(T_b)|_F`` (...) of poses (..., 4, 4); ``f`` in mm.

    Left- and right-invariant (``T -> G T`` and ``T -> T G``) up to a relative error of order
    ``|t|^2/f^2`` (with or without ``project``: ``M`` is a homomorphism only to that order), so
    larger ``f`` buys invariance at the cost of weighing translations less. The gradient at
    ``T_a == T_b`` is 0 (a subgradient).
    """
    diff = so4_embed(T_a, f, project) - so4_embed(T_b.to(T_a.dtype), f, project)
    return _safe_norm(diff.flatten(-2))


# ----------------------------------------------------------------------------- sampling
def _std3(x: float | Sequence[float], name: str) -> torch.Tensor:
    s = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if s.numel() == 1:
        s = s.expand(3)
    if s.numel() != 3 or not bool(torch.all(torch.isfinite(s) & (s >= 0))):
        raise ValueError(f"{name} must be one or three finite values >= 0, got {x}")
    return s


def random_poses(
    n: int,
    rot_deg: float | Sequence[float],
    trans_mm: float | Sequence[float],
    generator: torch.Generator | None = None,
    *,
    center: Sequence[float] | torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random left-multiplied perturbations ``D`` (n, 4, 4): use as ``T_perturbed = D @ T``.

    The rotation vector is drawn from N(0, diag(rot_deg)^2) (degrees -> rad, per CT world axis)
    and applied about ``center`` (3, mm, CT world; default the origin -- pass the volume centre
    or isocentre, else a rotation also swings the C-arm about the origin); then a translation
    from N(0, diag(trans_mm)^2) (mm) is added. ``rot_deg`` / ``trans_mm`` are a standard
    deviation or three, one per axis. Drawn on the CPU with ``generator`` (reproducible), then
    moved to ``device``.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    sr, st = _std3(rot_deg, "rot_deg") * (torch.pi / 180), _std3(trans_mm, "trans_mm")
    w = torch.randn(n, 3, generator=generator, dtype=torch.float64) * sr
    t = torch.randn(n, 3, generator=generator, dtype=torch.float64) * st
    R = so3_exp(w)
    if center is not None:
        c = torch.as_tensor(center, dtype=torch.float64).reshape(-1)
        if c.numel() != 3:
            raise ValueError(f"center must have 3 values, got {c.numel()}")
        t = t + c - (R @ c)
    return make_pose(R, t).to(dtype=dtype, device=device)


def __getattr__(name: str):
    """The names of :data:`_FORMATS`, from :mod:`.pose_formats` (imported on first use: it
    imports this module)."""
    if name in _FORMATS:
        from . import pose_formats

        return getattr(pose_formats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
