"""Classical baselines every learned model must clear.

- multi-Otsu thresholds on grey levels (the floor): the thresholds come from the training
  images; each grey-level band is mapped to the class it overlaps most on the training labels,
  so phases need not be ordered by brightness;
- an ilastik-style pixel classifier (what a scientist would otherwise open): a random forest on
  multiscale filter features (Gaussian smoothing, edges, Hessian-eigenvalue texture at several
  scales, `skimage.feature.multiscale_basic_features`) trained on the labeled pixels only, so
  sparse scribbles train it as they train the session.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.feature import multiscale_basic_features
from skimage.filters import threshold_multiotsu
from sklearn.ensemble import RandomForestClassifier

from learners.grid import halo_window
from learners.training import IGNORE_INDEX  # pixels nobody labeled
from napari_paser.data.dataset import normalise

FEATURE_SIGMAS = (0.5, 8.0)  # smallest and largest filter scale in pixels, as ilastik's default 0.3 .. 10


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


def pixel_features(image: np.ndarray, sigmas: tuple[float, float] = FEATURE_SIGMAS) -> np.ndarray:
    """(H, W, F) float32 ilastik-style features of a normalised 2D image: intensity, edges and
    texture at scales sigmas[0] .. sigmas[1] (powers of two apart)."""
    feats = multiscale_basic_features(np.asarray(image, np.float32), intensity=True, edges=True, texture=True,
                                      sigma_min=sigmas[0], sigma_max=sigmas[1])
    return feats.astype(np.float32)


def fit_pixel_forest(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_estimators: int = 100,
                     max_pixels: int = 200_000, seed: int = 0) -> RandomForestClassifier:
    """A random forest on the labeled pixels (labels != IGNORE_INDEX) of (H, W, F) feature stacks.

    At most `max_pixels` labeled pixels train it (a seeded random subset), as ilastik does
    with large label sets; n_jobs=1 keeps it to one core.
    """
    x = np.concatenate([f[lab != IGNORE_INDEX] for f, lab in zip(features, labels)])
    y = np.concatenate([lab[lab != IGNORE_INDEX] for lab in labels])
    if not len(y):
        raise ValueError("no labeled pixels to fit the random forest on")
    if len(y) > max_pixels:
        keep = np.random.default_rng(seed).choice(len(y), max_pixels, replace=False)
        x, y = x[keep], y[keep]
    forest = RandomForestClassifier(n_estimators=n_estimators, n_jobs=1, random_state=seed, min_samples_leaf=1)
    return forest.fit(x, y)


def predict_pixel_forest(forest: RandomForestClassifier, features: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices from an (H, W, F) feature stack."""
    h, w, f = features.shape
    return forest.predict(features.reshape(-1, f)).reshape(h, w).astype(np.uint8)


def window_features(volume, z: int, ys: slice, xs: slice, lo: float, hi: float, z_halo: int = 0,
                    xy_halo: int = 0, sigmas: tuple[float, float] = FEATURE_SIGMAS) -> np.ndarray:
    """(h, w, F) float32 ilastik-style features of the window (ys, xs) of slice z of a (Z, H, W) or (H, W)
    array (numpy, zarr, dask: only the window and its halos are read), normalised with (lo, hi).

    With z_halo > 0 and neighbouring slices the features are 3D (`multiscale_basic_features` of the block
    z - z_halo .. z + z_halo, ilastik's 3D mode): the same region on the next slice is nearly the same
    picture. xy_halo pixels around the window give the filters their context; the block's edges are
    reflected, so a window gets the same features wherever it is read from as long as its halo fits.
    """
    (wy, wx), (iy, ix) = halo_window(volume.shape[-2:], ys, xs, xy_halo)
    if volume.ndim == 2 or z_halo <= 0:
        block, centre = np.asarray(volume[wy, wx] if volume.ndim == 2 else volume[z, wy, wx])[None], 0
    else:
        z0, z1 = max(0, z - z_halo), min(volume.shape[0], z + z_halo + 1)
        block, centre = np.asarray(volume[z0:z1, wy, wx]), z - z0
    block = normalise(block, lo, hi).astype(np.float32, copy=False)
    image = block[0] if len(block) == 1 else block
    feats = multiscale_basic_features(image, intensity=True, edges=True, texture=True,
                                      sigma_min=sigmas[0], sigma_max=sigmas[1])
    if len(block) > 1:
        feats = feats[centre]
    return np.ascontiguousarray(feats[iy, ix], dtype=np.float32)


def forest_probabilities(forest: RandomForestClassifier, features: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, h, w) float32 class probabilities of the forest on an (h, w, F) feature stack (classes it never
    saw: 0)."""
    h, w, nf = features.shape
    out = np.zeros((h * w, n_classes), np.float32)
    out[:, forest.classes_.astype(int)] = forest.predict_proba(features.reshape(-1, nf))
    return out.T.reshape(n_classes, h, w)
