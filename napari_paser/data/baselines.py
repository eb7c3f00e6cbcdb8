"""The classical floor every learned model must clear: multi-Otsu thresholds on grey levels.

The thresholds come from the training images; each grey-level band is mapped to the class it
overlaps most on the training labels, so phases need not be ordered by brightness.
"""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_multiotsu


def fit_multiotsu(images: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, band -> class map) fitted on normalised training images and their labels."""
    thresholds = threshold_multiotsu(np.asarray(images, np.float32).ravel(), classes=n_classes, nbins=256)
    bands = np.digitize(images, thresholds)
    overlap = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(overlap, (bands.ravel(), np.asarray(labels).ravel()), 1)
    return thresholds, overlap.argmax(1).astype(np.uint8)


def predict_multiotsu(images: np.ndarray, thresholds: np.ndarray, band_to_class: np.ndarray) -> np.ndarray:
    """Class indices of images under fitted thresholds."""
    return band_to_class[np.digitize(images, thresholds)]
