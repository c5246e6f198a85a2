"""C-arm geometry and view of an X-ray DICOM header (conventions: docs/DICOM_XRAY.md).

:func:`read_xray_view` reads, from a DICOM X-ray's header (a file, or a ``pydicom`` dataset):

* the intrinsics (:class:`~sphere_reg_ros.core.carm.CarmGeometry`): Distance Source to
  Detector (0018,1110); Imager Pixel Spacing (0018,1164) (row, column), else Pixel Spacing
  (0028,0030) times Estimated Radiographic Magnification Factor (0018,1114) when that is given
  (Pixel Spacing is then measured at the isocentre), else Pixel Spacing as it is; the detector
  size from Rows (0028,0010) and Columns (0028,0011); the principal-point offset from Detector
  Active Origin (0018,7028) read as xvr reads it, ``(y0, -x0)`` in mm (what
  :func:`~sphere_reg_ros.evaluation.xvr_dicom.write_xray_dicom` writes), else zero;
* the C-arm's view: Positioner Primary Angle (0018,1510), Positioner Secondary Angle
  (0018,1511) and Distance Source to Patient (0018,1111), the source-to-isocentre distance, from
  which :func:`positioner_pose` builds ``T_ct_from_carm`` about an isocentre.

DICOM's angles give the direction from the isocentre to the detector (image intensifier):
primary 0 is anterior (perpendicular to the chest), +90 the patient's left (LAO), -90 the right
(RAO); secondary +90 is cranial, -90 caudal. The detector direction is therefore
``d = (-sin a cos b, cos a cos b, sin b)`` in RAS, the source sits at ``isocentre - sod · d``
and the optical ``z`` is ``d``. Optical ``y`` (image rows) points to the feet at (0, 0), and the
frame turns with the C-arm: ``R = Rz(a) · Rx(b) · R0`` with ``R0 = [x_RAS, -z_RAS, y_RAS]``, the
secondary tilt about the patient's left-right axis, then the primary turn about the long axis
(the C-arm's own axes, as a C-arm moves). At (0, 0) this is the AP view of
:mod:`~sphere_reg_ros.core.views` turned 180 degrees about the isocentre:
``positioner_pose(a, 0) = ap_pose @ orbit_offset(180 - a)``.

The source sees the detector's image mirrored: X-ray angiography stores the image as seen from
the detector (the LAO view is named after where the viewer, the intensifier, stands). With the
positioner angles the image is therefore put into the source's view (:meth:`XrayView.orient`):
Patient Orientation (0020,0020), when it names the direction of the columns and rows, decides
which axes are mirrored; without it the columns are (the detector's view). Without positioner
angles the image is used as it is stored.

Every missing or malformed tag is a :class:`DicomGeometryError` naming the tag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .carm import CarmGeometry, CarmGeometryError

__all__ = ["DicomGeometryError", "XrayView", "read_xray_view", "positioner_pose", "TAGS"]

#: The header elements read, with their tags (for error messages).
TAGS = {
    "DistanceSourceToDetector": "(0018,1110)",
    "DistanceSourceToPatient": "(0018,1111)",
    "EstimatedRadiographicMagnificationFactor": "(0018,1114)",
    "ImagerPixelSpacing": "(0018,1164)",
    "PositionerPrimaryAngle": "(0018,1510)",
    "PositionerSecondaryAngle": "(0018,1511)",
    "DetectorActiveOrigin": "(0018,7028)",
    "PatientOrientation": "(0020,0020)",
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
    "PixelSpacing": "(0028,0030)",
}

#: Patient Orientation letters as RAS directions.
_LETTERS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "H": (0, 0, 1)}
_LETTERS["F"] = (0, 0, -1)


class DicomGeometryError(ValueError):
    """A DICOM header without the tags a C-arm geometry or view needs (the tag is named)."""


def _tag(keyword: str) -> str:
    return f"{keyword} {TAGS[keyword]}"


def positioner_pose(
    primary_deg: float, secondary_deg: float, sod_mm: float, isocenter_world
) -> np.ndarray:
    """``T_ct_from_carm`` ``(4, 4)`` (mm) of a C-arm at DICOM positioner angles (module docstring)
    whose central ray passes through ``isocenter_world`` (3, mm, CT RAS) ``sod_mm`` from the source.
    """
    values = (primary_deg, secondary_deg, sod_mm)
    if not all(math.isfinite(float(v)) for v in values) or not sod_mm > 0:
        raise DicomGeometryError(
            f"positioner angles and source-to-isocentre distance must be finite (and the distance "
            f"> 0), got {values}"
        )
    a, b = math.radians(float(primary_deg)), math.radians(float(secondary_deg))
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    R0 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T
    R = Rz @ Rx @ R0
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(isocenter_world, dtype=np.float64).reshape(3) - float(sod_mm) * R[:, 2]
    return T


@dataclass(frozen=True)
class XrayView:
    """What a DICOM header says of its X-ray: the intrinsics of the image as :meth:`orient`
    returns it, the positioner angles (None when the header has none), the source-to-isocentre
    distance (None when missing) and which image axes :meth:`orient` mirrors."""

    geometry: CarmGeometry
    primary_deg: float | None = None
    secondary_deg: float | None = None
    sod_mm: float | None = None
    flip_columns: bool = False
    flip_rows: bool = False
    name: str = "DICOM header"

    @property
    def has_angles(self) -> bool:
        return self.primary_deg is not None

    def orient(self, image: np.ndarray) -> np.ndarray:
        """The stored image ``(H, W)`` in the source's view (the axes this view mirrors)."""
        img = np.asarray(image)
        if img.shape[-2:] != (self.geometry.height, self.geometry.width):
            raise DicomGeometryError(
                f"{self.name}: image of {img.shape[-2:]} pixels, header says "
                f"{self.geometry.height}x{self.geometry.width}"
            )
        if self.flip_columns:
            img = img[..., ::-1]
        if self.flip_rows:
            img = img[..., ::-1, :]
        return np.ascontiguousarray(img)

    def pose(self, isocenter_world) -> np.ndarray:
        """``T_ct_from_carm`` of the positioner angles about ``isocenter_world`` (mm, RAS)."""
        missing = [
            _tag(k)
            for k, v in (
                ("PositionerPrimaryAngle", self.primary_deg),
                ("PositionerSecondaryAngle", self.secondary_deg),
                ("DistanceSourceToPatient", self.sod_mm),
            )
            if v is None
        ]
        if missing:
            raise DicomGeometryError(f"{self.name}: no {', '.join(missing)} for the initial pose")
        return positioner_pose(self.primary_deg, self.secondary_deg, self.sod_mm, isocenter_world)


def _numbers(ds, keyword: str, count: int, name: str) -> tuple[float, ...] | None:
    """The ``count`` finite numbers of element ``keyword`` (None when absent or empty)."""
    if keyword not in ds or ds.data_element(keyword).value in (None, "", []):
        return None
    value = ds.data_element(keyword).value
    try:
        values = tuple(float(v) for v in (value if count > 1 else [value]))
    except (TypeError, ValueError) as exc:
        raise DicomGeometryError(f"{name}: malformed {_tag(keyword)}: {value!r}") from exc
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise DicomGeometryError(
            f"{name}: {_tag(keyword)} must be {count} finite number(s), got {value!r}"
        )
    return values


def _spacing(ds, name: str) -> tuple[float, float] | None:
    """``(dely, delx)`` at the detector, mm (module docstring), or None."""
    imager = _numbers(ds, "ImagerPixelSpacing", 2, name)
    if imager is not None:
        return imager
    spacing = _numbers(ds, "PixelSpacing", 2, name)
    if spacing is None:
        return None
    m = _numbers(ds, "EstimatedRadiographicMagnificationFactor", 1, name)
    return (spacing[0] * m[0], spacing[1] * m[0]) if m is not None else spacing


def _orientation_flips(ds, R: np.ndarray) -> tuple[bool, bool]:
    """``(flip_columns, flip_rows)`` that put the stored image into the source's view of the
    optical frame ``R`` (columns: x, y, z in RAS): from Patient Orientation where it names a
    direction along an axis, else the detector's view (columns mirrored)."""
    flips = [True, False]
    value = ds.get("PatientOrientation", None)
    if value is None or isinstance(value, str) or len(value) != 2:
        return flips[0], flips[1]
    for i, (code, axis) in enumerate(zip(value, (R[:, 0], R[:, 1]))):
        letters = [c for c in str(code).upper() if c in _LETTERS]
        if not letters:
            continue
        direction = np.sum([_LETTERS[c] for c in letters], axis=0, dtype=float)
        cos = float(direction @ axis) / max(float(np.linalg.norm(direction)), 1e-12)
        if abs(cos) > 0.5:  # the stored axis runs along the optical one, either way
            flips[i] = cos < 0
    return flips[0], flips[1]


def read_xray_view(
    source, sdd_mm: float | None = None, pixel_spacing_mm: float | None = None, name=None
) -> XrayView:
    """The :class:`XrayView` of a DICOM X-ray header (module docstring).

    ``source``: a file (its header is read, not its pixels) or a ``pydicom`` dataset.
    ``sdd_mm`` / ``pixel_spacing_mm`` (isotropic), when given, replace the header's values (and a
    header without them is then accepted). ``name`` names the file in messages.

    Raises:
        DicomGeometryError: unreadable header; no source-to-detector distance, pixel spacing,
            Rows or Columns (and no replacement); malformed values; only one positioner angle.
    """
    ds = source
    if isinstance(source, (str, Path)):
        import pydicom

        name = name or str(source)
        try:
            ds = pydicom.dcmread(str(source), stop_before_pixels=True)
        except Exception as exc:  # InvalidDicomError, EOFError, struct errors ...
            raise DicomGeometryError(f"{name}: not a readable DICOM header ({exc})") from exc
    name = name or "DICOM header"
    rows, cols = (_numbers(ds, k, 1, name) for k in ("Rows", "Columns"))
    sdd = (sdd_mm,) if sdd_mm is not None else _numbers(ds, "DistanceSourceToDetector", 1, name)
    spacing = (
        (pixel_spacing_mm, pixel_spacing_mm) if pixel_spacing_mm is not None else _spacing(ds, name)
    )
    missing = [_tag(k) for k, v in (("Rows", rows), ("Columns", cols)) if v is None]
    if sdd is None:
        missing.append(_tag("DistanceSourceToDetector"))
    if spacing is None:
        missing.append(f"{_tag('ImagerPixelSpacing')} or {_tag('PixelSpacing')}")
    if missing:
        raise DicomGeometryError(f"{name}: the header has no {'; no '.join(missing)}")
    origin = _numbers(ds, "DetectorActiveOrigin", 2, name) or (0.0, 0.0)
    try:
        geometry = CarmGeometry(
            sdd=float(sdd[0]),
            height=int(rows[0]),
            width=int(cols[0]),
            dely=float(spacing[0]),
            delx=float(spacing[1]),
            x0=-float(origin[1]),
            y0=float(origin[0]),
        )
    except CarmGeometryError as exc:
        raise DicomGeometryError(f"{name}: unusable geometry in the header ({exc})") from exc
    return _with_positioner(ds, geometry, name)


def _with_positioner(ds, geometry: CarmGeometry, name: str) -> XrayView:
    """The view of ``geometry`` with the header's positioner angles (and its image flips)."""
    primary = _numbers(ds, "PositionerPrimaryAngle", 1, name)
    secondary = _numbers(ds, "PositionerSecondaryAngle", 1, name)
    if (primary is None) != (secondary is None):
        absent = "PositionerSecondaryAngle" if secondary is None else "PositionerPrimaryAngle"
        raise DicomGeometryError(
            f"{name}: the header has one positioner angle but no {_tag(absent)}"
        )
    if primary is None:
        return XrayView(geometry, name=name)
    if not (-180.0 <= primary[0] <= 180.0 and -90.0 <= secondary[0] <= 90.0):
        raise DicomGeometryError(
            f"{name}: positioner angles outside DICOM's ranges (primary -180..180, secondary "
            f"-90..90 degrees): {primary[0]:g}, {secondary[0]:g}"
        )
    sod = _numbers(ds, "DistanceSourceToPatient", 1, name)
    if sod is not None and not sod[0] > 0:
        raise DicomGeometryError(f"{name}: {_tag('DistanceSourceToPatient')} must be > 0")
    R = positioner_pose(primary[0], secondary[0], 1.0, np.zeros(3))[:3, :3]
    flip_columns, flip_rows = _orientation_flips(ds, R)
    geometry = replace(
        geometry,
        x0=-geometry.x0 if flip_columns else geometry.x0,
        y0=-geometry.y0 if flip_rows else geometry.y0,
    )
    return XrayView(
        geometry,
        primary_deg=primary[0],
        secondary_deg=secondary[0],
        sod_mm=None if sod is None else sod[0],
        flip_columns=flip_columns,
        flip_rows=flip_rows,
        name=name,
    )
