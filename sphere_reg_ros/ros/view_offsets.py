"""The C-arm frames of several views and their relative poses ``T_carm0_from_carmk``.

For the registration node with ``views`` (:mod:`.node_views`). A view's C-arm optical frame is
its entry of ``view_frames`` when that is set, else its image's ``header.frame_id``
(``default_carm_frame`` when empty). The offset of view ``k`` (the pose of its optical frame in
the first view's, ``T_carm0_from_carmk``; view 0's is the identity) comes from:

* ``view_offsets_mm`` when it is set (7 numbers per view after the first: x, y, z in mm, then
  the quaternion qx, qy, qz, qw): a fixed calibration, and TF is then not asked at all;
* else TF: the transform first view's frame → view ``k``'s frame, looked up with
  :class:`.tf_prior.TfPrior` (tf2_ros where it imports, else its ``/tf`` + ``/tf_static``
  subscriptions; the same listener as the TF prior), fresh when from ``/tf_static`` or at most
  ``view_offset_max_age_s`` old (0 = any age).

A set whose offset cannot be had is refused (``view_offset_missing``, the reason naming the
view and the transform); nothing is published for it.
"""

from __future__ import annotations

import numpy as np

from . import conversions as conv
from .frame_input import FrameRejected

__all__ = ["offsets_from_parameter", "view_frame", "view_offsets"]

_MM_PER_M = 1000.0


def offsets_from_parameter(values_mm, views: int) -> list[np.ndarray]:
    """``view_offsets_mm`` as ``views`` poses ``(4, 4)`` (mm), the identity first. The parameter
    is validated already (:func:`.params.check_views`)."""
    p = np.asarray(values_mm, dtype=np.float64).reshape(views - 1, 7)
    return [np.eye(4)] + [
        conv.pose_from_translation_quaternion(r[:3] / _MM_PER_M, r[3:]) for r in p
    ]


def view_frame(s, view: int, header_frame_id: str | None) -> str:
    """The C-arm frame of view ``view`` (``s``: the node's settings): ``view_frames[view]``, else
    the image's frame id, else ``default_carm_frame``."""
    if list(s.view_frames):
        return s.view_frames[view]
    frame = (header_frame_id or "").lstrip("/")
    return frame or s.default_carm_frame


def view_offsets(s, frames: dict[int, str], lookup) -> tuple[dict[int, np.ndarray], str]:
    """``({view: T_carm0_from_carmk}, source)`` for the views of ``frames`` (``{view: frame}``,
    view 0's frame included even when its image is not in the set).

    ``lookup(parent, child, max_age_s)``: :meth:`.tf_prior.TfPrior.lookup` (None: no listener).
    ``source`` says where the offsets came from, for ``/diagnostics``.

    Raises:
        FrameRejected: ``view_offset_missing``, naming the view and why.
    """
    names = list(s.views)
    if len(np.asarray(s.view_offsets_mm)):
        table = offsets_from_parameter(s.view_offsets_mm, len(names))
        return {k: table[k] for k in frames}, "view_offsets_mm"
    frame0 = frames[0]
    out, notes = {}, []
    for k, frame in sorted(frames.items()):
        if k == 0:
            out[k] = np.eye(4)
            continue
        if frame == frame0:
            raise FrameRejected(
                "view_offset_missing",
                f"view {names[k]} has the first view's frame {frame0!r}: their relative pose "
                "cannot come from TF (set view_frames, or view_offsets_mm)",
            )
        if lookup is None:
            raise FrameRejected("view_offset_missing", "no TF listener for the view offsets")
        found = lookup(frame0, frame, float(s.view_offset_max_age_s))
        if found.pose is None:
            raise FrameRejected(
                "view_offset_missing",
                f"no relative pose of view {names[k]}: {found.note} (view_offset_max_age_s "
                f"{float(s.view_offset_max_age_s):g}; or set view_offsets_mm)",
            )
        out[k] = np.asarray(found.pose, dtype=np.float64)
        notes.append(found.note)
    return out, "tf: " + "; ".join(notes) if notes else "tf"
