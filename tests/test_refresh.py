"""Headless: after new weights, which maps are stale, the order they refresh in, and what a cancel reports."""

from __future__ import annotations

import numpy as np
import pytest

from learners.generators import collect
from learners.unet import UNetConfig
from napari_paser.errors import PaserInputError
from napari_paser.session.core import Session
from napari_paser.session.refresh import RefreshReport

TINY = UNetConfig(base=4, depth=2)


@pytest.fixture
def stale(tmp_path) -> Session:
    """8 slices of 64x64 (regions 32: 4 per slice), maps of every slice from f0 version 1, then new weights."""
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((8, 64, 64)) * 1000).astype(np.uint16), region_size=32)
    s.new_models({"f0": TINY})
    collect(s.compute_maps(samples=1))
    s.propose(3, "random", seed=1)
    s.new_models({"f0": TINY}, seed=1)  # new weights: every map is now the previous model's
    return s


def test_new_weights_make_every_map_stale(stale):
    assert stale.fresh_slices() == [] and stale.stale_slices() == list(range(8))


def test_maps_are_f0s_so_new_larger_models_or_policies_leave_them_current(tmp_path):
    """Maps are f0's alone: new f1/f2 weights or a routing bank (new model versions) must not make a volume's
    maps stale (each stale slice is an f0 pass again: hours for a 2048^2 x 1000 scan); a new f0 must."""
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((3, 32, 32)) * 1000).astype(np.uint16), region_size=16)
    s.new_models({"f0": TINY, "f1": TINY, "f2": TINY})
    collect(s.compute_maps(samples=1))
    for rid in range(6):
        r = s.region(rid)
        s.accept(rid, rng.integers(1, 4, (r.h, r.w)).astype(np.uint8))
    version = s.state.model_version
    s.new_models({"f2": TINY}, seed=1)
    events, result = collect(s.train_router(train_models=False, shares=[0.2], samples=1))
    assert s.state.model_version == version + 2 and not result.cancelled
    assert s.fresh_slices() == [0, 1, 2] and s.stale_slices() == []
    assert not [e for e in events if e.stage == "maps"]  # the refresh after the bank recomputed nothing
    s.new_models({"f0": TINY}, seed=2)
    assert s.fresh_slices() == [] and s.stale_slices() == [0, 1, 2]
    collect(s.compute_maps(1, samples=1))
    assert s.fresh_slices() == [1]


def test_refresh_order_is_screen_then_proposals_then_nearest(stale):
    props = [p.z for p in stale.proposals]
    stale.accept(stale.proposals[0].region_id, np.ones((32, 32), np.uint8))  # accepted: its slice comes after pending
    pending = [p.z for p in stale.pending_proposals]
    now, later = stale.refresh_order(focus=5)
    expected = [5] + [z for z in dict.fromkeys(pending + [props[0]]) if z != 5]
    assert now == expected
    assert sorted(now + later) == list(range(8)) and not set(now) & set(later)
    assert later == sorted(later, key=lambda z: (abs(z - 5), z))  # nearest to the slice on screen first


def test_lazy_refresh_does_only_what_is_needed_now_and_says_so(stale):
    now, later = stale.refresh_order(focus=2)
    events, report = collect(stale.refresh(focus=2, everything=False, samples=1))
    assert report.refreshed == now and stale.fresh_slices() == sorted(now)
    assert report.stale == sorted(later) and not report.cancelled
    assert [e.z for e in events if e.stage == "maps"] == now  # in that order
    assert report.proposals.endswith("new proposals")  # repeated on the fresh slices
    assert {p.z for p in stale.proposals} <= set(now)
    msg = report.message()
    assert msg.startswith("maps refreshed for slice") and f"{len(later)} slices keep the previous model's maps" in msg


def test_a_cancelled_refresh_reports_exactly_what_was_refreshed(stale):
    calls = iter([False, False, True])  # two slices, then cancel
    events, report = collect(stale.refresh(focus=3, samples=1, should_stop=lambda: next(calls)))
    assert report.cancelled and len(report.refreshed) == 2 and report.refreshed[0] == 3
    assert stale.fresh_slices() == sorted(report.refreshed) and len(report.stale) == 6
    assert report.proposals == ""  # a cancel does not re-propose
    a, b = report.refreshed
    assert report.message() == (f"cancelled: maps refreshed for slices {', '.join(map(str, sorted((a, b))))}; "
                                "6 slices keep the previous model's maps and refresh when shown")


def test_full_refresh_is_the_headless_default(stale):
    _, report = collect(stale.refresh(samples=1))
    assert stale.stale_slices() == [] and stale.fresh_slices() == list(range(8)) and report.stale == []
    assert report.message().startswith("maps refreshed for slices 0-7")


def test_refresh_needs_a_model(tmp_path):
    s = Session.create(tmp_path / "s", np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32), region_size=16)
    with pytest.raises(PaserInputError, match="no models yet"):
        s.refresh()


def test_report_wording():
    assert RefreshReport([3, 7], list(range(48)), True).message() == (
        "cancelled: maps refreshed for slices 3, 7; 48 slices keep the previous model's maps and refresh when shown")
    assert RefreshReport([], [4], False).message() == (
        "no maps refreshed; 1 slice keeps the previous model's maps and refreshes when shown")
    assert RefreshReport([0], [], volume=False).message() == "maps refreshed"
