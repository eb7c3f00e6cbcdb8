"""Synthetic multi-phase electrode microstructure, deterministic by seed.

Used for tests and benchmarks where real data is absent or too large. The generator mimics
what makes electrodes hard to segment at low resolution: large active particles, a finer
binder/pore network that hugs them, and structure that is coarse in some places and finely
interspersed in others (DESIGN.md, "Degradation: where routing pays").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from napari_paser.errors import PaserInputError

CLASS_NAMES_DEFAULT: tuple[str, ...] = ("pore", "binder", "active")

# A smooth field with a sigma above this is drawn on a coarser grid and interpolated up:
# same look, far cheaper than a huge Gaussian kernel at full resolution.
_COARSE_SIGMA = 8.0


def smooth_field(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field (float32, mean 0, std 1) with correlation length ~`sigma` pixels.

    Reused by `degrade` for the fields that modulate noise and blur across the field of view.
    """
    shape = tuple(int(s) for s in shape)
    step = max(1, int(sigma // (_COARSE_SIGMA / 2))) if sigma > _COARSE_SIGMA else 1
    coarse = tuple(-(-s // step) + 2 for s in shape)  # ceil, plus a margin for interpolation
    noise = rng.standard_normal(coarse).astype(np.float32)
    field = ndimage.gaussian_filter(noise, sigma / step, mode="wrap")
    if step > 1:
        field = ndimage.zoom(field, step, order=1, grid_mode=False)
    field = field[tuple(slice(0, s) for s in shape)]
    return _standardise(field)


def _standardise(field: np.ndarray) -> np.ndarray:
    """Zero mean, unit std, so quantile thresholds and blends behave the same everywhere."""
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """Phase fractions must be >= 2 non-negative numbers that sum to 1."""
    f = np.asarray(fractions, dtype=float)
    if f.ndim != 1 or f.size < 2:
        raise PaserInputError(
            f"fractions={tuple(fractions)!r}: need one fraction per phase and at least 2 phases, "
            "e.g. fractions=(0.3, 0.2, 0.5)."
        )
    if np.any(f < 0) or not np.all(np.isfinite(f)) or abs(f.sum() - 1.0) > 1e-6:
        raise PaserInputError(
            f"fractions={tuple(fractions)!r}: fractions must be non-negative and sum to 1 "
            f"(they sum to {f.sum():.6g}); divide them by their sum."
        )
    return f


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise PaserInputError(
            f"shape={shape!r}: give a 2D (H, W) or 3D (Z, Y, X) shape of positive sizes."
        )
    return shape


def _multiscale_field(
    shape: tuple[int, ...], length: float, mask: np.ndarray, heterogeneity: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blend a fine and a coarse field by `mask` (0 = fine, 1 = coarse), unit variance everywhere."""
    fine = smooth_field(shape, max(length / (1.0 + heterogeneity), 0.5), rng)
    coarse = smooth_field(shape, length * (1.0 + 2.0 * heterogeneity), rng)
    # Dividing by the blend's local std keeps a global quantile threshold fair across the mask.
    return (mask * coarse + (1 - mask) * fine) / np.sqrt(mask**2 + (1 - mask) ** 2)


def _threshold_ranks(values: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Assign class k to the k-th quantile band of `values` (lowest values -> class 0)."""
    cuts = np.quantile(values, np.cumsum(fractions)[:-1] / fractions.sum())
    return np.searchsorted(cuts, values, side="right").astype(np.uint8)


def synth_labels(
    shape: Sequence[int],
    fractions: Sequence[float] = (0.3, 0.2, 0.5),
    correlation_length: float = 4.0,
    seed: int = 0,
    heterogeneity: float = 0.5,
) -> np.ndarray:
    """Label map (uint8, values 0..len(fractions)-1) of an electrode-like microstructure.

    The last phase ("active") is large blobs: a coarse field above its quantile. The other
    phases split the remaining space by quantiles of a finer field pulled up near the blobs, so
    the phase just below "active" (binder) coats particles and phase 0 (pore) fills the gaps.
    `heterogeneity` in [0, 1] mixes a fine and a coarse correlation length through a very
    smooth mask, so some areas are finely interspersed and others segregated (0 = uniform).
    """
    shape = _check_shape(shape)
    f = _check_fractions(fractions)
    if not correlation_length > 0:
        raise PaserInputError(f"correlation_length={correlation_length}: must be > 0 pixels.")
    if not 0.0 <= heterogeneity <= 1.0:
        raise PaserInputError(f"heterogeneity={heterogeneity}: must lie in [0, 1].")
    rng = np.random.default_rng(seed)
    mask = _heterogeneity_mask(shape, rng)
    field_a = _multiscale_field(shape, correlation_length, mask, heterogeneity, rng)
    field_b = _multiscale_field(shape, correlation_length / 2.0, mask, heterogeneity, rng)
    active = field_a > np.quantile(field_a, 1.0 - f[-1]) if f[-1] > 0 else np.zeros(shape, bool)
    labels = np.full(shape, len(f) - 1, dtype=np.uint8)
    rest = ~active
    if rest.any() and f[:-1].sum() > 0:
        near = _standardise(ndimage.gaussian_filter(active.astype(np.float32), correlation_length / 2))
        labels[rest] = _threshold_ranks((field_b + near)[rest], f[:-1])
    return labels


def _heterogeneity_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Very smooth mask in (0, 1) with sharp-ish transitions: which areas are coarse or fine."""
    field = smooth_field(shape, 0.25 * max(shape[-2:]), rng)
    return (1.0 / (1.0 + np.exp(-3.0 * field))).astype(np.float32)


def synth_image(
    labels: np.ndarray,
    contrast: Sequence[float] = (0.15, 0.5, 0.85),
    texture: float = 0.03,
    seed: int = 0,
) -> np.ndarray:
    """Clean grey-level image (float32 in [0, 1]) for `labels`: one grey level per phase, mild
    smooth texture, and slight partial-volume blur (sigma 0.7) as a real detector gives."""
    labels = np.asarray(labels)
    c = np.asarray(contrast, dtype=np.float32)
    if labels.ndim not in (2, 3):
        raise PaserInputError(f"labels of shape {labels.shape}: need a 2D slice or a 3D volume.")
    if labels.size and int(labels.max()) >= c.size:
        raise PaserInputError(
            f"contrast has {c.size} grey levels but labels hold class {int(labels.max())}: "
            "give one contrast value per class."
        )
    if texture < 0:
        raise PaserInputError(f"texture={texture}: must be >= 0.")
    rng = np.random.default_rng(seed)
    image = c[labels] + texture * smooth_field(labels.shape, 2.0, rng)
    image = ndimage.gaussian_filter(image, 0.7)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def synth_volume(
    n_slices: int,
    size: int | tuple[int, int],
    fractions: Sequence[float] = (0.3, 0.2, 0.5),
    seed: int = 0,
    **kw: object,
) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (n, H, W), labels uint8 (n, H, W)) cut from ONE 3D volume, so adjacent
    slices correlate as in real tomography. `kw`: correlation_length, heterogeneity (labels),
    contrast, texture (image)."""
    label_keys, image_keys = {"correlation_length", "heterogeneity"}, {"contrast", "texture"}
    unknown = set(kw) - label_keys - image_keys
    if unknown:
        raise PaserInputError(
            f"synth_volume got unknown options {sorted(unknown)}; valid: "
            f"{sorted(label_keys | image_keys)}."
        )
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    labels = synth_labels(
        (n_slices, h, w), fractions, seed=seed, **{k: kw[k] for k in label_keys & set(kw)}
    )
    image = synth_image(labels, seed=seed + 1, **{k: kw[k] for k in image_keys & set(kw)})
    return image, labels


def write_synthetic(folder, n_slices: int, size: int | tuple[int, int], fractions: Sequence[float] = (0.3, 0.2, 0.5),
                    seed: int = 0, **kw: object):
    """Write a synthetic dataset folder (16-bit images, labels; default class names for 3 phases)."""
    from napari_paser.data.dataset import to_uint16, write_dataset

    images, labels = synth_volume(n_slices, size, fractions=fractions, seed=seed, **kw)
    names = CLASS_NAMES_DEFAULT if len(fractions) == len(CLASS_NAMES_DEFAULT) else None
    return write_dataset(folder, to_uint16(images), labels, class_names=names)
