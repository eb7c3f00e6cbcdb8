"""Synthetic microstructure: deterministic, right phase fractions, 3D-correlated, heterogeneous."""

from __future__ import annotations

import numpy as np
import pytest

from napari_paser.errors import PaserInputError
from napari_paser.data.synth import CLASS_NAMES_DEFAULT, synth_image, synth_labels, synth_volume


def _fractions(labels: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=n) / labels.size


def test_same_seed_same_labels_and_different_seed_differs():
    a = synth_labels((48, 48), seed=3)
    assert np.array_equal(a, synth_labels((48, 48), seed=3))
    assert (a != synth_labels((48, 48), seed=4)).mean() > 0.3
    img = synth_image(a, seed=1)
    assert np.array_equal(img, synth_image(a, seed=1))
    assert not np.array_equal(img, synth_image(a, seed=2))


@pytest.mark.parametrize("shape", [(96, 80), (12, 40, 48)])
@pytest.mark.parametrize("fractions", [(0.3, 0.2, 0.5), (0.6, 0.4), (0.1, 0.2, 0.3, 0.4)])
def test_phase_fractions_match_request(shape, fractions):
    labels = synth_labels(shape, fractions, seed=1)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert np.allclose(_fractions(labels, len(fractions)), fractions, atol=0.01)


def test_active_phase_forms_larger_structures_than_binder():
    """Active material is blobs from the coarse field: fewer, bigger connected pieces than binder."""
    from scipy import ndimage

    labels = synth_labels((128, 128), seed=0, heterogeneity=0.0)
    _, n_active = ndimage.label(labels == 2)
    _, n_binder = ndimage.label(labels == 1)
    assert (labels == 2).sum() / n_active > 2 * (labels == 1).sum() / n_binder


def test_binder_sits_next_to_active_material():
    from scipy import ndimage

    labels = synth_labels((128, 128), seed=2, heterogeneity=0.0)
    near_active = ndimage.binary_dilation(labels == 2, iterations=2)
    assert near_active[labels == 1].mean() > near_active[labels == 0].mean() + 0.1


def test_heterogeneity_makes_local_structure_size_vary():
    """Boundary density per block varies more across the image with heterogeneity than without."""

    def block_edge_density_spread(labels: np.ndarray) -> float:
        edges = (np.diff(labels, axis=1) != 0)[:-1, :] | (np.diff(labels, axis=0) != 0)[:, :-1]
        blocks = edges[:192, :192].reshape(6, 32, 6, 32).mean(axis=(1, 3))
        return float(blocks.std())

    spread = [np.mean([block_edge_density_spread(synth_labels((193, 193), seed=s, heterogeneity=h))
                       for s in range(3)]) for h in (0.0, 1.0)]
    assert spread[1] > 1.5 * spread[0]


def test_3d_adjacent_slices_correlate_more_than_distant_ones():
    images, labels = synth_volume(24, 40, seed=5)
    assert images.shape == labels.shape == (24, 40, 40)
    assert images.dtype == np.float32 and labels.dtype == np.uint8
    near = np.mean([(labels[i] == labels[i + 1]).mean() for i in range(20)])
    far = np.mean([(labels[i] == labels[i + 12]).mean() for i in range(12)])
    assert near > 0.85 and near > far + 0.2


def test_synth_volume_rectangular_and_options():
    images, labels = synth_volume(3, (20, 30), fractions=(0.5, 0.5), contrast=(0.2, 0.8), seed=1)
    assert images.shape == (3, 20, 30)
    assert labels.max() == 1
    with pytest.raises(PaserInputError, match="unknown"):
        synth_volume(3, 20, colour=1)


def test_synth_image_grey_levels_follow_contrast():
    labels = synth_labels((64, 64), seed=0)
    image = synth_image(labels, contrast=(0.1, 0.5, 0.9), texture=0.0)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    means = [image[labels == k].mean() for k in range(3)]
    assert means[0] < 0.25 and 0.35 < means[1] < 0.65 and means[2] > 0.75
    image3d = synth_image(synth_labels((4, 16, 16)), texture=0.05)
    assert image3d.shape == (4, 16, 16)


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (1.0,), (0.5, -0.1, 0.6), (0.3, 0.3, 0.3)])
def test_bad_fractions_raise(fractions):
    with pytest.raises(PaserInputError, match="fraction"):
        synth_labels((16, 16), fractions)


def test_bad_contrast_and_shape_raise():
    labels = synth_labels((16, 16))
    with pytest.raises(PaserInputError, match="contrast"):
        synth_image(labels, contrast=(0.1, 0.9))
    with pytest.raises(PaserInputError, match="shape"):
        synth_labels((4, 4, 4, 4))


def test_class_names_default():
    assert CLASS_NAMES_DEFAULT == ("pore", "binder", "active")
