"""Property-based fuzzing (hypothesis) of the file readers behind ``sphere-reg register``: X-ray
images (PNG, TIFF, DICOM, NumPy) and pose files. Property: a valid result, or a ``ValueError``
whose one-line message names the file -- never another exception. Examples are bounded
(``FUZZ_EXAMPLES``; ``HYPOTHESIS_PROFILE=long`` runs more)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sphere_reg_ros.evaluation.evaluate_cli import read_image, read_pose

FUZZ_EXAMPLES = 300 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 50
# CI: a fixed sequence of examples (no flaky runs); HYPOTHESIS_PROFILE=long explores at random
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "long",
)
SUFFIXES = [".png", ".tif", ".tiff", ".dcm", ".npy", ".jpg", ".txt", ""]


def _npy(draw) -> bytes:
    shape = draw(st.lists(st.integers(0, 24), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(["f4", "f8", "u1", "u2", "i4", "c8", "b1", "U3"]))
    arr = np.zeros(shape, dtype=dtype)
    if arr.dtype.kind in "fc" and arr.size and draw(st.booleans()):
        arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, 1.0]))
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def files(draw):
    suffix = draw(st.sampled_from(SUFFIXES))
    kind = draw(st.sampled_from(["random", "npy", "png-ish", "empty"]))
    if kind == "npy":
        data = _npy(draw)
    elif kind == "png-ish":  # a real PNG header followed by garbage
        data = b"\x89PNG\r\n\x1a\n" + draw(st.binary(max_size=200))
    elif kind == "empty":
        data = b""
    else:
        data = draw(st.binary(max_size=400))
    return suffix, data


def _read(reader, name: str, data: bytes):
    """``reader`` on a file ``name`` holding ``data``: its result, or None after checking that the
    ``ValueError`` it raised is one line naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return reader(path)
        except ValueError as exc:
            text = str(exc)
            assert str(path) in text and "\n" not in text, text
            return None


@FUZZ
@given(files())
def test_read_image_returns_an_image_or_one_line_naming_the_file(case):
    suffix, data = case
    out = _read(read_image, f"x{suffix}", data)
    if out is not None:
        img, hints = out
        assert (
            img.ndim == 2
            and min(img.shape) >= 16
            and np.isfinite(img).all()
            and isinstance(hints, dict)
        )


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.one_of(
        JSON.map(lambda v: (".json", json.dumps(v).encode())),
        st.tuples(st.sampled_from([".json", ".npy", ".txt"]), st.binary(max_size=200)),
        st.builds(
            lambda m: (".json", json.dumps(m).encode()),
            st.lists(st.lists(st.floats(), min_size=4, max_size=4), min_size=4, max_size=4),
        ),
    )
)
def test_read_pose_returns_a_rigid_pose_or_one_line_naming_the_file(case):
    suffix, data = case
    T = _read(read_pose, f"pose{suffix}", data)
    if T is not None:
        assert T.shape == (4, 4) and np.isfinite(T).all()
