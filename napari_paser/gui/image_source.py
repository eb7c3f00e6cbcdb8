"""Where an image layer's data was read from, and whether a session can read that file in place (a zarr,
OME-Zarr or HDF5 volume holding the layer's array) instead of copying the image."""

from __future__ import annotations

from learners.errors import InputError


def layer_path(layer) -> str | None:
    """The file a layer was read from (the PaSeR reader's metadata "source", else napari's layer.source)."""
    path = layer.metadata.get("source") or getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


def in_place(path: str, data) -> str | None:
    """`path` when it is a zarr, OME-Zarr or HDF5 volume holding the layer's array (same shape and dtype),
    so a session can read it in place; None otherwise (the layer's data is copied)."""
    from napari_paser.data.volumes import IN_PLACE_KINDS, open_volume

    try:
        volume = open_volume(path)
    except InputError:
        return None
    shape = tuple(int(v) for v in data.shape)
    same = volume.shape == shape or (len(shape) == 2 and volume.shape == (1, *shape))
    return path if volume.kind in IN_PLACE_KINDS and same and volume.dtype == data.dtype else None
