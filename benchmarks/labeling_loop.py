"""A simulated person labeling the SOC slices through a real `Session`: the loop of the cold-start
benchmark (`bench_coldstart.py`), reused by the benchmarks that vary one part of it (the retraining
schedule, the forest's assistance).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import disk, skeletonize

from common import SOC
from learners.generators import collect, drain
from learners.metrics import confusion_matrix, iou_from_confusion
from learners.training import IGNORE_INDEX
from napari_paser.data.dataset import make_splits, normalise, read_dataset
from napari_paser.data.degrade import degrade, get_degradation
from napari_paser.session import Session
from napari_paser.session.training import RETRAIN_CONFIG

CLASSES = ("pore", "YSZ", "Ni")


def miou(pred: np.ndarray, truth: np.ndarray, n: int = 3) -> float:
    return float(np.nanmean(iou_from_confusion(confusion_matrix(pred, truth, n))))


def load(preset: str, crop: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Degraded float images and labels of every slice, central crop, and the splits."""
    ds = read_dataset(SOC)
    raw = ds.images.astype(np.float32)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    images = degrade(normalise(raw, float(lo), float(hi)), get_degradation(preset), seed=0)
    h, w = images.shape[1:]
    ys, xs = slice((h - crop) // 2, (h - crop) // 2 + crop), slice((w - crop) // 2, (w - crop) // 2 + crop)
    return images[:, ys, xs], ds.labels[:, ys, xs], make_splits(len(images), seed=0)


def scribble(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strokes a person might paint in a region: per phase, the skeleton of the phase eroded by
    2 px drawn 3 px wide inside it (layer convention: class k = k + 1, 0 = not painted)."""
    out = np.zeros(truth.shape, np.uint8)
    for c in np.unique(truth):
        inside = ndimage.binary_erosion(truth == c, disk(1))
        core = ndimage.binary_erosion(truth == c, disk(2))
        if core.sum() < 4:
            continue
        stroke = ndimage.binary_dilation(skeletonize(core), disk(1)) & inside
        out[stroke] = c + 1
    return out


def painted_pixels(s: Session) -> int:
    return int(sum((np.asarray(s.labels[z]) > 0).sum() for z in range(s.n_slices)))


class Loop:
    """One simulated person working through a real Session on the pool slices."""

    def __init__(self, folder: Path, images, labels, region: int, sampler: str, scribbles: bool, seed: int):
        self.s = Session.create(folder, images, classes=CLASSES, region_size=region, val_every=5)
        self.s.new_models()  # the shipped starting weights
        self.truth, self.sampler, self.scribbles, self.seed = labels, sampler, scribbles, seed
        self.rng = np.random.default_rng(seed)
        self.cfg = replace(RETRAIN_CONFIG, seed=seed)
        self.retrains, self.kept, self.seconds = 0, 0, 0.0
        drain(self.s.compute_maps(samples=3))

    def labeled(self) -> int:
        return painted_pixels(self.s)

    def label_until(self, budget: int) -> None:
        """Propose, label (regions or strokes) until `budget` pixels are painted, then retrain."""
        t0 = time.time()
        while self.labeled() < budget:
            per_region = np.prod(self.s.pool.size) if not self.scribbles else 700
            need = max(1, int(np.ceil((budget - self.labeled()) / per_region)))
            if not self._label_batch(need, budget):
                break
        self.retrain()
        self.seconds += time.time() - t0

    def _label_batch(self, need: int, budget: int) -> bool:
        painted = set(self.s.painted_regions().tolist())
        k = min(need + (len(painted) if self.scribbles else 0), len(self.s.pool.candidates()))
        if k <= len(painted) and self.scribbles:  # every region already stroked: the pool is used up
            return False
        props = [p for p in self.s.propose(k, self.sampler, seed=self.seed + self.retrains)
                 if p.region_id not in painted][:need]
        if not props:
            return False
        for p in props:
            region = self.s.region(p.region_id)
            truth = self.truth[region.slices]
            if self.scribbles:
                patch = scribble(truth, self.rng)
                if not patch.any():  # nothing a person could stroke here: a single click per phase
                    patch[truth.shape[0] // 2, truth.shape[1] // 2] = truth[truth.shape[0] // 2, truth.shape[1] // 2] + 1
                self.s.labels[region.slices] = patch
            else:
                self.s.accept(p.region_id, truth + 1)
            if self.labeled() >= budget:
                break
        return True

    def retrain(self) -> None:
        _, result = collect(self.s.retrain(self.cfg, samples=3))
        self.retrains += 1
        self.kept += int(bool(result.kept_previous))
        self.last_message = result.message

    def canvas_labels(self) -> np.ndarray:
        """(Z, H, W) class indices of every painted pixel (IGNORE_INDEX elsewhere)."""
        lab = np.asarray(self.s.labels[:]).astype(np.int16) - 1
        return np.where(lab >= 0, lab, IGNORE_INDEX).astype(np.uint8)
