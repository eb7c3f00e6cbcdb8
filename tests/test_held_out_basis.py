"""The held-out figure says what it rests on: how many held-out regions from how many distinct slices, and
what to label when they are too few to trust. Headless (no Qt)."""

from __future__ import annotations

import numpy as np

from napari_paser.session.core import Session
from napari_paser.session.labeling import held_out_advice, held_out_note


def test_the_note_flags_few_slices_and_few_regions():
    assert held_out_note(0.95, 3, 1, 250) == \
        "held-out mIoU 0.950 on 3 regions from 1 slice: label more slices for a figure you can trust"
    assert held_out_note(0.9, 4, 3, 250) == \
        "held-out mIoU 0.900 on 4 regions from 3 slices: accept more regions for a figure you can trust"
    assert held_out_note(0.9, 6, 4, 250) == "held-out mIoU 0.900 on 6 regions from 4 slices"
    # a single image: slices say nothing, only regions count
    assert held_out_note(0.8, 6, 1, 1) == "held-out mIoU 0.800 on 6 regions"
    assert held_out_advice(2, 2, 2) == "accept more regions for a figure you can trust"  # every slice of 2 used
    assert held_out_note(None, 2, 1, 5).startswith("2 held-out regions from 1 slice, not scored yet")
    assert held_out_note(0.9, 0, 0, 5).startswith("no held-out regions yet")


def test_the_session_counts_held_out_regions_and_their_slices(tmp_path):
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((4, 64, 64)) * 1000).astype(np.uint16), region_size=32)
    every = int(s.state.settings.get("val_every", 0))
    assert every >= 2
    same_slice = [int(r) for r in s.pool.slice_ids(0)]  # 4 regions of slice 0, then slice 1's
    ids = same_slice + [int(r) for r in s.pool.slice_ids(1)]
    for i, rid in enumerate(ids[:every]):
        s.accept(rid, np.full((32, 32), 1 + i % 3, np.uint8))
    val = [a for a in s.accepted if a.split == "val"]
    assert s.held_out_basis() == (len(val), len({a.z for a in val})) == (1, 1)
    assert s.held_out_text(0.95) == \
        "held-out mIoU 0.950 on 1 region from 1 slice: label more slices for a figure you can trust"
    assert s.held_out_text().startswith("1 held-out region from 1 slice, not scored yet")  # no retrain yet
    more = [int(r) for z in (2, 3) for r in s.pool.slice_ids(z)]
    for i, rid in enumerate(more[:every]):  # the next held-out region comes from another slice
        s.accept(rid, np.full((32, 32), 1 + i % 3, np.uint8))
    val = [a for a in s.accepted if a.split == "val"]
    assert len(val) == 2 and s.held_out_basis() == (2, len({a.z for a in val})) == (2, 2)
