"""``sphere-reg evaluate`` and ``sphere-reg register``: the command-line faces of the registrar.

The lead's ``sphere_reg_ros/cli.py`` wires them in::

    add_evaluate_parser(sub)   # sets func=run_evaluate
    add_register_parser(sub)   # sets func=run_register
    args = parser.parse_args(argv); return args.func(args)

Exit codes (:mod:`sphere_reg_ros.cli_errors`): ``evaluate`` 0 success, 1 the job ran but failed,
2 bad input or usage; ``register`` 0 registered and the pose may be used, 1 registered but failed or
rejected by a quality gate, 2 bad input or usage. Bad input is one line on stderr naming the file
and the problem; every input file is checked before the CT is loaded where possible.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sphere_reg_ros.cli_errors import EXIT_CODES, REGISTER_EXIT_CODES, one_line, refuse
from sphere_reg_ros.core.trust import rejection_key

__all__ = [
    "add_evaluate_parser",
    "run_evaluate",
    "add_register_parser",
    "run_register",
    "read_image",
    "read_pose",
    "read_geometry",
    "check_checkpoint",
    "pose_json",
    "overlay_image",
    "MIN_IMAGE_SIZE",
]

log = logging.getLogger(__name__)


# ============================================================================ evaluate
def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command; returns its parser."""
    from .evaluate import METHODS

    p = subparsers.add_parser(
        "evaluate",
        help="run registration methods on a benchmark file and print the seed's Table 1",
        description="Run every method in one process on the same cases and start poses of a benchmark "
        "(sphere-reg make-benchmark), print SMSR, median / 75th / 95th percentile mTRE and mean run time "
        "(the seed paper's Table 1 layout), and write summary.csv, cases.csv, convergence.png and "
        "landscape.png. Methods: " + "; ".join(f"{k}: {v}" for k, v in METHODS.items()),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--benchmark", type=Path, required=True, help="benchmark file (.npz)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["lm-intensity", "adam"],
        metavar="METHOD",
        help="methods to run (default: lm-intensity adam); unknown or unavailable ones are "
        "listed with the reason",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint for ours / ours-regressor / regressor "
        "(and the similarity adam/gd use); default: the checkpoint shipped in sphere_reg_ros/data, if any",
    )
    p.add_argument(
        "--no-model", action="store_true", help="ignore the shipped checkpoint (learning-free runs)"
    )
    p.add_argument(
        "--models",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="checkpoints of the ablations: ours-se3=, ours-so4=, euclidean=, hyperbolic=",
    )
    p.add_argument(
        "--ct",
        type=Path,
        default=None,
        help="CT of the benchmark (default: its recorded source if it exists, else the example CT)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="use a CT whose fingerprint differs from the benchmark's",
    )
    p.add_argument(
        "--out", type=Path, default=Path("evaluation"), help="output folder (default ./evaluation)"
    )
    p.add_argument("--cases", type=int, default=None, help="evaluate the first N cases only")
    p.add_argument(
        "--spacing",
        type=float,
        default=2.0,
        metavar="MM",
        help="CT voxel size for DRRs (default 2)",
    )
    p.add_argument(
        "--max-iterations", type=int, default=20, help="LM iteration cap per scale (default 20)"
    )
    p.add_argument(
        "--adam-iterations",
        type=int,
        default=100,
        help="Adam / GD iteration cap per scale (default 100; DiffPose uses 500)",
    )
    p.add_argument(
        "--xvr-scales",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="xvr's downsampling divisors of the benchmark images, coarse to fine (default: "
        "the registration resolution and half of it)",
    )
    p.add_argument(
        "--xvr-iterations",
        type=int,
        default=500,
        help="xvr's Adam iteration cap per scale (default 500, xvr's; it stops earlier on plateaus)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); 1 is fastest on a loaded machine",
    )
    p.add_argument(
        "--start",
        choices=("init", "truth"),
        default="init",
        help="start poses: the benchmark's initial poses (default), or the true poses: then the "
        "mTRE is each method's drift, telling a misplaced cost minimum from a too small basin",
    )
    _robustness_options(p)
    p.add_argument("--no-landscape", action="store_true", help="skip the similarity-landscape plot")
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first case too (default: one untimed warm-up registration per method)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_evaluate)
    return p


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


def _models(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--models entries must be NAME=PATH, got {item!r}")
        out[name] = path
    return out


def check_checkpoint(path: str | Path) -> None:
    """Refuse an unusable checkpoint file (missing, corrupt, truncated, another format) before any
    CT is loaded: :class:`~sphere_reg_ros.core.checkpoint.CheckpointError` naming the file. Loads
    it on the CPU with ``weights_only=True``; whether it fits the CT is checked later."""
    from sphere_reg_ros.core.checkpoint import load_checkpoint

    load_checkpoint(path, map_location="cpu")


def read_geometry(path: Path):
    """:class:`~sphere_reg_ros.core.carm.CarmGeometry` from a JSON file of its intrinsics; a
    ``ValueError`` (one line, naming the file) when it is missing, not JSON or not a geometry."""
    from sphere_reg_ros.core.carm import CarmGeometry, CarmGeometryError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON geometry file ({one_line(exc)})") from exc
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: expected a JSON object of C-arm intrinsics, got {type(values).__name__}"
        )
    try:
        return CarmGeometry.from_dict(values)
    except (CarmGeometryError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid C-arm geometry ({one_line(exc)})") from exc


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``; prints the table; returns 0, or 2 on bad input (one line on stderr)."""
    from sphere_reg_ros.core.registrar import RegistrarConfig
    from sphere_reg_ros.core.volume import VolumeError, load_example_ct, load_volume

    from .benchmark import BenchmarkError, ct_fingerprint, load_benchmark
    from .evaluate import EvaluationConfig, evaluate, shipped_model

    try:
        if args.cases is not None and args.cases < 1:
            raise ValueError("--cases must be >= 1")
        models = _models(args.models)
        bm = load_benchmark(args.benchmark)
        for path in ([args.model] if args.model else []) + list(models.values()):
            check_checkpoint(path)  # before the CT is loaded
        if args.ct is not None:
            ct = load_volume(args.ct)
        elif Path(bm.ct_source).is_file():
            ct = load_volume(bm.ct_source)
        else:
            ct = load_example_ct()[0]
        fp = ct_fingerprint(ct)
        if fp.get("sha256") != bm.ct_fingerprint.get("sha256") and not args.force:
            raise ValueError(
                f"the CT {ct.source} is not the benchmark's ({bm.ct_source}): fingerprints differ "
                "(pass --ct with the right CT, or --force)"
            )
        lm = {
            "max_iterations": args.max_iterations,
            "device": args.device,
            **_robustness_settings(args),
        }
        base = RegistrarConfig(**lm)
        ev = EvaluationConfig()
        config = replace(
            ev,
            registrar=base,
            learning_free=replace(ev.learning_free, **lm),
            start=args.start,
            gradient=replace(ev.gradient, max_iterations=args.adam_iterations),
            xvr=replace(
                ev.xvr,
                scales=tuple(args.xvr_scales) if args.xvr_scales else None,
                n_itrs=args.xvr_iterations,
            ),
            spacing_mm=args.spacing,
            cases=args.cases,
            landscape=not args.no_landscape,
            warmup=not args.no_warmup,
        )
    except (ValueError, BenchmarkError, VolumeError, OSError) as exc:
        return refuse("evaluate", exc)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = str(args.model) if args.model else (None if args.no_model else shipped_model())
    if model and not args.model:
        print(f"using the shipped checkpoint {model}")
    report = evaluate(
        bm,
        ct,
        args.methods,
        model=model,
        models=models,
        config=config,
        out_dir=args.out,
        progress=not args.no_progress,
    )
    print(report.text())
    print(
        f"\nwrote {', '.join(str(f) for f in report.files)} ({time.perf_counter() - start:.0f} s)"
    )
    return 0


# ============================================================================ register
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
        "or .npy (4, 4), T_ct_from_carm in mm (default: the regressor, else the AP view)",
    )
    p.add_argument("--out", type=Path, default=Path("registration"), help="output folder")
    p.add_argument(
        "--geometry",
        type=Path,
        default=None,
        help="JSON with the C-arm intrinsics (sdd, height, width, delx, dely, x0, y0; mm)",
    )
    p.add_argument(
        "--sdd", type=float, default=None, help="source-to-detector distance, mm (default 1020)"
    )
    p.add_argument(
        "--pixel-spacing",
        type=float,
        default=None,
        help="detector pixel spacing, mm (default: DICOM tags, else 384 mm / largest side)",
    )
    p.add_argument(
        "--domain",
        choices=("auto", "line-integral", "intensity"),
        default="auto",
        help="pixel values: line integrals (bright = dense, used as they are) or raw detector "
        "intensities (converted with log(max) - log(I)); auto: line integrals, DICOM MONOCHROME1 "
        "inverted",
    )
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


#: Smallest image ``register`` accepts, pixels per side (a registration needs some structure to fit).
MIN_IMAGE_SIZE = 16
_NPY_MAGIC = b"\x93NUMPY"
_IMAGE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _decoder_error(path: Path, decoder: str, exc: Exception) -> ValueError:
    from sphere_reg_ros.cli_errors import one_line

    return ValueError(f"{path}: not a readable image ({decoder} decoder: {one_line(exc)})")


def _load_npy(path: Path) -> np.ndarray:
    """A numeric array from a ``.npy`` file; never unpickles (``allow_pickle=False``)."""
    with open(path, "rb") as fh:
        magic = fh.read(len(_NPY_MAGIC))
    if magic != _NPY_MAGIC:
        raise ValueError(f"{path}: not a NumPy .npy file (no .npy header)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(
                f"{path}: holds Python objects (dtype object), which are never loaded "
                "(allow_pickle=False); save a numeric array"
            ) from exc
        raise _decoder_error(path, "NumPy .npy", exc) from exc
    except (OSError, EOFError) as exc:
        raise _decoder_error(path, "NumPy .npy", exc) from exc


def _read_dicom(path: Path, domain: str, hints: dict) -> np.ndarray:
    """Pixels of a single-image DICOM file (MONOCHROME1 inverted for ``domain="auto"``); fills
    ``hints`` with the source-to-detector distance and pixel spacing it records."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors of truncated headers ...
        text = str(exc).replace(
            " Use force=True to force reading.", ""
        )  # not an option of the command
        raise _decoder_error(path, "DICOM", ValueError(text)) from exc
    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM file without pixel data (not an image, or truncated)")
    try:
        img = ds.pixel_array
    except Exception as exc:  # truncated pixel data, unsupported transfer syntax (no codec) ...
        raise _decoder_error(path, "DICOM", exc) from exc
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" and domain == "auto":
        img = img.max() - img
    try:
        if "DistanceSourceToDetector" in ds:
            hints["sdd"] = float(ds.DistanceSourceToDetector)
        for tag in ("ImagerPixelSpacing", "PixelSpacing"):
            if tag in ds:
                row, col = (float(v) for v in ds.data_element(tag).value)
                hints["dely"], hints["delx"] = row, col
                break
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed DICOM geometry tags ({exc})") from exc
    return img


def read_image(path: Path, domain: str = "auto") -> tuple[np.ndarray, dict]:
    """Image ``(H, W)`` float32 (line-integral domain) and geometry hints from its file.

    PNG / TIFF / JPEG (matplotlib, through Pillow), DICOM (pydicom; also files without a suffix)
    and NumPy ``.npy`` (never unpickled). RGB(A) images are averaged to grey; a single-frame stack
    ``(1, H, W)`` is accepted.

    Raises:
        ValueError: one line naming the file and the problem: missing, empty, not decodable as its
            format (the decoder's message in brackets), not numeric, not one 2-D image, smaller
            than :data:`MIN_IMAGE_SIZE` pixels per side, or with NaN / infinite pixels.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    hints: dict = {}
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    if suffix != ".npy" and suffix not in (".dcm", ".dicom", "") and suffix not in _IMAGE_FORMATS:
        raise ValueError(
            f"{path}: unsupported image format {suffix!r} (expected .png, .tif, .dcm or .npy)"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    if suffix == ".npy":
        img = _load_npy(path)
    elif suffix in (".dcm", ".dicom", ""):
        img = _read_dicom(path, domain, hints)
    else:
        import matplotlib.image as mpimg  # PNG natively, TIFF/JPEG through Pillow

        try:
            img = np.asarray(mpimg.imread(str(path)))
        except Exception as exc:  # Pillow: UnidentifiedImageError, truncated data, bad CRC ...
            raise _decoder_error(path, _IMAGE_FORMATS[suffix], exc) from exc
    img = np.asarray(img)
    if img.dtype.kind not in "biuf":
        raise ValueError(
            f"{path}: holds {img.dtype} values, not numbers (expected a numeric image)"
        )
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(-1)  # RGB(A) -> grey
    elif img.ndim == 3 and img.shape[-1] in (1, 2):
        img = img[..., 0]  # grey (+ alpha)
    while img.ndim > 2 and img.shape[0] == 1:  # a single-frame stack
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"{path}: expected one 2-D image, got an array of shape {img.shape}")
    if min(img.shape) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{path}: image of {img.shape[0]}x{img.shape[1]} pixels is too small "
            f"(at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} needed)"
        )
    img = img.astype(np.float32)
    n_bad = int(img.size - np.count_nonzero(np.isfinite(img)))
    if n_bad:
        raise ValueError(f"{path}: {n_bad} pixels are NaN or infinite")
    if domain == "intensity":
        top = float(img.max())
        img = np.log(max(top, 1e-6)) - np.log(np.clip(img, max(top * 1e-6, 1e-12), None))
    return img.astype(np.float32), hints


def read_pose(path: Path) -> np.ndarray:
    """A 4x4 ``T_ct_from_carm`` (mm) from .npy or JSON (list, or dict with 'T_ct_from_carm_mm'/'matrix').

    Raises:
        ValueError: one line naming the file and the problem (missing, empty, not JSON / .npy,
            not a finite 4x4 matrix).
    """
    from sphere_reg_ros.cli_errors import one_line

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() == ".npy":
        T = _load_npy(path)
    else:
        try:
            obj = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a JSON pose file ({one_line(exc)})") from exc
        if isinstance(obj, dict):
            obj = obj.get("T_ct_from_carm_mm", obj.get("matrix"))
        T = obj
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{path}: the initial pose must be a finite 4x4 matrix of numbers ({one_line(exc)})"
        ) from exc
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(
            f"{path}: the initial pose must be a finite 4x4 matrix, got shape {T.shape}"
        )
    return T


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


def run_register(args: argparse.Namespace) -> int:
    """Run ``register``; returns 0 (a pose that may be used: converged and every quality gate
    passed), 1 (registration failed or rejected by a gate; the reason is in the report) or 2 (bad
    input: one line on stderr naming the file and the problem). The image, geometry, initial pose
    and checkpoint files are checked before the CT is loaded."""
    import matplotlib.image as mpimg

    from sphere_reg_ros.core.carm import CarmGeometry, CarmGeometryError
    from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig
    from sphere_reg_ros.core.volume import VolumeError

    try:
        image, hints = read_image(args.image, args.domain)
        H, W = image.shape
        if args.geometry is not None:
            geometry = read_geometry(args.geometry)
        else:
            spacing = args.pixel_spacing
            delx = spacing or hints.get("delx") or 384.0 / max(H, W)
            dely = spacing or hints.get("dely") or 384.0 / max(H, W)
            geometry = CarmGeometry(
                sdd=args.sdd or hints.get("sdd", 1020.0), height=H, width=W, delx=delx, dely=dely
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
    lines = [
        f"sphere-reg register: {args.image}",
        f"CT / model: {registrar.source}",
        f"geometry: {geometry.to_dict()}",
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
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    files.append(out / "report.txt")
    print("\n".join(lines))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0 if result.ok else 1
