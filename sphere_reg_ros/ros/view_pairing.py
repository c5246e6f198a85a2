"""Pairing the frames of several C-arm views by stamp (no ROS: stamps in ns, times in s).

The registration node with ``views`` (:mod:`.node_views`) registers one frame of every view
together. :class:`ViewPairer` holds the frames still waiting for their partners, at most
:data:`PAIR_BUFFER` per view, and applies these rules (``tolerance`` = ``view_pair_tolerance_s``):

1. **A set.** When a frame arrives, each other view's waiting frame closest in stamp to it is
   taken; if all these frames, the new one included, lie within ``tolerance`` of each other
   (largest stamp − smallest ≤ ``tolerance``) they form a set, in view order, and leave the
   buffers. Waiting frames older than a set's frame of their own view can no longer form a newer
   set: they are *unpaired*.
2. **No partner.** A waiting frame is unpaired when each other view has sent a frame stamped
   more than ``tolerance`` after it (frames of one view come in stamp order, so its partner will
   not come), when it has waited :data:`PAIR_WAIT_S` since its arrival (:meth:`ViewPairer.expire`;
   the partner was lost), or when newer frames of its view push it out of the buffer.

Every frame ends in exactly one set or as unpaired once, so the counts add up. What happens to an
unpaired frame (dropped, or registered alone) is the node's ``unpaired`` parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = [
    "PAIR_BUFFER",
    "PAIR_WAIT_S",
    "Waiting",
    "Pairing",
    "ViewPairer",
    "closest_index",
    "partner_gone",
]

#: Frames kept per view while they wait for partners.
PAIR_BUFFER = 4
#: How long after its arrival a frame waits for its partners (s).
PAIR_WAIT_S = 0.5


@dataclass(frozen=True)
class Waiting:
    """A frame waiting for partners: its view's index, stamp (ns), arrival time (s) and payload."""

    view: int
    stamp_ns: int
    arrival_s: float
    item: Any = None


@dataclass
class Pairing:
    """What one step of :class:`ViewPairer` produced: a complete set (one frame per view, in view
    order) or None, and the frames that became unpaired (oldest stamp first)."""

    complete: tuple[Waiting, ...] | None = None
    unpaired: list[Waiting] = field(default_factory=list)


def closest_index(stamps_ns: Sequence[int], target_ns: int) -> int | None:
    """Index of the stamp closest to ``target_ns`` (the later one on a tie); None when empty."""
    best = None
    for i, stamp in enumerate(stamps_ns):
        if best is None or abs(stamp - target_ns) <= abs(stamps_ns[best] - target_ns):
            best = i
    return best


def partner_gone(
    frame: Waiting, latest_ns: Sequence[int | None], tolerance_ns: int, views: int
) -> bool:
    """True when every view but ``frame``'s has sent a frame stamped more than ``tolerance_ns``
    after it (``latest_ns[k]``: the newest stamp view ``k`` has sent, None before its first)."""
    return all(
        latest_ns[k] is not None and latest_ns[k] > frame.stamp_ns + tolerance_ns
        for k in range(views)
        if k != frame.view
    )


class ViewPairer:
    """Pairs frames of ``views`` views by stamp (rules in the module docstring). Not thread-safe:
    the node calls it under its frame lock."""

    def __init__(self, views: int, depth: int = PAIR_BUFFER) -> None:
        if views < 1 or depth < 1:
            raise ValueError(f"views and depth must be >= 1, got {views}, {depth}")
        self.views = int(views)
        self.depth = int(depth)
        self._waiting: list[list[Waiting]] = [[] for _ in range(self.views)]
        self._latest: list[int | None] = [None] * self.views

    def waiting(self) -> list[Waiting]:
        """The frames waiting now, oldest stamp first."""
        return sorted((f for fs in self._waiting for f in fs), key=lambda f: f.stamp_ns)

    def add(self, frame: Waiting, tolerance_s: float) -> Pairing:
        """Take ``frame``; the set it completes, if any, and the frames now unpaired."""
        if not 0 <= frame.view < self.views:
            raise ValueError(f"view {frame.view} of {self.views}")
        tolerance_ns = int(round(tolerance_s * 1e9))
        k = frame.view
        self._latest[k] = max(frame.stamp_ns, self._latest[k] or frame.stamp_ns)
        own = self._waiting[k]
        own.append(frame)
        own.sort(key=lambda f: f.stamp_ns)
        out = Pairing()
        members = self._set_around(frame, tolerance_ns)
        if members is not None:
            out.complete = members
            for j, member in enumerate(members):
                kept = self._waiting[j]
                out.unpaired += [f for f in kept if f.stamp_ns < member.stamp_ns]
                self._waiting[j] = [
                    f for f in kept if f.stamp_ns >= member.stamp_ns and f is not member
                ]
        while len(own) > self.depth:
            out.unpaired.append(own.pop(0))
        for fs in self._waiting:
            gone = [f for f in fs if partner_gone(f, self._latest, tolerance_ns, self.views)]
            out.unpaired += gone
            fs[:] = [f for f in fs if f not in gone]
        out.unpaired.sort(key=lambda f: f.stamp_ns)
        return out

    def clear(self) -> list[Waiting]:
        """Remove and return every waiting frame (the node stops registering)."""
        gone = self.waiting()
        self._waiting = [[] for _ in range(self.views)]
        return gone

    def expire(self, now_s: float, wait_s: float = PAIR_WAIT_S) -> list[Waiting]:
        """Remove and return the frames that have waited longer than ``wait_s`` (oldest first)."""
        gone = [f for fs in self._waiting for f in fs if now_s - f.arrival_s > wait_s]
        for fs in self._waiting:
            fs[:] = [f for f in fs if f not in gone]
        return sorted(gone, key=lambda f: f.stamp_ns)

    def _set_around(self, frame: Waiting, tolerance_ns: int) -> tuple[Waiting, ...] | None:
        """The set of ``frame`` and each other view's waiting frame closest to it, when their
        stamps span at most ``tolerance_ns``; else None."""
        members = []
        for j in range(self.views):
            if j == frame.view:
                members.append(frame)
                continue
            i = closest_index([f.stamp_ns for f in self._waiting[j]], frame.stamp_ns)
            if i is None:
                return None
            members.append(self._waiting[j][i])
        stamps = [f.stamp_ns for f in members]
        return tuple(members) if max(stamps) - min(stamps) <= tolerance_ns else None
