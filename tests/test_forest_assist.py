"""The forest assist (`session.forest`): each new region scored by the previous retrain's forest and by f0 before
f0 trains on it (neither has seen it, both had the same labels), the mode chosen by those scores and kept in session.json, suggestions that follow the mode
(and go stale when it changes), the same guesses after a reopen, a cancel that commits nothing, and the
windowed 3D features equal to the whole volume's where the halo covers it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from skimage.feature import multiscale_basic_features

from learners.generators import collect
from learners.unet import UNetConfig
from napari_paser.data.baselines import window_features
from napari_paser.data.dataset import normalise
from napari_paser.session.core import Session
from napari_paser.errors import PaserInputError
from napari_paser.session.forest import MIN_REGIONS, MODES, choose_mode
from napari_paser.session.training import RETRAIN_CONFIG

TINY = UNetConfig(base=4, depth=2)
QUICK = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=1, batch_size=2, crop=16)


def volume(n: int = 3, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Three noisy grey levels in 8 px blocks through z (a class per level): a forest on smoothed features
    reads them at once, an untrained UNet cannot."""
    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 3, (1, size // 8, size // 8)), np.ones((n, 8, 8), int))
    return (classes * 300 + 100 + rng.normal(0, 120, classes.shape)).astype(np.float32), classes


@pytest.fixture
def session(tmp_path):
    img, classes = volume()
    s = Session.create(tmp_path / "s", img, classes=["a", "b", "c"], region_size=16, val_every=0)
    s.new_models({"f0": TINY}, start="scratch")
    yield s, classes
    s.close()


def accept(s: Session, classes: np.ndarray, ids) -> None:
    for rid in ids:
        s.accept(rid, classes[s.region(rid).slices].astype(np.uint8) + 1)


def two_batches(s: Session, classes: np.ndarray) -> None:
    """Accept and retrain twice: the second batch is scored by the forest the first retrain fitted."""
    for batch in ([0, 4, 10], [13, 20, 25]):
        accept(s, classes, batch)
        collect(s.retrain(QUICK, refresh=False))


def test_the_first_batch_is_not_scored_but_fits_the_forest(session):
    s, classes = session
    assert s.forest.mode == "f0" and "until" in s.forest.summary()
    accept(s, classes, [0, 4, 10])
    collect(s.retrain(QUICK, refresh=False))
    rec = s.forest.record
    assert rec["regions"] == 0 and s.forest.mode == "f0"  # no earlier forest had the labels f0 had
    assert len(rec["fitted"]) == 3 and s.forest.forest is not None


def test_new_regions_are_scored_by_the_previous_forest_and_the_better_guess_is_chosen(session):
    s, classes = session
    two_batches(s, classes)
    rec = s.forest.record
    assert rec["regions"] == 3 and len(rec["scored"]) == 6 and len(rec["fitted"]) == 6
    assert len(rec["batches"]) == 1 and rec["batches"][0]["regions"] == 3
    assert sum(map(sum, rec["batches"][0]["confusion"]["f0"])) == 3 * 16 * 16  # the second batch's pixels, once
    assert rec["miou"]["forest"] > rec["miou"]["f0"] + 0.2  # noisy blocks: the forest wins, an untrained f0 not
    assert s.forest.mode == "blend" and "blend" in s.forest.summary()
    accept(s, classes, [7])
    collect(s.retrain(QUICK, refresh=False))
    assert s.forest.record["regions"] == 4  # only the new region is scored


def test_a_reopened_session_scores_with_the_forest_refitted_on_the_last_retrains_regions(session):
    s, classes = session
    accept(s, classes, [0, 4, 10])
    collect(s.retrain(QUICK, refresh=False))
    folder = s.folder
    s.close()
    with Session.open(folder) as again:
        accept(again, classes, [13, 20, 25])
        collect(again.retrain(QUICK, refresh=False))
        assert again.forest.record["regions"] == 3 and again.forest.mode != "f0"


def test_suggestions_follow_the_mode_and_go_stale_when_it_changes(session):
    s, classes = session
    two_batches(s, classes)
    assert s.forest.record["regions"] >= MIN_REGIONS
    rid = 20
    made = s.suggestions.make([rid])
    s.suggestions.commit(lambda st: st.suggestions.update(made), made)
    assisted = s.suggestion(rid)
    assert s.suggestion_source(rid) == "f0 + forest"
    truth = classes[s.region(rid).slices] + 1
    f0_alone = s.predicted_patch(s.region(rid))
    assert (assisted == truth).mean() > (f0_alone == truth).mean()
    probs = s.forest.window(*s.region(rid).slices)
    np.testing.assert_array_equal(probs.argmax(0) + 1, assisted)
    assert s.suggestions_current()
    s.set_forest_assist(False)
    assert s.forest.mode == "f0" and not s.suggestions_current()
    assert s.forest.summary() == "forest assist: off"
    made = s.suggestions.make([rid])
    assert made[str(rid)].get("assist", "f0") == "f0"


def test_assisted_matches_the_window_guess_and_survives_a_reopen(session, tmp_path):
    s, classes = session
    two_batches(s, classes)
    img = np.asarray(s.image[:])
    whole = s.assisted(img)
    assert whole.shape == (3, 3, 48, 48)
    np.testing.assert_allclose(whole[1][:, 16:32, 0:16], s.forest.window(1, slice(16, 32), slice(0, 16)), atol=1e-5)
    mode, folder = s.forest.mode, s.folder
    s.close()
    with Session.open(folder) as again:
        assert again.forest.mode == mode and again.forest.forest is None  # the forest is not stored
        np.testing.assert_allclose(again.assisted(img), whole, atol=1e-5)  # refitted on the same regions, seeded


def test_a_cancelled_scoring_commits_nothing(session):
    s, classes = session
    accept(s, classes, [0, 4, 10])
    before = dict(s.forest.record)
    steps = list(s.forest.learn(5, should_stop=lambda: True))
    assert steps == [] and s.forest.record == before


@pytest.mark.parametrize("z_halo", [0, 9])
def test_window_features_equal_the_whole_volume_where_the_halo_covers_it(z_halo):
    img, _ = volume(n=4, size=32)
    lo, hi = float(img.min()), float(img.max())
    norm = normalise(img, lo, hi)
    if z_halo:
        whole = multiscale_basic_features(norm, intensity=True, edges=True, texture=True, sigma_min=0.5, sigma_max=2.0)[2]
    else:
        whole = multiscale_basic_features(norm[2], intensity=True, edges=True, texture=True, sigma_min=0.5, sigma_max=2.0)
    got = window_features(img, 2, slice(8, 20), slice(4, 30), lo, hi, z_halo=z_halo, xy_halo=32, sigmas=(0.5, 2.0))
    np.testing.assert_allclose(got, whole[8:20, 4:30], rtol=1e-5, atol=1e-5)
    small = window_features(img, 2, slice(8, 20), slice(4, 30), lo, hi, z_halo=z_halo, xy_halo=2, sigmas=(0.5, 2.0))
    assert small.shape == got.shape and not np.allclose(small, got)  # a short halo is felt: the halo matters


def test_the_export_names_the_mode_and_its_scores(session, tmp_path):
    import json

    s, classes = session
    two_batches(s, classes)
    out = s.export(tmp_path / "export")
    meta = json.loads((out / "manifest.json").read_text())["meta"]
    assert meta["forest_assist"]["mode"] == s.forest.mode and meta["forest_assist"]["regions"] == 3


def _batch(right: dict[str, int], n: int = 100) -> dict:
    """A scored batch where each candidate got `right[mode]` of n pixels of class 0 right (the rest: class 1)."""
    return {"regions": 3, "confusion": {m: [[right[m], n - right[m]], [0, 0]] for m in MODES}}


def test_choose_mode_weighs_recent_batches_more_and_keeps_f0_on_a_tie():
    old = _batch({"f0": 50, "blend": 80, "forest": 95})  # early on the forest helps by far
    new = _batch({"f0": 95, "blend": 75, "forest": 60})  # later f0 has caught up
    assert choose_mode([old, new])[0] == "f0"  # the newer batch weighs twice the older
    assert choose_mode([old, new], decay=1.0)[0] == "blend"  # plain sums: the old lead still counts
    assert choose_mode([_batch({"f0": 50, "blend": 40, "forest": 99})])[0] == "f0"  # the forest alone: never
    assert choose_mode([_batch({"f0": 80, "blend": 80, "forest": 80})])[0] == "f0"
    assert choose_mode([{"regions": 2, "confusion": new["confusion"]}])[0] == "f0"  # too few regions scored
    ok = {m: np.array([[10, 0], [0, 10]]) for m in MODES}
    assert choose_mode([], ok, n_val=MIN_REGIONS)[1]["f0"] == 1.0  # held-out regions alone can decide


def test_assisted_takes_a_mode_and_refuses_an_unknown_one(session):
    s, classes = session
    two_batches(s, classes)
    img = np.asarray(s.image[:2])
    f0 = s.assisted(img, mode="f0")
    forest = s.assisted(img, mode="forest")
    np.testing.assert_allclose(s.assisted(img, mode="blend"), (f0 + forest) / 2, atol=1e-5)
    with pytest.raises(PaserInputError, match="unknown forest assist mode"):
        s.assisted(img, mode="rf")


def test_assisted_takes_one_slice_too(session):
    s, classes = session
    two_batches(s, classes)
    img = np.asarray(s.image[:])
    np.testing.assert_allclose(s.assisted(img[1], mode="f0"), s.assisted(img, mode="f0")[1], atol=1e-5)


def test_a_retrain_without_new_regions_keeps_the_forest_and_the_suggestions(session):
    s, classes = session
    two_batches(s, classes)
    forest, version = s.forest.forest, s.forest.version
    collect(s.retrain(QUICK, refresh=False))  # no new regions: nothing to score or refit
    assert s.forest.forest is forest and s.forest.version == version


def test_a_single_slice_session_scores_with_2d_features(tmp_path):
    img, classes = volume(n=1, size=64)
    with Session.create(tmp_path / "s2d", img[0], classes=["a", "b", "c"], region_size=16, val_every=0) as s:
        s.new_models({"f0": TINY}, start="scratch")
        for batch in ([0, 5, 10], [3, 12, 15]):
            for rid in batch:
                s.accept(rid, classes[0][s.region(rid).slices[1:]].astype(np.uint8) + 1)
            collect(s.retrain(QUICK, refresh=False))
        assert s.forest.record["regions"] == 3 and s.forest.mode == "blend"
        guess = s.assisted(img[0])
        assert guess.shape == (3, 64, 64) and (guess.argmax(0) == classes[0]).mean() > 0.8
