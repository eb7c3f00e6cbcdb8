"""Training batches from a handful of labels: class-balanced random crops and augmentation.

A person labels a few regions or paints a few strokes; epochs over a dozen crops then mean a
dozen optimiser steps that all see the same pixels in the same orientation, and the majority
phase dominates. `CropSampler` instead draws any number of random crops from labeled images of
any size, each centred on a labeled pixel whose class is chosen uniformly among the classes
present (class-balanced sampling), and `augment_batch` applies the same flips and 90-degree
rotations to images and labels plus an intensity jitter (contrast, brightness, gamma) to the
images only, so a model also learns that grey levels drift between scans.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from learners.errors import ConfigError, ShapeError

IGNORE_INDEX = 255
"""Class-index value of pixels nobody labeled in training masks and exports: the loss and validation
ignore it (partial labels). napari layers mark them 0 instead (`labels_convention.LAYER_UNLABELED`)."""

MAX_CENTRES_PER_CLASS = 1_000_000  # more candidate centres than this add nothing but memory


class CropSampler:
    """Random (crop x crop) training crops centred on labeled pixels of images of any size.

    `images` and `labels` are sequences of 2D arrays (float images, uint8 class indices with
    IGNORE_INDEX where not labeled); a piece smaller than the crop is padded (edge values,
    IGNORE_INDEX labels). With `balanced`, the centre pixel's class is drawn uniformly among the
    classes present, so a rare phase is seen about as often as the majority one; otherwise the
    centre is a uniform labeled pixel. With `centre_weights` (one non-negative array per image, of its
    shape), a centre is drawn within its class with probability proportional to its weight: training
    then dwells where the weights are high (a routed larger model on the patches f0 is unsure of).
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], crop: int, n_classes: int,
                 balanced: bool = True, seed: int = 0, centre_weights: Sequence[np.ndarray] | None = None) -> None:
        if len(images) != len(labels) or not len(images):
            raise ConfigError("CropSampler needs one label array per image and at least one image")
        if crop < 1:
            raise ConfigError(f"crop must be >= 1, got {crop}")
        self.crop, self.n_classes, self.balanced = int(crop), int(n_classes), bool(balanced)
        self.images = [np.asarray(im, np.float32) for im in images]
        self.labels = [np.asarray(lab, np.uint8) for lab in labels]
        for im, lab in zip(self.images, self.labels):
            if im.shape != lab.shape or im.ndim != 2:
                raise ShapeError(f"image {im.shape} and labels {lab.shape} must be 2D arrays of one shape")
        rng = np.random.default_rng(seed)
        self.centres: dict[int, np.ndarray] = {}  # class -> (n, 3) rows (piece, y, x)
        for c in range(self.n_classes):
            rows = [np.column_stack([np.full(len(ys), i), ys, xs])
                    for i, lab in enumerate(self.labels) for ys, xs in [np.nonzero(lab == c)] if len(ys)]
            if rows:
                found = np.concatenate(rows).astype(np.int64)
                if len(found) > MAX_CENTRES_PER_CLASS:
                    found = found[rng.choice(len(found), MAX_CENTRES_PER_CLASS, replace=False)]
                self.centres[c] = found
        if not self.centres:
            raise ConfigError("no labeled pixels to train on: every label is IGNORE_INDEX")
        self.counts = {c: len(v) for c, v in self.centres.items()}
        self.cdf = None if centre_weights is None else self._weight_cdfs(centre_weights)

    @property
    def n_labeled(self) -> int:
        """Labeled pixels available as crop centres."""
        return int(sum(self.counts.values()))

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(images (batch, crop, crop) float32, labels (batch, crop, crop) uint8)."""
        present = np.array(sorted(self.centres))
        if self.balanced:
            classes = rng.choice(present, size=batch)
        else:
            p = np.array([self.counts[c] for c in present], np.float64)
            classes = rng.choice(present, size=batch, p=p / p.sum())
        xs = np.empty((batch, self.crop, self.crop), np.float32)
        ys = np.empty((batch, self.crop, self.crop), np.uint8)
        for b, c in enumerate(classes):
            piece, cy, cx = self.centres[int(c)][self._pick(int(c), rng)]
            xs[b], ys[b] = self._window(int(piece), int(cy), int(cx), rng)
        return xs, ys

    def _weight_cdfs(self, weights: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        """Per class, the cumulative weights of its centres (a class whose centres all weigh 0: uniform)."""
        if len(weights) != len(self.images):
            raise ConfigError(f"need one centre-weight array per image: {len(weights)} for {len(self.images)}")
        weights = [np.asarray(w, np.float64) for w in weights]
        for w, im in zip(weights, self.images):
            if w.shape != im.shape or not np.isfinite(w).all() or (w < 0).any():
                raise ShapeError(f"centre weights must be finite, >= 0 and of the image's shape {im.shape}, got {w.shape}")
        cdfs = {}
        for c, rows in self.centres.items():
            w = np.zeros(len(rows))
            for i in np.unique(rows[:, 0]):
                mine = rows[:, 0] == i
                w[mine] = weights[i][rows[mine, 1], rows[mine, 2]]
            cdfs[c] = np.cumsum(w) if w.sum() > 0 else np.arange(1, len(w) + 1, dtype=np.float64)
        return cdfs

    def _pick(self, c: int, rng: np.random.Generator) -> int:
        """Index of a centre of class c: uniform, or by the centre weights."""
        if self.cdf is None:
            return int(rng.integers(len(self.centres[c])))
        cdf = self.cdf[c]
        return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))

    def _window(self, piece: int, cy: int, cx: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A crop holding (cy, cx) at a random position, inside the piece where it is large enough."""
        im, lab = self.images[piece], self.labels[piece]
        out = []
        for centre, size in ((cy, im.shape[0]), (cx, im.shape[1])):
            lo = centre - int(rng.integers(self.crop))
            lo = max(0, min(lo, size - self.crop)) if size >= self.crop else 0
            out.append(slice(lo, lo + self.crop))
        x, y = im[tuple(out)], lab[tuple(out)]
        pad = ((0, self.crop - x.shape[0]), (0, self.crop - x.shape[1]))
        if any(p for _, p in pad):
            x, y = np.pad(x, pad, mode="edge"), np.pad(y, pad, constant_values=IGNORE_INDEX)
        return x, y


def flip_rotate(tensors: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """The same random flips (and rot90 for square inputs) applied to every tensor of a batch."""
    r = torch.rand(3, generator=gen)
    if r[0] < 0.5:
        tensors = [t.flip(-1) for t in tensors]
    if r[1] < 0.5:
        tensors = [t.flip(-2) for t in tensors]
    if r[2] < 0.5 and tensors[0].shape[-1] == tensors[0].shape[-2]:
        tensors = [t.rot90(1, (-2, -1)) for t in tensors]
    return [t.contiguous() for t in tensors]


def jitter_intensity(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per-image random contrast and gamma (factors in exp(+-strength)) and brightness (+-strength/2).

    Images are normalised to about [0, 1]; the result is clipped to [0, 1] as normalised images are.
    """
    if strength <= 0:
        return x
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    u = (torch.rand((3,) + shape, generator=gen) * 2 - 1) * strength
    contrast, shift, gamma = torch.exp(u[0]), u[1] / 2, torch.exp(u[2])
    out = (x.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + shift
    return out.clamp(0, 1)


def augment_batch(tensors: list[torch.Tensor], gen: torch.Generator, jitter: float = 0.0) -> list[torch.Tensor]:
    """Flips/rot90 of every tensor (images first, then labels, teacher logits ...) and intensity
    jitter of the images (tensors[0]) only, so labels stay aligned with their pixels."""
    tensors = flip_rotate(tensors, gen)
    return [jitter_intensity(tensors[0], jitter, gen), *tensors[1:]]
