"""Labeling regions: the fixed grid cells of every slice of a volume, with stable ids.

A region is cell `c` of slice `z` of one `learners.grid.Grid` (the same machinery that cuts
routing patches), and its id is `z * cells_per_slice + c`: a pure function of the volume
shape, the region size and the position, so ids saved with a session mean the same regions
when it is reopened. Cells at the bottom and right border may be smaller than the region
size; they stay in the pool, flagged `partial`, so no pixel is unreachable for labeling.
Per-region scores are reductions of per-pixel maps (sum or mean over the grid's cells,
vectorised, one slice at a time); region embeddings are per-region averages of a feature map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from learners.grid import Grid
from sampling.base import SamplingError


@dataclass(frozen=True)
class Region:
    """One grid cell of one slice: id, slice index, clipped top-left corner and size."""

    id: int
    z: int
    y0: int
    x0: int
    h: int
    w: int
    partial: bool = False

    @property
    def slices(self) -> tuple[int, slice, slice]:
        """Index of the region's pixels in a (Z, H, W) volume."""
        return self.z, slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


class RegionPool:
    """All regions of a (Z, H, W) volume (or one (H, W) slice), and which are labeled."""

    def __init__(self, shape: tuple[int, ...], size: int | tuple[int, int] = 64) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (1,) + shape
        size = _pair(size)
        if len(shape) != 3 or min(shape) < 1:
            raise SamplingError(f"a region pool needs a (Z, H, W) or (H, W) shape of positive sizes, got {shape}")
        if min(size) < 1:
            raise SamplingError(f"region size must be positive, got {size}")
        self.shape = shape
        self.size = size
        self.grid = Grid(shape[1:], size)
        self._labeled = np.zeros(len(self), dtype=bool)
        cells = np.arange(len(self)) % self.cells_per_slice
        boxes = np.array(self.grid.boxes(), dtype=np.int64)  # (P, 4): y0, x0, h, w
        self._boxes = boxes[cells]
        self.partial = (self._boxes[:, 2] < size[0]) | (self._boxes[:, 3] < size[1])
        self.area = self._boxes[:, 2] * self._boxes[:, 3]

    # ids and geometry
    @property
    def cells_per_slice(self) -> int:
        return len(self.grid)

    def __len__(self) -> int:
        return self.shape[0] * self.cells_per_slice

    @property
    def ids(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def region_id(self, z: int, cell: int) -> int:
        """The stable id of cell `cell` (row-major in the slice's grid) of slice `z`."""
        if not (0 <= z < self.shape[0] and 0 <= cell < self.cells_per_slice):
            raise SamplingError(f"no region at slice {z}, cell {cell} in a pool of shape {self.shape}")
        return z * self.cells_per_slice + cell

    def z_of(self, ids: np.ndarray) -> np.ndarray:
        """Slice index of each region id."""
        return self._check(ids) // self.cells_per_slice

    def slice_ids(self, z: int) -> np.ndarray:
        """Ids of the regions of slice `z`, in cell order."""
        return z * self.cells_per_slice + np.arange(self.cells_per_slice, dtype=np.int64)

    def region(self, region_id: int) -> Region:
        i = int(self._check(np.array([region_id]))[0])
        y0, x0, h, w = (int(v) for v in self._boxes[i])
        return Region(i, i // self.cells_per_slice, y0, x0, h, w, bool(self.partial[i]))

    def regions(self, ids: np.ndarray | None = None) -> list[Region]:
        return [self.region(i) for i in (self.ids if ids is None else self._check(ids))]

    def id_map(self, z: int = 0) -> np.ndarray:
        """(H, W) map of each pixel's region id in slice `z` (for overlays)."""
        return self.grid.cell_index_map() + z * self.cells_per_slice

    def _check(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise SamplingError(f"region ids must lie in 0..{len(self) - 1}; got {ids.min()}..{ids.max()}")
        return ids

    # labeled / unlabeled bookkeeping
    def mark_labeled(self, ids: np.ndarray) -> None:
        self._labeled[self._check(ids)] = True

    def mark_unlabeled(self, ids: np.ndarray) -> None:
        self._labeled[self._check(ids)] = False

    def is_labeled(self, ids: np.ndarray) -> np.ndarray:
        return self._labeled[self._check(ids)]

    @property
    def labeled_ids(self) -> np.ndarray:
        return np.flatnonzero(self._labeled).astype(np.int64)

    def candidates(self) -> np.ndarray:
        """Ids of every unlabeled region: the pool a sampler chooses from."""
        return np.flatnonzero(~self._labeled).astype(np.int64)

    def to_dict(self) -> dict:
        """JSON-able bookkeeping (shape, size, labeled ids) for saving with a session."""
        return {"shape": list(self.shape), "size": list(self.size), "labeled": self.labeled_ids.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> RegionPool:
        pool = cls(tuple(data["shape"]), tuple(data["size"]))
        pool.mark_labeled(np.asarray(data.get("labeled", []), dtype=np.int64))
        return pool

    # per-region reductions, one slice at a time: memory stays bounded and dask/zarr volumes
    # are read slice by slice, never whole
    def _slices(self, maps, lead: int) -> Iterator[np.ndarray]:
        """The slices of (Z, [F,] H, W) `maps`, checked against the pool's shape."""
        maps = maps if hasattr(maps, "shape") and hasattr(maps, "__getitem__") else np.asarray(maps)
        shape = tuple(maps.shape)
        if len(shape) == lead + 2 and self.shape[0] == 1:
            yield np.asarray(maps)
            return
        if len(shape) != lead + 3 or shape[0] != self.shape[0] or shape[-2:] != self.shape[1:]:
            raise SamplingError(
                f"per-pixel maps must have the pool's shape {self.shape} (slices, {'channels, ' * lead}H, W), "
                f"got {shape}; build the pool from the same volume"
            )
        for z in range(shape[0]):
            yield np.asarray(maps[z])

    def _cell_sums(self, m: np.ndarray) -> np.ndarray:
        """(..., H, W) -> (..., P) per-cell sums in float64: the same cells as `Grid.reduce`,
        zero-padded to whole cells and summed by reshaping (about 10x faster than bincount)."""
        (h, w), (ph, pw) = self.shape[1:], self.grid.padded_shape()
        if (ph, pw) != (h, w):
            m = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(0, ph - h), (0, pw - w)])
        lead = m.shape[:-2]
        cells = m.reshape(lead + (self.grid.rows, self.size[0], self.grid.cols, self.size[1]))
        return cells.sum(axis=(-3, -1), dtype=np.float64).reshape(lead + (self.cells_per_slice,))

    def reduce(self, pixel_map: np.ndarray, op: str = "sum") -> np.ndarray:
        """Per-region sum or mean of a (Z, H, W) map, indexed by region id."""
        if op not in ("sum", "mean"):
            raise SamplingError(f"op must be 'sum' or 'mean', got {op!r}")
        sums = np.concatenate([self._cell_sums(m) for m in self._slices(pixel_map, 0)])
        return sums / self.area if op == "mean" else sums

    def class_fractions(self, classes: np.ndarray, n_classes: int) -> np.ndarray:
        """(n_regions, C) share of each class among a region's pixels, from a (Z, H, W) class map."""
        cells = self.grid.cell_index_map().ravel() * n_classes
        counts = []
        for m in self._slices(classes, 0):
            m = m.astype(np.int64).ravel()
            if m.size and (m.min() < 0 or m.max() >= n_classes):
                raise SamplingError(f"class map values must lie in 0..{n_classes - 1}, got {m.min()}..{m.max()}")
            counts.append(np.bincount(cells + m, minlength=self.cells_per_slice * n_classes))
        return np.concatenate(counts).reshape(len(self), n_classes) / self.area[:, None]

    def embed(self, features: np.ndarray) -> np.ndarray:
        """(n_regions, F) region embeddings: the average of a (Z, F, H, W) feature map per region."""
        cell_area = self.area[: self.cells_per_slice]
        return np.concatenate([(self._cell_sums(f) / cell_area).T for f in self._slices(features, 1)])


EMBED_BATCH = 8
"""Crops per pass of the feature model: 32 crops of 128^2 through a tiny UNet held about 400 MB of buffers."""


class RegionEmbedder:
    """ids -> (len(ids), F) region embeddings computed on demand from a model's feature map.

    `RegionPool.embed` averages a whole slice's features per region, so embedding a volume's
    million regions means running the model on every slice. TAUDIS only compares the ~alpha*k
    regions it oversampled; this runs `features(x)` on each of those regions alone, with `halo`
    pixels of context (clipped at the slice border), and averages the region's own pixels. With
    `halo` at least the model's receptive-field radius and region corners and halo multiples of
    its downsampling (UNets: 2**depth), that equals `RegionPool.embed` of the whole slice.

    `features` maps an (N, 1, h, w) float32 tensor to (N, F, h, w) (e.g. a UNet's `features` in
    eval mode); `image` is the normalised (Z, H, W) volume, numpy or lazy (dask/zarr).
    """

    def __init__(self, features, image, pool: RegionPool, halo: int = 32) -> None:
        if tuple(image.shape[-2:]) != pool.shape[1:] or (len(image.shape) == 3 and image.shape[0] != pool.shape[0]):
            raise SamplingError(f"image shape {tuple(image.shape)} does not match the region pool {pool.shape}")
        self.features, self.image, self.pool, self.halo = features, image, pool, int(halo)
        self.calls = 0  # regions embedded so far (what TAUDIS saved shows here)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        import torch

        h, w = self.pool.shape[1:]
        crops: dict[tuple, list] = {}  # crops of one shape run as one batch
        regions = self.pool.regions(np.asarray(ids, dtype=np.int64))
        for i, r in enumerate(regions):
            y0, x0 = max(r.y0 - self.halo, 0), max(r.x0 - self.halo, 0)
            y1, x1 = min(r.y0 + r.h + self.halo, h), min(r.x0 + r.w + self.halo, w)
            crop = self.image[r.z, y0:y1, x0:x1] if len(self.image.shape) == 3 else self.image[y0:y1, x0:x1]
            inner = (r.y0 - y0, r.h, r.x0 - x0, r.w)
            crops.setdefault((y1 - y0, x1 - x0, inner), []).append((i, np.asarray(crop, dtype=np.float32)))
        out: list = [None] * len(regions)
        with torch.no_grad():
            for (_, _, (iy, ih, ix, iw)), items in crops.items():
                for j in range(0, len(items), EMBED_BATCH):
                    part = items[j:j + EMBED_BATCH]
                    x = torch.from_numpy(np.stack([c for _, c in part]))[:, None]
                    f = self.features(x)[:, :, iy:iy + ih, ix:ix + iw].double().mean((2, 3)).cpu().numpy()
                    for (i, _), e in zip(part, f):
                        out[i] = e
        self.calls += len(out)
        return np.stack(out) if out else np.zeros((0, 0))
