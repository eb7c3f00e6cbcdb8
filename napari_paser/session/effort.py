"""Correction effort: what a person changes when the model's guess of a region is shown first.

A suggestion is the model's prediction of a region in the labels-layer convention (class k =
k + 1); the person corrects it and accepts. The effort of a region is the pixels that differ
between what was shown and what was accepted, and the connected groups of them (8-connected:
about the strokes a person makes with the brush or fill). The simulated annotator of the
benchmarks (`napari_paser.bench.al_sim.correct_region`) and the session count it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Effort:
    """Changed pixels, strokes (connected groups of changed pixels) and the region's size."""

    changed_px: int
    strokes: int
    size: int

    @property
    def share(self) -> float:
        return self.changed_px / self.size if self.size else 0.0

    def text(self) -> str:
        """A status-line phrase: "corrected 41 px, 4%" (or "accepted unchanged")."""
        if not self.changed_px:
            return "accepted unchanged"
        return f"corrected {self.changed_px} px, {self.share:.0%} ({self.strokes} stroke{'s' if self.strokes != 1 else ''})"


def correction_effort(suggested: np.ndarray, accepted: np.ndarray) -> Effort:
    """The effort of turning `suggested` into `accepted` (same-shape 2D label patches)."""
    suggested, accepted = np.asarray(suggested), np.asarray(accepted)
    if suggested.shape != accepted.shape:
        raise ValueError(f"suggestion {suggested.shape} and accepted labels {accepted.shape} differ in shape")
    changed = suggested != accepted
    n = int(changed.sum())
    strokes = int(ndimage.label(changed, structure=_EIGHT)[1]) if n else 0
    return Effort(n, strokes, int(changed.size))
