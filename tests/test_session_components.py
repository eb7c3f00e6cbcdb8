"""Each part of a session built alone, on a `Store`, without a `Session`: the store's commit and reopen, the
labeling's accept / unaccept round trip, the model set's retrain subscribers, the maps cache going stale on
new weights and fresh again through the retrain callback, the router's rethreshold after a refresh, the
suggestions going stale on a new model version, the proposer's per-slice cap and its repeat after a refresh,
and the Session wiring one set of parts together."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from learners.generators import collect
from learners.unet import UNetConfig
from napari_paser.errors import PaserInputError
from napari_paser.session.core import Session
from napari_paser.session.forest import ForestAssist
from napari_paser.session.labeling import Labeling
from napari_paser.session.maps import MapsCache
from napari_paser.session.models import NO_POLICY, ModelSet
from napari_paser.session.proposals import Proposer
from napari_paser.session.refresh import RefreshReport
from napari_paser.session.router.router import Router
from napari_paser.session.store import SUGGESTIONS, Store, crop_path
from napari_paser.session.suggestions import Suggestions
from napari_paser.session.training import RETRAIN_CONFIG

TINY = UNetConfig(base=4, depth=2)
QUICK = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=2, batch_size=2, crop=16)


def image(n: int = 3, size: int = 32) -> np.ndarray:
    """Three grey levels in 8 px blocks, a class per level: a volume any model can learn a little of."""
    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 3, (n, size // 8, size // 8)), np.ones((1, 8, 8), int))
    return (classes * 300 + 100 + rng.normal(0, 20, classes.shape)).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    s = Store.create(tmp_path / "s", image(), region_size=16, val_every=0)
    yield s
    s.close()


def parts(store: Store) -> tuple[ModelSet, MapsCache, Router, Suggestions, Proposer, Labeling]:
    model_set = ModelSet(store)
    maps_cache = MapsCache(store, model_set)
    router = Router(store, model_set, maps_cache)
    suggestions = Suggestions(store, model_set, maps_cache, router, ForestAssist(store, model_set))
    proposer = Proposer(store, model_set, maps_cache, suggestions)
    return model_set, maps_cache, router, suggestions, proposer, Labeling(store, suggestions, proposer)


def test_store_commits_reopen_and_refuse_when_read_only(store, tmp_path):
    store.commit(lambda s: s.settings.__setitem__("note", "kept"))
    folder = store.folder
    store.close()
    with pytest.raises(PaserInputError, match="is closed"):
        store.commit(lambda s: s.settings.__setitem__("note", "lost"))
    again = Store.open(folder)
    assert again.state.settings["note"] == "kept" and again.shape == (3, 32, 32) and len(again.pool) == 3 * 4
    view = Store.open(folder, read_only=True)
    with pytest.raises(PaserInputError, match="read-only"):
        view.commit(lambda s: s.settings.__setitem__("note", "lost"))
    again.close()


def test_labeling_accept_unaccept_round_trip_on_a_store(store):
    *_, labeling = parts(store)
    patch = np.full((16, 16), 2, np.uint8)
    rec = labeling.accept(5, patch)
    assert store.is_accepted(5) and [a.region_id for a in store.state.accepted] == [5]
    assert crop_path(store.folder, 5, rec.seq).is_file() and (store.accepted_labels(5) == 2).all()
    labeling.unaccept(5)
    assert not store.is_accepted(5) and store.state.accepted == [] and not crop_path(store.folder, 5, rec.seq).is_file()
    r = store.region(5)
    assert (np.asarray(store.labels[store.index(*r.slices)]) == 2).all()  # the labels stay painted
    assert list(labeling.painted_regions()) == [5]
    again = labeling.accept(5)  # from the canvas, a new crop
    assert again.seq > rec.seq and again.split == rec.split and Store.open(store.folder, read_only=True).is_accepted(5)


def test_model_set_runs_its_retrain_subscribers_only_after_new_weights(store):
    model_set = ModelSet(store)
    model_set.new_models({"f0": TINY}, start="scratch")
    assert model_set.has_models and (store.folder / store.state.models["f0"]["file"]).is_file()
    calls = []

    def subscriber(samples, should_stop):
        calls.append(samples)
        yield from ()

    model_set.on_retrained.append(subscriber)
    store.labels[0, :16, :16] = 1
    collect(model_set.retrain(QUICK, samples=2, refresh=False, keep_if_worse=False))
    assert calls == [] and store.state.models["f0"]["source"] == "retrain"
    collect(model_set.retrain(QUICK, samples=3, keep_if_worse=False))
    assert calls == [3]


def test_maps_cache_goes_stale_on_new_weights_and_the_retrain_callback_refreshes_it(store):
    model_set = ModelSet(store)
    maps_cache = MapsCache(store, model_set)
    with pytest.raises(PaserInputError, match="no models yet"):
        maps_cache.compute_maps(0)
    model_set.new_models({"f0": TINY}, start="scratch")
    collect(maps_cache.compute_maps([0, 2], samples=2))
    assert maps_cache.fresh_slices() == [0, 2] and maps_cache.stale_slices() == []
    assert maps_cache.has_state(0, 2) and not maps_cache.has_state(1, 2)
    reports = []

    def after(report, samples, should_stop):
        reports.append(report)
        yield from ()

    maps_cache.after_refresh.append(after)
    store.labels[1, :16, :16] = 3
    collect(model_set.retrain(QUICK, samples=2, refresh=False, keep_if_worse=False))
    assert maps_cache.stale_slices() == [0, 2] and maps_cache.fresh_slices() == [] and reports == []
    collect(model_set.retrained(2, None))  # what a retrain with refresh runs: the maps cache subscribed
    assert maps_cache.fresh_slices() == [0, 2] and maps_cache.stale_slices() == []
    assert len(reports) == 1 and reports[0].refreshed == [0, 2] and not reports[0].cancelled


def test_router_needs_a_policy_and_its_rethreshold_reports_into_the_refresh(store, tmp_path):
    model_set, maps_cache, router, *_ = parts(store)
    model_set.new_models({"f0": TINY, "f2": TINY}, start="scratch")
    with pytest.raises(PaserInputError) as err:
        router.route(0)
    assert str(err.value) == NO_POLICY
    report = RefreshReport()
    collect(router._after_refresh(report, 2, None))  # no bank: nothing to make again
    assert not report.rethresholded
    out = router.export_run(tmp_path / "run")
    assert (out / "f0.pt").is_file() and (out / "f2.pt").is_file() and not (out / "policy.pt").exists()


def test_suggestions_store_a_guess_per_region_and_go_stale_on_a_new_model_version(store):
    model_set = ModelSet(store)
    maps_cache = MapsCache(store, model_set)
    suggestions = Suggestions(store, model_set, maps_cache, Router(store, model_set, maps_cache), ForestAssist(store, model_set))
    model_set.new_models({"f0": TINY}, start="scratch")
    assert not suggestions.routes_suggestions  # no routing policy: f0's guess
    made = suggestions.make([3, 7])
    suggestions.commit(lambda s: s.suggestions.update(made), made)
    assert sorted(store.state.suggestions) == ["3", "7"] and store.state.settings["next_suggestion_seq"] == 2
    shown = suggestions.suggestion(3)
    assert shown.shape == (16, 16) and shown.min() >= 1 and shown.max() <= store.n_classes
    assert suggestions.suggestion_source(3) == "f0" and suggestions.suggestion_source(4) == ""
    assert suggestions.suggestions_current()
    model_set.new_models({"f0": TINY}, seed=1, start="scratch")  # a new model version
    assert not suggestions.suggestions_current()
    again = suggestions.make([3, 7])  # stale: made again under the next seqs, the old files removed on commit
    suggestions.commit(lambda s: s.suggestions.update(again), again)
    assert [again[r]["seq"] for r in ("3", "7")] == [2, 3] and suggestions.suggestions_current()
    assert not crop_path(store.folder, 3, made["3"]["seq"], SUGGESTIONS).is_file()
    assert suggestions.make([3]) == {"3": again["3"]}  # current: kept as it is, nothing computed


def test_proposer_caps_proposals_per_slice_and_repeats_its_request_after_a_refresh(store):
    model_set = ModelSet(store)
    maps_cache = MapsCache(store, model_set)
    suggestions = Suggestions(store, model_set, maps_cache, Router(store, model_set, maps_cache), ForestAssist(store, model_set))
    proposer = Proposer(store, model_set, maps_cache, suggestions)
    assert maps_cache.after_refresh[-1] == proposer._after_refresh  # after the router's
    first = proposer.propose(6, sampler="random", seed=1, max_per_slice=2)
    assert len(first) == 6 and all(sum(p.z == z for p in first) == 2 for z in range(3))
    assert store.state.proposal_request == {"k": 6, "sampler": "random", "seed": 1, "max_per_slice": 2}
    assert store.state.suggestions == {}  # no models: nothing to suggest
    assert proposer.next_proposal(first[-1].rank).region_id == first[0].region_id  # wraps around
    store.commit(lambda s: s.skipped.append(first[0].region_id))
    report = RefreshReport()
    collect(proposer._after_refresh(report, 2, None))
    assert report.proposals == "6 new proposals" and store.state.skipped == []  # a new round, same request
    assert [p.region_id for p in store.state.proposals] == [p.region_id for p in first]  # same seed
    with pytest.raises(PaserInputError, match="single slice|no unlabeled"):
        proposer.propose(2, sampler="random", near=1)  # nothing accepted: no neighbours


def test_a_session_wires_one_set_of_parts_and_forwards_to_them(tmp_path):
    s = Session.create(tmp_path / "s", image(), region_size=16, val_every=0)
    assert s.model_set.store is s.store and s.maps_cache.model_set is s.model_set
    assert s.router.maps_cache is s.maps_cache and s.suggestions.router is s.router
    assert s.proposer.suggestions is s.suggestions and s.labeling.proposer is s.proposer
    assert s.maps_cache.after_refresh == [s.router._after_refresh, s.proposer._after_refresh]  # the bank first
    assert s.model_set.on_retrained == [s.maps_cache._retrained]
    s.new_models({"f0": TINY}, start="scratch")
    assert s.models is s.model_set.models and s.state is s.store.state and s.labels is s.store.labels
    s.propose(2, sampler="random", suggest=False)
    assert [p.region_id for p in s.pending_proposals] == [p.region_id for p in s.store.state.proposals]
    s.close()
    assert s.closed and s.store.closed
