"""The node's parameter table, its YAML mirror, validation, diagnostics and overlay helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from builtin_interfaces.msg import Time

from sphere_reg_ros.ros import params as P
from sphere_reg_ros.ros.diagnostics import ERROR, NodeStats
from sphere_reg_ros.ros.overlay import MASK_COLOUR, make_overlay, to_uint8
from sphere_reg_ros.ros.registrar_factory import registrar_config

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]


def _yaml_params() -> dict:
    data = yaml.safe_load((ROOT / "config" / "register.yaml").read_text())
    return data["/**"]["ros__parameters"]


def test_register_yaml_mirrors_every_parameter_with_its_default_and_type():
    values = _yaml_params()
    defaults = P.yaml_defaults()
    assert set(values) == set(defaults)
    for name, default in defaults.items():
        assert values[name] == default, name
        assert type(values[name]) is type(default), f"{name}: YAML {type(values[name]).__name__}"


def test_every_parameter_has_a_description_and_numeric_ones_a_range():
    for spec in P.PARAMS:
        d = P.descriptor(spec)
        assert len(d.description) > 20, spec.name
        if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
            assert d.floating_point_range or d.integer_range, spec.name
            lo, hi = spec.range
            assert lo <= spec.default <= hi, spec.name
        assert d.read_only == (spec.kind == "startup")


def test_defaults_validate_and_make_a_registrar_config():
    settings = P.validate(P.yaml_defaults())
    cfg = registrar_config(settings)
    assert (cfg.resolution, cfg.scales, cfg.damping) == (64, (0.5, 1.0), "marquardt")
    assert cfg.polish is False
    assert registrar_config(settings.replace(polish=True)).polish is True
    assert (settings.autostart, settings.process_stream, settings.prior_parent_frame) == (
        True,
        True,
        "",
    )
    assert "polish" in P.REGISTRAR_KEYS  # a change rebuilds the registrar


@pytest.mark.parametrize(
    "change,match",
    [
        ({"ct_frame": ""}, "non-empty frame id"),
        ({"ct_frame": "/ct"}, "leading '/'"),
        ({"default_carm_frame": "ct"}, "must differ"),
        ({"device": "tpu"}, "not one of"),
        ({"image_domain": "counts"}, "not one of"),
        ({"resolution": 5}, "outside"),
        ({"sdd_mm": float("nan")}, "outside"),
        ({"lm_scales": [0.5, 1.5]}, "fractions"),
        ({"initial_pose_mm": [0.0] * 6}, r"7 finite numbers \[x, y, z \(mm\)"),
        ({"initial_pose_mm": [0.0] * 7}, "zero quaternion"),
        ({"max_future_stamp_s": -1.0}, "outside"),
        ({"camera_info_tolerance_s": float("inf")}, "outside"),
        ({"ct_path": "/definitely/missing.nii.gz"}, "no such file"),
        ({"model_path": "/definitely/missing.pt"}, "no such readable file"),
        ({"polish": "yes"}, "polish must be true or false"),
        ({"process_stream": 1}, "process_stream must be true or false"),
        ({"prior_parent_frame": "ct"}, "prior_child_frame must be a non-empty frame id"),
        ({"prior_parent_frame": "/ct", "prior_child_frame": "c"}, "leading '/'"),
        ({"prior_parent_frame": "ct", "prior_child_frame": "ct"}, "must differ"),
        ({"request_timeout_s": 0.0}, "outside"),
        ({"views": ["/view_a"]}, "not a relative ROS namespace"),
        ({"views": ["view a"]}, "not a relative ROS namespace"),
        ({"views": ["a", "a"]}, "twice"),
        ({"views": ["a", "b"], "view_frames": ["fa"]}, "1 frame ids for 2 views"),
        ({"views": ["a", "b"], "view_frames": ["fa", "/fb"]}, r"view_frames\[1\].*leading '/'"),
        ({"view_offsets_mm": [0.0] * 6 + [1.0]}, "views is empty"),
        ({"views": ["a", "b"], "view_offsets_mm": [0.0] * 6}, "must be 7 finite numbers"),
        ({"views": ["a", "b"], "view_offsets_mm": [0.0] * 7}, r"quaternion of view 1 \(b\)"),
        ({"unpaired": "keep"}, "not one of"),
        ({"view_pair_tolerance_s": -0.1}, "outside"),
    ],
)
def test_validation_rejects_with_a_reason(change, match):
    with pytest.raises(P.ParameterError, match=match):
        P.validate({**P.yaml_defaults(), **change}, changed=set(change))


def test_view_parameters_accept_a_biplane_set_up():
    views = {
        "views": ["view_a", "carm/view_b"],
        "view_frames": ["carm_a", "carm_b"],
        "view_offsets_mm": [0.0, 0.0, 650.0, 0.0, 0.7071, 0.0, 0.7071],
        "unpaired": "mono",
    }
    settings = P.validate({**P.yaml_defaults(), **views}, changed=set(views))
    assert settings.views == ["view_a", "carm/view_b"] and settings.unpaired == "mono"
    assert P.SPECS["views"].kind == "startup"  # its subscriptions are made once


def test_units_are_in_the_names():
    """A description giving a unit as "(mm" or "(s" belongs to a parameter named ..._mm / ..._s, and
    the other way round; no parameter takes metres (initial_pose took them, now initial_pose_mm)."""
    import re

    for spec in P.PARAMS:
        units = set(re.findall(r"\((mm|m|s)[,;)]", spec.description))
        assert "m" not in units, f"{spec.name} takes metres: {spec.description}"
        for unit in units:
            assert spec.name.endswith(f"_{unit}"), (
                f"{spec.name}: description in {unit}, name without _{unit}"
            )
        for unit in ("mm", "s"):
            if spec.name.endswith(f"_{unit}"):
                assert unit in units, (
                    f"{spec.name}: the description does not give the unit ({unit})"
                )


def test_renamed_parameters_are_refused_with_the_new_name():
    P.check_renamed(["initial_pose_mm", "ct_path"])  # current names pass
    with pytest.raises(P.ParameterError, match=r"initial_pose was renamed initial_pose_mm.*\(mm\)"):
        P.check_renamed({"initial_pose": None, "ct_path": None})
    assert not set(P.RENAMED) & set(P.SPECS)


def test_cuda_is_refused_without_a_gpu_and_files_are_probed(tmp_path):
    with pytest.raises(P.ParameterError, match="no CUDA device"):
        P.validate(
            {**P.yaml_defaults(), "device": "cuda"}, changed={"device"}, cuda_available=False
        )
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(P.ParameterError, match="unreadable"):
        P.probe_volume_file(str(bad))
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(P.ParameterError, match="unsupported volume format"):
        P.probe_volume_file(str(text))


def test_node_stats_diagnostic_message():
    stats = NodeStats()
    for _ in range(3):
        stats.mark_input()
    stats.count("frames_dropped", 2)
    stats.set_latencies({"register": 1.25, "total": 1.5})
    stats.set_outcome(ERROR, "registration rejected: cost 3 > max_cost 1", "rejected_cost")
    msg = stats.to_message(Time(sec=5), "node", "CT x")
    (status,) = msg.status
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == ERROR and "max_cost" in status.message and status.hardware_id == "CT x"
    assert values["status"] == "rejected_cost" and values["frames_received"] == "3"
    assert values["frames_dropped"] == "2" and values["latency_register_ms"] == "1250.0"
    assert float(values["input_rate_hz"]) > 0


def test_overlay_draws_edges_and_status():
    yy, xx = np.mgrid[:32, :32]
    xray = ((xx - 16) ** 2 + (yy - 16) ** 2 < 64).astype(np.float32) * 3.0
    out = make_overlay(xray, xray[::2, ::2], "OK cost 0.1", ok=True)
    assert out.dtype == np.uint8 and out.shape == (256, 256, 3)
    green = (out[..., 1] == 255) & (out[..., 0] == 0) & (out[..., 2] == 0)
    assert green.sum() > 100
    red = make_overlay(xray, xray, "failed", ok=False)
    assert ((red[..., 2] == 255) & (red[..., 1] == 0)).sum() > 100
    assert make_overlay(xray, None, "no drr").shape == (256, 256, 3)
    # masked pixels (here the left quarter) are tinted and hatched in MASK_COLOUR, the rest not
    valid = np.ones((32, 32), dtype=bool)
    valid[:, :8] = False
    masked = make_overlay(xray, None, "masked", valid=valid)
    hatch = (masked == np.array(MASK_COLOUR, dtype=np.uint8)).all(-1)
    assert hatch[40:, :64].mean() > 0.1 and not hatch[40:, 64:].any()
    with pytest.raises(ValueError, match="valid mask"):
        make_overlay(xray, None, "bad", valid=valid[:10])
    assert to_uint8(np.full((4, 4), 2.0)).max() == 0
    assert to_uint8(np.array([[np.nan, 1.0], [2.0, 3.0]])).max() == 255


def _volume(shape=(6, 5, 4)):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return data, np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_with_a_valid_header_and_truncated_data_is_refused(tmp_path, suffix):
    import gzip

    import nibabel as nib

    data, affine = _volume()
    good = tmp_path / f"good{suffix}"
    nib.save(nib.Nifti1Image(data, affine), str(good))
    P.probe_volume_file(str(good))
    raw = gzip.decompress(good.read_bytes()) if suffix == ".nii.gz" else good.read_bytes()
    short = raw[:-40]  # the header intact, the last 10 voxels missing
    bad = tmp_path / f"short{suffix}"
    bad.write_bytes(gzip.compress(short) if suffix == ".nii.gz" else short)
    with pytest.raises(
        P.ParameterError,
        match=rf"ct_path '{bad}': truncated or corrupt: the header promises "
        rf"{len(raw)} bytes of header and voxels, the file holds {len(short)}",
    ):
        P.probe_volume_file(str(bad))
    if suffix == ".nii.gz":  # the gzip stream itself cut short
        cut = tmp_path / "cut.nii.gz"
        cut.write_bytes(good.read_bytes()[:-30])
        with pytest.raises(
            P.ParameterError, match=rf"ct_path '{cut}': (truncated or corrupt|unreadable)"
        ):
            P.probe_volume_file(str(cut))


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_an_nrrd_with_truncated_data_is_refused(tmp_path, encoding):
    import nrrd

    data, _ = _volume()
    good = tmp_path / f"good_{encoding}.nrrd"
    nrrd.write(str(good), data, {"encoding": encoding, "space": "left-posterior-superior"})
    P.probe_volume_file(str(good))
    bad = tmp_path / f"bad_{encoding}.nrrd"
    bad.write_bytes(good.read_bytes()[:-12])
    with pytest.raises(P.ParameterError, match=rf"ct_path '{bad}': truncated or corrupt"):
        P.probe_volume_file(str(bad))


def test_a_model_path_that_does_not_load_or_fit_the_ct_is_refused_with_the_reason(
    tmp_path, small_ct
):
    from sphere_reg_ros.core.checkpoint import default_checkpoint_path

    noise = tmp_path / "model.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    values = {**P.yaml_defaults(), "model_path": str(noise)}
    with pytest.raises(P.ParameterError, match=rf"{noise}: corrupt, truncated or not a checkpoint"):
        P.validate(values, changed={"model_path"})
    P.validate(values, changed=set())  # unchanged: not probed again
    shipped = str(default_checkpoint_path())
    P.validate(
        {**values, "model_path": shipped}, changed={"model_path"}
    )  # no CT known: loads, passes
    with pytest.raises(P.ParameterError, match="made for another CT"):
        P.validate({**values, "model_path": shipped}, changed={"model_path"}, ct=small_ct[0])
