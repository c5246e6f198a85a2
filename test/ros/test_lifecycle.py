"""The registration node's lifecycle, registration on request and TF prior, over real DDS.

Two node processes (``python -m sphere_reg_ros.ros.registration_node``), on an 8 mm copy of the
example CT with 32×32 images as in ``test_registration_node.py``:

- ``lifecycle_a`` starts with ``autostart:=false`` and a ``ct_path`` that does not exist; the test
  drives every transition through the standard ``lifecycle_msgs`` services
  (``/lifecycle_a/change_state``, ``/lifecycle_a/get_state``) and checks what the node publishes
  in each state (TF, pose, /diagnostics), ending with the shutdown that ends the process.
- ``request_b`` starts itself (``autostart`` default) with ``process_stream:=false``: frames are
  registered only on ``~/register_next``; the TF prior (``prior_*`` parameters) is fed by this
  process on ``/tf`` and ``/tf_static``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sphere_reg_ros.core.volume import resample
from sphere_reg_ros.ros import conversions as conv

pytestmark = [pytest.mark.ros, pytest.mark.slow]

SIZE = 32
SPACING_MM = 8.0
WAIT_S = 90.0
CARM_FRAME = "carm_optical"

_spec = importlib.util.spec_from_file_location(
    "_ros_test_helpers", Path(__file__).with_name("conftest.py")
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, example_ct):
    ct = resample(example_ct[0], SPACING_MM)
    folder = tmp_path_factory.mktemp("ct")
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct.data, ct.affine), str(path))
    return dict(ct=ct, ct_path=path, missing=folder / "missing.nii.gz", **_registration(ct))


def _registration(ct):
    return _helpers.registration_scene(ct, SIZE)


def _start(node, ros_domain_id, ct_path, init, marker, *extra):
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id), PYTHONUNBUFFERED="1")
    args = _helpers.registration_node_args(node, ct_path, SPACING_MM, SIZE, init, *extra)
    proc = _helpers.RosProcess(args, env)
    proc.wait_for_line(marker, timeout=120.0)
    return proc


@pytest.fixture(scope="module")
def context(ros_domain_id):
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


class Client(_helpers.NodeClient):
    """NodeClient plus the lifecycle services, ``~/register_next`` and TF publishers."""

    def __init__(self, context, proc, node):
        super().__init__(context, proc, node, CARM_FRAME, WAIT_S, name=f"{node}_client")
        from lifecycle_msgs.srv import ChangeState, GetState
        from std_srvs.srv import Trigger
        from tf2_msgs.msg import TFMessage

        from sphere_reg_ros.ros.tf_prior import TF_STATIC_QOS
        from sphere_reg_ros.ros.tf_publisher import TF_QOS

        self._ChangeState, self._GetState = ChangeState, GetState
        self.change = self.node.create_client(ChangeState, f"/{node}/change_state")
        self.get = self.node.create_client(GetState, f"/{node}/get_state")
        self.request = self.node.create_client(Trigger, f"/{node}/register_next")
        self.tf_pub = self.node.create_publisher(TFMessage, "/tf", TF_QOS)
        self.tf_static_pub = self.node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self._TFMessage = TFMessage

    def call(self, client, request, what, timeout=120.0):
        self.wait(client.service_is_ready, 30.0, f"service {what}")
        future = client.call_async(request)
        self.wait(future.done, timeout, what)
        return future.result()

    def transition(self, label: str) -> bool:
        request = self._ChangeState.Request()
        request.transition.label = label
        return self.call(self.change, request, f"change_state {label}").success

    def state(self) -> str:
        return self.call(self.get, self._GetState.Request(), "get_state").current_state.label

    def diag_where(self, predicate, start=0, timeout=30.0, what="diagnostics"):
        """The values of the first of the node's statuses after ``start`` that satisfy ``predicate``."""

        def find():
            for msg in self.inbox["diag"][start:]:
                for st in msg.status:
                    values = {kv.key: kv.value for kv in st.values}
                    if st.name.startswith(f"{self.node_name}:") and predicate(values):
                        return values
            return None

        self.wait(lambda: find() is not None, timeout, what)
        return find()

    def latest(self) -> dict:
        """The values of the node's newest diagnostic status."""
        self.diag_where(lambda v: True, what="any diagnostics")
        with self.cv:
            for msg in reversed(self.inbox["diag"]):
                for st in msg.status:
                    if st.name.startswith(f"{self.node_name}:"):
                        return {kv.key: kv.value for kv in st.values}
        raise AssertionError("no diagnostics")

    def ignored(self, scene) -> None:
        """Send a frame; wait until the node counted it in frames_ignored; nothing published."""
        start = self.mark()
        before = int(self.latest()["frames_ignored"])
        image = self.image_msg(scene["image"])
        self.send(image, self.info_msg(scene["geometry"]))
        self.diag_where(lambda v: int(v["frames_ignored"]) > before, start, what="frame ignored")
        _helpers.assert_nothing_published(self, image)

    def register_next(self, scene, timeout=WAIT_S):
        """Call ~/register_next and send frames (CameraInfo first) until it answers."""
        import time

        from std_srvs.srv import Trigger

        self.wait(self.request.service_is_ready, 30.0, "~/register_next")
        self.info_pub.publish(self.info_msg(scene["geometry"]))
        future = self.request.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            image = self.image_msg(scene["image"])
            self.send(image, self.info_msg(scene["geometry"]))
            for _ in range(10):  # the next frame a second later, unless answered
                if future.done():
                    break
                time.sleep(0.1)
            if time.monotonic() > deadline:
                pytest.fail(f"~/register_next gave no answer in {timeout:.0f} s")
        response = future.result()
        return response, json.loads(response.message)

    def publish_prior(self, parent, child, pose, age_s=0.0, static=False):
        import time

        from builtin_interfaces.msg import Time

        t = time.time() - age_s
        stamp = Time() if static else Time(sec=int(t), nanosec=int((t % 1) * 1e9))
        msg = self._TFMessage(
            transforms=[conv.pose_to_transform_stamped(pose, parent, child, stamp)]
        )
        (self.tf_static_pub if static else self.tf_pub).publish(msg)


# ----------------------------------------------------------------------------- lifecycle_a
@pytest.fixture(scope="module")
def lifecycle_a(scene, ros_domain_id, context):
    proc = _start(
        "lifecycle_a",
        ros_domain_id,
        scene["missing"],
        scene["init"],
        "waiting for the lifecycle transitions",
        "autostart:=false",
    )
    client = Client(context, proc, "lifecycle_a")
    try:
        yield client
    finally:
        client.close()
        proc.stop()


def test_every_lifecycle_transition_and_what_each_state_publishes(lifecycle_a, scene):
    c = lifecycle_a
    # unconfigured: diagnostics only; frames ignored
    assert c.state() == "unconfigured"
    values = c.diag_where(lambda v: v.get("lifecycle_state") == "unconfigured")
    assert values["ct"] == "none (unconfigured)"
    c.ignored(scene)
    answer = c.call(c.request, c.request.srv_type.Request(), "~/register_next")
    assert not answer.success and json.loads(answer.message)["status"] == "not_active"

    # configure with a CT that does not exist: back to unconfigured, the reason on /diagnostics
    start = c.mark()
    assert not c.transition("configure")
    assert c.state() == "unconfigured"
    _, values = c.diag_since(start, "configure_failed", timeout=30.0)
    status, _ = c.diag_since(start, "configure_failed", timeout=1.0)
    assert f"ct_path '{scene['missing']}': no such file or directory" in status.message
    assert "configure failed" in c.proc.output()

    # a good CT: configure → inactive (loaded, nothing published)
    assert all(r.successful for r in c.set_params(ct_path=str(scene["ct_path"])))
    start = c.mark()
    assert c.transition("configure")
    assert c.state() == "inactive"
    _, values = c.diag_since(start, "configured", timeout=30.0)
    assert scene["ct_path"].name in values["ct"] and values["lifecycle_state"] == "inactive"
    c.ignored(scene)

    # activate → registers and publishes
    assert c.transition("activate")
    assert c.state() == "active"
    c.warm_up(scene)
    stamp, tf = c.register_good(scene)
    assert tf.child_frame_id == "ct" and c.pose_for(stamp) is not None

    # deactivate → nothing published, the registrar kept (no reload on activate)
    assert c.transition("deactivate")
    assert c.state() == "inactive"
    c.ignored(scene)
    values = c.diag_where(lambda v: v.get("lifecycle_state") == "inactive")
    assert scene["ct_path"].name in values["ct"]
    loads = c.proc.output().count("configured in")
    assert c.transition("activate")
    c.register_good(scene)
    assert c.proc.output().count("configured in") == loads

    # cleanup (from inactive) frees the CT; configure + activate load it again
    assert c.transition("deactivate") and c.transition("cleanup")
    assert c.state() == "unconfigured"
    start = c.mark()
    values = c.diag_where(lambda v: v.get("lifecycle_state") == "unconfigured", start)
    assert values["ct"] == "none (unconfigured)"
    c.ignored(scene)
    assert c.transition("configure") and c.transition("activate")
    c.register_good(scene)

    # shutdown from active: the process ends cleanly
    assert c.transition("shutdown")
    c.proc.proc.wait(timeout=60)
    assert c.proc.proc.returncode == 0, c.proc.output()
    assert "shut down" in c.proc.output()


# ----------------------------------------------------------------------------- request_b
@pytest.fixture(scope="module")
def request_b(scene, ros_domain_id, context):
    proc = _start(
        "request_b",
        ros_domain_id,
        scene["ct_path"],
        scene["init"],
        "ready:",
        "process_stream:=false",
        "prior_parent_frame:=ct_prior",
        "prior_child_frame:=carm_prior",
        "prior_max_age_s:=30.0",
    )
    client = Client(context, proc, "request_b")
    try:
        yield client
    finally:
        client.close()
        proc.stop()


def test_register_next_answers_with_the_published_pose(request_b, scene):
    c = request_b
    c.ignored(scene)  # process_stream false: no request, no registration
    response, answer = c.register_next(scene, timeout=180.0)
    assert response.success, answer
    assert answer["published"] and answer["status"] == "ok"
    assert (answer["parent"], answer["child"]) == (CARM_FRAME, "ct")
    expected = conv.invert_pose(scene["truth"])  # T_carm_from_ct, mm
    assert np.linalg.norm(np.array(answer["translation_m"]) * 1000 - expected[:3, 3]) < 2.0
    assert len(answer["covariance"]) == 36 and answer["covariance"][0] > 0
    from builtin_interfaces.msg import Time

    sec, nanosec = (int(v) for v in answer["stamp"].split("."))
    pose = c.pose_for(Time(sec=sec, nanosec=nanosec))
    assert pose.pose.covariance[0] == pytest.approx(answer["covariance"][0])
    c.ignored(scene)  # answered: the stream is off again


def test_register_next_refuses_a_rejected_registration_and_publishes_nothing(request_b, scene):
    c = request_b
    assert all(r.successful for r in c.set_params(max_normalised_cost=1e-6))
    try:
        start = c.mark()
        response, answer = c.register_next(scene)
        assert not response.success
        assert answer["status"] == "rejected_cost" and not answer["published"]
        assert "translation_m" not in answer and "covariance" not in answer
        assert "quality gate" in answer["message"]
        status, values = c.diag_since(start, "rejected_cost", timeout=30.0)
        sec, nanosec = answer["stamp"].split(".")
        with c.cv:
            assert not any(
                (m.header.stamp.sec, m.header.stamp.nanosec) == (int(sec), int(nanosec))
                for m in c.inbox["pose"]
            )
    finally:
        c.set_params(max_normalised_cost=0.8)


def test_register_next_without_a_frame_times_out_with_the_reason(request_b):
    c = request_b
    assert all(r.successful for r in c.set_params(request_timeout_s=1.0))
    try:
        answer = c.call(c.request, c.request.srv_type.Request(), "~/register_next", timeout=30.0)
        assert not answer.success
        assert json.loads(answer.message)["status"] == "no_frame"
    finally:
        c.set_params(request_timeout_s=10.0)


def test_a_fresh_tf_prior_starts_cold_registrations_and_a_stale_one_does_not(request_b, scene):
    c = request_b
    # stale (60 s old, limit 30 s): initial_pose_mm, the diagnostics say why
    c.publish_prior("ct_prior", "carm_prior", scene["init"], age_s=60.0)
    _, answer = c.register_next(scene)
    values = c.diag_where(lambda v: v.get("last_stamp") == answer["stamp"])
    assert values["last_init"] == "initial_pose_mm", values
    assert "stale" in values["tf_prior"] or "not on TF" in values["tf_prior"]

    # fresh: the prior is the start (published repeatedly, as a tracker would)
    for _ in range(3):
        c.publish_prior("ct_prior", "carm_prior", scene["init"])
    response, answer = c.register_next(scene)
    assert response.success, answer
    assert answer["init"] == "tf_prior"
    values = c.diag_where(lambda v: v.get("last_stamp") == answer["stamp"])
    assert values["last_init"] == "tf_prior" and "s old" in values["tf_prior"]

    # a static prior on /tf_static: always fresh
    assert all(
        r.successful
        for r in c.set_params(prior_parent_frame="ct_fixed", prior_child_frame="carm_fixed")
    )
    c.publish_prior("ct_fixed", "carm_fixed", scene["init"], static=True)
    response, answer = c.register_next(scene)
    assert response.success and answer["init"] == "tf_prior", answer
    values = c.diag_where(lambda v: v.get("last_stamp") == answer["stamp"])
    assert "(static)" in values["tf_prior"]


def test_polish_is_a_registrar_parameter_checked_like_the_others(request_b, scene):
    """``polish`` rebuilds the registrar (``ct_loaded``); a value of the wrong type is refused and
    the old one kept; without a model it changes nothing (the answer has no polish)."""
    c = request_b
    start = c.mark()
    (result,) = c.set_params(polish=True)
    assert result.successful, result.reason
    c.diag_since(start, "ct_loaded", timeout=120.0)
    try:
        (bad,) = c.set_params(polish="yes")
        assert not bad.successful and c.get_param("polish") is True
        response, answer = c.register_next(scene)
        assert response.success, answer
        assert "polished" not in answer["message"]
    finally:
        c.set_params(polish=False)
