"""Input files of the ``evaluate`` and ``register`` commands, checked before a CT is loaded:
X-ray images (PNG, TIFF, JPEG, DICOM, NumPy), initial poses, C-arm geometries and checkpoints.
Each reader raises a one-line ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sphere_reg_ros.cli_errors import one_line

__all__ = ["read_image", "read_pose", "read_geometry", "check_checkpoint", "MIN_IMAGE_SIZE"]


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
    """Pixels of a single-image DICOM file: the modality LUT (Rescale Slope / Intercept) applied
    where the header has one, MONOCHROME1 inverted for ``domain="auto"``; ``hints["dicom"]`` is
    the header (without the pixel data), for the geometry and view of
    :func:`~sphere_reg_ros.core.dicom_xray.read_xray_view`."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

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
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            img = apply_modality_lut(img, ds)
    except Exception as exc:  # truncated pixel data, unsupported transfer syntax (no codec) ...
        raise _decoder_error(path, "DICOM", exc) from exc
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" and domain == "auto":
        img = img.max() - img
    del ds.PixelData
    hints["dicom"] = ds
    return img


def read_image(path: Path, domain: str = "auto") -> tuple[np.ndarray, dict]:
    """Image ``(H, W)`` float32 (line-integral domain) and hints from its file (``"dicom"``: a
    DICOM file's header).

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
    img = _checked_grey(path, img)
    if domain == "intensity":
        top = float(img.max())
        img = np.log(max(top, 1e-6)) - np.log(np.clip(img, max(top * 1e-6, 1e-12), None))
    return img.astype(np.float32), hints


def _checked_grey(path: Path, img: np.ndarray) -> np.ndarray:
    """A decoded image as one ``(H, W)`` float32 grey image: RGB(A) averaged, a single-frame
    stack unwrapped; ValueError (naming ``path``) unless numeric, 2-D, at least
    :data:`MIN_IMAGE_SIZE` per side and finite."""
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
    return img


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
