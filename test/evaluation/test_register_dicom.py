"""``sphere-reg register --image x.dcm``: intrinsics and start pose from the DICOM header
(docs/DICOM_XRAY.md), end to end on a tiny CT with an X-ray rendered by the project's renderer
and stored as a DICOM file the way an angiography system stores it (seen from the detector)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_files import write_xray

from sphere_reg_ros.cli import main
from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.core.dicom_xray import positioner_pose
from sphere_reg_ros.core.geometry import make_pose, so3_exp
from sphere_reg_ros.core.metrics import mtre
from sphere_reg_ros.core.registrar import Registrar, RegistrarConfig
from sphere_reg_ros.core.volume import resample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOD, PRIMARY, SECONDARY = 650.0, 25.0, 10.0
#: The source's view: 48 px over 384 mm at the detector, principal point 6 mm right, 4 mm down.
TRUE_GEOMETRY = CarmGeometry(sdd=1020.0, height=48, width=48, delx=8.0, dely=8.0, x0=6.0, y0=4.0)


@pytest.fixture(scope="module")
def scene(small_ct, tmp_path_factory):
    """The 8 mm CT on disk, a true pose a few mm and degrees off the header's angles, and a
    DICOM of its X-ray stored as seen from the detector (columns mirrored, no Patient
    Orientation), with the header's geometry tags."""
    folder = tmp_path_factory.mktemp("dicom")
    ct8 = resample(small_ct[0], 8.0)
    nib.save(nib.Nifti1Image(ct8.data, ct8.affine), str(folder / "ct8.nii.gz"))
    center = np.asarray(ct8.center_world, dtype=np.float64)
    header_pose = positioner_pose(PRIMARY, SECONDARY, SOD, center)
    R = so3_exp(torch.tensor([0.03, -0.02, 0.02], dtype=torch.float64)).numpy()
    off = make_pose(torch.as_tensor(R)[None], torch.tensor([[4.0, -3.0, 2.0]]).double())[0]
    W = off.numpy().copy()
    W[:3, 3] += center - R @ center  # the rotation about the CT centre, then the shift
    true_pose = W @ header_pose
    reg = Registrar.from_files(str(folder / "ct8.nii.gz"), None, RegistrarConfig(device="cpu"), 8.0)
    drr = reg.render(true_pose, TRUE_GEOMETRY)
    stored = drr[:, ::-1]  # the detector's view of the source's image
    pixels = np.round(stored / stored.max() * 60000).astype("<u2")
    g = TRUE_GEOMETRY
    path = write_xray(
        folder / "xray.dcm",
        pixels,
        DistanceSourceToDetector=str(g.sdd),
        ImagerPixelSpacing=[str(g.dely), str(g.delx)],
        # the stored (mirrored) image's offsets: x0 -6 mm, written (y0, -x0) as xvr reads them
        DetectorActiveOrigin=[str(g.y0), str(g.x0)],
        PositionerPrimaryAngle=str(PRIMARY),
        PositionerSecondaryAngle=str(SECONDARY),
        DistanceSourceToPatient=str(SOD),
    )
    return folder, path, true_pose, header_pose, center


def _argv(folder, image, out):
    return [
        "register",
        "--ct",
        str(folder / "ct8.nii.gz"),
        "--image",
        str(image),
        "--resolution",
        "32",
        "--spacing",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def test_register_a_dicom_from_its_header(scene, tmp_path):
    folder, path, true_pose, header_pose, center = scene
    code = main(_argv(folder, path, tmp_path / "out"))
    assert code in (0, 1)  # registered (a gate may still refuse the tiny CT's pose)
    info = json.loads((tmp_path / "out" / "pose.json").read_text())
    report = (tmp_path / "out" / "report.txt").read_text()
    assert "start: DICOM positioner angles (primary 25, secondary 10 deg" in report
    assert "image mirrored to the source's view (columns)" in report
    assert info["geometry"] == pytest.approx(TRUE_GEOMETRY.to_dict())
    pts = torch.as_tensor(center + np.random.default_rng(0).uniform(-60, 60, (20, 3)))

    def err(T):
        return float(mtre(torch.as_tensor(T)[None], torch.as_tensor(true_pose)[None], pts)[0])

    start = err(header_pose)
    assert 4.0 < start < 15.0  # the header's pose is only a start ...
    assert err(np.asarray(info["T_ct_from_carm_mm"])) < min(1.5, start / 4)  # ... registered


def test_a_dicom_without_the_distance_is_refused_naming_the_tag(scene, tmp_path, capsys):
    folder, _, _, _, _ = scene
    bare = write_xray(
        tmp_path / "bare.dcm",
        np.ones((32, 32), dtype="<u2"),
        ImagerPixelSpacing=["1", "1"],
        PositionerPrimaryAngle="0",
        PositionerSecondaryAngle="0",
    )
    assert main(_argv(folder, bare, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "DistanceSourceToDetector (0018,1110)" in err and str(bare) in err
    assert not (tmp_path / "out").exists()
    # given on the command line, the distance is no longer missing; the pose's distance is
    assert main(_argv(folder, bare, tmp_path / "out") + ["--sdd", "1000"]) == 2
    assert "DistanceSourceToPatient (0018,1111)" in capsys.readouterr().err
