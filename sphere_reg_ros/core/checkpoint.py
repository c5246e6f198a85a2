"""Checkpoints: both networks, the C-arm geometry, the CT's fingerprint, the pose distribution.

A checkpoint is one ``torch.save`` file holding only plain containers, numbers, strings and
tensors, so it loads with ``torch.load(..., weights_only=True)`` (no pickled code runs).
Layout (``FORMAT_VERSION`` 1)::

    {"format": "sphere_reg_ros.checkpoint", "format_version": 1,
     "similarity": {"config": {...}, "state_dict": {...}},
     "regressor": {"config": {...}, "state_dict": {...}},
     "geometry": CarmGeometry.to_dict() at the training resolution,
     "pose_distribution": {...}, "center_world": [x, y, z] (mm),
     "ct": {"source": fingerprint, "working": fingerprint},  # ct_fingerprint
     "training": {"seed", "steps", "wall_time_s", "validation": [...], ...},
     "weights_sha256": digest of both state dicts}

Written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never
leaves a half-written checkpoint under the final name. Every problem on loading raises
:class:`CheckpointError` naming the file and what is wrong.

Compatibility rules of :func:`load_checkpoint`:

* CT: the given CT must match the fingerprint of the CT the model was trained on, as given
  (``source``) or as resampled for training (``working``); else the message says what differs
  (grid shape, spacing, origin, orientation, or — same grid — the voxel values). Checkpoints
  written before the fingerprint took its current layout (``spacing``/``origin``/``description``
  and a hash of a voxel subsample) still load: their CT is checked on its grid and with the hash
  of that layout, computed from the given CT volume.
* Geometry: detectors are compared physically — source-to-detector distance, detector size
  (``width·delx``, ``height·dely``) and principal-point offsets ``x0, y0`` (relative tolerance
  1e-3) — so a geometry of any pixel count that covers the same field of view matches (the
  models resample images to their own resolution).
* ``force=True`` turns both refusals into a :class:`CheckpointWarning`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .carm import CarmGeometry
from .fingerprint import (
    _ct_check,
    _is_legacy,
    _legacy_sha256,
    ct_differences,
    ct_fingerprint,
    describe_ct,
    geometry_differences,
)
from .regressor import PoseRegressor, RegressorConfig
from .sampling import PoseDistribution
from .similarity import SimilarityConfig, SimilarityNet
from .volume import Volume

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWarning",
    "Bundle",
    "save_checkpoint",
    "load_checkpoint",
    "geometry_differences",
    "ct_differences",
    "default_checkpoint_path",
    "plain_metadata",
    "ct_fingerprint",
    "describe_ct",
]

log = logging.getLogger(__name__)

FORMAT = "sphere_reg_ros.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class CheckpointWarning(UserWarning):
    """A checkpoint used despite a mismatch (``force=True``)."""


def default_checkpoint_path() -> Path:
    """The shipped checkpoint for the embedded example CT (64² images)."""
    return Path(__file__).resolve().parent.parent / "data" / "model_example_ct_64.pt"


@dataclass
class Bundle:
    """A loaded checkpoint: both networks (in eval mode, on ``map_location``) and their context.

    Attributes:
        path: the file.
        similarity, regressor: the networks.
        geometry: C-arm geometry at the training resolution.
        pose_distribution, center_world: the training poses (``center_world`` (3,) mm).
        ct_fingerprint: ``{"source": ..., "working": ...}`` fingerprints of the training CT.
        training: metadata (seed, steps, wall time, validation history, spacing, ...).
    """

    path: Path
    similarity: SimilarityNet
    regressor: PoseRegressor
    geometry: CarmGeometry
    pose_distribution: PoseDistribution
    center_world: np.ndarray
    ct_fingerprint: dict
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def resolution(self) -> tuple[int, int]:
        """``(height, width)`` of the images both networks were trained on."""
        return self.geometry.height, self.geometry.width

    @property
    def working_spacing_mm(self) -> float | None:
        """CT spacing (mm) the DRRs were rendered from in training (None: the CT as given)."""
        return self.training.get("spacing_mm")


# ----------------------------------------------------------------------------- save
def _digest(*state_dicts: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for sd in state_dicts:
        for k in sorted(sd):
            h.update(k.encode())
            t = sd[k].detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def plain_metadata(value: Any, where: str = "training") -> Any:
    """``value`` as plain containers that ``torch.load(weights_only=True)`` accepts.

    dict (string keys), list/tuple (-> list), str (subclasses such as ``torch.__version__`` ->
    str), bool, int, float (numpy scalars -> Python), None and tensors pass; anything else is a
    ``ValueError`` naming where it was found.
    """
    if value is None or isinstance(value, (bool, torch.Tensor)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain_metadata(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_metadata(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"checkpoint metadata {where} is a {type(value).__name__}; use plain values")


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_checkpoint(
    path: str | Path,
    similarity: SimilarityNet,
    regressor: PoseRegressor,
    geometry: CarmGeometry,
    ct: Volume | dict,
    working_ct: Volume | dict | None = None,
    training: dict | None = None,
) -> Path:
    """Write a checkpoint atomically; returns the path.

    Args:
        similarity, regressor: the networks (any device; saved on CPU).
        geometry: C-arm geometry at the training resolution.
        ct: the CT as given for training (a Volume or its ``ct_fingerprint``).
        working_ct: the resampled CT the DRRs came from (default: same as ``ct``).
        training: metadata (plain values only: numbers, strings, lists, dicts).
    """
    path = Path(path)
    fp_source = ct_fingerprint(ct) if isinstance(ct, Volume) else dict(ct)
    fp_work = (
        fp_source
        if working_ct is None
        else (ct_fingerprint(working_ct) if isinstance(working_ct, Volume) else dict(working_ct))
    )
    sim_sd, reg_sd = _cpu_state(similarity), _cpu_state(regressor)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "similarity": {"config": similarity.config.to_dict(), "state_dict": sim_sd},
        "regressor": {"config": regressor.config.to_dict(), "state_dict": reg_sd},
        "geometry": geometry.to_dict(),
        "pose_distribution": asdict(regressor.pose_distribution),
        "center_world": [float(v) for v in regressor.center_world],
        "ct": {"source": fp_source, "working": fp_work},
        "training": plain_metadata(dict(training or {})),
        "weights_sha256": _digest(sim_sd, reg_sd),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ----------------------------------------------------------------------------- load
def _require(obj: Any, key: str, kind: type, path: Path, where: str = "") -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise CheckpointError(f"{path}: not a valid checkpoint (missing '{where}{key}')")
    value = obj[key]
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: not a valid checkpoint ('{where}{key}' is a "
            f"{type(value).__name__}, expected {kind.__name__})"
        )
    return value


def _refuse(path: Path, message: str, force: bool) -> None:
    if not force:
        raise CheckpointError(f"{path}: {message} (pass force=True / --force to use it anyway)")
    text = f"{path}: {message}; used anyway because force=True"
    log.warning(text)
    warnings.warn(text, CheckpointWarning, stacklevel=3)


def load_checkpoint(
    path: str | Path,
    ct: Volume | dict | None = None,
    geometry: CarmGeometry | None = None,
    force: bool = False,
    map_location: str | torch.device = "cpu",
) -> Bundle:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: the file.
        ct: the CT the models will be used with (Volume or fingerprint) — checked if given.
        geometry: the C-arm geometry they will be used with — checked physically if given.
        force: use the checkpoint despite a CT / geometry mismatch (with a warning).
        map_location: device for the networks.

    Raises:
        CheckpointError: missing, unreadable, corrupt or truncated file; another format or format
            version; inconsistent contents; made for another CT or geometry (unless ``force``).
    """
    path = Path(path)
    payload = _read(path)
    sim_cfg, reg_cfg, geom, dist, center, fps, sim_sd, reg_sd = _contents(payload, path)
    fp_source, fp_work = fps["source"], fps["working"]
    if ct is not None:
        actual = ct_fingerprint(ct) if isinstance(ct, Volume) else dict(ct)
        legacy = (
            _legacy_sha256(ct)
            if isinstance(ct, Volume) and (_is_legacy(fp_source) or _is_legacy(fp_work))
            else None
        )
        d_src, d_work = (_ct_check(fp, actual, legacy) for fp in (fp_source, fp_work))
        if d_src and d_work:
            best = d_src if len(d_src) <= len(d_work) else d_work
            _refuse(
                path, f"made for another CT ({describe_ct(fp_source)}): {'; '.join(best)}", force
            )
    if geometry is not None:
        diffs = geometry_differences(geom, geometry)
        if diffs:
            _refuse(path, f"made for another C-arm geometry: {'; '.join(diffs)}", force)

    similarity, regressor = _networks(path, sim_cfg, sim_sd, reg_cfg, reg_sd, center, dist)
    similarity.to(map_location).eval()
    regressor.to(map_location).eval()
    return Bundle(
        path=path,
        similarity=similarity,
        regressor=regressor,
        geometry=geom,
        pose_distribution=dist,
        center_world=center,
        ct_fingerprint=dict(fps),
        training=dict(payload.get("training") or {}),
        format_version=payload["format_version"],
    )


def _read(path: Path) -> dict:
    """The payload of a checkpoint file (``weights_only=True``) of this format and version."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    if not head:
        raise CheckpointError(
            f"{path}: corrupt, truncated or not a checkpoint (empty file, 0 bytes)"
        )
    if not head.startswith(b"PK") and head[:1] != b"\x80":  # torch.save's zip, or a legacy pickle
        raise CheckpointError(
            f"{path}: corrupt, truncated or not a checkpoint (not a PyTorch file)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF/unsupported-global errors all mean "unusable file"
        raise CheckpointError(
            f"{path}: corrupt, truncated or not a checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a sphere_reg_ros checkpoint (no '{FORMAT}' format tag)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, but this version of "
            f"sphere_reg_ros reads version {FORMAT_VERSION}; retrain or convert it"
        )
    return payload


def _contents(payload: dict, path: Path) -> tuple:
    """``(similarity config, regressor config, geometry, pose distribution, centre, CT
    fingerprints, similarity state, regressor state)`` of a payload, the weights checked against
    their digest."""
    sim_part = _require(payload, "similarity", dict, path)
    reg_part = _require(payload, "regressor", dict, path)
    sim_sd = _require(sim_part, "state_dict", dict, path, "similarity.")
    reg_sd = _require(reg_part, "state_dict", dict, path, "regressor.")
    digest = payload.get("weights_sha256")
    if digest != _digest(sim_sd, reg_sd):
        raise CheckpointError(
            f"{path}: corrupt checkpoint (the weights do not match their stored digest)"
        )
    try:
        sim_cfg = SimilarityConfig.from_dict(
            _require(sim_part, "config", dict, path, "similarity.")
        )
        reg_cfg = RegressorConfig.from_dict(_require(reg_part, "config", dict, path, "regressor."))
        geom = CarmGeometry.from_dict(_require(payload, "geometry", dict, path))
        dist = PoseDistribution(**_require(payload, "pose_distribution", dict, path))
        center = np.asarray(_require(payload, "center_world", list, path), dtype=np.float64)
        fps = _require(payload, "ct", dict, path)
        _require(fps, "source", dict, path, "ct.")
        _require(fps, "working", dict, path, "ct.")
    except CheckpointError:
        raise
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid checkpoint contents ({exc})") from exc
    return sim_cfg, reg_cfg, geom, dist, center, fps, sim_sd, reg_sd


def _networks(
    path: Path,
    sim_cfg: SimilarityConfig,
    sim_sd: dict,
    reg_cfg: RegressorConfig,
    reg_sd: dict,
    center: np.ndarray,
    dist: PoseDistribution,
) -> tuple[SimilarityNet, PoseRegressor]:
    """Both networks with the stored weights (on CPU)."""
    try:
        similarity = SimilarityNet(sim_cfg)
        similarity.load_state_dict(sim_sd)
        regressor = PoseRegressor(reg_cfg, center, dist)
        regressor.load_state_dict(reg_sd)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit the stored architecture ({str(exc).splitlines()[0]})"
        ) from exc
    return similarity, regressor
