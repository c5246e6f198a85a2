"""The registration node over real DDS: a subprocess runs it, this process is the C-arm and the robot.

One node process per module (``python -m sphere_reg_ros.ros.registration_node --ros-args -p ...``)
serves every test, on an 8 mm copy of the example CT written to a temporary NIfTI file, with
32×32 images registered at 32 px in one scale. X-rays are rendered with ``core.drr.DrrRenderer``
at a known pose ``T_true`` (``T_ct_from_carm``). Start pose: the node's ``initial_pose_mm``
parameter (``use_initial_pose:=true``; translation in mm, so a registration that lands within
2 mm also checks that unit) holds ``T_true`` perturbed by a few mm and about a degree, standing
in for the regressor (tests run with ``tracking:=false`` except the tracking/reset test).
CameraInfo goes out stamped with its image's stamp, as a camera driver publishes it; the node
pairs them by stamp. Every wait is for a message (TF with the image's stamp, a diagnostic status,
a service reply) with a timeout; frames are re-sent while waiting only where delivery order
between two topics or a fresh subscription matters.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sphere_reg_ros.core.drr import DrrRenderer
from sphere_reg_ros.core.views import default_geometry
from sphere_reg_ros.core.volume import hu_to_attenuation, resample
from sphere_reg_ros.ros import conversions as conv

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODE = "reg_test"
CARM_FRAME = "carm_optical"
SIZE = 32
SPACING_MM = 8.0
WAIT_S = 90.0  # one registration on a busy 2-core CPU, plus the first call's warm-up

_spec = importlib.util.spec_from_file_location(
    "_ros_test_helpers", Path(__file__).with_name("conftest.py")
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


# ----------------------------------------------------------------------------- scene
@pytest.fixture(scope="module")
def scene(tmp_path_factory, example_ct):
    ct = resample(example_ct[0], SPACING_MM)
    folder = tmp_path_factory.mktemp("ct")
    paths = {}
    for name in ("ct_a.nii.gz", "ct_b.nii.gz"):
        paths[name] = folder / name
        nib.save(nib.Nifti1Image(ct.data, ct.affine), str(paths[name]))
    truncated = folder / "truncated.nii.gz"  # a valid header, the last voxels missing
    truncated.write_bytes(gzip.compress(gzip.decompress(paths["ct_a.nii.gz"].read_bytes())[:-4096]))
    garbage = folder / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a NIfTI file" * 10)
    corrupt_model = folder / "model.pt"
    corrupt_model.write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    return dict(
        ct=ct,
        ct_path=paths["ct_a.nii.gz"],
        ct_path_b=paths["ct_b.nii.gz"],
        garbage=garbage,
        truncated=truncated,
        corrupt_model=corrupt_model,
        **_helpers.registration_scene(ct, SIZE),
    )


@pytest.fixture(scope="module")
def node_process(scene, ros_domain_id):
    import os

    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id), PYTHONUNBUFFERED="1")
    args = _helpers.registration_node_args(
        NODE, scene["ct_path"], SPACING_MM, SIZE, scene["init"], "threads:=2"
    )
    proc = _helpers.RosProcess(args, env)
    try:
        proc.wait_for_line("ready:", timeout=120.0)
        yield proc
    finally:
        proc.stop()


# ----------------------------------------------------------------------------- test client
class Client(_helpers.NodeClient):
    """:class:`conftest.NodeClient` for this module's node."""

    def __init__(self, context, proc):
        super().__init__(context, proc, NODE, CARM_FRAME, WAIT_S)


@pytest.fixture(scope="module")
def client(node_process, ros_domain_id, scene):
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    c = Client(context, node_process)
    try:
        c.warm_up(scene)
        yield c
    finally:
        c.close()
        rclpy.shutdown(context=context)


def _translation_error_mm(tf, expected_parent_from_child: np.ndarray) -> float:
    got = conv.transform_stamped_to_pose(tf)
    return float(np.linalg.norm(got[:3, 3] - expected_parent_from_child[:3, 3]))


def _rotation_error_deg(tf, expected: np.ndarray) -> float:
    got = conv.transform_stamped_to_pose(tf)
    c = (np.trace(got[:3, :3].T @ expected[:3, :3]) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# ----------------------------------------------------------------------------- tests
def test_registers_and_publishes_tf_pose_with_the_image_stamp(client, scene):
    stamp, tf = client.register_good(scene)
    # default direction: parent = the image's frame, child = ct, transform = T_carm_from_ct
    assert (tf.header.frame_id, tf.child_frame_id) == (CARM_FRAME, "ct")
    T_carm_from_ct = np.linalg.inv(scene["truth"])
    init_error = float(np.linalg.norm(np.linalg.inv(scene["init"])[:3, 3] - T_carm_from_ct[:3, 3]))
    error = _translation_error_mm(tf, T_carm_from_ct)
    assert error < 2.0, f"translation error {error:.2f} mm (started {init_error:.1f} mm off)"
    assert _rotation_error_deg(tf, T_carm_from_ct) < 0.5
    assert abs(tf.transform.translation.z - T_carm_from_ct[2, 3] / 1000.0) < 0.002  # metres

    pose = client.pose_for(stamp)
    assert pose.header.frame_id == CARM_FRAME
    T, cov = conv.pose_with_covariance_to_pose(pose)
    np.testing.assert_allclose(T, conv.transform_stamped_to_pose(tf), atol=1e-9)
    assert np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0), np.diag(cov)
    np.testing.assert_allclose(cov, cov.T, atol=1e-15)
    assert np.sqrt(cov[:3, :3].diagonal()).max() < 0.002  # metres

    status, values = client.diag_for(stamp)
    assert status.level == b"\x00" and values["status"] == "ok"
    for key in (
        "latency_total_ms",
        "latency_register_ms",
        "latency_convert_ms",
        "input_rate_hz",
        "output_rate_hz",
        "frames_dropped",
        "last_cost",
        "ct",
    ):
        assert key in values, key
    assert scene["ct_path"].name in values["ct"]
    assert float(values["latency_total_ms"]) > 0


def test_the_threads_parameter_sets_the_torch_threads(client, scene):
    stamp, _ = client.register_good(scene)
    _, values = client.diag_for(stamp)
    assert (
        values["torch_threads"] == "2"
    )  # the tests run with OMP_NUM_THREADS=1: the parameter set it


def test_publish_inverse_and_default_frame(client, scene):
    assert all(
        r.successful
        for r in client.set_params(publish_inverse=True, default_carm_frame="carm_default")
    )
    try:
        _, tf = client.register_good(scene, frame_id="")
        assert (tf.header.frame_id, tf.child_frame_id) == ("ct", "carm_default")
        assert (
            _translation_error_mm(tf, scene["truth"]) < 2.0
        )  # T_ct_from_carm: the source position
    finally:
        assert all(r.successful for r in client.set_params(publish_inverse=False))


def test_overlay_arrives_while_subscribed(client, scene):
    sub = client.subscribe_overlay()
    try:
        deadline = time.monotonic() + WAIT_S
        stamps = set()  # the frames of this test (an overlay of an earlier test's frame may come)

        def ours():
            with client.cv:
                return [
                    m
                    for m in client.inbox["overlay"]
                    if (m.header.stamp.sec, m.header.stamp.nanosec) in stamps
                ]

        while not ours():  # the node must first see the new subscriber
            if time.monotonic() > deadline:
                pytest.fail("no overlay")
            stamp, _ = client.register_good(scene)
            stamps.add((stamp.sec, stamp.nanosec))
            time.sleep(0.2)  # the overlay follows the TF
        msg = ours()[-1]
        assert (msg.encoding, msg.header.frame_id) == ("bgr8", CARM_FRAME)
        bgr = conv.image_to_numpy(msg)
        assert bgr.shape == (256, 256, 3), bgr.shape  # 32 px upscaled 8x for a legible status line
        green = (bgr[..., 1] == 255) & (bgr[..., 0] == 0) & (bgr[..., 2] == 0)
        assert green.sum() > 50, f"only {green.sum()} DRR edge pixels drawn"
    finally:
        client.node.destroy_subscription(sub)


def test_a_large_frame_is_reduced_in_the_node_and_registers_with_its_overlay(client, scene):
    """A 256² frame of the same detector (resolution 32: the node block-means it by 2 to 128², four
    times the resolution, with the geometry resized alike) registers as well, and the overlay is
    drawn at the reduced size."""
    big = default_geometry(8 * SIZE)
    renderer = DrrRenderer(hu_to_attenuation(scene["ct"].data), scene["ct"].affine, big)
    with torch.no_grad():
        pixels = renderer(torch.as_tensor(scene["truth"], dtype=torch.float32)[None])[0, 0].numpy()
    sub = client.subscribe_overlay()
    try:
        deadline = time.monotonic() + WAIT_S
        while True:  # the node must first see the new overlay subscriber
            image = client.image_msg(pixels.astype(np.float32))
            client.send(image, client.info_msg(big))
            tf = client.tf_for(image.header.stamp)
            assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0
            client.diag_for(
                image.header.stamp, timeout=WAIT_S
            )  # the node publishes it after the overlay
            settle = (
                time.monotonic() + 5.0
            )  # the overlay travels on its own topic: allow it to arrive
            while True:
                with client.cv:
                    mine = [
                        m for m in client.inbox["overlay"] if m.header.stamp == image.header.stamp
                    ]
                if mine or time.monotonic() > settle:
                    break
                time.sleep(0.1)
            if mine or time.monotonic() > deadline:
                break
        assert mine, "no overlay for the large frame"
        bgr = conv.image_to_numpy(mine[-1])
        assert bgr.shape == (256, 256, 3), (
            bgr.shape
        )  # the 128² reduced frame, upscaled 2x for the status line
        green = (bgr[..., 1] == 255) & (bgr[..., 0] == 0) & (bgr[..., 2] == 0)
        assert green.sum() > 50, f"only {green.sum()} DRR edge pixels drawn"
    finally:
        client.node.destroy_subscription(sub)


def test_only_the_newest_frame_is_processed_and_drops_are_counted(client, scene):
    stamp0, _ = client.register_good(scene)
    before = client.diag_for(stamp0)[1]
    info = client.info_msg(scene["geometry"])
    burst = [client.image_msg(scene["image"]) for _ in range(5)]
    for msg in burst:  # back to back: the worker is busy with the first while the rest arrive
        client.send(msg, info)
    last = burst[-1].header.stamp
    client.tf_for(last)
    _, values = client.diag_for(last)

    def delta(key):
        return int(values[key]) - int(before[key])

    # reliable QoS, depth 10: every frame of the burst reaches the callback (DDS loses none), so any
    # frame not registered must have been replaced by a newer one and counted
    assert delta("frames_received") == len(burst), (before, values)
    assert delta("frames_processed") + delta("frames_dropped") == len(burst), (before, values)
    assert delta("frames_dropped") >= 1, (before, values)
    with client.cv:
        stamps = {
            (t.header.stamp.sec, t.header.stamp.nanosec)
            for m in client.inbox["tf"]
            for t in m.transforms
        }
    assert sum((m.header.stamp.sec, m.header.stamp.nanosec) in stamps for m in burst) < len(burst)


_assert_nothing_published = _helpers.assert_nothing_published


def test_quality_gate_failure_publishes_no_tf_and_reports_error(client, scene):
    assert all(r.successful for r in client.set_params(max_position_std_mm=1e-6))
    try:
        image = client.image_msg(scene["image"])
        client.send(image, client.info_msg(scene["geometry"]))
        status, values = client.diag_for(image.header.stamp, timeout=WAIT_S)
        assert values["status"] == "rejected_covariance" and status.level == b"\x02"
        assert "rejected by a quality gate" in status.message and "1e-06 mm" in status.message
        _assert_nothing_published(client, image)
        assert int(values["registrations_failed"]) >= 1
    finally:
        assert all(r.successful for r in client.set_params(max_position_std_mm=2.0))
    client.register_good(scene)


def test_a_stalled_registration_publishes_nothing(client, scene):
    """One LM iteration allowed (and no restarts): the solver stops at the iteration cap, a few mm
    from the truth and not converged, and nothing is published."""
    assert all(r.successful for r in client.set_params(lm_max_iterations=1, lm_restarts=0))
    try:
        deadline = time.monotonic() + WAIT_S
        while (
            True
        ):  # the registrar is rebuilt in the background: frames before the swap still converge
            image = client.image_msg(scene["image"])
            client.send(image, client.info_msg(scene["geometry"]))
            status, values = client.diag_for(image.header.stamp, timeout=WAIT_S)
            if (
                values.get("last_registration_status") == "max_iterations"
                or time.monotonic() > deadline
            ):
                break
        assert values["last_registration_status"] == "max_iterations", values
        assert values["status"] == "registration_failed" and status.level == b"\x02"
        assert "iteration cap" in status.message
        _assert_nothing_published(client, image)
    finally:
        assert all(r.successful for r in client.set_params(lm_max_iterations=20, lm_restarts=4))
    client.warm_up(scene)  # frames until the rebuilt registrar serves again


def test_image_size_disagreeing_with_camera_info(client, scene):
    wrong = default_geometry(48)
    start = client.mark()
    image = client.image_msg(scene["image"])
    deadline = time.monotonic() + WAIT_S
    # the CameraInfo and the image travel on two topics: resend both until the node pairs them
    while True:
        client.send(image, client.info_msg(wrong))
        try:
            status, _ = client.diag_since(start, "size_mismatch", timeout=3.0)
            break
        except pytest.fail.Exception:
            if time.monotonic() > deadline:
                raise
    assert status.level == b"\x02"
    assert "image 32x32 (WxH) disagrees with CameraInfo 48x48" in status.message
    client.proc.wait_for_line("disagrees with CameraInfo", timeout=10.0)
    stamp = None
    while stamp is None:  # the correct CameraInfo again
        image = client.image_msg(scene["image"])
        client.send(image, client.info_msg(scene["geometry"]))
        try:
            client.tf_for(image.header.stamp, timeout=WAIT_S)
            stamp = image.header.stamp
        except pytest.fail.Exception:
            if time.monotonic() > deadline + WAIT_S:
                raise


def _time(t: float):
    """``builtin_interfaces/Time`` of ``t`` seconds (to the microsecond)."""
    from builtin_interfaces.msg import Time

    us = int(round(t * 1e6))
    return Time(sec=us // 1_000_000, nanosec=(us % 1_000_000) * 1000)


def _fill_camera_info_buffer(client, scene, stamp):
    """Send as many CameraInfo stamped ``stamp`` as the node buffers (its older ones drop out)."""
    from sphere_reg_ros.ros.frame_input import CAMERA_INFO_BUFFER

    for _ in range(CAMERA_INFO_BUFFER):
        client.info_pub.publish(client.info_msg(scene["geometry"], stamp=stamp))
    time.sleep(0.3)


def _no_output_for(client, stamp):
    key = (stamp.sec, stamp.nanosec)
    with client.cv:
        return not any(
            (t.header.stamp.sec, t.header.stamp.nanosec) == key
            for m in client.inbox["tf"]
            for t in m.transforms
        )


def test_camera_info_is_paired_with_its_image_by_stamp(client, scene):
    """Two CameraInfo arrive before either image: each image gets the one with its own stamp,
    not the last one received (which is what the node used to do)."""
    t_a, t_b = client.stamp(age_s=1.0), client.stamp(age_s=0.5)
    client.info_pub.publish(client.info_msg(scene["geometry"], stamp=t_a))
    client.info_pub.publish(client.info_msg(default_geometry(48), stamp=t_b))  # arrives last
    image_a = client.image_msg(scene["image"], stamp=t_a)
    client.image_pub.publish(image_a)
    tf = client.tf_for(t_a)  # paired with its 32 px CameraInfo, not the newer 48 px one
    assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0
    _, values = client.diag_for(t_a)
    assert values["status"] == "ok" and float(values["camera_info_offset_ms"]) == 0.0
    image_b = client.image_msg(scene["image"], stamp=t_b)
    client.image_pub.publish(image_b)
    status, values = client.diag_for(t_b, timeout=WAIT_S)
    assert values["status"] == "size_mismatch", status.message
    assert "disagrees with CameraInfo 48x48" in status.message


def test_unmatched_camera_info_is_rejected_counted_and_the_next_matched_frame_registers(
    client, scene
):
    # an image 20 s old (max_image_age_s is 30) whose CameraInfo never came: the buffered ones are
    # stamped after it (or unstamped: the warm-up's), so neither pairing nor the
    # camera_info_max_age_s fall-back applies
    before = client.diag_for(client.register_good(scene)[0])[1]
    start = client.mark()
    image = client.image_msg(scene["image"], stamp=client.stamp(age_s=20.0))
    client.image_pub.publish(image)
    status, values = client.diag_since(start, "unmatched_camera_info")
    assert status.level == b"\x01", status.level
    assert "no CameraInfo pairs with the image stamped" in status.message
    assert (
        "(camera_info_max_age_s 1)" in status.message
    )  # none at or before it, or only ones far older
    client.proc.wait_for_line("no CameraInfo pairs with the image", timeout=10.0)
    assert (
        int(values["frames_unmatched_camera_info"])
        == int(before["frames_unmatched_camera_info"]) + 1
    )
    assert int(values["frames_rejected"]) == int(before["frames_rejected"]) + 1
    assert _no_output_for(client, image.header.stamp)

    # fall-back: no CameraInfo within camera_info_tolerance_s (0.05 s), but one 0.3 s older than
    # the image, within camera_info_max_age_s (1 s): used. The node's buffer first gets only
    # CameraInfo far too old to be used, so that none sent by earlier tests (stamped when they
    # ran, possibly about 15 s ago) can be the newest before the image.
    now = time.time()
    _fill_camera_info_buffer(client, scene, _time(now - 100.0))
    t, older = _time(now - 15.0), _time(now - 15.3)
    client.info_pub.publish(client.info_msg(scene["geometry"], stamp=older))
    time.sleep(0.3)  # DDS does not order messages across topics: let the CameraInfo arrive first
    image = client.image_msg(scene["image"], stamp=t)
    client.image_pub.publish(image)
    client.tf_for(t)
    _, values = client.diag_for(t)
    assert abs(float(values["camera_info_offset_ms"]) - 300.0) < 1.0, values[
        "camera_info_offset_ms"
    ]

    # the same 2.3 s older than its image, beyond camera_info_max_age_s: rejected
    start = client.mark()
    image = client.image_msg(scene["image"], stamp=_time(now - 13.0))
    client.image_pub.publish(image)
    status, _ = client.diag_since(start, "unmatched_camera_info")
    assert (
        "newest at or before it is 2.300 s older" in status.message
        and "camera_info_max_age_s 1)" in status.message
    )
    _, tf = client.register_good(scene)
    assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0


def test_all_zero_k_registers_through_p_with_a_note(client, scene):
    image = client.image_msg(scene["image"])
    info = client.info_msg(scene["geometry"])
    info.k = [0.0] * 9  # uncalibrated (sensor_msgs); P still holds the intrinsics
    client.send(image, info)
    tf = client.tf_for(image.header.stamp)
    assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0
    status, values = client.diag_for(image.header.stamp)
    assert (
        status.level == b"\x00"
        and "K is all zero (uncalibrated camera); intrinsics taken from P"
        in values["camera_info_note"]
    )
    client.proc.wait_for_line("K is all zero (uncalibrated camera)", timeout=10.0)
    stamp, _ = client.register_good(scene)  # a calibrated K again: the note goes
    assert client.diag_for(stamp)[1]["camera_info_note"] == ""


def test_shipped_checkpoint_that_does_not_fit_warns_on_diagnostics(client, scene):
    """``model_path ''`` on this 8 mm CT: the shipped checkpoint belongs to the 512^3 example CT, so
    it is refused; the node goes learning-free and says so (WARN), and still registers."""
    start = client.mark()
    (result,) = client.set_params(model_path="")
    assert result.successful, result.reason
    try:
        status, values = client.diag_since(start, "model_warning", timeout=120.0)
        assert status.level == b"\x01"
        assert (
            "shipped checkpoint" in status.message and "learning-free residuals" in status.message
        )
        assert "made for another CT" in values["model_warning"], values["model_warning"]
        client.proc.wait_for_line("shipped checkpoint", timeout=10.0)  # the node's logger, at WARN
        stamp, tf = client.register_good(scene)
        assert (
            "made for another CT" in client.diag_for(stamp)[1]["model_warning"]
        )  # kept while it serves
        assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0
    finally:
        start = client.mark()
        (result,) = client.set_params(model_path="none")
        assert result.successful, result.reason
    _, values = client.diag_since(start, "ct_loaded", timeout=120.0)
    assert values["model_warning"] == ""


def test_a_corrupt_checkpoint_at_run_time_is_refused_in_the_answer_and_the_old_registrar_kept(
    client, scene
):
    """Random bytes as model.pt: the parameter service says no, with the loader's reason naming the
    file (checked before answering), model_path keeps its value and the old registrar serves on."""
    (result,) = client.set_params(model_path=str(scene["corrupt_model"]))
    assert not result.successful
    assert f"{scene['corrupt_model']}: corrupt, truncated or not a checkpoint" in result.reason, (
        result.reason
    )
    assert client.get_param("model_path") == "none"
    client.proc.wait_for_line("parameter change rejected", timeout=10.0)
    _, tf = client.register_good(scene)
    assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0


def test_a_truncated_ct_at_run_time_is_refused_in_the_answer_and_the_old_registrar_kept(
    client, scene
):
    """A NIfTI whose header is intact but whose voxel data is cut short (the gzip stream is complete):
    refused before the answer, the reason naming the file and what is missing."""
    (result,) = client.set_params(ct_path=str(scene["truncated"]))
    assert not result.successful
    assert (
        f"ct_path '{scene['truncated']}': truncated or corrupt: the header promises"
        in result.reason
    ), result.reason
    assert client.get_param("ct_path") == str(scene["ct_path"])
    _, tf = client.register_good(scene)
    assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0


def test_invalid_parameter_values_are_rejected_and_the_old_kept(client):
    cases = {
        "ct_frame": "",
        "image_domain": "counts",
        "resolution": 100000,
        "default_carm_frame": "ct",
        "lm_scales": [0.0, 1.0],
        "initial_pose_mm": [0.0] * 7,
    }
    for name, value in cases.items():
        old = client.get_param(name)
        (result,) = client.set_params(**{name: value})
        assert not result.successful and result.reason, name
        assert client.get_param(name) == old, name
    (result,) = client.set_params(ct_frame="")
    assert "non-empty frame id" in result.reason
    (result,) = client.set_params(qos_depth=3)
    assert not result.successful and "read-only" in result.reason


def test_ct_reload_swaps_good_paths_and_rejects_bad_ones(client, scene):
    for bad, why in (
        (str(scene["ct_path"].parent / "missing.nii.gz"), "no such file"),
        (str(scene["garbage"]), "unreadable"),
    ):
        (result,) = client.set_params(ct_path=bad)
        assert not result.successful and why in result.reason, result.reason
        assert client.get_param("ct_path") == str(scene["ct_path"])
    start = client.mark()
    (result,) = client.set_params(ct_path=str(scene["ct_path_b"]))
    assert result.successful, result.reason
    status, values = client.diag_since(start, "ct_loaded", timeout=120.0)
    assert scene["ct_path_b"].name in values["ct"]
    _, tf = client.register_good(scene)  # the new CT serves
    assert _translation_error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0


def test_tracking_warm_starts_and_reset_forgets(client, scene):
    assert all(r.successful for r in client.set_params(tracking=True))
    try:
        client.register_good(scene)
        stamp, _ = client.register_good(scene)
        _, values = client.diag_for(stamp)
        assert values["status"] == "ok"
        assert values["last_init"] == "tracking" and values["tracking_state"] == "tracking"
        assert client.reset.wait_for_service(timeout_sec=10.0)
        future = client.reset.call_async(client._Trigger.Request())
        client.wait(future.done, 30.0, "~/reset")
        assert future.result().success
        stamp, _ = client.register_good(scene)
        _, values = client.diag_for(stamp)
        assert values["last_init"] == "initial_pose_mm"
    finally:
        client.set_params(tracking=False)


def test_runs_with_the_shipped_params_file_and_shuts_down_cleanly(spawn_ros_process):
    """``python -m ... --ros-args --params-file config/register.yaml`` (embedded CT at 2 mm)."""
    params = Path(__file__).resolve().parents[2] / "config" / "register.yaml"
    proc = spawn_ros_process(
        "-m",
        "sphere_reg_ros.ros.registration_node",
        "--ros-args",
        "--params-file",
        str(params),
        "-r",
        "__node:=reg_params_file_test",
    )
    proc.wait_for_line("ready:", timeout=180.0)
    assert "embedded example" in proc.output()
    proc.stop()
    assert proc.proc.returncode == 0, proc.output()


def test_a_bad_ct_path_at_start_up_exits_with_the_reason(spawn_ros_process, tmp_path):
    missing = tmp_path / "missing.nii.gz"
    proc = spawn_ros_process(
        "-m",
        "sphere_reg_ros.ros.registration_node",
        "--ros-args",
        "-p",
        f"ct_path:={missing}",
        "-r",
        "__node:=reg_bad_start_test",
    )
    proc.proc.wait(timeout=120)
    proc.stop()
    assert proc.proc.returncode == 2
    assert f"cannot start: ct_path '{missing}': no such file or directory" in proc.output()


def test_a_corrupt_checkpoint_at_start_up_exits_with_the_reason(spawn_ros_process, scene):
    proc = spawn_ros_process(
        "-m",
        "sphere_reg_ros.ros.registration_node",
        "--ros-args",
        "-p",
        f"ct_path:={scene['ct_path']}",
        "-p",
        f"ct_spacing_mm:={SPACING_MM}",
        "-p",
        f"model_path:={scene['corrupt_model']}",
        "-r",
        "__node:=reg_bad_model_test",
    )
    proc.proc.wait(timeout=120)
    proc.stop()
    assert proc.proc.returncode == 2, proc.output()
    assert (
        f"cannot start: {scene['corrupt_model']}: corrupt, truncated or not a checkpoint"
        in proc.output()
    )


def test_the_old_initial_pose_parameter_is_refused_at_start_up(spawn_ros_process):
    """It took metres; silently ignoring it (what rclpy does with an undeclared name) would start
    every registration from the wrong place."""
    proc = spawn_ros_process(
        "-m",
        "sphere_reg_ros.ros.registration_node",
        "--ros-args",
        "-p",
        "initial_pose:=[0.0,0.0,0.5,0.0,0.0,0.0,1.0]",
        "-r",
        "__node:=reg_renamed_test",
    )
    proc.proc.wait(timeout=120)
    proc.stop()
    assert proc.proc.returncode == 2, proc.output()
    assert "cannot start: parameter initial_pose was renamed initial_pose_mm" in proc.output()
