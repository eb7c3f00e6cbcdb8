"""npe2 reader and writer of the plugin: plain functions returning napari LayerData tuples.

No Qt or napari import here (napari calls these through `napari.yaml`). LayerData is
`(data, kwargs, layer_type)`. Labels layers always hold the napari Labels convention (class
k = k + 1, 0 = not labeled), converted only by `labels_convention`.

Reads: a greyscale TIFF slice or stack (RGB TIFFs are left to other readers), a dataset folder
(images.tif + labels.tif), a zarr array (or the 2D/3D arrays of a zarr group), and a session
folder (image, label canvas, regions, maps; the layers' metadata carry `paser_session`, the
folder, so a widget can `Session.open` it and get the models too). Writes: a Labels layer as
the labeled-set export (`napari_paser.data.export`).

A session folder whose layers are already in the viewer is not read again (File > Open of the
live session would give two canvases of one session): its labels layer is selected instead. A
folder held by another process opens read-only, with a notification saying so. Only those
two cases touch napari (`napari.current_viewer()` and its notifications), imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import zarr

from napari_paser.errors import PaserInputError
from napari_paser.data.labels_convention import classes_to_layer

LayerData = tuple  # (data, kwargs, layer_type)
SESSION_KEY = "paser_session"
REGION_COLORS = {"proposed": "#ffd700", "accepted": "#ff5cf0"}  # accepted: magenta, apart from the cyan entropy contours
LAZY_BYTES = 1 << 30  # TIFFs larger than this open lazily


# ----------------------------------------------------------------------------- reader


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for `path`, or None when this plugin does not read it (napari asks others)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    kind = path_kind(Path(path))
    return None if kind is None else read_path


def path_kind(path: Path) -> str | None:
    """"session", "dataset", "zarr", "tiff" or None."""
    if path.is_dir():
        if (path / "session.json").is_file():
            return "session"
        if (path / "images.tif").is_file() and (path / "labels.tif").is_file():
            return "dataset"
        if any((path / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup")):
            return "zarr"
        return None
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file() and not _is_rgb_tiff(path):
        return "tiff"
    return None


def _is_rgb_tiff(path: Path) -> bool:
    try:
        with tifffile.TiffFile(path) as tf:
            return any(s.keyframe.photometric == tifffile.PHOTOMETRIC.RGB for s in tf.series)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return False  # unreadable: let read_tiff say so


def read_path(path: str | list[str]) -> list[LayerData]:
    """Read any path `get_reader` accepts."""
    path = Path(path[0] if isinstance(path, (list, tuple)) else path)
    kind = path_kind(path)
    readers = {"session": read_session, "dataset": read_dataset_folder, "zarr": read_zarr, "tiff": read_tiff}
    if kind is None:
        raise PaserInputError(f"{path} is not a TIFF, zarr array, dataset folder or session folder")
    return readers[kind](path)


def read_tiff(path: str | Path) -> list[LayerData]:
    """A greyscale TIFF slice (Y, X) or stack (Z, Y, X) as an image layer; files above
    LAZY_BYTES are opened lazily as a zarr view (slices read on demand), never loaded whole."""
    path = Path(path)
    try:
        if path.stat().st_size > LAZY_BYTES:
            data = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        else:
            data = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise PaserInputError(f"cannot read {path} as TIFF ({exc}); check the file") from None
    if not isinstance(data, zarr.Array):
        data = np.squeeze(data) if data.ndim > 3 else data
    _check_greyscale(tuple(data.shape), str(path))
    return [(data, {"name": path.stem, "colormap": "gray", "metadata": {"source": str(path)}}, "image")]


def _check_greyscale(shape: tuple[int, ...], name: str) -> None:
    if len(shape) not in (2, 3):
        raise PaserInputError(f"{name} has shape {shape}: need a greyscale slice (Y, X) or stack (Z, Y, X)")


def read_dataset_folder(path: str | Path) -> list[LayerData]:
    """images.tif as an image layer and labels.tif as a Labels layer (class k shown as k + 1)."""
    from napari_paser.data.dataset import read_dataset

    ds = read_dataset(path)
    names = list(ds.class_names)
    labels = classes_to_layer(ds.labels, n_classes=ds.n_classes)
    if ds.images.shape[0] == 1:  # a 2D dataset opens as a 2D slice
        images, labels = ds.images[0], labels[0]
    else:
        images = ds.images
    meta = {"source": str(path), "class_names": names}
    return [
        (images, {"name": f"{Path(path).name} images", "colormap": "gray", "metadata": meta}, "image"),
        (labels, {"name": f"{Path(path).name} labels", "opacity": 0.5, "metadata": meta}, "labels"),
    ]


def read_zarr(path: str | Path) -> list[LayerData]:
    """A zarr array (lazily, never loaded whole), an OME-Zarr image (its full-resolution level, singleton
    time/channel axes dropped), or each 2D/3D array of a zarr group, as image layers; each layer's
    metadata "source" names what it was read from (a session started on it reads it in place). An OME-Zarr
    image with levels below its full resolution opens as one multiscale layer."""
    path = Path(path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for foreign or damaged stores
        raise PaserInputError(f"cannot open {path} as zarr ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Array):  # a plain array: nothing more to import (volumes imports dask.array, 0.8 s)
        arrays = [(path.stem, node, path)]
    elif _ngff(node) is not None:
        levels = ome_levels(path, node)
        if len(levels) > 1:  # napari reads the level the zoom needs, only the part on screen
            _check_greyscale(tuple(levels[0].shape), f"{path} ({path.stem})")
            return [(levels, {"name": path.stem, "colormap": "gray", "multiscale": True,
                              "contrast_limits": _contrast(levels[-1]), "metadata": {"source": str(path)}}, "image")]
        arrays = [(path.stem, levels[0], path)]
    else:
        arrays = [(f"{path.stem}/{k}", a, path / k) for k, a in sorted(node.arrays()) if len(a.shape) in (2, 3)]
    if not arrays:
        raise PaserInputError(f"{path} is a zarr group without 2D or 3D arrays: open one of its arrays instead")
    layers = []
    for name, arr, source in arrays:
        _check_greyscale(tuple(arr.shape), f"{path} ({name})")
        layers.append((arr, {"name": name, "colormap": "gray", "metadata": {"source": str(source)}}, "image"))
    return layers


def _ngff(node):
    from napari_paser.data.volumes import ngff_multiscales

    return ngff_multiscales(dict(node.attrs))


def ome_levels(path: Path, node) -> list:
    """An OME-Zarr image's levels as `VolumeView`s of one shape convention (singleton time/channel axes
    dropped, a 2D image as (Y, X)), full resolution first; a level of another dimensionality ends the list."""
    import dask.array as da

    from napari_paser.data.volumes import Volume, VolumeView, _squeeze_ngff, as_zyx, ngff_multiscales, open_volume

    volume = open_volume(path)  # level 0, with its checks
    ndim = 2 if volume.shape[0] == 1 else 3
    levels = [Level(VolumeView(volume, ndim).array)]
    ms = ngff_multiscales(dict(node.attrs))[0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
    for dataset in ms["datasets"][1:]:
        arr = da.from_zarr(node[dataset["path"]])
        try:
            arr = _squeeze_ngff(arr, axes, path) if axes and len(axes) == arr.ndim else arr
            level = Level(VolumeView(Volume(volume.spec, as_zyx(arr, str(path)), "ome-zarr"), ndim).array)
        except PaserInputError:
            break
        if level.ndim != levels[0].ndim:
            break
        levels.append(level)
    return levels


class Level:
    """One level of a multiscale image over a dask array, read in the calling thread (as `VolumeView`); while
    a leading axis is indexed by a range the result stays lazy (napari cuts a level to the part on screen
    before it takes the slice: computing there would read every slice of the crop)."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape, self.dtype = tuple(int(s) for s in array.shape), np.dtype(array.dtype)
        self.ndim, self.size = len(self.shape), int(np.prod(self.shape))

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        if self.ndim > 2 and not isinstance(index[0], (int, np.integer)):
            return Level(self.array[index])
        return np.asarray(self.array[index].compute(scheduler="synchronous"))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.array.compute(scheduler="synchronous"), dtype=dtype)


def _contrast(level) -> tuple[float, float]:
    """Contrast limits from a pyramid's coarsest level (its middle slice): napari would read more."""
    block = np.asarray(level[level.shape[0] // 2] if level.ndim == 3 else level[...])
    lo, hi = float(np.min(block)), float(np.max(block))
    return lo, (hi if hi > lo else lo + 1)


def read_session(path: str | Path) -> list[LayerData]:
    """A labeling session: image, label canvas (paintable), regions (proposed/accepted) and f0's maps.

    Already in the viewer: its labels layer is selected and nothing is added (`[(None,)]`, napari's
    "nothing to add"). Held by another process: opened read-only (layer names say so).
    """
    from napari_paser.session import lock
    from napari_paser.session.core import Session

    folder = Path(path).resolve()
    if _focus_open_session(folder):
        return [(None,)]
    try:
        session = Session.open(folder)
    except lock.SessionLockedError as exc:
        session = Session.open(folder, read_only=True)
        _notify(f"session {folder.name} is open in {exc.holder.describe() if exc.holder else 'another process'}: "
                "opened read-only here (nothing painted here is saved)", warning=True)
    except lock.FolderNotWritableError:
        session = Session.open(folder, read_only=True)
        _notify(f"session {folder.name} is in a folder this process cannot write: opened read-only", warning=True)
    else:
        _hold_while_shown(folder)
        session.close()
    for note in session.warnings:
        _notify(f"session {folder.name}: {note}", warning=True)
    name = Path(path).name + (" (read-only)" if session.read_only else "")
    meta = {SESSION_KEY: str(folder), "class_names": list(session.classes.names)}
    lo, hi = session.state.image["lo"], session.state.image["hi"]
    layers = [
        (session.image, {"name": f"{name} image", "colormap": "gray", "contrast_limits": (lo, hi), "metadata": meta},
         "image"),
        (_view_only(session.labels) if session.read_only else session.labels,
         {"name": f"{name} labels", "colormap": session.classes.layer_colors(), "opacity": 0.6, "metadata": meta,
          **({"multiscale": True} if session.read_only else {})}, "labels"),
    ]
    if session.state.maps:
        layers += map_layers(session, name, meta)
    shapes = region_shapes(session)
    if shapes is not None:
        layers.append(shapes)
    return layers


_READER_HOLDS: set[Path] = set()  # session folders read here, held while the viewer shows them


def _hold_while_shown(folder: Path) -> None:
    """Hold the folder while its canvas may be painted here: until the viewer shows none of its
    layers any more (or, with no viewer, until the process exits)."""
    from napari_paser.session import lock

    if folder in _READER_HOLDS:
        return
    lock.acquire(folder)
    _READER_HOLDS.add(folder)
    viewer = _current_viewer()
    if viewer is None:
        return

    def release_when_gone(event=None) -> None:
        if folder in _READER_HOLDS and not any(la.metadata.get(SESSION_KEY) == str(folder) for la in viewer.layers):
            _READER_HOLDS.discard(folder)
            lock.release(folder)
            viewer.layers.events.removed.disconnect(release_when_gone)

    viewer.layers.events.removed.connect(release_when_gone)


def _current_viewer():
    """The active napari viewer, or None (no napari, no window)."""
    try:
        import napari
    except ImportError:
        return None
    return napari.current_viewer()


def _notify(message: str, warning: bool = False) -> None:
    try:
        from napari.utils import notifications
    except ImportError:
        return
    (notifications.show_warning if warning else notifications.show_info)(message)


def _view_only(labels) -> list:
    """The canvas as a lazy two-level pyramid: napari does not paint multiscale Labels, so a
    read-only session shows its labels without offering a brush that cannot save."""
    import dask.array as da

    full = da.from_zarr(labels)
    return [full, full[..., ::2, ::2]]


def _focus_open_session(folder: Path) -> bool:
    """Make the canvas of session `folder` the active layer if the viewer shows it; True when it did."""
    viewer = _current_viewer()
    if viewer is None:
        return False
    mine = [layer for layer in viewer.layers if layer.metadata.get(SESSION_KEY) == str(folder)]
    if not mine:
        return False
    labels = [layer for layer in mine if type(layer).__name__ == "Labels" and layer.editable]
    viewer.layers.selection.active = (labels or mine)[0]  # the canvas, ready to paint
    _notify(f"session {folder.name} is already open in this window: its labels layer is selected (not opened twice)")
    return True


def map_layers(session, name: str, meta: dict) -> list[LayerData]:
    """f0's prediction (Labels) and entropy (image, magma), read lazily from the session's zarr maps."""
    import dask.array as da

    pred = classes_to_layer(da.from_zarr(session.maps["prediction"]), n_classes=session.n_classes)
    return [
        (pred, {"name": f"{name} f0 prediction", "colormap": session.classes.layer_colors(), "opacity": 0.4,
                "visible": False, "metadata": meta}, "labels"),
        (session.maps["entropy"], {"name": f"{name} f0 entropy", "colormap": "magma", "blending": "additive",
                                   "opacity": 0.6, "visible": False, "metadata": meta}, "image"),
    ]


def region_shapes(session, name: str = "regions") -> LayerData | None:
    """Rectangles of the pending proposals (numbered by rank) and the accepted regions, as a Shapes layer.

    features: region_id, rank (0 for regions accepted outside proposals), status
    ("proposed" | "accepted"); edges coloured by status (REGION_COLORS).
    """
    items = [(p.region_id, p.z, p.y0, p.x0, p.h, p.w, p.rank, "proposed") for p in session.pending_proposals]
    items += [(a.region_id, a.z, a.y0, a.x0, a.h, a.w, a.rank or 0, "accepted") for a in session.accepted]
    if not items:
        return None
    three_d = len(session.shape) == 3
    rects = [rectangle(z, y0, x0, h, w, three_d) for _, z, y0, x0, h, w, _, _ in items]
    features = {"region_id": [i[0] for i in items], "rank": [i[6] for i in items], "status": [i[7] for i in items]}
    kwargs = {
        "name": name, "shape_type": "rectangle", "features": features, "face_color": "transparent",
        "edge_color": [REGION_COLORS[i[7]] for i in items], "edge_width": 2,
        "text": {"string": "{rank}", "color": "white", "size": 10, "anchor": "upper_left"},
        "metadata": {SESSION_KEY: str(Path(session.folder).resolve())},
    }
    return rects, kwargs, "shapes"


def rectangle(z: int, y0: int, x0: int, h: int, w: int, three_d: bool) -> np.ndarray:
    """Corners of a box of pixels (their edges) for a Shapes layer, with the slice index in front
    for volumes: the one rectangle of the reader's, the regions' and the routing overlay's layers."""
    corners = np.array([[y0, x0], [y0, x0 + w], [y0 + h, x0 + w], [y0 + h, x0]], dtype=float) - 0.5
    return np.hstack([np.full((4, 1), float(z)), corners]) if three_d else corners


# ----------------------------------------------------------------------------- writer


def write_labeled_set(path: str, data, meta: dict) -> list[str]:
    """npe2 writer for a Labels layer: the labeled-set export into folder `path`.

    A layer of a session (metadata `paser_session`) exports that session's accepted regions
    with image crops. Any other Labels layer exports every region-size grid cell holding
    painted pixels (label crops only, no image), with class names from metadata
    `class_names` or numbered ones.
    """
    from napari_paser.data.export import labeled_set_from_layer
    from napari_paser.data.export import write_labeled_set as write_set

    metadata = dict(meta.get("metadata") or {})
    if metadata.get(SESSION_KEY):
        from napari_paser.session.core import Session

        session = Session.open(metadata[SESSION_KEY], read_only=True)  # export reads; never takes the folder
        if tuple(np.shape(data)) != session.shape:
            raise PaserInputError(
                f"the labels layer has shape {tuple(np.shape(data))} but its session image has {session.shape}"
            )
        return [str(session.export(path))]
    names = metadata.get("class_names") or _numbered_classes(data)
    region = int(metadata.get("region_size", 64))
    return [str(write_set(path, labeled_set_from_layer(data, list(names), region)))]


def _numbered_classes(data) -> list[str]:
    top = int(np.asarray(data).max()) if np.size(data) else 0
    return [f"class {k}" for k in range(max(top, 2))]
