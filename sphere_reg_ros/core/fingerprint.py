"""Identity of a CT and of a detector, and what differs between two: the CT fingerprint that
checkpoints and benchmark files store (:func:`ct_fingerprint`), the legacy layout older
checkpoints hold, and the physical comparison of C-arm geometries. The rules are those of
:func:`.checkpoint.load_checkpoint` (module docstring of :mod:`.checkpoint`); re-exported there."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .carm import CarmGeometry
from .volume import Volume

__all__ = ["ct_fingerprint", "describe_ct", "ct_differences", "geometry_differences"]

_GEOMETRY_RTOL = 1e-3


def ct_fingerprint(ct: Volume) -> dict:
    """Identity of a CT: ``{"shape", "spacing_mm", "affine", "sha256"}`` (plain JSON values).

    ``shape``: the grid ``[i, j, k]`` (voxels); ``spacing_mm``: the voxel size (mm) along
    ``i, j, k``; ``affine``: the 4×4 voxel → world RAS (mm) matrix as nested lists; ``sha256``:
    hex digest of the voxel values (HU) as C-ordered float32, so it changes with any voxel and is
    the same for every file format holding the same values. The hash does not cover the grid:
    two CTs are the same when all four entries agree, which :func:`ct_differences` checks.
    Checkpoints and benchmark files store this dictionary.
    """
    data = np.ascontiguousarray(ct.data, dtype=np.float32)
    return {
        "shape": list(ct.shape),
        "spacing_mm": [float(s) for s in ct.spacing],
        "affine": np.asarray(ct.affine).tolist(),
        "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
    }


def _is_legacy(fingerprint: dict) -> bool:
    """Whether ``fingerprint`` has the layout of checkpoints written before :func:`ct_fingerprint`
    took its current form (keys ``sha256``, ``shape``, ``spacing``, ``origin``, ``description``)."""
    return "affine" not in fingerprint and "spacing" in fingerprint


def _legacy_sha256(ct: Volume) -> str:
    """The ``sha256`` that checkpoints with a legacy fingerprint (:func:`_is_legacy`) hold for
    ``ct``: grid shape, affine rounded to 1e-4 mm and a strided subsample of ~2¹⁸ HU values
    rounded to 0.1 HU. Used only to check such checkpoints against a CT; new files store
    :func:`ct_fingerprint`."""
    data = np.ascontiguousarray(ct.data).reshape(-1)
    stride = max(1, data.size // (1 << 18))
    sample = np.round(data[::stride].astype(np.float64) * 10.0).astype(np.int64)
    h = hashlib.sha256()
    h.update(np.asarray(ct.shape, dtype=np.int64).tobytes())
    h.update(np.round(ct.affine, 4).astype(np.float64).tobytes())
    h.update(sample.tobytes())
    return h.hexdigest()


def _grid(fingerprint: dict) -> dict[str, Any]:
    """Shape (voxels), spacing (mm), origin (mm) and, when known, the direction cosines ``(3, 3)``
    of a fingerprint of either layout (absent entries are None)."""
    affine = fingerprint.get("affine")
    if affine is not None:
        A = np.asarray(affine, dtype=np.float64)
        spacing = np.asarray(fingerprint.get("spacing_mm"), dtype=np.float64)
        return {
            "shape": fingerprint.get("shape"),
            "spacing": spacing,
            "origin": A[:3, 3],
            "direction": A[:3, :3] / np.where(spacing > 0, spacing, 1.0),
        }
    return {
        "shape": fingerprint.get("shape"),
        "spacing": fingerprint.get("spacing"),
        "origin": fingerprint.get("origin"),
        "direction": None,
    }


def describe_ct(fingerprint: dict) -> str:
    """A CT fingerprint of either layout in words: ``"64x64x64 voxels of 2.00x2.00x2.00 mm"``."""
    g = _grid(fingerprint)
    shape = "x".join(str(int(n)) for n in g["shape"] or [])
    spacing = "x".join(f"{float(v):.2f}" for v in ([] if g["spacing"] is None else g["spacing"]))
    return f"{shape} voxels of {spacing} mm"


def geometry_differences(expected: CarmGeometry, actual: CarmGeometry) -> list[str]:
    """Physical differences between two C-arm geometries (empty if they match; see module doc)."""

    def phys(g: CarmGeometry) -> dict[str, float]:
        return {
            "sdd (mm)": g.sdd,
            "detector width (mm)": g.width * g.delx,
            "detector height (mm)": g.height * g.dely,
            "x0 (mm)": g.x0,
            "y0 (mm)": g.y0,
        }

    a, b = phys(expected), phys(actual)
    scale = max(abs(a["detector width (mm)"]), abs(a["detector height (mm)"]), 1.0)
    out = []
    for k in a:
        tol = _GEOMETRY_RTOL * (abs(a[k]) if k.startswith(("sdd", "detector")) else scale)
        if abs(a[k] - b[k]) > tol:
            out.append(f"{k} {b[k]:g} vs {a[k]:g} in the checkpoint")
    return out


def ct_differences(expected: dict, actual: dict) -> list[str]:
    """What differs between two CT fingerprints (:func:`ct_fingerprint`); empty if they match.

    The grid is compared first: shape, spacing and origin (1e-3 mm), orientation (direction
    cosines, 1e-4); on the same grid, the voxel hash. A legacy fingerprint (:func:`_is_legacy`)
    has no orientation, and its hash can be compared only with another legacy one: on the same
    grid, a pair of different layouts is reported as such (check the CT volume itself with
    :func:`load_checkpoint`, which computes the hash the stored fingerprint needs).
    """
    e, a = _grid(expected), _grid(actual)

    def fmt(v) -> str:
        return "x".join(f"{float(x):g}" for x in v)

    out = []
    if e["shape"] is not None and a["shape"] is not None and list(e["shape"]) != list(a["shape"]):
        out.append(f"shape {fmt(a['shape'])} voxels vs {fmt(e['shape'])} voxels")
    for key in ("spacing", "origin"):
        ev, av = e[key], a[key]
        if ev is not None and av is not None and not np.allclose(ev, av, atol=1e-3):
            out.append(f"{key} {fmt(av)} mm vs {fmt(ev)} mm")
    if e["direction"] is not None and a["direction"] is not None:
        if not np.allclose(e["direction"], a["direction"], atol=1e-4):
            out.append("orientation (direction cosines of the affine) differs")
    if out or expected.get("sha256") == actual.get("sha256"):
        return out
    if _is_legacy(expected) != _is_legacy(actual):
        return [
            "same grid, but one CT fingerprint has the legacy layout, whose voxel hash cannot be "
            "compared with the current one (check the CT volume itself, not its fingerprint)"
        ]
    return ["same grid but different voxel values"]


def _ct_check(stored: dict, actual: dict, legacy_sha256: str | None) -> list[str]:
    """:func:`ct_differences` of a stored fingerprint and the given CT's ``actual`` one. A legacy
    stored fingerprint (:func:`_is_legacy`) is compared on its grid, then with ``legacy_sha256``
    (the given CT's hash in that layout; None when only a fingerprint was given)."""
    if not _is_legacy(stored) or legacy_sha256 is None:
        return ct_differences(stored, actual)
    grid = ct_differences(stored, {**actual, "sha256": stored.get("sha256")})
    if grid or legacy_sha256 == stored.get("sha256"):
        return grid
    return ["same grid but different voxel values"]
