"""The one place where class indices and napari Labels values are converted.

Models, samplers and storage use class indices 0..C-1 (with a boolean "labeled" mask where
only part of an image is labeled). napari Labels layers reserve 0 for "not labeled", so a
pixel of class k is shown and painted as k + 1:

    class index k (0..C-1)  <->  layer value k + 1 (1..C)
    not labeled             <->  layer value 0

Use `classes_to_layer` when data goes into a Labels layer and `layer_to_classes` when painted
data comes back; nothing else in the package adds or subtracts the 1. Both work on numpy
arrays and lazily on dask arrays (element-wise operations only; the optional `n_classes` check
of `layer_to_classes` computes a maximum).
"""

from __future__ import annotations

import numpy as np

from napari_paser.errors import PaserInputError

#: Layer value meaning "not labeled" in a napari Labels layer. (Not the training mask's value:
#: class-index arrays that go to a loss mark unlabeled pixels `learners.training.IGNORE_INDEX`.)
LAYER_UNLABELED = 0
#: Class value `layer_to_classes` puts where it finds no label (use its mask, not this value):
#: negative, so it can never collide with a class of any layer dtype.
NO_CLASS = -1


def _layer_dtype(n_values: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_values <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def _check_integer(array, what: str) -> None:
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "iub":
        raise PaserInputError(
            f"{what} must hold integers (class indices), got dtype {dtype}; "
            "convert with .astype(int) or pass the label image, not the intensity image"
        )


def classes_to_layer(labels, labeled_mask=None, *, n_classes: int | None = None):
    """Class indices -> data for a napari Labels layer (class k -> k + 1, unlabeled -> 0).

    Parameters
    ----------
    labels : integer array, any shape (numpy or dask)
        Class indices 0..C-1. Negative values (e.g. `NO_CLASS`) mean "not labeled".
    labeled_mask : bool array of the same shape, optional
        Where False the pixel is not labeled (layer value 0) whatever `labels` holds.
    n_classes : int, optional
        Number of classes C. Sets the result dtype without reading the data, and a class index
        >= C raises `PaserInputError` (checked on numpy input only).

    The result has the smallest unsigned dtype that holds C (uint8 up to 255 classes). Without
    `n_classes`, C is taken from the maximum of a numpy input, and a lazy input gives uint32.
    """
    lazy = hasattr(labels, "dtype") and not isinstance(labels, np.ndarray)
    if not lazy:
        labels = np.asarray(labels)
    _check_integer(labels, "labels")
    if labeled_mask is not None and tuple(labeled_mask.shape) != tuple(labels.shape):
        raise PaserInputError(
            f"labeled_mask shape {tuple(labeled_mask.shape)} differs from labels shape "
            f"{tuple(labels.shape)}"
        )
    top = None
    if not lazy:
        top = int(labels.max()) if labels.size else -1
        if n_classes is not None and top >= n_classes:
            raise PaserInputError(
                f"class index {top} found but there are only {n_classes} classes "
                f"(0..{n_classes - 1})"
            )
    if n_classes is not None:
        dtype = _layer_dtype(n_classes)
    elif top is not None:
        dtype = _layer_dtype(max(top + 1, 1))
    else:
        dtype = np.dtype(np.uint32)
    mask = labels >= 0 if np.dtype(labels.dtype).kind == "i" else None
    if labeled_mask is not None:
        lm = labeled_mask.astype(bool)
        mask = lm if mask is None else (mask & lm)
    # Work in the result dtype (a volume is not copied to int64); negative classes may wrap
    # here but are masked to LAYER_UNLABELED below.
    shifted = labels.astype(dtype) + dtype.type(1)
    if mask is not None:
        shifted = np.where(mask, shifted, dtype.type(LAYER_UNLABELED))
    return shifted.astype(dtype, copy=False)


def layer_to_classes(layer_data, n_classes: int | None = None):
    """Data of a napari Labels layer -> (class indices, labeled mask).

    Layer value v > 0 becomes class v - 1 with mask True; 0 (and any negative value) becomes
    `NO_CLASS` (-1) with mask False. Classes come back as the smallest signed dtype that holds
    every value the layer dtype can (int16 for uint8/int16 layers, int32 for uint16/int32), so
    they can go to a loss with ignore_index=-1 after `.astype(int64)`.

    If `n_classes` is given, a painted value above n_classes raises `PaserInputError`
    (this reads the whole array once).
    """
    layer = layer_data if hasattr(layer_data, "dtype") else np.asarray(layer_data)
    _check_integer(layer, "Labels layer data")
    in_dtype = np.dtype(layer.dtype)
    if in_dtype.kind == "b":
        layer = layer.astype(np.uint8)
        in_dtype = np.dtype(np.uint8)
    top_possible = int(np.iinfo(in_dtype).max) - 1  # largest class index the layer can hold
    if top_possible <= np.iinfo(np.int16).max:
        out_dtype = np.dtype(np.int16)
    elif top_possible <= np.iinfo(np.int32).max:
        out_dtype = np.dtype(np.int32)
    else:
        out_dtype = np.dtype(np.int64)
    if n_classes is not None:
        top = int(np.asarray(layer.max())) if layer.size else 0
        if top > n_classes:
            raise PaserInputError(
                f"the Labels layer holds value {top} but there are only {n_classes} classes; "
                f"paint with labels 1..{n_classes} (label k+1 is class k, 0 is 'not labeled')"
            )
    labeled_mask = layer > 0
    one, ignore = out_dtype.type(1), out_dtype.type(NO_CLASS)
    classes = np.where(labeled_mask, layer.astype(out_dtype) - one, ignore)
    return classes, labeled_mask
