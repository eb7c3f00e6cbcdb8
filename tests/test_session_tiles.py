"""Maps of a large slice are computed in tiles with f0's receptive field as halo (the same maps as the whole
slice without dropout), with memory bounded by one tile, and the tiles on screen come first."""

from __future__ import annotations

import numpy as np
import pytest

from learners import uncertainty as U
from learners.generators import collect
from learners.grid import Grid
from learners.uncertainty import uncertainty_maps, visible_first
from learners.unet import UNetConfig
from napari_paser.session import maps as session_maps
from napari_paser.session.core import Session

NO_DROPOUT = UNetConfig(base=4, depth=2, dropout=0.0)
DROPOUT = UNetConfig(base=4, depth=2, dropout=0.3)


def image(shape=(2, 96, 80)) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    return (ndimage.gaussian_filter(rng.random(shape), (0, 3, 3)) * 1000 + rng.random(shape) * 50).astype(np.uint16)


def session(tmp_path, cfg, shape=(2, 96, 80)) -> Session:
    s = Session.create(tmp_path / "s", image(shape), region_size=32)
    s.new_models({"f0": cfg}, start="scratch")
    return s


def test_tiled_maps_equal_whole_slice_maps_without_dropout(tmp_path):
    s = session(tmp_path, NO_DROPOUT)
    events, done = collect(s.compute_maps(1, samples=2, tile=32))
    assert done == 1 and [e.done for e in events] == list(range(1, 10)) and {e.total for e in events} == {9}
    whole = uncertainty_maps(s.models["f0"], s.image_slice(1), samples=2)
    stored = s.slice_maps(1)
    np.testing.assert_array_equal(stored["prediction"], whole.prediction)
    np.testing.assert_allclose(stored["entropy"], whole.entropy, atol=2e-5)
    np.testing.assert_allclose(stored["bald"], whole.bald, atol=2e-5)
    assert s.fresh_slices() == [1]
    again, ok = s.slice_maps_now(s.models["f0"], 1, 2, s.state.model_version, tile=32)  # what routing reads
    assert ok
    np.testing.assert_allclose(again.entropy, whole.entropy, atol=2e-5)


def test_the_order_of_tiles_never_changes_the_maps_with_dropout(tmp_path):
    s = session(tmp_path, DROPOUT)
    collect(s.compute_maps(0, samples=3, tile=32))
    first = s.slice_maps(0)
    collect(s.compute_maps(0, samples=3, tile=32, view=(64, 48, 96, 80)))
    for name, arr in s.slice_maps(0).items():
        np.testing.assert_array_equal(arr, first[name], err_msg=name)


def test_visible_tiles_come_first(tmp_path):
    grid = Grid((96, 80), (32, 32))  # 3 rows x 3 cols (the last column 16 wide)
    order = visible_first(grid, (40, 40, 70, 70))  # meets the 4 tiles around (32..96, 32..80)
    assert {(b.y0, b.x0) for b in order[:4]} == {(32, 32), (32, 64), (64, 32), (64, 64)}
    assert (order[0].y0, order[0].x0) == (32, 32)  # the one holding the view's centre
    assert visible_first(grid) == grid.boxes()
    # in a session: a cancel after the first tile leaves exactly the visible tile stored
    s = session(tmp_path, DROPOUT)
    seen = []
    gen = s.compute_maps(0, samples=2, tile=32, view=(70, 70, 90, 78), should_stop=lambda: bool(seen))
    for event in gen:
        seen.append(event)
    assert seen[0].stage == "maps" and seen[-1].stage == "cancelled" and s.fresh_slices() == []
    stored = s.slice_maps(0)["entropy"] > 0
    assert stored[64:96, 64:80].all() and not stored[:64].any() and not stored[:, :64].any()


def test_memory_is_bounded_by_one_tile_on_a_large_slice(tmp_path, monkeypatch):
    monkeypatch.setattr(session_maps, "MAP_TILE", 32)
    s = session(tmp_path, DROPOUT, shape=(1, 200, 200))
    sides = []
    real = U.mc_probabilities
    monkeypatch.setattr(U, "mc_probabilities", lambda m, x, **kw: sides.append(max(x.shape[-2:])) or real(m, x, **kw))
    assert len(s.map_tiles()) == 49
    collect(s.compute_maps(0, samples=1))
    halo = U.receptive_halo(s.models["f0"])
    assert len(sides) == 49 and max(sides) <= 32 + 2 * halo < 200
    assert s.fresh_slices() == [0] and (s.slice_maps(0)["entropy"] > 0).mean() > 0.99


@pytest.mark.parametrize("side", [64, 512])
def test_slices_up_to_map_tile_are_one_tile(tmp_path, side):
    s = Session.create(tmp_path / "s", np.zeros((1, side, 16), np.uint16) + np.arange(16, dtype=np.uint16))
    assert len(s.map_tiles()) == 1
