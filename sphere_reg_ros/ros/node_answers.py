"""What the registration node's ``~/register_next`` calls wait for and are answered with.

:class:`Request` (one call), :class:`Frame` (an image waiting for the worker, with the calls it
answers), :class:`FrameSet` (frames of several views waiting together), :func:`refusal` (an
answer without a pose) and :func:`published_answer` (the answer with the published pose); the answer's keys are described in :mod:`.registration_node`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sensor_msgs.msg import Image

__all__ = ["Request", "Frame", "FrameSet", "refusal", "published_answer"]


class Request:
    """One ``~/register_next`` call: ``taken`` once a frame is assigned to it, ``done`` once answered."""

    def __init__(self) -> None:
        self.taken = threading.Event()
        self.done = threading.Event()
        self.answer: dict = {
            "published": False,
            "status": "internal_error",
            "message": "no answer",
        }

    def finish(self, answer: dict) -> None:
        self.answer = answer
        self.taken.set()
        self.done.set()


@dataclass
class Frame:
    msg: Image
    received_mono: float
    age_s: float
    requests: list = None  # the _Requests this frame answers


@dataclass
class FrameSet:
    """Frames of several views registered together (:mod:`.node_views`): ``frames[i]`` is of
    view ``views[i]`` (all views in order, or one view registered alone); ``msg``, ``age_s``
    and ``received_mono`` are those of the first frame (the set's stamp is the first frame's),
    ``received_mono`` the arrival of the frame that completed it."""

    frames: list
    views: list
    requests: list = None

    @property
    def msg(self) -> Image:
        return self.frames[0].msg

    @property
    def age_s(self) -> float:
        return self.frames[0].age_s

    @property
    def received_mono(self) -> float:
        return max(f.received_mono for f in self.frames)


def refusal(status: str, message: str, stamp=None) -> dict:
    """A ``~/register_next`` answer without a pose: ``status`` is the /diagnostics status key."""
    answer = {"published": False, "status": status, "message": message}
    if stamp is not None:
        answer["stamp"] = f"{stamp.sec}.{stamp.nanosec:09d}"
    return answer


def published_answer(text: str, stamp, how: str, parent: str, child: str, pose_msg, result) -> dict:
    """The answer for a published pose: ``pose_msg`` (``PoseWithCovarianceStamped``) as sent on
    ``~/pose``, ``parent``/``child`` the TF frames, ``how`` the initial pose's source."""
    p = pose_msg.pose.pose
    return {
        **refusal("ok", text, stamp),
        "published": True,
        "init": how,
        "parent": parent,
        "child": child,
        "translation_m": [p.position.x, p.position.y, p.position.z],
        "rotation_xyzw": [
            p.orientation.x,
            p.orientation.y,
            p.orientation.z,
            p.orientation.w,
        ],
        "covariance": [float(v) for v in pose_msg.pose.covariance],
        "normalised_cost": float(result.normalised_cost),
        "position_std_mm": float(result.position_std_mm),
    }
