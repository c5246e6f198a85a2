"""Hostile input over real DDS: every class of bad frame, one at a time, against one node process.

Like ``test_registration_node.py`` (whose fixture pattern this copies; the client is
:class:`conftest.NodeClient`): a subprocess runs the node on an 8 mm copy of the example CT with
32×32 images registered at 32 px, ``max_image_pixels`` 1024 (exactly one good frame's pixels),
``use_initial_pose`` near the true pose and no tracking. For each bad input the test asserts: the
node process is alive, ``/diagnostics`` names the reason (level and message), nothing (TF, pose)
is published for the bad frame, and the next good frame registers within 2 mm.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.core.volume import resample
from sphere_reg_ros.ros import conversions as conv

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODE = "reg_hostile_test"
CARM_FRAME = "carm_optical"
SIZE = 32
SPACING_MM = 8.0
WAIT_S = 90.0
MAX_PIXELS = SIZE * SIZE

_spec = importlib.util.spec_from_file_location(
    "_ros_test_helpers", Path(__file__).with_name("conftest.py")
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)

OK, WARN, ERROR = b"\x00", b"\x01", b"\x02"


@pytest.fixture(scope="module")
def scene(tmp_path_factory, example_ct):
    ct = resample(example_ct[0], SPACING_MM)
    ct_path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct.data, ct.affine), str(ct_path))
    return dict(ct_path=ct_path, **_helpers.registration_scene(ct, SIZE))


@pytest.fixture(scope="module")
def node_process(scene, ros_domain_id):
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id), PYTHONUNBUFFERED="1")
    args = _helpers.registration_node_args(
        NODE, scene["ct_path"], SPACING_MM, SIZE, scene["init"], f"max_image_pixels:={MAX_PIXELS}"
    )
    proc = _helpers.RosProcess(args, env)
    try:
        proc.wait_for_line("ready:", timeout=120.0)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(node_process, ros_domain_id, scene):
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    c = _helpers.NodeClient(
        context, node_process, NODE, CARM_FRAME, WAIT_S, name="reg_hostile_client"
    )
    try:
        c.warm_up(scene)
        yield c
    finally:
        c.close()
        rclpy.shutdown(context=context)


# ----------------------------------------------------------------------------- the bad inputs
def _with(msg, **fields):
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def _bad(client, scene, case):
    """(image, CameraInfo) for ``case``."""
    img, info = scene["image"], client.info_msg(scene["geometry"])
    rng = np.random.default_rng(7)
    if case.startswith("encoding_"):
        encoding = case.split("_", 1)[1]
        if encoding == "rgb8":
            u8 = np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)
            return client.image_msg(np.repeat(u8[..., None], 3, axis=2), "rgb8"), info
        if encoding == "64FC1":
            return client.image_msg(img.astype(np.float64), "64FC1"), info
        return _with(client.image_msg(img), encoding=encoding), info
    if case == "bad_step":
        return _with(
            client.image_msg(img), step=SIZE * 4 - 1, data=bytes((SIZE * 4 - 1) * SIZE)
        ), info
    if case == "short_data":
        msg = client.image_msg(img)
        return _with(msg, data=bytes(msg.data)[:-4]), info
    if case == "long_data":
        msg = client.image_msg(img)
        return _with(msg, data=bytes(msg.data) + bytes(4)), info
    if case == "zero_size":
        return _with(client.image_msg(img), height=0, width=0, step=0, data=b""), info
    if case == "nan_pixels":
        bad = img.copy()
        bad[3, 4] = np.nan
        return client.image_msg(bad), info
    if case == "camera_info_wrong_size":
        return client.image_msg(img), client.info_msg(default_geometry(48))
    if case == "camera_info_negative_focal_length":
        info.k = [-v if i == 0 else v for i, v in enumerate(info.k)]
        return client.image_msg(img), info
    if case == "future_stamp":
        return client.image_msg(img, stamp=client.stamp(age_s=-100.0)), info
    if case == "zero_stamp":
        from builtin_interfaces.msg import Time

        return client.image_msg(img, stamp=Time(sec=0, nanosec=0)), info
    if case == "stale_stamp":
        return client.image_msg(img, stamp=client.stamp(age_s=100.0)), info
    if case == "over_max_image_pixels":
        return client.image_msg(np.tile(img, (2, 1))), client.info_msg(
            default_geometry(SIZE).resized(2 * SIZE, SIZE)
        )
    if case == "over_max_image_pixels_header_only":  # sizes that would need 40 GB; no data at all
        return _with(
            client.image_msg(img), height=100_000, width=100_000, step=400_000, data=b""
        ), info
    if case == "uniform_noise":
        return client.image_msg(rng.uniform(0.0, 4.0, size=(SIZE, SIZE)).astype(np.float32)), info
    if case == "near_constant":
        pixels = np.full((SIZE, SIZE), 2.0, dtype=np.float32)
        pixels[11, 20] = 2.5
        return client.image_msg(pixels), info
    raise ValueError(case)


_GATES = ("rejected_cost", "rejected_covariance", "rejected_inconsistent", "registration_failed")

#: case: (accepted diagnostic statuses, level, text in the diagnostic message)
CASES = {
    "encoding_rgb8": (("unsupported_encoding",), ERROR, "unsupported image encoding 'rgb8'"),
    "encoding_64FC1": (("unsupported_encoding",), ERROR, "unsupported image encoding '64FC1'"),
    "encoding_bogus": (("unsupported_encoding",), ERROR, "unsupported image encoding 'bogus'"),
    "bad_step": (("bad_step",), ERROR, f"step {SIZE * 4 - 1} is smaller than width {SIZE}"),
    "short_data": (
        ("bad_data_length",),
        ERROR,
        f"data holds {SIZE * SIZE * 4 - 4} bytes, expected step",
    ),
    "long_data": (
        ("bad_data_length",),
        ERROR,
        f"data holds {SIZE * SIZE * 4 + 4} bytes, expected step",
    ),
    "zero_size": (("zero_size",), ERROR, "zero-size image"),
    "nan_pixels": (("non_finite",), WARN, f"1 of {SIZE * SIZE} pixels are NaN or infinite"),
    "camera_info_wrong_size": (
        ("size_mismatch",),
        ERROR,
        "image 32x32 (WxH) disagrees with CameraInfo 48x48",
    ),
    "camera_info_negative_focal_length": (
        ("bad_camera_info",),
        ERROR,
        "CameraInfo K has a negative focal length",
    ),
    "future_stamp": (
        ("future_stamp",),
        ERROR,
        "s ahead of the node clock on arrival (max_future_stamp_s 0.5)",
    ),
    "zero_stamp": (("stale",), WARN, "stale image: stamp"),
    "stale_stamp": (("stale",), WARN, "stale image: stamp"),
    "over_max_image_pixels": (
        ("too_large",),
        ERROR,
        f"image 32x64 (WxH) has 2048 pixels, more than max_image_pixels {MAX_PIXELS}",
    ),
    "over_max_image_pixels_header_only": (
        ("too_large",),
        ERROR,
        f"more than max_image_pixels {MAX_PIXELS}",
    ),
    "uniform_noise": (_GATES, ERROR, ""),
    "near_constant": (_GATES, ERROR, ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_reported_nothing_published_and_the_next_frame_registers(
    client, scene, case
):
    reasons, level, text = CASES[case]
    image, info = _bad(client, scene, case)
    # CameraInfo first, alone: both topics are reliable, so it is buffered before the image comes
    if (info.header.stamp.sec, info.header.stamp.nanosec) == (0, 0):
        info.header.stamp = image.header.stamp
    client.info_pub.publish(info)
    time.sleep(0.2)
    client.image_pub.publish(image)
    status, values = client.diag_for(image.header.stamp, timeout=WAIT_S)
    assert values["status"] in reasons, (values["status"], status.message)
    assert status.level == level, (status.level, status.message)
    assert text in status.message, status.message
    if case in ("uniform_noise", "near_constant"):
        assert values["last_registration_status"] != "converged", values
    else:
        assert int(values["frames_rejected"]) >= 1
    assert client.proc.proc.poll() is None, client.proc.output()[-4000:]
    _helpers.assert_nothing_published(client, image)
    _, tf = client.register_good(scene)
    T_carm_from_ct = np.linalg.inv(scene["truth"])
    assert (
        float(np.linalg.norm(conv.transform_stamped_to_pose(tf)[:3, 3] - T_carm_from_ct[:3, 3]))
        < 2.0
    )
    assert client.proc.proc.poll() is None, client.proc.output()[-4000:]
