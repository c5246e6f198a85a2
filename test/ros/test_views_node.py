"""The registration node with two C-arm views (``views:=[view_a, view_b]``) over real DDS.

One node process for the module (as ``test_registration_node.py``: an 8 mm copy of the example
CT, 32×32 images registered at 32 px in one scale, no tracking, started at ``initial_pose_mm``
a few mm and about a degree from the truth). View ``a`` is the C-arm at ``T_true``
(``T_ct_from_carm_a``), view ``b`` the same C-arm turned 90° about the isocentre
(``core.views.orbit_offset``); their images are rendered by ``core.drr.DrrRenderer``. This
process is both C-arm planes: it publishes ``view_a/image``, ``view_b/image`` with their
CameraInfo (frames ``carm_a``, ``carm_b``) and, from the second test on, the relative pose
``carm_a -> carm_b`` on ``/tf_static``, which the node looks up for ``T_carm0_from_carm1``.
Every wait is for a message (TF with the frame's stamp, a diagnostic status) with a timeout.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.drr import DrrRenderer
from sphere_reg_ros.core.views import orbit_offset
from sphere_reg_ros.core.volume import hu_to_attenuation, resample
from sphere_reg_ros.ros import conversions as conv

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODE = "reg_views_test"
VIEWS = ("view_a", "view_b")
FRAMES = ("carm_a", "carm_b")
SIZE = 32
SPACING_MM = 8.0
WAIT_S = 120.0  # a two-view registration on a busy 2-core CPU, plus the first call's warm-up

_spec = importlib.util.spec_from_file_location(
    "_ros_test_helpers_views", Path(__file__).with_name("conftest.py")
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, example_ct):
    import nibabel as nib

    ct = resample(example_ct[0], SPACING_MM)
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct.data, ct.affine), str(path))
    one = _helpers.registration_scene(ct, SIZE)  # view a: image, geometry, truth, init
    offset = orbit_offset(90.0)  # T_carm_a_from_carm_b
    renderer = DrrRenderer(hu_to_attenuation(ct.data), ct.affine, one["geometry"])
    with torch.no_grad():
        pose_b = torch.as_tensor(one["truth"] @ offset, dtype=torch.float32)[None]
        image_b = renderer(pose_b)[0, 0].numpy().astype(np.float32)
    return dict(ct_path=path, offset=offset, images=(one["image"], image_b), **one)


@pytest.fixture(scope="module")
def node_process(scene, ros_domain_id):
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id), PYTHONUNBUFFERED="1")
    args = _helpers.registration_node_args(
        NODE,
        scene["ct_path"],
        SPACING_MM,
        SIZE,
        scene["init"],
        "threads:=2",
        f"views:=[{','.join(VIEWS)}]",
        "view_pair_tolerance_s:=0.01",
    )
    proc = _helpers.RosProcess(args, env)
    try:
        proc.wait_for_line("ready:", timeout=120.0)
        yield proc
    finally:
        proc.stop()


class Client(_helpers.NodeClient):
    """:class:`conftest.NodeClient` publishing both views (``image_pub``/``info_pub`` are view
    a's), collecting both overlays and publishing the views' relative pose on /tf_static."""

    def __init__(self, context, proc):
        super().__init__(
            context,
            proc,
            NODE,
            FRAMES[0],
            WAIT_S,
            name="reg_views_client",
            image_topic=f"/{VIEWS[0]}/image",
            info_topic=f"/{VIEWS[0]}/camera_info",
        )
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        from sphere_reg_ros.ros.tf_prior import TF_STATIC_QOS

        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub_b = self.node.create_publisher(Image, f"/{VIEWS[1]}/image", reliable)
        self.info_pub_b = self.node.create_publisher(
            CameraInfo, f"/{VIEWS[1]}/camera_info", reliable
        )
        self.static_pub = self.node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self._TFMessage = TFMessage
        self.subscribe_overlay()
        self.subscribe_overlay(f"/{NODE}/{VIEWS[1]}/overlay", "overlay_b")
        self.wait(
            lambda: (
                self.image_pub_b.get_subscription_count() > 0
                and self.info_pub_b.get_subscription_count() > 0
            ),
            30.0,
            "the node's view_b subscriptions",
        )

    def publish_offset(self, offset):
        t = conv.pose_to_transform_stamped(offset, FRAMES[0], FRAMES[1], None)
        self.static_pub.publish(self._TFMessage(transforms=[t]))

    def send_views(self, scene, images=None, views=(0, 1), stamp=None, encodings=None):
        """Each of ``views``' image (with its CameraInfo, stamped alike) under one stamp."""
        stamp = stamp or self.stamp()
        images = scene["images"] if images is None else images
        sent = {}
        for k in views:
            encoding = "32FC1" if encodings is None else encodings[k]
            image = self.image_msg(images[k], encoding, FRAMES[k], stamp)
            info = self.info_msg(scene["geometry"], FRAMES[k], stamp)
            (self.info_pub if k == 0 else self.info_pub_b).publish(info)
            (self.image_pub if k == 0 else self.image_pub_b).publish(image)
            sent[k] = image
        return stamp, sent

    def overlay_for(self, key, stamp, timeout=30.0):
        def find():
            return next(
                (
                    m
                    for m in self.inbox[key]
                    if (m.header.stamp.sec, m.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
                ),
                None,
            )

        self.wait(lambda: find() is not None, timeout, f"{key} of the frame")
        return find()

    def latest_values(self):
        with self.cv:
            for msg in reversed(self.inbox["diag"]):
                for st in msg.status:
                    if st.name.startswith(NODE):
                        return {kv.key: kv.value for kv in st.values}
        return {}


@pytest.fixture(scope="module")
def client(node_process, ros_domain_id):
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    c = Client(context, node_process)
    try:
        yield c
    finally:
        c.close()
        rclpy.shutdown(context=context)


def _error_mm(tf, expected: np.ndarray) -> float:
    return float(np.linalg.norm(conv.transform_stamped_to_pose(tf)[:3, 3] - expected[:3, 3]))


def _nothing_for(client, stamp) -> None:
    """No TF and no pose carry ``stamp``."""
    probe = client.image_msg(np.zeros((2, 2), np.float32), stamp=stamp)
    _helpers.assert_nothing_published(client, probe)


def _shifted(stamp, ns: int):
    """``stamp`` + ``ns`` nanoseconds."""
    total = stamp.sec * 1_000_000_000 + stamp.nanosec + ns
    return type(stamp)(sec=total // 1_000_000_000, nanosec=total % 1_000_000_000)


# ----------------------------------------------------------------------------- tests (in order)
def test_a_set_without_the_relative_pose_is_refused(client, scene):
    """No carm_a -> carm_b on TF yet: the pair is refused, naming view_b; nothing published."""
    start = client.mark()
    stamp, _ = client.send_views(scene)
    status, values = client.diag_since(start, "view_offset_missing", timeout=60.0)
    assert status.level == b"\x02" and "view_b" in status.message, status.message
    assert values["views"] == "view_a,view_b"
    _nothing_for(client, stamp)


def test_two_views_pair_into_one_tf_pose_and_an_overlay_each(client, scene):
    client.publish_offset(scene["offset"])
    deadline = time.monotonic() + 240.0
    while True:  # the first registration also pays one-time costs; the static TF may be late
        stamp, _ = client.send_views(scene)
        _, values = client.diag_for(stamp, timeout=WAIT_S)
        if values["status"] == "ok":
            break
        assert time.monotonic() < deadline, f"no pair registered; last status {values['status']}"
        time.sleep(0.5)
    tf = client.tf_for(stamp, timeout=10.0)
    # one transform for the patient: parent = the first view's C-arm frame, T_carm_a_from_ct
    assert (tf.header.frame_id, tf.child_frame_id) == (FRAMES[0], "ct")
    error = _error_mm(tf, np.linalg.inv(scene["truth"]))
    assert error < 2.0, f"translation error {error:.2f} mm"
    pose = client.pose_for(stamp)
    assert pose.header.frame_id == FRAMES[0]
    with client.cv:
        assert (
            sum(
                1
                for m in client.inbox["tf"]
                for t in m.transforms
                if (t.header.stamp.sec, t.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
            )
            == 1
        )
    overlay_a = client.overlay_for("overlay", stamp)
    overlay_b = client.overlay_for("overlay_b", stamp)
    assert (overlay_a.header.frame_id, overlay_b.header.frame_id) == FRAMES
    assert overlay_a.encoding == overlay_b.encoding == "bgr8"
    assert overlay_a.data != overlay_b.data  # each view's own X-ray and DRR
    assert values["last_views"] == "view_a,view_b" and int(values["view_sets"]) >= 1
    assert values["view_offsets"].startswith("tf: carm_a -> carm_b")
    assert int(values["view_view_b_frames_received"]) >= 1
    assert float(values["view_pair_spread_ms"]) == 0.0


def test_frames_a_few_ms_apart_still_pair(client, scene):
    stamp = client.stamp()
    client.send_views(scene, views=(0,), stamp=stamp)
    client.send_views(scene, views=(1,), stamp=_shifted(stamp, 3_000_000))
    tf = client.tf_for(stamp)  # stamped with the first view's frame
    assert _error_mm(tf, np.linalg.inv(scene["truth"])) < 2.0
    _, values = client.diag_for(stamp)
    assert float(values["view_pair_spread_ms"]) == pytest.approx(3.0, abs=0.01)


def test_a_missing_partner_is_counted_and_dropped_or_registered_alone(client, scene):
    before = client.latest_values()
    stamp, _ = client.send_views(scene, views=(0,))  # view b's frame never comes
    client.wait(
        lambda: (
            int(client.latest_values().get("view_view_a_frames_unpaired", 0))
            > int(before["view_view_a_frames_unpaired"])
        ),
        30.0,
        "view_a's unpaired frame counted",
    )
    assert int(client.latest_values()["frames_unpaired"]) > int(before["frames_unpaired"])
    time.sleep(1.0)
    _nothing_for(client, stamp)  # unpaired: drop (the default)

    assert all(r.successful for r in client.set_params(unpaired="mono"))
    try:
        stamp, _ = client.send_views(scene, views=(1,))  # only view b, registered alone
        tf = client.tf_for(stamp)
        # still the patient in the first view's C-arm frame, through the offset
        assert (tf.header.frame_id, tf.child_frame_id) == (FRAMES[0], "ct")
        assert _error_mm(tf, np.linalg.inv(scene["truth"])) < 3.0
        _, values = client.diag_for(stamp)
        assert values["last_views"] == "view_b" and int(values["view_mono"]) >= 1
        overlay_b = client.overlay_for("overlay_b", stamp)
        assert overlay_b.header.frame_id == FRAMES[1]
    finally:
        assert all(r.successful for r in client.set_params(unpaired="drop"))


@pytest.mark.parametrize("bad", ["nan", "encoding"])
def test_a_bad_image_in_one_view_refuses_the_set_and_the_next_pair_registers(client, scene, bad):
    image_b = scene["images"][1].copy()
    encodings = None
    if bad == "nan":
        image_b[5:9, 5:9] = np.nan
        reason = "non_finite"
    else:
        image_b = np.repeat((image_b / image_b.max() * 255).astype(np.uint8)[..., None], 3, -1)
        encodings = ("32FC1", "rgb8")
        reason = "unsupported_encoding"
    before = client.latest_values()
    start = client.mark()
    stamp, _ = client.send_views(scene, images=(scene["images"][0], image_b), encodings=encodings)
    status, values = client.diag_since(start, reason, timeout=60.0)
    assert "view view_b" in status.message, status.message
    assert values["last_rejected_view"] == "view_b"
    assert int(values["view_view_b_frames_rejected"]) > int(
        before.get("view_view_b_frames_rejected", 0)
    )
    _nothing_for(client, stamp)
    stamp, _ = client.send_views(scene)  # the node keeps serving
    assert _error_mm(client.tf_for(stamp), np.linalg.inv(scene["truth"])) < 2.0
