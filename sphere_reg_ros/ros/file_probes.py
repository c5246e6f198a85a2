"""File checks behind the ``ct_path``, ``model_path`` and ``dicom_geometry_path`` parameters,
bounded in time and memory.

:func:`probe_volume_file` reads a volume's header and measures its voxel data without loading it;
:func:`probe_model_file` loads a checkpoint on the CPU. Both raise :class:`.ParameterError` with
the reason; :func:`.params.validate` runs them before a changed file is accepted.
:func:`dicom_geometry` reads a DICOM X-ray's header (not its pixels) into its intrinsics, cached
per file version, for the frames without a paired CameraInfo.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .param_table import ParameterError

__all__ = ["probe_volume_file", "probe_model_file", "dicom_geometry"]

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".dcm", ".ima", ".dicom")

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


@functools.lru_cache(maxsize=4)
def _dicom_geometry(path: str, mtime_ns: int, size: int):
    from ..core.dicom_xray import DicomGeometryError, read_xray_view

    try:
        return read_xray_view(path).geometry  # header only; intrinsics as stored
    except DicomGeometryError as exc:
        raise ParameterError(f"dicom_geometry_path: {exc}") from exc


def dicom_geometry(path: str):
    """The :class:`~sphere_reg_ros.core.carm.CarmGeometry` of the DICOM X-ray header at ``path``
    (core.dicom_xray; the image as stored, no positioner view), read once per file version.
    Raises ParameterError naming the file and the missing or malformed tag."""
    p = Path(path).expanduser()
    if not p.is_file() or not os.access(p, os.R_OK):
        raise ParameterError(f"dicom_geometry_path {path!r}: no such readable file")
    st = p.stat()
    return _dicom_geometry(str(p), st.st_mtime_ns, st.st_size)
