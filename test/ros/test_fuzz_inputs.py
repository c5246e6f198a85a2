"""Property-based fuzzing (hypothesis) of the ROS layer's outside data: ``Image`` / ``CameraInfo``
messages to arrays and geometry, the node's frame checks and the parameter validation.

The property everywhere: never an unhandled exception -- either a valid result or the project's
own error (``ConversionError``, ``FrameRejected``, ``ParameterError``) with a reason. The number of
examples is bounded (``FUZZ_EXAMPLES``) so CI stays fast; ``HYPOTHESIS_PROFILE=long`` runs more.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, Image

from sphere_reg_ros.core.carm import CarmGeometry
from sphere_reg_ros.ros import conversions as conv
from sphere_reg_ros.ros import params as P
from sphere_reg_ros.ros.frame_input import REASONS, FrameRejected, prepare_frame

FUZZ_EXAMPLES = 400 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 60
# CI: a fixed sequence of examples (no flaky runs); HYPOTHESIS_PROFILE=long explores at random
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "long",
)

ENCODINGS = [
    "mono8",
    "mono16",
    "16UC1",
    "32FC1",
    "64FC1",
    "8UC1",
    "bgr8",
    "rgb8",
    "rgba8",
    "",
    "mono12",
    "32SC1",
    "yuv422",
    "MONO8",
    "32FC2",
]
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def images(draw):
    msg = Image()
    msg.encoding = draw(st.sampled_from(ENCODINGS))
    msg.height = draw(st.integers(0, 12))
    msg.width = draw(st.integers(0, 12))
    msg.is_bigendian = draw(st.integers(0, 1))
    msg.step = draw(
        st.one_of(
            st.integers(0, 100), st.just(msg.width * 4), st.just(msg.width * 2), st.just(msg.width)
        )
    )
    n = draw(st.one_of(st.just(msg.step * msg.height), st.integers(0, 600)))
    if draw(st.booleans()) and msg.encoding == "32FC1":  # real floats, NaN and inf included
        values = draw(st.lists(any_float, min_size=n // 4, max_size=n // 4))
        raw = np.asarray(values, dtype=np.float32).tobytes()
        raw += bytes(n - len(raw))
    else:
        raw = draw(st.binary(min_size=n, max_size=n))
    msg.data = raw
    return msg


@st.composite
def camera_infos(draw):
    msg = CameraInfo()
    msg.height = draw(st.integers(0, 12))
    msg.width = draw(st.integers(0, 12))
    pick = st.one_of(any_float, st.sampled_from([0.0, 1.0, -1.0, 500.0, 5.5]))
    msg.k = [draw(pick) for _ in range(9)]
    msg.p = [draw(pick) for _ in range(12)]
    msg.binning_x = draw(st.integers(0, 4))
    msg.binning_y = draw(st.integers(0, 4))
    msg.roi.x_offset = draw(st.integers(0, 4))
    msg.roi.y_offset = draw(st.integers(0, 4))
    msg.roi.width = draw(st.integers(0, 12))
    msg.roi.height = draw(st.integers(0, 12))
    return msg


@FUZZ
@given(images(), st.booleans())
def test_image_to_numpy_returns_the_image_or_says_why(msg, check_finite):
    try:
        arr = conv.image_to_numpy(msg, check_finite=check_finite, use_cv_bridge=False)
    except conv.ConversionError as exc:
        assert str(exc)
        return
    assert arr.shape[:2] == (msg.height, msg.width) and msg.height > 0 and msg.width > 0
    if check_finite and arr.dtype.kind == "f":
        assert np.isfinite(arr).all()


@FUZZ
@given(camera_infos(), st.one_of(finite, st.just(1020.0)))
def test_camera_info_to_geometry_returns_a_geometry_or_says_why(msg, sdd):
    try:
        g = conv.camera_info_to_geometry(msg, sdd)
    except conv.ConversionError as exc:
        assert str(exc)
        return
    except (
        ValueError
    ) as exc:  # the geometry's own checks (e.g. a bad sdd) are ValueErrors with a reason
        assert str(exc)
        return
    assert isinstance(g, CarmGeometry) and g.height > 0 and g.width > 0
    assert (
        all(math.isfinite(v) for v in (g.sdd, g.delx, g.dely, g.x0, g.y0))
        and g.delx > 0
        and g.dely > 0
    )


def _settings(**changes):
    return P.validate({**P.yaml_defaults(), **changes})


@FUZZ
@given(
    images(),
    st.one_of(st.none(), camera_infos()),
    st.sampled_from(["line_integral", "intensity"]),
    st.one_of(finite, st.just(0.01)),
)
def test_prepare_frame_returns_an_image_and_geometry_or_a_known_reason(msg, info, domain, age):
    s = _settings(image_domain=domain, fx=500.0, fy=500.0, width=8, height=8)
    try:
        image, geometry = prepare_frame(msg, info, s, age)
    except FrameRejected as exc:
        assert exc.reason in REASONS and str(exc)
        return
    assert image.dtype == np.float32 and image.shape == (geometry.height, geometry.width)
    assert np.isfinite(image).all()


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    any_float,
    st.text(max_size=20),
    st.lists(finite, max_size=8),
)


@FUZZ
@given(st.dictionaries(st.sampled_from([p.name for p in P.PARAMS]), VALUES, min_size=1, max_size=4))
@example({"lm_scales": ""})  # found by this test: a ValueError from the float conversion
@example({"initial_pose_mm": ["a"] * 7})
@example({"view_frames": None})  # found by this test: a TypeError from list(None)
@example({"views": "view_a"})  # a string is not a list of namespaces
@example({"prior_child_frame": True})  # found by this test: the error named the parent frame
def test_parameter_validation_accepts_or_names_the_parameter(changes):
    values = {**P.yaml_defaults(), **changes}
    try:
        P.validate(values, changed=set())
    except P.ParameterError as exc:
        text = str(exc)
        assert text and any(name in text for name in changes) or "must differ" in text, text
        return
    except (TypeError, ValueError) as exc:  # pragma: no cover - the property this test guards
        pytest.fail(f"validate raised {type(exc).__name__} for {changes}: {exc}")
