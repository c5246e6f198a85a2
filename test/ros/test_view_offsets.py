"""The views' C-arm frames and relative poses from parameters (sphere_reg_ros.ros.view_offsets);
the TF path runs over DDS in test_views_node.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sphere_reg_ros.core.geometry import pose_to_translation_quaternion
from sphere_reg_ros.core.views import orbit_offset
from sphere_reg_ros.ros import params as P
from sphere_reg_ros.ros.frame_input import FrameRejected
from sphere_reg_ros.ros.view_offsets import offsets_from_parameter, view_frame, view_offsets

pytestmark = pytest.mark.ros


def _settings(**changes):
    values = {**P.yaml_defaults(), "views": ["view_a", "view_b"], **changes}
    return P.validate(values, changed=set())


def _seven(T) -> list[float]:
    t, q = pose_to_translation_quaternion(torch.as_tensor(T, dtype=torch.float64), unit="mm")
    return [*t.tolist(), *q.tolist()]


def test_view_offsets_mm_give_the_relative_poses_and_tf_is_not_asked():
    offset = orbit_offset(90.0)
    s = _settings(view_offsets_mm=_seven(offset))
    table = offsets_from_parameter(s.view_offsets_mm, 2)
    np.testing.assert_allclose(table[0], np.eye(4))
    np.testing.assert_allclose(table[1], offset, atol=1e-9)
    got, source = view_offsets(s, {0: "carm_a", 1: "carm_b"}, lookup=None)
    np.testing.assert_allclose(got[1], offset, atol=1e-9)
    assert source == "view_offsets_mm"


def test_view_frames_win_over_the_images_frame_ids():
    s = _settings()
    assert view_frame(s, 1, "/carm_b") == "carm_b"
    assert view_frame(s, 0, "") == s.default_carm_frame
    s = _settings(view_frames=["plane_a", "plane_b"])
    assert view_frame(s, 1, "carm_b") == "plane_b"


def test_a_missing_relative_pose_is_refused_naming_the_view():
    s = _settings()
    with pytest.raises(FrameRejected, match="view view_b has the first view's frame") as e:
        view_offsets(s, {0: "carm", 1: "carm"}, lookup=None)
    assert e.value.reason == "view_offset_missing"
    with pytest.raises(FrameRejected, match="no TF listener"):
        view_offsets(s, {0: "carm_a", 1: "carm_b"}, lookup=None)
