"""Pairing frames of several C-arm views by stamp (sphere_reg_ros.ros.view_pairing): no ROS."""

from __future__ import annotations

import itertools
import random

import pytest

from sphere_reg_ros.ros.view_pairing import (
    PAIR_WAIT_S,
    ViewPairer,
    Waiting,
    closest_index,
    partner_gone,
)

MS = 1_000_000  # ns
TOL = 0.005  # s


def _frame(view, stamp_ms, arrival_s=0.0, item=None):
    return Waiting(view, int(stamp_ms * MS), arrival_s, item)


def _stamps(frames):
    return [(f.view, f.stamp_ns // MS) for f in frames]


def test_closest_index_and_partner_gone():
    assert closest_index([], 5) is None
    assert closest_index([10, 20, 30], 24) == 1
    assert closest_index([10, 20, 30], 25) == 2  # a tie goes to the later one
    f = _frame(0, 100)
    assert not partner_gone(f, [100 * MS, None], 5 * MS, 2)  # view 1 has sent nothing
    assert not partner_gone(f, [100 * MS, 105 * MS], 5 * MS, 2)  # within tolerance: may come
    assert partner_gone(f, [100 * MS, 106 * MS], 5 * MS, 2)


def test_two_views_pair_by_stamp_not_by_arrival():
    p = ViewPairer(2)
    assert p.add(_frame(1, 100), TOL).complete is None  # view b first
    out = p.add(_frame(0, 102), TOL)
    assert _stamps(out.complete) == [(0, 102), (1, 100)]  # in view order
    assert out.unpaired == [] and p.waiting() == []


def test_frames_further_apart_than_the_tolerance_do_not_pair():
    p = ViewPairer(2)
    p.add(_frame(0, 100), TOL)
    out = p.add(_frame(1, 106), TOL)
    # view 1's frame is 6 ms later: view 0's frame can no longer pair and is unpaired at once
    assert out.complete is None and _stamps(out.unpaired) == [(0, 100)]
    assert _stamps(p.waiting()) == [(1, 106)]
    out = p.add(_frame(0, 107), TOL)
    assert _stamps(out.complete) == [(0, 107), (1, 106)]


def test_a_lost_partner_expires_after_the_wait():
    p = ViewPairer(2)
    p.add(_frame(0, 100, arrival_s=10.0), TOL)
    assert p.expire(10.0 + PAIR_WAIT_S) == []  # not longer than the wait yet
    assert _stamps(p.expire(10.0 + PAIR_WAIT_S + 0.01)) == [(0, 100)]
    assert p.waiting() == []


def test_clear_drops_every_waiting_frame():
    p = ViewPairer(2)
    p.add(_frame(0, 100), TOL)
    p.add(_frame(1, 300), TOL)
    assert _stamps(p.clear()) == [(1, 300)]  # view 0's frame was unpaired at once
    assert p.waiting() == []


def test_the_buffer_keeps_the_newest_frames_of_a_view():
    p = ViewPairer(2, depth=2)
    p.add(_frame(0, 100), TOL)
    p.add(_frame(0, 200), TOL)
    out = p.add(_frame(0, 300), TOL)
    assert _stamps(out.unpaired) == [(0, 100)]
    assert _stamps(p.waiting()) == [(0, 200), (0, 300)]


def test_a_set_makes_the_older_frames_of_its_views_unpaired():
    p = ViewPairer(2)
    p.add(_frame(0, 100), TOL)  # its partner was lost
    p.add(_frame(0, 200), TOL)
    out = p.add(_frame(1, 201), TOL)
    assert _stamps(out.complete) == [(0, 200), (1, 201)]
    assert _stamps(out.unpaired) == [(0, 100)]


def test_three_views_need_all_within_the_tolerance():
    p = ViewPairer(3)
    p.add(_frame(0, 100), TOL)
    assert p.add(_frame(2, 104), TOL).complete is None
    out = p.add(_frame(1, 98), TOL)  # 98..104 spans 6 ms > 5 ms: no set
    assert out.complete is None
    out = p.add(_frame(1, 101), TOL)
    assert _stamps(out.complete) == [(0, 100), (1, 101), (2, 104)]
    assert _stamps(out.unpaired) == [(1, 98)]


def test_one_view_forms_a_set_of_each_frame():
    p = ViewPairer(1)
    out = p.add(_frame(0, 5, item="x"), TOL)
    assert out.complete[0].item == "x" and out.unpaired == []


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        ViewPairer(0)
    with pytest.raises(ValueError, match="view 2 of 2"):
        ViewPairer(2).add(_frame(2, 1), TOL)


@pytest.mark.parametrize("seed", range(5))
def test_every_frame_ends_once_in_a_set_or_unpaired(seed):
    """Jittered biplane streams with losses and reordering between the views: the counts add up,
    sets are within the tolerance, and each view's sets come in stamp order."""
    rng = random.Random(seed)
    p = ViewPairer(2)
    events, sent = [], 0
    for i in range(200):
        for view in (0, 1):
            if rng.random() < 0.1:
                continue  # lost
            stamp = i * 100 + rng.uniform(-3, 3)
            events.append((i * 0.1 + rng.uniform(0, 0.05), _frame(view, stamp, i * 0.1)))
            sent += 1
    events.sort(key=lambda e: (e[1].view, e[1].stamp_ns))  # each view in stamp order...
    per_view = [[e for e in events if e[1].view == v] for v in (0, 1)]
    merged = sorted(itertools.chain(*per_view), key=lambda e: e[0])  # ...interleaved by arrival
    paired, unpaired, last = 0, 0, [-(10**18), -(10**18)]
    for now, frame in merged:
        unpaired += len(p.expire(now))
        out = p.add(frame, TOL)
        unpaired += len(out.unpaired)
        if out.complete:
            paired += len(out.complete)
            stamps = [f.stamp_ns for f in out.complete]
            assert max(stamps) - min(stamps) <= TOL * 1e9
            for f in out.complete:
                assert f.stamp_ns > last[f.view]
                last[f.view] = f.stamp_ns
    unpaired += len(p.expire(1e9))
    assert paired + unpaired == sent
    assert paired >= 0.7 * sent  # most frames have their partner
