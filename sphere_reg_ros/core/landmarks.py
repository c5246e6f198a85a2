"""3D landmarks in world RAS millimetres: from label-map centroids, CSV/JSON files, arrays.

A landmark set is ``(names, points)``: ``names`` a list of K strings, ``points`` a ``(K, 3)``
float64 array of world RAS mm (the frame of :class:`~sphere_reg_ros.core.volume.Volume`'s
affine). mTRE is measured on such points (docs/ARCHITECTURE.md, Evaluation protocol).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sphere_reg_ros.core.volume import Volume

__all__ = [
    "LandmarkError",
    "as_landmarks",
    "landmarks_from_labels",
    "load_landmarks",
    "save_landmarks",
]

_LPS_FLIP = np.array([-1.0, -1.0, 1.0])


class LandmarkError(ValueError):
    """Bad landmark input; the message names the file (or source) and the problem."""


def as_landmarks(points: Any, *, source: str = "landmarks") -> np.ndarray:
    """Validate and convert points to a ``(K, 3)`` float64 array (K >= 1, all finite).

    Accepts anything ``np.asarray`` takes and torch tensors (any device); a single
    ``(3,)`` point becomes ``(1, 3)``. ``source`` names the input in error messages.
    """
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    try:
        arr = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LandmarkError(f"{source}: landmarks are not numeric ({exc})") from exc
    if arr.ndim == 1 and arr.shape == (3,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise LandmarkError(f"{source}: landmarks must have shape (K, 3), K >= 1, not {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise LandmarkError(f"{source}: landmarks contain NaN or infinite coordinates")
    return arr


def landmarks_from_labels(
    labels: Volume,
    ids: Iterable[int] | None = None,
    *,
    structures: Mapping[int, str] | None = None,
    min_voxels: int = 10,
) -> tuple[list[str], np.ndarray]:
    """Centroids of labelled structures, in world RAS mm.

    Args:
        labels: label map (integer-valued data; 0 = background).
        ids: label ids to use, in this order; default every non-zero id present with at least
            ``min_voxels`` voxels (ascending). An explicitly requested id with fewer voxels is
            an error.
        structures: ``{id: name}``; ids without a name are called ``"label_<id>"``.
        min_voxels: smallest structure (voxels) that gives a landmark.
    Returns:
        ``(names, points)``, points ``(K, 3)`` world RAS mm: the mean voxel-centre position of each
        structure (which, for a curved structure, may lie outside it).
    """
    if min_voxels < 1:
        raise LandmarkError(f"{labels.source}: min_voxels must be >= 1, got {min_voxels}")
    data = labels.data
    lo, hi = float(data.min()), float(data.max())
    if lo < 0 or not np.array_equal(data, np.round(data)):
        raise LandmarkError(f"{labels.source}: not a label map (needs non-negative integer values)")
    n_labels = int(hi) + 1
    count = np.zeros(n_labels)
    sums = np.zeros((n_labels, 3))
    jj, kk = np.meshgrid(np.arange(data.shape[1]), np.arange(data.shape[2]), indexing="ij")
    jj, kk = jj.ravel().astype(np.float64), kk.ravel().astype(np.float64)
    for i in range(data.shape[0]):  # slice by slice: no full-size index arrays
        lab = data[i].ravel().astype(np.intp)
        c = np.bincount(lab, minlength=n_labels)
        count += c
        sums[:, 0] += i * c
        sums[:, 1] += np.bincount(lab, weights=jj, minlength=n_labels)
        sums[:, 2] += np.bincount(lab, weights=kk, minlength=n_labels)
    if ids is None:
        chosen = [k for k in range(1, n_labels) if count[k] >= min_voxels]
    else:
        chosen = [int(k) for k in ids]
        for k in chosen:
            have = int(count[k]) if 0 <= k < n_labels else 0
            if have < min_voxels:
                raise LandmarkError(
                    f"{labels.source}: label {k} has {have} voxels (min_voxels={min_voxels})"
                )
    if not chosen:
        raise LandmarkError(f"{labels.source}: no label with at least {min_voxels} voxels")
    idx = np.asarray(chosen)
    centroids = sums[idx] / count[idx, None]
    names = [(structures or {}).get(k, f"label_{k}") for k in chosen]
    return names, labels.voxel_to_world(centroids)


def load_landmarks(path: str | Path, *, space: str = "RAS") -> tuple[list[str], np.ndarray]:
    """Read landmarks from CSV or JSON; coordinates in mm, returned in world RAS.

    CSV: columns ``name,x,y,z`` or ``x,y,z``, with or without a header row (header names are
    case-insensitive; ``label`` is accepted for ``name``); blank lines and ``#`` lines ignored.
    JSON: ``[{"name": ..., "x": ..., "y": ..., "z": ...}, ...]`` (name optional),
    ``[[x, y, z], ...]``, or ``{"points": [[x, y, z], ...], "names": [...] (optional)}``.
    Unnamed points are called ``"p0"``, ``"p1"``, ...

    Args:
        space: ``"RAS"`` (default) or ``"LPS"`` (x and y are negated on reading).
    Raises:
        LandmarkError: missing/unreadable file, unknown format, malformed rows, no points.
    """
    p = Path(path)
    if space.upper() not in ("RAS", "LPS"):
        raise LandmarkError(f"{p}: space must be 'RAS' or 'LPS', got {space!r}")
    if not p.is_file():
        raise LandmarkError(f"{p}: no such file")
    suffix = p.suffix.lower()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LandmarkError(f"{p}: cannot read ({exc})") from exc
    if suffix == ".csv":
        names, rows = _parse_csv(text, p)
    elif suffix == ".json":
        names, rows = _parse_json(text, p)
    else:
        raise LandmarkError(f"{p}: unsupported landmark format {suffix!r} (expected .csv or .json)")
    points = as_landmarks(rows, source=str(p))
    if len(names) != len(points):
        raise LandmarkError(f"{p}: {len(names)} names for {len(points)} points")
    if space.upper() == "LPS":
        points = points * _LPS_FLIP
    return names, points


def save_landmarks(path: str | Path, names: Sequence[str], points: Any) -> None:
    """Write landmarks (world RAS mm) as CSV (``name,x,y,z`` header) or JSON (list of dicts).

    The format follows the suffix (``.csv`` or ``.json``); floats are written exactly.
    """
    p = Path(path)
    pts = as_landmarks(points, source=str(p))
    if len(names) != len(pts):
        raise LandmarkError(f"{p}: {len(names)} names for {len(pts)} points")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with open(p, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["name", "x", "y", "z"])
            writer.writerows([str(n), *(repr(float(v)) for v in pt)] for n, pt in zip(names, pts))
    elif suffix == ".json":
        items = [
            {"name": str(n), "x": float(a), "y": float(b), "z": float(c)}
            for n, (a, b, c) in zip(names, pts)
        ]
        p.write_text(json.dumps(items, indent=1))
    else:
        raise LandmarkError(f"{p}: unsupported landmark format {suffix!r} (expected .csv or .json)")


def _floats(values: Sequence[Any], where: str) -> list[float]:
    """Exactly three floats from ``values``; LandmarkError naming ``where`` otherwise."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise LandmarkError(f"{where}: coordinates {list(values)} are not numbers") from exc
    if len(out) != 3:
        raise LandmarkError(f"{where}: expected 3 coordinates, got {len(out)}")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse_csv(text: str, path: Path) -> tuple[list[str], list[list[float]]]:
    rows = [
        r
        for r in csv.reader(text.splitlines())
        if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")
    ]
    rows = [[c.strip() for c in r] for r in rows]
    if not rows:
        raise LandmarkError(f"{path}: no landmarks in file")
    header = None
    if not all(_is_number(c) for c in rows[0][-3:]):
        header, rows = [c.lower() for c in rows[0]], rows[1:]
        if not {"x", "y", "z"} <= set(header):
            raise LandmarkError(f"{path}: CSV header {header} lacks x, y, z columns")
    names: list[str] = []
    points: list[list[float]] = []
    for n, row in enumerate(rows, start=2 if header else 1):
        where = f"{path}: row {n}"
        if header is not None:
            if len(row) != len(header):
                raise LandmarkError(f"{where}: {len(row)} columns, header has {len(header)}")
            cell = dict(zip(header, row))
            points.append(_floats([cell["x"], cell["y"], cell["z"]], where))
            names.append(cell.get("name", cell.get("label", f"p{len(names)}")))
        elif len(row) == 3:
            points.append(_floats(row, where))
            names.append(f"p{len(names)}")
        elif len(row) == 4:
            points.append(_floats(row[1:], where))
            names.append(row[0])
        else:
            raise LandmarkError(f"{where}: expected x,y,z or name,x,y,z, got {len(row)} columns")
    if not points:
        raise LandmarkError(f"{path}: no landmarks in file")
    return names, points


def _parse_json(text: str, path: Path) -> tuple[list[str], list[list[float]]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LandmarkError(f"{path}: invalid JSON ({exc})") from exc
    if isinstance(obj, dict):
        if "points" not in obj:
            raise LandmarkError(f"{path}: JSON object has no 'points' key")
        raw = obj["points"]
        if not isinstance(raw, list):
            raise LandmarkError(f"{path}: 'points' must be a list")
        points = [_floats(pt, f"{path}: point {n}") for n, pt in enumerate(raw)]
        names = [str(s) for s in obj.get("names", [f"p{n}" for n in range(len(points))])]
        return names, points
    if not isinstance(obj, list) or not obj:
        raise LandmarkError(f"{path}: expected a non-empty list of points or {{'points': ...}}")
    names, points = [], []
    for n, item in enumerate(obj):
        where = f"{path}: point {n}"
        if isinstance(item, dict):
            if not {"x", "y", "z"} <= set(item):
                raise LandmarkError(f"{where}: needs keys x, y, z, got {sorted(item)}")
            points.append(_floats([item["x"], item["y"], item["z"]], where))
            names.append(str(item.get("name", f"p{n}")))
        else:
            points.append(_floats(item if isinstance(item, list) else [item], where))
            names.append(f"p{n}")
    return names, points
