"""Volume I/O (NIfTI, NRRD, DICOM), RAS conventions, resampling, HU->attenuation, landmarks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from sphere_reg_ros.core.landmarks import (
    LandmarkError,
    as_landmarks,
    landmarks_from_labels,
    load_landmarks,
    save_landmarks,
)
from sphere_reg_ros.core.volume import (
    WATER_MU_PER_MM,
    Volume,
    VolumeError,
    hu_to_attenuation,
    load_volume,
    resample,
)

FLIP = np.diag([-1.0, -1.0, 1.0])
MARK = (4, 1, 2)  # marked voxel of the synthetic volume
MARK_HU = 2000.0


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Data (6, 5, 4) in even HU with one bright voxel; oblique anisotropic RAS affine."""
    i, j, k = np.meshgrid(np.arange(6), np.arange(5), np.arange(4), indexing="ij")
    data = (-1000 + 20 * i + 6 * j + 40 * k).astype(np.float32)
    data[MARK] = MARK_HU
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.3, 0.5) @ np.diag([0.8, 0.6, 1.5])
    affine[:3, 3] = [-30.0, 12.0, 45.0]
    return data, affine


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _write_nrrd(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write in LPS, as ITK/Slicer do: rows of 'space directions' are per-axis LPS vectors."""
    header = {
        "space": "left-posterior-superior",
        "space directions": (FLIP @ affine[:3, :3]).T,
        "space origin": FLIP @ affine[:3, 3],
    }
    nrrd.write(str(path), data, header)
    return path


def _dicom_slice(
    path: Path,
    plane_hu: np.ndarray,
    ipp,
    iop,
    pixel_spacing,
    series: str,
    number: int,
    slope: float = 2.0,
    intercept: float = -1024.0,
) -> None:
    """One CT slice; ``plane_hu`` is (Rows, Columns) in HU."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.Rows, ds.Columns = plane_hu.shape
    ds.PixelSpacing = [f"{v:.10g}" for v in pixel_spacing]
    ds.ImageOrientationPatient = [f"{v:.10g}" for v in iop]
    ds.ImagePositionPatient = [f"{v:.10g}" for v in ipp]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.round((plane_hu - intercept) / slope).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_dicom(folder: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Slices along k, DICOM pixel (row j, column i); files written in shuffled order."""
    folder.mkdir()
    lps = FLIP @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    iop = np.concatenate([lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]])
    order = list(range(data.shape[2]))
    random.Random(0).shuffle(order)
    for n, k in enumerate(order):
        ipp = FLIP @ (affine[:3, :3] @ [0, 0, k] + affine[:3, 3])
        _dicom_slice(
            folder / f"img{n:03d}",
            data[:, :, k].T,
            ipp,
            iop,
            (spacing[1], spacing[0]),
            "1.2.3.4.5",
            k + 1,
        )
    (folder / "README.txt").write_text("not a DICOM file")  # must be skipped
    return folder


@pytest.fixture
def synthetic_files(tmp_path):
    data, affine = _synthetic()
    return {
        "nifti": _write_nifti(tmp_path / "vol.nii.gz", data, affine),
        "nrrd": _write_nrrd(tmp_path / "vol.nrrd", data, affine),
        "dicom": _write_dicom(tmp_path / "dicom", data, affine),
    }


# --- loading and coordinate conventions -------------------------------------------------------


@pytest.mark.parametrize("fmt", ["nifti", "nrrd", "dicom"])
def test_formats_agree_on_world_coordinates(synthetic_files, fmt):
    data, affine = _synthetic()
    vol = load_volume(synthetic_files[fmt])
    assert vol.data.dtype == np.float32 and vol.affine.dtype == np.float64
    assert vol.data.flags["C_CONTIGUOUS"]
    assert vol.source == str(synthetic_files[fmt])
    np.testing.assert_allclose(vol.data, data, atol=1e-3)  # same voxel order in every format
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_allclose(sorted(vol.spacing), sorted([0.8, 0.6, 1.5]), atol=1e-6)
    mark = np.unravel_index(np.argmax(vol.data), vol.shape)
    expected = affine[:3, :3] @ MARK + affine[:3, 3]
    np.testing.assert_allclose(vol.voxel_to_world(np.array(mark, float)), expected, atol=1e-6)
    np.testing.assert_allclose(vol.world_to_index(expected), MARK, atol=1e-6)


def test_single_dicom_file_loads_its_series(synthetic_files):
    some_file = sorted(synthetic_files["dicom"].glob("img*"))[0]
    assert load_volume(some_file).shape == (6, 5, 4)


@pytest.mark.parametrize("fmt", ["nrrd", "dicom"])
def test_lps_conversion_matches_simpleitk(synthetic_files, fmt):
    """Independent oracle: ITK reads LPS; our RAS point must be its point with x, y negated."""
    sitk = pytest.importorskip(
        "SimpleITK", reason="SimpleITK (an independent oracle, not a dependency) is not installed"
    )
    path = synthetic_files[fmt]
    if fmt == "dicom":
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    k, j, i = np.unravel_index(np.argmax(array), array.shape)
    lps = np.array(image.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))
    vol = load_volume(path)
    mark = np.unravel_index(np.argmax(vol.data), vol.shape)
    np.testing.assert_allclose(vol.voxel_to_world(np.array(mark, float)), FLIP @ lps, atol=1e-5)


def test_nrrd_lps_by_hand(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 2, 3] = 1.0
    path = tmp_path / "lps.nrrd"
    nrrd.write(
        str(path),
        data,
        {
            "space": "LPS",
            "space directions": np.diag([1.0, 2.0, 3.0]),
            "space origin": np.array([10.0, 20.0, 30.0]),
        },
    )
    vol = load_volume(path)
    np.testing.assert_allclose(vol.voxel_to_world([1, 2, 3]), [-11.0, -24.0, 39.0])
    path = tmp_path / "ras.nrrd"
    nrrd.write(
        str(path),
        data,
        {
            "space": "right-anterior-superior",
            "space directions": np.diag([1.0, 2.0, 3.0]),
            "space origin": np.array([10.0, 20.0, 30.0]),
        },
    )
    np.testing.assert_allclose(load_volume(path).voxel_to_world([1, 2, 3]), [11.0, 24.0, 39.0])


def test_dicom_lps_by_hand(tmp_path):
    """Axial slices, IOP identity: column index -> LPS +x (RAS -x), row index -> LPS +y."""
    folder = tmp_path / "axial"
    folder.mkdir()
    for k in (2, 0, 1):  # out of order on disk
        plane = np.full((4, 3), -1000.0)  # (Rows, Columns)
        plane[0, 0] = 100.0 * k
        _dicom_slice(
            folder / f"s{k}.dcm",
            plane,
            (10.0, 20.0, 30.0 + 2.0 * k),
            (1, 0, 0, 0, 1, 0),
            (0.5, 0.8),
            "9.9",
            k + 1,
            slope=1.0,
            intercept=-1024.0,
        )
    vol = load_volume(folder)
    assert vol.shape == (3, 4, 3)  # (Columns, Rows, slices)
    np.testing.assert_allclose(vol.spacing, [0.8, 0.5, 2.0])
    np.testing.assert_allclose(vol.voxel_to_world([0, 0, 0]), [-10.0, -20.0, 30.0])
    np.testing.assert_allclose(vol.voxel_to_world([1, 0, 0]), [-10.8, -20.0, 30.0])
    np.testing.assert_allclose(vol.voxel_to_world([0, 1, 2]), [-10.0, -20.5, 34.0])
    np.testing.assert_allclose(vol.data[0, 0], [0.0, 100.0, 200.0])  # sorted, rescaled


def test_example_ct(example_ct):
    ct, labels, structures = example_ct
    assert ct.shape == labels.shape == (512, 512, 133)
    np.testing.assert_allclose(ct.spacing, [0.703125, 0.703125, 2.5])
    assert -2100 < ct.data.min() < -900 and 1000 < ct.data.max() < 4000
    assert structures[1] == "spleen" and len(structures) == 118
    assert set(np.unique(labels.data[::8, ::8, ::4])) <= set(structures) | {0}


# --- bad input ---------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    data, affine = _synthetic()
    zero = affine.copy()
    zero[:3, 2] = 0.0
    dup = tmp_path / "dup"
    dup.mkdir()
    for n in range(2):  # two slices at the same position
        _dicom_slice(
            dup / f"{n}.dcm",
            np.zeros((3, 3)) + n,
            (0, 0, 0),
            (1, 0, 0, 0, 1, 0),
            (1, 1),
            "7.7",
            n + 1,
        )
    single = tmp_path / "single"
    single.mkdir()
    _dicom_slice(
        single / "0.dcm",
        np.arange(9.0).reshape(3, 3),
        (0, 0, 0),
        (1, 0, 0, 0, 1, 0),
        (1, 1),
        "8.8",
        1,
    )
    nan = data.copy()
    nan[0, 0, 0] = np.nan
    files = {
        "missing": tmp_path / "nope.nii.gz",
        "corrupt_nifti": tmp_path / "corrupt.nii.gz",
        "truncated_nifti": _write_nifti(tmp_path / "cut.nii", data, affine),
        "corrupt_nrrd": tmp_path / "corrupt.nrrd",
        "corrupt_dicom": tmp_path / "corrupt.dcm",
        "unsupported": tmp_path / "vol.mha",
        "2d_nifti": _write_nifti(tmp_path / "flat.nii", data[:, :, 0], affine),
        "2d_nrrd": tmp_path / "flat.nrrd",
        "zero_spacing_nifti": tmp_path / "zero.nii.gz",
        "zero_spacing_nrrd": _write_nrrd(tmp_path / "zero.nrrd", data, zero),
        "zero_spacing_dicom": dup,
        "single_slice_dicom": single,
        "empty_dicom_dir": tmp_path / "nodicom",
        "constant": _write_nifti(
            tmp_path / "const.nii.gz", np.full((4, 4, 4), 7.0, np.float32), affine
        ),
        "nan": _write_nifti(tmp_path / "nan.nii", nan, affine),
    }
    image = nib.Nifti1Image(data, affine)  # nibabel refuses a zero column in the constructor
    image.set_sform(zero, code=1)
    image.set_qform(None, code=0)
    nib.save(image, str(files["zero_spacing_nifti"]))
    files["corrupt_nifti"].write_bytes(b"\x1f\x8b\x08garbage" * 40)
    full = files["truncated_nifti"].read_bytes()
    files["truncated_nifti"].write_bytes(full[:-100])  # header intact, voxels cut
    files["corrupt_nrrd"].write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 9 9\n\n\x00")
    files["corrupt_dicom"].write_bytes(b"\x00" * 50 + b"not dicom")
    files["unsupported"].write_bytes(b"x")
    nrrd.write(str(files["2d_nrrd"]), data[:, :, 0])
    files["empty_dicom_dir"].mkdir()
    (files["empty_dicom_dir"] / "a.txt").write_text("hello")
    return files


BAD_CASES = [
    "missing",
    "corrupt_nifti",
    "truncated_nifti",
    "corrupt_nrrd",
    "corrupt_dicom",
    "unsupported",
    "2d_nifti",
    "2d_nrrd",
    "zero_spacing_nifti",
    "zero_spacing_nrrd",
    "zero_spacing_dicom",
    "single_slice_dicom",
    "empty_dicom_dir",
    "constant",
    "nan",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_volume_error_naming_file(tmp_path, case):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(VolumeError) as info:
        load_volume(path)
    assert path.name in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


def test_constant_allowed_for_label_maps(tmp_path):
    vol = load_volume(_bad_files(tmp_path)["constant"], allow_constant=True)
    assert vol.shape == (4, 4, 4) and float(vol.data.max()) == 7.0


@pytest.mark.parametrize(
    "data, affine, problem",
    [
        (np.zeros((4, 4)), np.eye(4), "3-D"),
        (np.zeros((0, 4, 4)), np.eye(4), "empty"),
        (np.zeros((4, 4, 4)), np.diag([1.0, 1.0, 0.0, 1.0]), "spacing"),
        (np.zeros((4, 4, 4)), np.diag([1.0, np.nan, 1.0, 1.0]), "non-finite"),
        (
            np.zeros((4, 4, 4)),
            np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
            "singular",
        ),
    ],
)
def test_volume_validation(data, affine, problem):
    with pytest.raises(VolumeError, match=problem) as info:
        Volume(data, affine, "my-description")
    assert "my-description" in str(info.value)


# --- resampling --------------------------------------------------------------------------------


def _linear_volume() -> tuple[Volume, np.ndarray]:
    """A field linear in world coordinates, f(x) = g . x + 5, on an oblique grid."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.2, -0.4) @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [12.0, -40.0, 7.0]
    shape = (30, 24, 10)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    gradient = np.array([3.0, -2.0, 1.5])
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return Volume(world @ gradient + 5.0, affine, "linear"), gradient


@pytest.mark.parametrize("spacing", [2.0, (1.0, 1.3, 3.0), 0.5])
def test_resample_keeps_world_values_and_extent(spacing):
    vol, gradient = _linear_volume()
    out = resample(vol, spacing)
    np.testing.assert_allclose(out.spacing, np.broadcast_to(spacing, (3,)), atol=1e-9)
    np.testing.assert_allclose(out.center_world, vol.center_world, atol=1e-9)
    old_extent = np.asarray(vol.shape) * vol.spacing
    assert np.all(
        np.abs(np.asarray(out.shape) * out.spacing - old_extent) <= out.spacing / 2 + 1e-9
    )
    # axis directions unchanged
    np.testing.assert_allclose(
        out.affine[:3, :3] / out.spacing, vol.affine[:3, :3] / vol.spacing, atol=1e-12
    )
    # every new voxel whose centre lies at least one old voxel inside keeps the field's value
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1)
    world = out.voxel_to_world(ijk)
    old_idx = vol.world_to_index(world)
    inside = np.all((old_idx >= 0) & (old_idx <= np.asarray(vol.shape) - 1), axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out.data[inside], (world @ gradient + 5.0)[inside], atol=2e-3)


def test_resample_labels_nearest():
    labels = np.zeros((20, 20, 8), np.float32)
    labels[5:12, 3:9, 2:6] = 3.0
    labels[14:18, 10:19, 1:7] = 7.0
    vol = Volume(labels, np.diag([0.7, 0.7, 2.5, 1.0]), "labels")
    out = resample(vol, 1.5, order=0)
    assert set(np.unique(out.data)) == {0.0, 3.0, 7.0}
    # a point deep inside structure 3 keeps its label
    world = vol.voxel_to_world([8, 6, 4])
    idx = np.round(out.world_to_index(world)).astype(int)
    assert out.data[tuple(idx)] == 3.0
    with pytest.raises(ValueError):
        resample(vol, 0.0)
    with pytest.raises(ValueError):
        resample(vol, 1.0, order=7)


def test_small_ct_matches_example_world(example_ct, small_ct):
    ct, labels, _ = example_ct
    small, small_labels, _ = small_ct
    assert small.shape == small_labels.shape == (90, 90, 83)
    np.testing.assert_allclose(small.spacing, 4.0)
    np.testing.assert_allclose(small.center_world, ct.center_world, atol=1e-6)
    np.testing.assert_array_equal(small_labels.affine, small.affine)
    # a world point in a homogeneous region (liver interior) keeps its HU roughly
    liver = np.argwhere(small_labels.data == 5)
    ijk = liver[len(liver) // 2]
    world = small.voxel_to_world(ijk.astype(float))
    full = np.round(ct.world_to_index(world)).astype(int)
    assert labels.data[tuple(full)] == 5
    assert abs(float(small.data[tuple(ijk)]) - float(ct.data[tuple(full)])) < 60.0


def test_antialias_smooths_downsampling():
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(40, 40, 40)), np.eye(4), "noise")
    plain, smooth = resample(vol, 4.0), resample(vol, 4.0, antialias=True)
    assert smooth.shape == plain.shape == (10, 10, 10)
    assert smooth.data.std() < 0.6 * plain.data.std()


# --- HU -> attenuation ----------------------------------------------------------------------------


def test_hu_to_attenuation_numpy():
    hu = np.array([-3000.0, -1000.0, 0.0, 300.0, 1000.0])
    mu = hu_to_attenuation(hu)
    assert mu.dtype == np.float32
    np.testing.assert_allclose(mu, [0.0, 0.0, 1.0, 1.3, 2.0], atol=1e-6)
    np.testing.assert_allclose(
        hu_to_attenuation(hu, bone_multiplier=2.0), [0, 0, 1, 1.3, 4.0], atol=1e-6
    )
    np.testing.assert_allclose(
        hu_to_attenuation(hu, 2.0, bone_threshold_hu=200.0), [0, 0, 1, 2.6, 4.0], atol=1e-6
    )
    np.testing.assert_allclose(
        hu_to_attenuation(hu, water_mu=WATER_MU_PER_MM), mu * WATER_MU_PER_MM, rtol=1e-6
    )
    with pytest.raises(ValueError):
        hu_to_attenuation(hu, bone_multiplier=-1.0)
    with pytest.raises(ValueError):
        hu_to_attenuation(hu, water_mu=0.0)


def test_hu_to_attenuation_torch_matches_and_differentiates():
    hu = torch.tensor([-1500.0, -200.0, 0.0, 500.0], dtype=torch.float64, requires_grad=True)
    mu = hu_to_attenuation(hu, bone_multiplier=3.0)
    assert isinstance(mu, torch.Tensor) and mu.dtype == torch.float64
    np.testing.assert_allclose(
        mu.detach().numpy(), hu_to_attenuation(hu.detach().numpy(), bone_multiplier=3.0), rtol=1e-6
    )
    mu.sum().backward()
    np.testing.assert_allclose(hu.grad.numpy(), [0.0, 1e-3, 1e-3, 3e-3])
    assert hu_to_attenuation(torch.zeros(2, dtype=torch.int16)).dtype == torch.float32


def test_example_ct_attenuation_range(small_ct):
    mu = hu_to_attenuation(small_ct[0].data, bone_multiplier=2.0)
    assert mu.min() >= 0.0 and mu.max() > 2.0 and np.median(mu) < 0.5  # lots of air


# --- landmarks ---------------------------------------------------------------------------------


def test_landmarks_from_labels_known_centroids():
    data = np.zeros((12, 10, 8), np.float32)
    data[1:4, 2:5, 0:2] = 2.0  # centroid (2, 3, 0.5)
    data[6:11, 5:9, 3:8] = 9.0  # centroid (8, 6.5, 5)
    data[0, 0, 7] = 4.0  # a single stray voxel
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-0.5, 0.5, 2.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    labels = Volume(data, affine, "toy labels")
    names, points = landmarks_from_labels(labels, structures={2: "femur"}, min_voxels=2)
    assert names == ["femur", "label_9"]
    np.testing.assert_allclose(points, [[9.0, -3.5, 4.0], [6.0, -1.75, 13.0]])
    names, points = landmarks_from_labels(labels, ids=[9, 4], min_voxels=1)
    assert names == ["label_9", "label_4"] and points.shape == (2, 3)
    with pytest.raises(LandmarkError, match="toy labels"):
        landmarks_from_labels(labels, ids=[5])
    with pytest.raises(LandmarkError):
        landmarks_from_labels(Volume(data + 0.5, affine, "not labels"))


def test_example_landmarks_are_anatomically_placed(small_ct):
    _, labels, structures = small_ct
    names, points = landmarks_from_labels(labels, structures=structures)
    assert len(names) > 40
    where = dict(zip(names, points))
    assert where["spleen"][0] < 0 < where["liver"][0]  # RAS: +x is the patient's right
    assert where["kidney_left"][0] < 0 < where["kidney_right"][0]
    assert where["trachea"][2] > where["kidney_left"][2]  # +z superior


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_landmark_round_trip(tmp_path, suffix):
    names = ["a", "b b", "c"]
    points = np.array([[1.0, -2.5, 3.125], [0.1, 1e-7, -300.0], [np.pi, 2.0, 1.0 / 3.0]])
    save_landmarks(tmp_path / f"pts{suffix}", names, points)
    got_names, got = load_landmarks(tmp_path / f"pts{suffix}")
    assert got_names == names
    np.testing.assert_array_equal(got, points)


def test_landmark_file_variants(tmp_path):
    (tmp_path / "xyz.csv").write_text("# comment\n1,2,3\n\n4,5,6\n")
    names, pts = load_landmarks(tmp_path / "xyz.csv")
    assert names == ["p0", "p1"] and pts.tolist() == [[1, 2, 3], [4, 5, 6]]
    (tmp_path / "hdr.csv").write_text("X, Y, Z, Label\n1,2,3,tip\n")
    assert load_landmarks(tmp_path / "hdr.csv")[0] == ["tip"]
    (tmp_path / "named.csv").write_text("tip,1,2,3\n")
    names, pts = load_landmarks(tmp_path / "named.csv", space="LPS")
    assert names == ["tip"] and pts.tolist() == [[-1, -2, 3]]
    (tmp_path / "p.json").write_text(json.dumps({"points": [[1, 2, 3], [4, 5, 6]]}))
    assert load_landmarks(tmp_path / "p.json")[1].shape == (2, 3)
    (tmp_path / "l.json").write_text(json.dumps([{"x": 1, "y": 2, "z": 3}]))
    assert load_landmarks(tmp_path / "l.json")[0] == ["p0"]


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.csv", "name,x,y,z\na,1,2\n"),
        ("bad2.csv", "a,1,2,zz\n"),
        ("nan.csv", "1,nan,3\n"),
        ("noxyz.csv", "name,u,v,w\na,1,2,3\n"),
        ("empty.csv", "\n"),
        ("bad.json", "{not json"),
        ("keys.json", json.dumps([{"x": 1, "y": 2}])),
        ("nopoints.json", json.dumps({"pts": []})),
        ("pts.txt", "1,2,3"),
    ],
)
def test_bad_landmark_files(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(LandmarkError, match=name.replace(".", r"\.")):
        load_landmarks(tmp_path / name)


def test_as_landmarks():
    assert as_landmarks([1, 2, 3]).shape == (1, 3)
    assert as_landmarks(torch.zeros(4, 3)).dtype == np.float64
    for bad in ([[1, 2]], np.zeros((0, 3)), [[1, np.inf, 2]], "abc"):
        with pytest.raises(LandmarkError):
            as_landmarks(bad)
    with pytest.raises(LandmarkError, match="missing.csv"):
        load_landmarks("missing.csv")
