"""C-arm geometry and view from X-ray DICOM headers (core.dicom_xray): files written with pydicom
and read back; poses checked against the AP view, orbit_offset and derivations by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dicom_files import write_xray

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.dicom_xray import (
    DicomGeometryError,
    positioner_pose,
    read_xray_view,
)
from sphere_reg_ros.core.views import ap_pose, orbit_offset

SOD = 700.0
ISO = np.array([12.0, -40.0, 95.0])


@pytest.fixture
def pixels() -> np.ndarray:
    return (np.arange(24 * 32).reshape(24, 32) % 1000).astype(np.uint16)


def test_intrinsics_from_the_header(tmp_path, pixels):
    path = write_xray(
        tmp_path / "a.dcm",
        pixels,
        DistanceSourceToDetector="1105.5",
        ImagerPixelSpacing=["0.4", "0.3"],  # row, column
        DetectorActiveOrigin=["2.5", "-1.5"],  # y0, -x0 as xvr reads it
    )
    view = read_xray_view(path)
    assert view.geometry == CarmGeometry(
        sdd=1105.5, height=24, width=32, delx=0.3, dely=0.4, x0=1.5, y0=2.5
    )
    assert not view.has_angles and not (view.flip_columns or view.flip_rows)
    np.testing.assert_array_equal(view.orient(pixels), pixels)  # stored as it is
    # options replace the header's values
    g = read_xray_view(path, sdd_mm=900.0, pixel_spacing_mm=0.5).geometry
    assert (g.sdd, g.delx, g.dely) == (900.0, 0.5, 0.5)


def test_pixel_spacing_at_the_isocentre_is_magnified(tmp_path, pixels):
    path = write_xray(
        tmp_path / "b.dcm",
        pixels,
        DistanceSourceToDetector="1000",
        PixelSpacing=["0.2", "0.25"],
        EstimatedRadiographicMagnificationFactor="1.5",
    )
    g = read_xray_view(path).geometry
    assert (g.dely, g.delx) == pytest.approx((0.3, 0.375))
    plain = write_xray(
        tmp_path / "c.dcm", pixels, DistanceSourceToDetector="1000", PixelSpacing=["0.2", "0.2"]
    )
    assert read_xray_view(plain).geometry.delx == pytest.approx(0.2)


def test_the_xvr_files_geometry_reads_back(tmp_path):
    from sphere_reg_ros.evaluation.xvr_dicom import write_xray_dicom

    g = CarmGeometry(sdd=1020.0, height=20, width=30, delx=1.5, dely=2.0, x0=4.0, y0=-3.0)
    path = write_xray_dicom(tmp_path / "xvr.dcm", np.random.default_rng(0).random((20, 30)), g)
    assert read_xray_view(path).geometry.to_dict() == pytest.approx(g.to_dict())


@pytest.mark.parametrize(
    "drop, named",
    [
        ("DistanceSourceToDetector", "DistanceSourceToDetector (0018,1110)"),
        ("ImagerPixelSpacing", "ImagerPixelSpacing (0018,1164) or PixelSpacing (0028,0030)"),
        ("PositionerSecondaryAngle", "PositionerSecondaryAngle (0018,1511)"),
    ],
)
def test_a_missing_tag_is_named(tmp_path, pixels, drop, named):
    tags = dict(
        DistanceSourceToDetector="1000",
        ImagerPixelSpacing=["0.3", "0.3"],
        PositionerPrimaryAngle="10",
        PositionerSecondaryAngle="5",
    )
    del tags[drop]
    path = write_xray(tmp_path / "m.dcm", pixels, **tags)
    with pytest.raises(DicomGeometryError, match=named.replace("(", r"\(").replace(")", r"\)")):
        read_xray_view(path)


def test_the_initial_pose_needs_the_source_to_isocentre_distance(tmp_path, pixels):
    path = write_xray(
        tmp_path / "s.dcm",
        pixels,
        DistanceSourceToDetector="1000",
        ImagerPixelSpacing=["0.3", "0.3"],
        PositionerPrimaryAngle="10",
        PositionerSecondaryAngle="5",
    )
    view = read_xray_view(path)
    assert view.has_angles and view.sod_mm is None
    with pytest.raises(DicomGeometryError, match=r"DistanceSourceToPatient \(0018,1111\)"):
        view.pose(ISO)


def test_malformed_and_out_of_range_values_are_refused(tmp_path, pixels):
    base = dict(DistanceSourceToDetector="1000", ImagerPixelSpacing=["0.3", "0.3"])
    bad = write_xray(tmp_path / "x.dcm", pixels, **{**base, "ImagerPixelSpacing": "0.3"})
    with pytest.raises(DicomGeometryError, match="ImagerPixelSpacing"):
        read_xray_view(bad)
    steep = write_xray(
        tmp_path / "y.dcm",
        pixels,
        **base,
        PositionerPrimaryAngle="0",
        PositionerSecondaryAngle="120",
    )
    with pytest.raises(DicomGeometryError, match="outside DICOM's ranges"):
        read_xray_view(steep)
    with pytest.raises(DicomGeometryError, match="not a readable DICOM header"):
        (tmp_path / "t.dcm").write_text("not dicom")
        read_xray_view(tmp_path / "t.dcm")


@pytest.mark.parametrize("primary", [0.0, 30.0, -45.0, 90.0, 180.0])
def test_primary_angle_is_the_ap_view_turned_about_the_isocentre(primary):
    expected = ap_pose(ISO, SOD)[0].numpy() @ orbit_offset(180.0 - primary, SOD)
    np.testing.assert_allclose(positioner_pose(primary, 0.0, SOD, ISO), expected, atol=1e-9)


@pytest.mark.parametrize("primary, secondary", [(0, 0), (90, 0), (-90, 0), (0, 30), (30, 20)])
def test_angles_by_hand(primary, secondary):
    """The detector at ``d`` (RAS) from the isocentre: anterior at (0, 0), the patient's left at
    LAO 90, the right at RAO 90 (-90), cranial for positive secondary angles; the source opposite
    at SOD, the central ray through the isocentre, rows towards the feet at (0, 0)."""
    a, b = math.radians(primary), math.radians(secondary)
    d = np.array([-math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b)])
    T = positioner_pose(primary, secondary, SOD, ISO)
    R, t = T[:3, :3], T[:3, 3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R[:, 2], d, atol=1e-12)
    np.testing.assert_allclose(t, ISO - SOD * d, atol=1e-9)
    iso_carm = R.T @ (ISO - t)
    np.testing.assert_allclose(iso_carm, [0.0, 0.0, SOD], atol=1e-9)
    if primary == 90 and secondary == 0:  # LAO 90: source at the patient's right
        np.testing.assert_allclose(t, ISO + [SOD, 0, 0], atol=1e-9)
    if secondary == 0:  # no tilt: rows run to the feet
        np.testing.assert_allclose(R[:, 1], [0, 0, -1], atol=1e-12)


def _angled(tmp_path, pixels, primary, orientation=None, name="o.dcm"):
    tags = dict(
        DistanceSourceToDetector="1000",
        ImagerPixelSpacing=["0.3", "0.3"],
        DetectorActiveOrigin=["2.0", "-1.0"],
        PositionerPrimaryAngle=str(primary),
        PositionerSecondaryAngle="0",
        DistanceSourceToPatient=str(SOD),
    )
    if orientation is not None:
        tags["PatientOrientation"] = orientation
    return read_xray_view(write_xray(tmp_path / name, pixels, **tags))


@pytest.mark.parametrize(
    "primary, orientation, flips",
    [
        (0, None, (True, False)),  # no Patient Orientation: the detector's view
        (0, ["L", "F"], (True, False)),  # columns to the patient's left: seen from the front
        (0, ["R", "F"], (False, False)),  # already the source's view
        (90, ["P", "F"], (True, False)),  # LAO 90 seen from the intensifier on the left
        (-90, ["A", "F"], (True, False)),  # RAO 90 seen from the intensifier on the right
        (-90, ["P", "F"], (False, False)),
        (0, ["L", "H"], (True, True)),  # head down the rows: rows mirrored too
    ],
)
def test_patient_orientation_decides_the_mirroring(tmp_path, pixels, primary, orientation, flips):
    view = _angled(tmp_path, pixels, primary, orientation)
    assert (view.flip_columns, view.flip_rows) == flips
    expected = pixels[:, ::-1] if flips[0] else pixels
    expected = expected[::-1] if flips[1] else expected
    np.testing.assert_array_equal(view.orient(pixels), expected)
    # the principal point moves with the image: x0 = 1 mm as stored
    assert view.geometry.x0 == (-1.0 if flips[0] else 1.0)
    assert view.geometry.y0 == (-2.0 if flips[1] else 2.0)
    np.testing.assert_allclose(view.pose(ISO), positioner_pose(primary, 0, SOD, ISO))
