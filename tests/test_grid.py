import numpy as np
import pytest
import torch

from learners.grid import Grid


@pytest.mark.parametrize("shape", [(64, 64), (501, 501), (37, 53)])
def test_extract_paste_round_trip(shape):
    g = Grid.divide(*shape, 4, 4)
    x = torch.rand(2, 3, *shape)
    patches = g.extract(x)
    assert patches.shape == (2 * 16, 3, *g.cell)
    assert torch.equal(g.paste(patches), x)


def test_boxes_cover_image_exactly_once():
    g = Grid((130, 100), (64, 64))
    assert (g.rows, g.cols, len(g)) == (3, 2, 6)
    cover = np.zeros(g.shape, int)
    for b in g.boxes():
        cover[b.slices] += 1
    assert (cover == 1).all()
    assert g.box(5) == (128, 64, 2, 36)  # partial border cell, clipped
    with pytest.raises(IndexError):
        g.box(6)


def test_patch_order_is_row_major_and_matches_boxes():
    g = Grid.divide(8, 8, 2, 2)
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    patches = g.extract(x)
    for i, b in enumerate(g.boxes()):
        ys, xs = b.slices
        assert torch.equal(patches[i, 0], x[0, 0, ys, xs])


def test_reduce_sums_and_means_per_cell():
    g = Grid((4, 6), (2, 3))
    m = np.arange(24.0).reshape(4, 6)
    sums = g.reduce(m)
    assert sums[0] == m[:2, :3].sum() and sums[3] == m[2:, 3:].sum()
    np.testing.assert_allclose(g.reduce(np.stack([m, 2 * m]), "mean")[1], 2 * g.reduce(m, "mean"))


def test_halo_window_grows_clips_and_finds_the_window_again():
    from learners.grid import halo_window

    plane = np.arange(20 * 30).reshape(20, 30)
    (wy, wx), (iy, ix) = halo_window((20, 30), slice(2, 10), slice(25, 30), 4)
    assert (wy, wx) == (slice(0, 14), slice(21, 30))  # clipped at the top and the right edge
    np.testing.assert_array_equal(plane[wy, wx][iy, ix], plane[2:10, 25:30])
