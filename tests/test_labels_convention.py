"""Class indices <-> napari Labels values: class k is k + 1, 0 is 'not labeled'."""

from __future__ import annotations

import numpy as np
import pytest

from napari_paser.errors import PaserInputError
from napari_paser.data.labels_convention import (
    NO_CLASS,
    LAYER_UNLABELED,
    classes_to_layer,
    layer_to_classes,
)


def test_class_k_becomes_k_plus_one_and_zero_is_reserved():
    classes = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    layer = classes_to_layer(classes)
    np.testing.assert_array_equal(layer, [[1, 2], [3, 1]])
    assert LAYER_UNLABELED == 0
    assert not (layer == LAYER_UNLABELED).any(), "a fully labeled image must have no 0 in the layer"
    assert layer.dtype == np.uint8


def test_round_trip_classes_layer_classes():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, size=(4, 16, 16)).astype(np.uint8)
    back, mask = layer_to_classes(classes_to_layer(classes))
    assert mask.all()
    np.testing.assert_array_equal(back, classes)
    assert back.shape == classes.shape


def test_round_trip_layer_classes_layer_with_unlabeled_pixels():
    rng = np.random.default_rng(1)
    layer = rng.integers(0, 4, size=(32, 32)).astype(np.uint8)  # 0 = not painted
    classes, mask = layer_to_classes(layer, n_classes=3)
    np.testing.assert_array_equal(mask, layer > 0)
    assert (classes[~mask] == NO_CLASS).all()
    np.testing.assert_array_equal(classes[mask], layer[mask] - 1)
    np.testing.assert_array_equal(classes_to_layer(classes, mask), layer)
    # negative classes alone also mean 'not labeled'
    np.testing.assert_array_equal(classes_to_layer(classes), layer)


def test_labeled_mask_overrides_classes():
    classes = np.zeros((2, 2), dtype=np.int64)
    mask = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(classes_to_layer(classes, mask), [[1, 0], [0, 1]])


def test_unpainted_layer_gives_empty_mask():
    classes, mask = layer_to_classes(np.zeros((3, 5), dtype=np.int32))
    assert not mask.any()
    assert (classes == NO_CLASS).all()
    assert np.issubdtype(classes.dtype, np.signedinteger)


@pytest.mark.parametrize("layer_dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_layer_dtypes_napari_uses(layer_dtype):
    layer = np.array([0, 1, 2, 3], dtype=layer_dtype)
    classes, mask = layer_to_classes(layer)
    np.testing.assert_array_equal(classes, [-1, 0, 1, 2])
    np.testing.assert_array_equal(mask, [False, True, True, True])


def test_result_dtype_fits_many_classes():
    classes = np.array([0, 254, 255, 300], dtype=np.int32)
    layer = classes_to_layer(classes)
    assert layer.dtype == np.uint16
    np.testing.assert_array_equal(layer, [1, 255, 256, 301])
    assert classes_to_layer(np.array([0, 1]), n_classes=3).dtype == np.uint8


def test_painted_value_above_class_count_is_a_clear_error():
    with pytest.raises(PaserInputError, match="only 3 classes"):
        layer_to_classes(np.array([0, 1, 4], dtype=np.uint8), n_classes=3)
    with pytest.raises(PaserInputError, match="only 3 classes"):
        classes_to_layer(np.array([0, 3]), n_classes=3)


def test_float_input_is_rejected():
    with pytest.raises(PaserInputError, match="integers"):
        classes_to_layer(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(PaserInputError, match="integers"):
        layer_to_classes(np.zeros((2, 2), dtype=np.float64))


def test_mask_shape_mismatch_is_rejected():
    with pytest.raises(PaserInputError, match="shape"):
        classes_to_layer(np.zeros((2, 2), dtype=np.uint8), np.ones((3, 3), dtype=bool))


def test_dask_arrays_stay_lazy():
    da = pytest.importorskip("dask.array")
    classes = da.from_array(np.array([[0, 1], [2, -1]], dtype=np.int16), chunks=1)
    layer = classes_to_layer(classes, n_classes=3)
    assert isinstance(layer, da.Array)
    assert layer.dtype == np.uint8
    np.testing.assert_array_equal(layer.compute(), [[1, 2], [3, 0]])
    back, mask = layer_to_classes(layer)
    assert isinstance(back, da.Array) and isinstance(mask, da.Array)
    np.testing.assert_array_equal(back.compute(), [[0, 1], [2, -1]])
