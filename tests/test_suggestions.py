"""Label by correcting: the model's suggestion of a proposed region, accepting it corrected or
unchanged, the correction effort kept per region (session.json, manifest), proposals spread over
the volume and on neighbouring slices. Headless (no Qt)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from learners.generators import collect
from learners.unet import UNetConfig
from napari_paser.errors import PaserInputError
from napari_paser.session.core import Session
from napari_paser.session.effort import correction_effort

TINY = UNetConfig(base=4, depth=2)


def volume(z: int = 5, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((z, size, size)) * 1000).astype(np.uint16)


@pytest.fixture
def ready(tmp_path) -> Session:
    s = Session.create(tmp_path / "s", volume(), region_size=32)
    s.new_models({"f0": TINY})
    collect(s.compute_maps([0, 1], samples=2))
    return s


def test_effort_counts_changed_pixels_and_strokes():
    a = np.ones((10, 10), np.uint8)
    b = a.copy()
    b[0:2, 0:2] = 2  # one blob of 4
    b[8, 8] = 3  # another, not touching
    e = correction_effort(a, b)
    assert (e.changed_px, e.strokes, e.size) == (5, 2, 100)
    assert e.text().startswith("corrected 5 px, 5%")
    assert correction_effort(a, a).text() == "accepted unchanged"


def test_proposals_store_the_models_guess_and_it_is_not_a_label(ready):
    props = ready.propose(3, "entropy")
    for p in props:
        sug = ready.suggestion(p.region_id)
        r = ready.region(p.region_id)
        assert sug.shape == (r.h, r.w) and sug.min() >= 1 and sug.max() <= ready.n_classes
        pred = np.asarray(ready.maps["prediction"][r.z, r.y0:r.y0 + r.h, r.x0:r.x0 + r.w]) + 1
        assert np.array_equal(sug, pred)  # the maps' prediction, in the layer convention
    assert not np.asarray(ready.labels[:]).any()  # nothing painted: the canvas stays empty
    assert ready.accepted == [] and ready.painted_regions().size == 0
    again = Session.open(ready.folder, read_only=True)  # kept in session.json + files
    assert np.array_equal(again.suggestion(props[0].region_id), ready.suggestion(props[0].region_id))


def test_accept_unchanged_and_corrected_record_the_effort(ready):
    p1, p2 = ready.propose(2, "entropy")
    rec = ready.accept(p1.region_id, from_suggestion=True, seconds=3.25)
    assert (rec.changed_px, rec.strokes, rec.seconds) == (0, 0, 3.25)
    assert np.array_equal(ready.accepted_labels(p1.region_id), ready.suggestion(p1.region_id))
    fixed = ready.suggestion(p2.region_id).copy()
    fixed[:4, :10] = 3 if fixed[0, 0] != 3 else 1
    rec2 = ready.accept(p2.region_id, fixed, from_suggestion=True)
    want = int((fixed != ready.suggestion(p2.region_id)).sum())
    assert rec2.changed_px == want > 0 and rec2.strokes == 1 and rec2.seconds is None
    assert ready.effort_of(p2.region_id).changed_px == want
    data = json.loads((ready.folder / "session.json").read_text())
    stored = {a["region_id"]: a for a in data["accepted"]}
    assert stored[p2.region_id]["changed_px"] == want and stored[p1.region_id]["seconds"] == 3.25
    summary = ready.effort_summary()
    assert summary["corrected_regions"] == 2 and summary["changed_px"] == want
    # a plainly painted region has no effort record
    other = next(int(r) for r in ready.pool.candidates())
    rr = ready.region(other)
    rec3 = ready.accept(other, np.ones((rr.h, rr.w), np.uint8))
    assert rec3.changed_px is None and ready.effort_of(other) is None


def test_old_session_json_without_effort_fields_opens(ready):
    p = ready.propose(1, "entropy")[0]
    ready.accept(p.region_id, from_suggestion=True)
    folder = ready.folder
    ready.close()
    data = json.loads((folder / "session.json").read_text())
    for a in data["accepted"]:
        for k in ("changed_px", "strokes", "seconds"):
            a.pop(k)
    data.pop("suggestions")
    (folder / "session.json").write_text(json.dumps(data))
    again = Session.open(folder)
    assert again.accepted[0].changed_px is None and again.effort_summary()["painted_regions"] == 1


def test_manifest_exports_the_effort(ready, tmp_path):
    p = ready.propose(1, "entropy")[0]
    fixed = ready.suggestion(p.region_id).copy()
    fixed[0, :7] = 1 if fixed[0, 0] != 1 else 2
    ready.accept(p.region_id, fixed, from_suggestion=True, seconds=2.0)
    out = ready.export(tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    row = manifest["regions"][0]
    assert row["changed_px"] == int((fixed != ready.suggestion(p.region_id)).sum()) and row["seconds"] == 2.0
    assert manifest["meta"]["effort"]["changed_px"] == row["changed_px"]
    with open(out / "manifest.csv") as fh:
        first = next(csv.DictReader(fh))
    assert int(first["changed_px"]) == row["changed_px"]


def test_suggestion_on_a_slice_without_maps_comes_from_f0(ready):
    rid = int(ready.pool.slice_ids(4)[0])  # slice 4 has no maps
    sug = ready.suggestion(rid)
    r = ready.region(rid)
    assert sug.shape == (r.h, r.w) and sug.min() >= 1
    assert 4 not in ready.fresh_slices()


def test_the_spread_maps_fewer_slices_when_slices_are_large(ready):
    side = ready.shape[-1] * ready.shape[-2]
    assert ready.spread_count(8, pixels=8 * side) == min(8, ready.n_slices)
    assert ready.spread_count(8, pixels=3 * side) == 3
    assert ready.spread_count(8, pixels=side // 2) == 2  # never fewer than two slices


def test_spread_maps_map_the_whole_volume_and_proposals_span_it(ready):
    assert ready.spread_slices(3) == [0, 2, 4]
    done = collect(ready.spread_maps(3, samples=2))[1]
    assert done == 2 and set(ready.fresh_slices()) == {0, 1, 2, 4}
    props = ready.propose(4, "entropy", max_per_slice=1)
    assert len({p.z for p in props}) == 4


def test_neighbours_propose_the_same_place_on_nearby_slices(ready):
    p = ready.propose(1, "entropy")[0]
    ready.accept(p.region_id, from_suggestion=True)
    new = ready.propose_neighbours(p.region_id, depth=2)
    r = ready.region(p.region_id)
    zs = [q.z for q in new]
    assert all((q.y0, q.x0) == (r.y0, r.x0) for q in new)
    assert set(zs) == {z for z in (r.z - 2, r.z - 1, r.z + 1, r.z + 2) if 0 <= z < 5}
    assert sorted(abs(z - r.z) for z in zs) == [abs(z - r.z) for z in zs]  # nearest first
    ranks = [q.rank for q in ready.proposals]
    assert len(set(ranks)) == len(ranks)  # unique numbers in the round
    assert ready.next_proposal(p.rank).region_id == new[0].region_id
    for q in new:  # pre-filled: the model's guess is there without painting
        assert ready.suggestion(q.region_id).min() >= 1
    near = ready.propose(3, "random", near=1)
    assert all(abs(q.z - r.z) == 1 and (q.y0, q.x0) == (r.y0, r.x0) for q in near)


def test_neighbours_refuse_a_single_slice(tmp_path):
    s = Session.create(tmp_path / "s2", volume(1)[0], region_size=32)
    s.new_models({"f0": TINY})
    with pytest.raises(PaserInputError, match="single slice"):
        s.propose_neighbours(0)


def test_curve_effort_counts_corrections_and_painting(ready):
    from learners.training import TrainConfig

    p1, p2 = ready.propose(2, "entropy")
    fixed = ready.suggestion(p1.region_id).copy()
    fixed[0, 0] = 1 if fixed[0, 0] != 1 else 2
    ready.accept(p1.region_id, fixed, from_suggestion=True)
    r2 = ready.region(p2.region_id)
    ready.accept(p2.region_id, np.full((r2.h, r2.w), 2, np.uint8))  # painted: all its pixels count
    collect(ready.retrain(TrainConfig(epochs=1, batch_size=2, augment=False), samples=2))
    assert ready.curve_effort()[-1] == 1 + r2.h * r2.w
