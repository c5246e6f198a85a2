"""``sphere-reg register``: register one X-ray image file to a CT and write pose.json,
overlay.png and report.txt. Exit codes: 0 registered and the pose may be used, 1 registered but
failed or rejected by a quality gate, 2 bad input or usage (one line on stderr naming the file).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from sphere_reg_ros.cli_errors import REGISTER_EXIT_CODES, refuse
from sphere_reg_ros.core.trust import rejection_key
from sphere_reg_ros.evaluation.inputs import (
    check_checkpoint,
    read_geometry,
    read_image,
    read_pose,
)

__all__ = ["add_register_parser", "run_register", "pose_json", "overlay_image"]


def add_register_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``register`` sub-command; returns its parser."""
    p = subparsers.add_parser(
        "register",
        help="register one X-ray image file to a CT",
        description="Register one image (PNG, TIFF, DICOM or NumPy .npy) to a CT and write pose.json "
        "(4x4 T_ct_from_carm in mm, quaternion xyzw + translation in m and mm, covariance), overlay.png "
        "(the X-ray with the DRR's edges in colour) and report.txt.",
        epilog=REGISTER_EXIT_CODES,
    )
    p.add_argument(
        "--ct", type=Path, default=None, help="CT volume (default: the embedded example CT)"
    )
    p.add_argument(
        "--model", type=Path, default=None, help="checkpoint (default: learning-free residuals)"
    )
    p.add_argument(
        "--image", type=Path, required=True, help="X-ray: .png, .tif/.tiff, .dcm or .npy"
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="initial pose: JSON (a 4x4 list, or an object with 'T_ct_from_carm_mm' / 'matrix') "
        "or .npy (4, 4), T_ct_from_carm in mm (default: a DICOM's positioner angles, else the "
        "regressor, else the AP view; docs/DICOM_XRAY.md)",
    )
    p.add_argument("--out", type=Path, default=Path("registration"), help="output folder")
    _image_options(p)
    p.add_argument(
        "--resolution", type=int, default=64, help="registration resolution (default 64)"
    )
    p.add_argument(
        "--spacing",
        type=float,
        default=None,
        metavar="MM",
        help="CT voxel size for DRRs (default: the model's training spacing, else 2)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--force", action="store_true", help="use a checkpoint made for another CT")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    _robustness_options(p)
    p.set_defaults(func=run_register)
    return p


def _image_options(p: argparse.ArgumentParser) -> None:
    """``register``'s options of the image's geometry and pixel values."""
    p.add_argument(
        "--geometry",
        type=Path,
        default=None,
        help="JSON with the C-arm intrinsics (sdd, height, width, delx, dely, x0, y0; mm)",
    )
    p.add_argument(
        "--sdd",
        type=float,
        default=None,
        help="source-to-detector distance, mm (default: the DICOM header's; other formats 1020)",
    )
    p.add_argument(
        "--pixel-spacing",
        type=float,
        default=None,
        help="detector pixel spacing, mm (default: the DICOM header's; other formats 384 mm / "
        "largest side)",
    )
    p.add_argument(
        "--domain",
        choices=("auto", "line-integral", "intensity"),
        default="auto",
        help="pixel values: line integrals (bright = dense, used as they are) or raw detector "
        "intensities (converted with log(max) - log(I)); auto: line integrals, DICOM MONOCHROME1 "
        "inverted",
    )


def _robustness_options(p: argparse.ArgumentParser) -> None:
    """The options of docs/ROBUSTNESS.md (kernel, intensity model, masks), shared by evaluate and register."""
    from sphere_reg_ros.core.lm_steps import ROBUST_KERNELS
    from sphere_reg_ros.core.registrar import INTENSITY_FITS

    p.add_argument(
        "--robust",
        default=None,
        choices=("auto", *ROBUST_KERNELS),
        help="robust kernel of the LM (default: the registrar's, auto)",
    )
    p.add_argument(
        "--robust-scale",
        type=float,
        default=None,
        metavar="K",
        help="kernel scale in robust spreads of the residuals (default: the registrar's)",
    )
    p.add_argument(
        "--intensity-fit",
        default=None,
        choices=INTENSITY_FITS,
        help="intensity model the learning-free residuals fit to each X-ray (default: the "
        "registrar's); see docs/ROBUSTNESS.md",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=None,
        metavar="N",
        help="hypotheses tried when a registration looks failed (0-6; default: the registrar's)",
    )
    p.add_argument(
        "--no-masks",
        action="store_true",
        help="no masks of shutters, metal and saturation (default: detected and given zero weight)",
    )


def _robustness_settings(args: argparse.Namespace) -> dict:
    """``RegistrarConfig`` fields of the options of :func:`_robustness_options` that were given."""
    given = {
        k: getattr(args, k)
        for k in ("robust", "robust_scale", "intensity_fit", "restarts")
        if getattr(args, k) is not None
    }
    return {**given, "masking": not args.no_masks}


def pose_json(result, geometry) -> dict:
    """JSON-ready description of a registration result."""
    import torch

    from sphere_reg_ros.core.geometry import pose_to_translation_quaternion

    T = np.asarray(result.pose, dtype=np.float64)
    finite = bool(np.all(np.isfinite(T)))
    if finite:
        t_m, q = pose_to_translation_quaternion(torch.as_tensor(T), unit="m")
        t_m, q = t_m.tolist(), q.tolist()
    else:
        t_m, q = [math.nan] * 3, [math.nan] * 4

    def clean(x):
        return [
            [None if not math.isfinite(v) else v for v in row]
            for row in np.asarray(x, dtype=float).tolist()
        ]

    return {
        "T_ct_from_carm_mm": clean(T),
        "translation_mm": [None if not math.isfinite(v) else v * 1000.0 for v in t_m],
        "translation_m": [None if not math.isfinite(v) else v for v in t_m],
        "quaternion_xyzw": [None if not math.isfinite(v) else v for v in q],
        "convention": "T_ct_from_carm maps C-arm optical-frame points (x right, y down, z source->detector, "
        "origin at the source) to CT world RAS; mm unless stated",
        "status": result.status.value,
        "ok": result.ok,
        "message": result.message,
        "cost": result.cost if math.isfinite(result.cost) else None,
        "initial_cost": result.initial_cost if math.isfinite(result.initial_cost) else None,
        "iterations": result.iterations,
        "masked_fraction": result.masked_fraction,
        "covariance_v_mm_w_rad": clean(result.covariance),
        "position_std_mm": result.position_std_mm
        if math.isfinite(result.position_std_mm)
        else None,
        "roi_mm": None if result.roi_mm is None else [float(v) for v in result.roi_mm],
        "roi_covariance_mm2": clean(result.roi_covariance),
        "normalised_cost": result.normalised_cost
        if math.isfinite(result.normalised_cost)
        else None,
        "consistency_mm": result.consistency_mm if math.isfinite(result.consistency_mm) else None,
        "rejected_by": rejection_key(result) or None,
        "timings_s": result.timings,
        "geometry": geometry.to_dict(),
    }


def overlay_image(xray: np.ndarray, drr: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 ``(kH, kW, 3)``: the X-ray in grey with the DRR's strongest edges in orange
    (``k`` enlarges images smaller than 512 px by pixel repetition); pixels the registration
    masked (``valid`` False: collimator, metal, saturation) tinted blue and hatched."""
    from sphere_reg_ros.core.masks import hatch_pattern

    def norm(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [1, 99])
        return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)

    k = max(
        1, int(np.ceil(512 / max(xray.shape)))
    )  # small images are enlarged (nearest) for viewing
    xray, drr = (np.kron(a.astype(np.float64), np.ones((k, k))) for a in (xray, drr))
    gy, gx = np.gradient(drr)
    mag = np.hypot(gx, gy)
    edges = mag > np.percentile(mag, 92)
    rgb = np.repeat(norm(xray)[..., None], 3, axis=-1)
    if valid is not None:
        masked = np.kron(~np.asarray(valid, dtype=bool), np.ones((k, k), dtype=bool))
        rgb[masked] = 0.6 * rgb[masked] + 0.4 * np.array([0.0, 0.47, 0.78])
        rgb[hatch_pattern(masked)] = np.array([0.0, 0.47, 0.78])
    rgb[edges] = 0.3 * rgb[edges] + 0.7 * np.array([1.0, 0.25, 0.05])
    return (rgb * 255).astype(np.uint8)


def _point(p) -> str:
    return "(the CT origin)" if p is None else "(" + ", ".join(f"{v:.1f}" for v in p) + " mm)"


def _dicom_view(args: argparse.Namespace, hints: dict, geometry):
    """The :class:`~sphere_reg_ros.core.dicom_xray.XrayView` of a DICOM image's header (None for
    other formats): ``--sdd`` and ``--pixel-spacing`` replace the header's values, and a
    ``--geometry`` file makes the header's intrinsics optional."""
    from sphere_reg_ros.core.dicom_xray import read_xray_view

    if "dicom" not in hints:
        return None
    sdd = args.sdd if geometry is None else geometry.sdd
    spacing = args.pixel_spacing if geometry is None else geometry.delx
    view = read_xray_view(hints["dicom"], sdd, spacing, name=str(args.image))
    if args.init is None and view.has_angles:
        view.pose(
            np.zeros(3)
        )  # a missing source-to-isocentre distance is named before the CT loads
    return view


def _register_inputs(args: argparse.Namespace) -> tuple:
    """``(image, geometry, init pose or None, registrar, start)`` of ``register``'s options; the
    image, geometry, initial pose and checkpoint files are read before the CT is loaded. A DICOM
    image's header gives the intrinsics and, without ``--init``, the start pose from its
    positioner angles (docs/DICOM_XRAY.md); ``start`` says where the registration starts."""
    from sphere_reg_ros.core.carm import CarmGeometry
    from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig

    image, hints = read_image(args.image, args.domain)
    geometry = read_geometry(args.geometry) if args.geometry is not None else None
    view = _dicom_view(args, hints, geometry)
    if view is not None:
        image = view.orient(image)
    H, W = image.shape
    if geometry is None and view is not None:
        geometry = view.geometry
    elif geometry is None:
        spacing = args.pixel_spacing or 384.0 / max(H, W)
        geometry = CarmGeometry(
            sdd=args.sdd or 1020.0, height=H, width=W, delx=spacing, dely=spacing
        )
    init = read_pose(args.init) if args.init is not None else None
    if args.model is not None:
        check_checkpoint(args.model)  # before the CT is loaded
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = RegistrarConfig(
        resolution=args.resolution, device=args.device, **_robustness_settings(args)
    )
    registrar = Registrar.from_files(
        str(args.ct) if args.ct else None,
        str(args.model) if args.model else None,
        config,
        spacing_mm=args.spacing,
        force=args.force,
    )
    start = f"--init {args.init}" if init is not None else "the registrar's (regressor or AP view)"
    if init is None and view is not None and view.has_angles:
        init = view.pose(registrar.center_world)
        start = (
            f"DICOM positioner angles (primary {view.primary_deg:g}, secondary "
            f"{view.secondary_deg:g} deg, source-isocentre {view.sod_mm:g} mm) about the CT centre"
        )
    if view is not None and (view.flip_columns or view.flip_rows):
        start += (
            "; image mirrored to the source's view ("
            + ", ".join(
                axis for axis, f in (("columns", view.flip_columns), ("rows", view.flip_rows)) if f
            )
            + ")"
        )
    return image, geometry, init, registrar, start


def _report_lines(args: argparse.Namespace, registrar, geometry, result, start) -> list[str]:
    """The lines of report.txt (also printed)."""
    lines = [
        f"sphere-reg register: {args.image}",
        f"CT / model: {registrar.source}",
        f"geometry: {geometry.to_dict()}",
        f"start: {start}",
        f"status: {result.status.value} ({result.message})",
        f"cost: {result.initial_cost:.4g} -> {result.cost:.4g} in {result.iterations} iterations",
        "verdict: "
        + (
            "may be published (converged, every quality gate passed)"
            if result.ok
            else f"NOT to be used ({rejection_key(result)})"
        ),
        f"normalised cost (1 = the image does not pin the pose down): {result.normalised_cost:.3g}",
        f"position std at the region of interest {_point(result.roi_mm)}: {result.position_std_mm:.3g} mm",
        f"consistency (a second start ended this far away): {result.consistency_mm:.3g} mm",
        f"masked (shutters, metal, saturation; zero weight): {100 * result.masked_fraction:.1f} % of the image",
        "timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()),
        "T_ct_from_carm (mm):",
    ] + ["  " + " ".join(f"{v:10.4f}" for v in row) for row in np.asarray(result.pose)]
    return lines


def run_register(args: argparse.Namespace) -> int:
    """Run ``register``; returns 0 (a pose that may be used: converged and every quality gate
    passed), 1 (registration failed or rejected by a gate; the reason is in the report) or 2 (bad
    input: one line on stderr naming the file and the problem). The image, geometry, initial pose
    and checkpoint files are checked before the CT is loaded."""
    import matplotlib.image as mpimg

    from sphere_reg_ros.core.carm import CarmGeometryError
    from sphere_reg_ros.core.volume import VolumeError

    try:
        image, geometry, init, registrar, start = _register_inputs(args)
    except (ValueError, VolumeError, CarmGeometryError, OSError) as exc:
        return refuse("register", exc)
    result = registrar.register(image, geometry, init)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = pose_json(result, geometry)
    (out / "pose.json").write_text(json.dumps(info, indent=1))
    files = [out / "pose.json"]
    if np.all(np.isfinite(result.pose)):
        drr = registrar.render(result.pose, geometry)
        mpimg.imsave(out / "overlay.png", overlay_image(image, drr, result.valid_mask))
        files.append(out / "overlay.png")
    lines = _report_lines(args, registrar, geometry, result, start)
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    files.append(out / "report.txt")
    print("\n".join(lines))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0 if result.ok else 1
