"""Checkpoints: round trip, atomic writes, and a clear CheckpointError for every bad file."""

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from sphere_reg_ros.core import fingerprint as fingerprint_module
from sphere_reg_ros.core.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointWarning,
    ct_fingerprint,
    default_checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from sphere_reg_ros.core.models import (
    PoseRegressor,
    RegressorConfig,
    SimilarityConfig,
    SimilarityNet,
)
from sphere_reg_ros.core.sampling import PoseDistribution
from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.core.volume import Volume, resample

GEOMETRY = default_geometry(32)


@pytest.fixture(scope="module")
def cts():
    data = np.random.default_rng(0).normal(size=(24, 20, 16)).astype(np.float32) * 300
    ct = Volume(data, np.diag([4.0, 4.0, 5.0, 1.0]), "patient_a.nii.gz")
    return ct, resample(ct, 8.0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    sim = SimilarityNet(SimilarityConfig(channels=4, stem_widths=(4, 8, 8), model_dim=8, heads=2))
    reg = PoseRegressor(
        RegressorConfig("resnet10t", 32, 32), [1.0, 2.0, 3.0], PoseDistribution(rot_deg=10.0)
    )
    with torch.no_grad():
        reg.head.weight.normal_(std=1e-2)
    return sim.eval(), reg.eval()


@pytest.fixture()
def saved(tmp_path, models, cts):
    sim, reg = models
    path = save_checkpoint(
        tmp_path / "model.pt",
        sim,
        reg,
        GEOMETRY,
        cts[0],
        cts[1],
        {
            "seed": 3,
            "steps": np.int64(7),
            "validation": [{"step": 0, "loss": np.float32(0.5)}],
            "torch": torch.__version__,
            "sizes": (1, 2),
        },
    )
    return path


def test_round_trip(saved, models, cts, tmp_path):
    sim, reg = models
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind
    b = load_checkpoint(saved, ct=cts[0], geometry=GEOMETRY)
    assert b.similarity.config == sim.config and b.regressor.config == reg.config
    assert b.pose_distribution == PoseDistribution(rot_deg=10.0) and b.geometry == GEOMETRY
    assert np.allclose(b.center_world, [1.0, 2.0, 3.0]) and b.resolution == (32, 32)
    assert b.training["steps"] == 7 and b.training["validation"][0]["loss"] == 0.5
    assert type(b.training["torch"]) is str and b.training["sizes"] == [1, 2]
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(b.regressor(x), reg(x))
    assert torch.equal(b.similarity.similarity(x, x.flip(-1)), sim.similarity(x, x.flip(-1)))
    assert not b.regressor.training and not b.similarity.training
    load_checkpoint(saved, ct=cts[1])  # the resampled working CT is accepted too
    load_checkpoint(saved, geometry=default_geometry(128))  # same detector, other pixel count


def test_metadata_must_be_plain(tmp_path, models, cts):
    with pytest.raises(ValueError, match=r"training\.when is a datetime"):
        import datetime

        save_checkpoint(
            tmp_path / "x.pt", *models, GEOMETRY, cts[0], training={"when": datetime.datetime.now()}
        )
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nothere.pt")


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt: corrupt, truncated or not a checkpoint"):
        load_checkpoint(saved)


def test_garbage_and_empty_files(tmp_path):
    for name, content in (("garbage.pt", b"\x00not a zip at all" * 50), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name}: corrupt, truncated"):
            load_checkpoint(tmp_path / name)


def test_tampered_weights_are_detected(saved):
    payload = torch.load(saved, weights_only=True)
    key = next(iter(payload["similarity"]["state_dict"]))
    payload["similarity"]["state_dict"][key] += 1.0
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="corrupt checkpoint .*digest"):
        load_checkpoint(saved)


def test_other_format_version(saved):
    payload = torch.load(saved, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, saved)
    with pytest.raises(
        CheckpointError,
        match=f"format version {FORMAT_VERSION + 1}.* reads version {FORMAT_VERSION}",
    ):
        load_checkpoint(saved)


def test_not_a_checkpoint_and_pickled_code(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a sphere_reg_ros checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with open(tmp_path / "code.pt", "wb") as fh:  # weights_only=True refuses arbitrary objects
        torch.save(
            {"format": "sphere_reg_ros.checkpoint", "obj": replace}, fh, pickle_module=pickle
        )
    with pytest.raises(CheckpointError, match="code.pt: corrupt, truncated or not a checkpoint"):
        load_checkpoint(tmp_path / "code.pt")


def test_missing_part(saved):
    payload = torch.load(saved, weights_only=True)
    del payload["geometry"]
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="missing 'geometry'"):
        load_checkpoint(saved)


def test_another_ct_is_refused_naming_the_difference_unless_forced(saved, cts):
    ct = cts[0]
    other_grid = Volume(ct.data[:, :, :12], ct.affine, "patient_b.nii.gz")
    with pytest.raises(
        CheckpointError, match=r"another CT .*shape 24x20x12 voxels vs 24x20x16 voxels"
    ):
        load_checkpoint(saved, ct=other_grid)
    other_values = Volume(ct.data + 1.0, ct.affine, "patient_c.nii.gz")
    with pytest.raises(CheckpointError, match="same grid but different voxel values.*force"):
        load_checkpoint(saved, ct=other_values)
    with pytest.warns(CheckpointWarning, match="another CT"):
        b = load_checkpoint(saved, ct=other_values, force=True)
    assert b.regressor is not None


def test_another_geometry_is_refused_naming_the_difference_unless_forced(saved):
    other = replace(GEOMETRY, sdd=1200.0)
    with pytest.raises(CheckpointError, match=r"another C-arm geometry: sdd \(mm\) 1200 vs 1020"):
        load_checkpoint(saved, geometry=other)
    smaller = replace(GEOMETRY, delx=GEOMETRY.delx / 2)
    with pytest.raises(CheckpointError, match=r"detector width \(mm\) 192 vs 384"):
        load_checkpoint(saved, geometry=smaller)
    with pytest.warns(CheckpointWarning):
        load_checkpoint(saved, geometry=other, force=True)


#: The CT fingerprint of the example CT in the legacy layout, as the first shipped checkpoint
#: stored it (``spacing``, ``origin``, ``description`` and a hash of a voxel subsample).
LEGACY_EXAMPLE_CT = {
    "sha256": "0217bee2601e4b506936917d3e357cef9315e7bb362756a213b445b6e8b9d413",
    "shape": [512, 512, 133],
    "spacing": [0.7031, 0.7031, 2.5],
    "origin": [166.0, -187.5969, -340.0],
    "description": "cxr.nii.gz: 512x512x133 voxels of 0.70x0.70x2.50 mm",
}
LEGACY_EXAMPLE_CT_WORKING = {
    "sha256": "ef37cd2e6622ee888368b8ff10aeb249d6c3e366454befaa5989f836772b9946",
    "shape": [180, 180, 166],
    "spacing": [2.0, 2.0, 2.0],
    "origin": [165.3516, -186.9484, -340.0],
    "description": "cxr.nii.gz resampled to 2x2x2 mm: 180x180x166 voxels of 2.00x2.00x2.00 mm",
}


def test_a_checkpoint_with_the_legacy_ct_fingerprint_still_checks_its_ct(example_ct, tmp_path):
    """A checkpoint that stores the legacy layout (the shipped checkpoint's, with its CT
    fingerprint written as the first shipped checkpoint had it): its CT is still recognised,
    another one still refused."""
    ct = example_ct[0]
    data = torch.load(default_checkpoint_path(), weights_only=True)
    data["ct"] = {"source": dict(LEGACY_EXAMPLE_CT), "working": dict(LEGACY_EXAMPLE_CT_WORKING)}
    path = tmp_path / "legacy.pt"
    torch.save(data, path)
    assert fingerprint_module._legacy_sha256(ct) == LEGACY_EXAMPLE_CT["sha256"]
    assert load_checkpoint(path, ct=ct).regressor is not None
    brighter = Volume(ct.data + 1.0, ct.affine, "brighter.nii.gz")
    with pytest.raises(CheckpointError, match="512x512x133 voxels.*same grid but different voxel"):
        load_checkpoint(path, ct=brighter)
    moved = ct.affine.copy()
    moved[2, 3] += 10.0
    with pytest.raises(CheckpointError, match=r"origin 166x-187\.\d+x-330 mm vs"):
        load_checkpoint(path, ct=Volume(ct.data, moved, "moved.nii.gz"))
    # only the current fingerprint of the CT: its hash cannot be compared with the legacy one
    with pytest.raises(CheckpointError, match="legacy layout.*check the CT volume itself"):
        load_checkpoint(path, ct=ct_fingerprint(ct))
