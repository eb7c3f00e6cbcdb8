"""One grid machinery for routing patches and labeling regions.

A `Grid` tiles an (H, W) image into cells of a fixed size, row-major, with stable ids.
Cells at the bottom and right border may be partial (clipped to the image); `extract` pads
them by reflection to the full cell size so patches batch together, and `paste` crops the
padding away again. Routing uses `Grid.divide(H, W, 4, 4)` (cell = ceil(H/4) x ceil(W/4),
so an image whose size is not a multiple of the grid gets a slightly smaller last row and
column), labeling uses fixed cells such as 64 x 64. `Patching` says how routing cuts a slice: a patch
size in pixels (the default of a session's router: routing patches and labeling regions are one
grid, whatever the slice size) or, as in the PaSeR paper, a fixed rows x cols count per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from learners.errors import ConfigError, ShapeError

GRID = (4, 4)
"""The routing patch grid (rows, cols) of the PaSeR paper: the default of every routing function,
of the policy's config and of the patch-wise training of f1..fm."""


class Box(NamedTuple):
    """A cell clipped to the image: top-left corner and size in pixels."""

    y0: int
    x0: int
    h: int
    w: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)


@dataclass(frozen=True)
class Grid:
    """Cells of `cell` = (ch, cw) pixels covering an image of `shape` = (H, W)."""

    shape: tuple[int, int]
    cell: tuple[int, int]
    halo: int = 0  # pixels of context around each cell that `context_patches` adds for the models

    def __post_init__(self) -> None:
        if min(self.shape) < 1 or min(self.cell) < 1 or self.halo < 0:
            raise ConfigError(f"grid needs a positive image shape and cell size and a halo >= 0, got {self}")

    @classmethod
    def divide(cls, height: int, width: int, rows: int = 4, cols: int = 4) -> Grid:
        """A `rows` x `cols` grid over the image (the PaSeR patchification P(x))."""
        if rows > height or cols > width:
            raise ShapeError(f"cannot divide a {height}x{width} image into {rows}x{cols} patches: use a smaller grid or larger slices")
        return cls((height, width), (math.ceil(height / rows), math.ceil(width / cols)))

    @property
    def rows(self) -> int:
        return math.ceil(self.shape[0] / self.cell[0])

    @property
    def cols(self) -> int:
        return math.ceil(self.shape[1] / self.cell[1])

    def __len__(self) -> int:
        return self.rows * self.cols

    def box(self, cell_id: int) -> Box:
        """The clipped box of cell `cell_id` (row-major)."""
        if not 0 <= cell_id < len(self):
            raise IndexError(f"cell id {cell_id} outside 0..{len(self) - 1}")
        r, c = divmod(cell_id, self.cols)
        y0, x0 = r * self.cell[0], c * self.cell[1]
        return Box(y0, x0, min(self.cell[0], self.shape[0] - y0), min(self.cell[1], self.shape[1] - x0))

    def boxes(self) -> list[Box]:
        return [self.box(i) for i in range(len(self))]

    def padded_shape(self) -> tuple[int, int]:
        """Image shape rounded up to whole cells."""
        return self.rows * self.cell[0], self.cols * self.cell[1]

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """Cut (N, C, H, W) images into (N * P, C, ch, cw) patches, image-major then row-major.

        Border cells are padded by reflection (replication where the image is too small to
        reflect) so every patch has the full cell size.
        """
        n, c = images.shape[:2]
        ph, pw = self.padded_shape()
        images = _pad(images, (0, pw - self.shape[1], 0, ph - self.shape[0]))
        ch, cw = self.cell
        patches = images.reshape(n, c, self.rows, ch, self.cols, cw).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(n * len(self), c, ch, cw)

    def context_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Like `extract`, with `halo` pixels of the image around every patch: (N * P, C, ch + 2h, cw + 2h).

        A model that runs on a patch alone sees its border pixels without their neighbourhood
        (a 32 px patch cost a 1M-parameter UNet 6 IoU points on SOC against the whole slice; a
        16 px halo gave 5 of them back). Beyond the image the halo is reflected, as border cells
        are; `crop_halo` cuts a model's output back to the cells.
        """
        if self.halo == 0:
            return self.extract(images)
        n, c = images.shape[:2]
        ph, pw, h = *self.padded_shape(), self.halo
        images = _pad(images, (0, pw - self.shape[1], 0, ph - self.shape[0]))
        images = _pad(images, (h, h, h, h))
        ch, cw = self.cell
        win = images.unfold(2, ch + 2 * h, ch).unfold(3, cw + 2 * h, cw)  # (N, C, rows, cols, ch+2h, cw+2h)
        return win.permute(0, 2, 3, 1, 4, 5).reshape(n * len(self), c, ch + 2 * h, cw + 2 * h)

    def paste(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `extract`: stitch (N * P, C, ch, cw) patches into (N, C, H, W)."""
        ch, cw = self.cell
        c = patches.shape[1]
        n = patches.shape[0] // len(self)
        full = patches.reshape(n, self.rows, self.cols, c, ch, cw).permute(0, 3, 1, 4, 2, 5)
        full = full.reshape(n, c, self.rows * ch, self.cols * cw)
        return full[..., : self.shape[0], : self.shape[1]]

    def cell_index_map(self) -> np.ndarray:
        """(H, W) int array holding each pixel's cell id: for overlays and per-cell reductions."""
        rows = np.arange(self.shape[0]) // self.cell[0]
        cols = np.arange(self.shape[1]) // self.cell[1]
        return rows[:, None] * self.cols + cols[None, :]

    def reduce(self, pixel_map: np.ndarray, op: str = "sum") -> np.ndarray:
        """Per-cell sum or mean of an (H, W) map (or (N, H, W) maps), vectorised with bincount."""
        ids = self.cell_index_map().ravel()
        maps = np.asarray(pixel_map, dtype=np.float64).reshape(-1, ids.size)
        counts = np.bincount(ids, minlength=len(self))
        out = np.stack([np.bincount(ids, weights=m, minlength=len(self)) for m in maps])
        if op == "mean":
            out = out / counts
        elif op != "sum":
            raise ConfigError(f"op must be 'sum' or 'mean', got {op!r}")
        return out.reshape(np.shape(pixel_map)[:-2] + (len(self),))


def halo_window(size: tuple[int, int], ys: slice, xs: slice, halo: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The window (ys, xs) of an (H, W) plane grown by `halo` pixels on each side (clipped to the plane), and
    where the window lies inside it: read the first, compute on it, crop the result with the second."""
    h, w = size
    y0, y1 = max(0, ys.start - halo), min(h, ys.stop + halo)
    x0, x1 = max(0, xs.start - halo), min(w, xs.stop + halo)
    return (slice(y0, y1), slice(x0, x1)), (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))


def crop_halo(outputs: torch.Tensor, halo: int) -> torch.Tensor:
    """(..., ch + 2h, cw + 2h) model outputs on `Grid.context_patches` -> (..., ch, cw): the cells' own pixels."""
    return outputs[..., halo:outputs.shape[-2] - halo, halo:outputs.shape[-1] - halo] if halo else outputs


def _pad(images: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect padding (left, right, top, bottom); replication where the image is too small to reflect."""
    if not any(pad):
        return images
    h, w = images.shape[-2:]
    mode = "reflect" if max(pad[:2]) < w and max(pad[2:]) < h else "replicate"
    return F.pad(images, pad, mode=mode)


@dataclass(frozen=True)
class Patching:
    """How routing cuts a slice into patches: `size` (ph, pw) pixels per patch, or `count` (rows, cols).

    With `size`, any slice routes at the same granularity: a slice whose side is not a multiple
    of the patch gets a partial last row/column of patches (reflect-padded to the full size when
    a model runs on it and cropped again after stitching; IoU counts only the slice's own pixels,
    FLOPs the padded patch), and a slice smaller than a patch is one padded patch. With `count`
    (the paper's 4x4 set-up, kept for the routing benchmark) the patch size follows the slice.
    """

    size: tuple[int, int] | None = None
    count: tuple[int, int] | None = None
    halo: int = 0  # context pixels f1..fm see around each patch (`Grid.context_patches`); f0 sees whole slices

    def __post_init__(self) -> None:
        object.__setattr__(self, "halo", int(self.halo))
        if self.halo < 0:
            raise ConfigError(f"the routing patches' halo must be >= 0 pixels, got {self.halo}")
        if (self.size is None) == (self.count is None):
            raise ConfigError("give the routing patches either a size in pixels or a rows x cols count, not both")
        for name in ("size", "count"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(int(v) for v in value)
                if len(value) != 2 or min(value) < 1:
                    raise ConfigError(f"routing patch {name} must be two positive integers, got {value}")
                object.__setattr__(self, name, value)

    @classmethod
    def of(cls, spec: Patching | tuple[int, int] | int) -> Patching:
        """A Patching from itself, a (rows, cols) count (the older `grid` argument), or an int patch side."""
        if isinstance(spec, Patching):
            return spec
        if isinstance(spec, (int, np.integer)):
            return cls(size=(int(spec), int(spec)))
        return cls(count=tuple(spec))

    def grid(self, height: int, width: int) -> Grid:
        """The patch grid of a `height` x `width` slice."""
        if self.size is not None:
            return Grid((int(height), int(width)), self.size, self.halo)
        g = Grid.divide(int(height), int(width), *self.count)
        return Grid(g.shape, g.cell, self.halo)

    def describe(self) -> str:
        what = f"{self.size[0]}x{self.size[1]} px patches" if self.size else f"a {self.count[0]}x{self.count[1]} grid"
        return what + (f" with a {self.halo} px halo" if self.halo else "")
