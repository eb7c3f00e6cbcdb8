"""Multiscale (pyramid) levels for an OME-Zarr image, so a large result opens fast in napari.

An OME-Zarr image group holds its full resolution as level "0"; `write_pyramid` adds levels
"1", "2", ... each halving Y and X (Z kept: a viewer pages through slices at full depth), until
no side exceeds `min_side`, and rewrites the group's NGFF `multiscales` datasets with each level's
scale. Levels are computed blockwise with dask from the level before (memory: a few chunks),
class labels by taking every second pixel (a level never invents a class between two others) and
continuous maps by a 2 x 2 mean that skips NaN (unfinished blocks of a job stay NaN).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from napari_paser.errors import PaserInputError


def pyramid_steps(shape: tuple[int, ...], min_side: int = 512) -> int:
    """How many levels below full resolution a (..., Y, X) image of `shape` gets (0 when already small)."""
    n, side = 0, max(shape[-2:])
    while side > min_side:
        side = -(-side // 2)
        n += 1
    return n


def _halve(arr, labels: bool):
    """One level down of a dask array: every second pixel of Y and X for labels, else a NaN-skipping mean."""
    import dask.array as da

    if labels:
        return arr[..., ::2, ::2]
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, arr.shape[-2] % 2), (0, arr.shape[-1] % 2)]
    if any(p[1] for p in pad):
        arr = da.pad(arr.astype(np.float32), pad, mode="edge")
    even = [c + c % 2 for c in (arr.chunksize[-2], arr.chunksize[-1])]
    arr = arr.rechunk({arr.ndim - 2: even[0], arr.ndim - 1: even[1]})  # windows never straddle chunks
    axes = {arr.ndim - 2: 2, arr.ndim - 1: 2}

    def mean(block, axis=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window stays NaN
            return np.nanmean(block, axis=axis)

    return da.coarsen(mean, arr, axes, trim_excess=True).astype(np.float32)


def write_pyramid(group: str | Path, min_side: int = 512, labels: bool | None = None,
                  scheduler: str = "threads") -> int:
    """Add the levels below level "0" of the OME-Zarr image group `group` (replacing any it had) and record
    them in its `multiscales` metadata; `labels` (default: an integer dtype) picks every-second-pixel over
    the mean. Returns the number of levels added."""
    import dask.array as da
    import zarr

    from napari_paser.data.volumes import ngff_multiscales

    try:
        root = zarr.open_group(str(group), mode="r+")
    except Exception as exc:  # zarr raises many types for foreign or damaged stores
        raise PaserInputError(f"{group} is not a writable zarr group ({type(exc).__name__}: {exc})") from None
    attrs = dict(root.attrs)
    ms = ngff_multiscales(attrs)  # the list inside `attrs`: its datasets are replaced below
    if ms is None or not ms[0].get("datasets"):
        raise PaserInputError(f"{group} has no OME-Zarr multiscales metadata: write its level 0 with ngff_attrs first")
    base_path = ms[0]["datasets"][0]["path"]
    base = root[base_path]
    labels = np.issubdtype(base.dtype, np.integer) if labels is None else labels
    n = pyramid_steps(base.shape, min_side)
    base_scale = _scale_of(ms[0]["datasets"][0], base.ndim)
    datasets = [ms[0]["datasets"][0]]
    current = da.from_zarr(base)
    for k in range(1, n + 1):
        current = _halve(current, labels)
        chunks = tuple(min(c, s) for c, s in zip(base.chunks, current.shape))
        current = current.rechunk(chunks)
        name = str(k) if base_path == "0" else f"{base_path}-{k}"
        arr = root.create_array(name, shape=current.shape, chunks=chunks, dtype=base.dtype, overwrite=True,
                                fill_value=base.fill_value)
        da.store(current.astype(base.dtype), arr, lock=False, compute=True, scheduler=scheduler)
        current = da.from_zarr(arr)
        factor = [1.0] * (base.ndim - 2) + [2.0 ** k, 2.0 ** k]
        datasets.append({"path": name, "coordinateTransformations": [
            {"type": "scale", "scale": [s * f for s, f in zip(base_scale, factor)]}]})
    ms[0]["datasets"] = datasets
    root.attrs.update(attrs)
    return n


def _scale_of(dataset: dict, ndim: int) -> list[float]:
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            return [float(v) for v in t["scale"]]
    return [1.0] * ndim


def has_pyramid(group: str | Path, min_side: int = 512) -> bool:
    """Whether the OME-Zarr image group `group` already lists every level `write_pyramid` would add."""
    import zarr

    from napari_paser.data.volumes import ngff_multiscales

    try:
        root = zarr.open_group(str(group), mode="r")
        ms = ngff_multiscales(dict(root.attrs))
        datasets = ms[0]["datasets"] if ms else []
        return bool(datasets) and len(datasets) == pyramid_steps(root[datasets[0]["path"]].shape, min_side) + 1 and all(
            d["path"] in root for d in datasets)
    except Exception:  # a missing or foreign group has no pyramid of ours
        return False


def write_pyramids(out: str | Path, names, min_side: int = 512) -> dict[str, int]:
    """`write_pyramid` for each image group `names` of an output folder (a segmentation job's arrays);
    {name: levels added}."""
    return {name: write_pyramid(Path(out) / name, min_side) for name in names}
