"""The napari layers of a session: added one per event-loop turn, shown translucent or hidden, updated in place.

Adding a layer (its model, first slice, vispy nodes) costs 100-250 ms on the GUI thread, so a
session's layers are added one per event-loop turn and the viewer repaints between them. The
model's overlays (prediction, entropy, entropy > gamma) start hidden and are translucent when
shown (the highlight is drawn as contours), so the image always reads through.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from napari_paser.gui import regions_layer
from napari_paser.gui.io import SESSION_KEY

LABELS, PRED, ENTROPY, ABOVE = "paser labels", "paser f0 prediction", "paser f0 entropy", "paser entropy > gamma"
ROUTING, REGIONS, ROUTED = "paser routing", "paser regions", "paser routed segmentation"
IMAGE = "paser image"
SESSION_LAYERS = (PRED, ENTROPY, ABOVE, LABELS, REGIONS, ROUTING, ROUTED)
"""The layers a session adds besides its image (`IMAGE` when it has no reader layer)."""
MODEL_VIEW = (PRED, ENTROPY, ABOVE, ROUTING, ROUTED)
"""The model's view: what one toggle (and the H key) shows or hides."""
MODEL_VIEW_DEFAULT = (ENTROPY, ABOVE)
"""What the toggle shows the first time: where f0 is unsure (the prediction is one click away)."""
OPACITY = {PRED: 0.35, ENTROPY: 0.35, ABOVE: 0.8, LABELS: 0.4, ROUTING: 0.3}
"""Painted labels at 0.4: the image's texture reads through a painted region (at 0.6 it was hidden)."""
MODEL_COLORS = ("#2ca02c", "#ffbf00", "#d62728", "#9467bd", "#8c564b")
"""Routing overlay colours of f0, f1, f2, ...: green = cheap, red = expensive."""
HIGHLIGHT = "#ff40ff"
"""The entropy > gamma outlines: magenta, apart from the cyan of accepted regions and the gold of proposals."""


PYRAMID_SIDE = 1024
"""Slices with a side above this show the model's overlays as multiscale layers: napari then reads, colours
and uploads only the part on screen at the level the zoom needs (a 2048^2 slice at whole-slice zoom: a
512^2 level), so scrolling, toggling and refreshing cost the same whatever the slice size."""
LEVEL_SIDE = 512
"""The coarsest level of an overlay pyramid has no side above this."""


class LazyView:
    """A read-only array view that applies `fn` to each requested block of `base` (napari reads
    only the slice on screen), so derived layers never hold a copy of the volume. With `step` > 1 it is
    a pyramid level: every step-th pixel of the last two axes (read strided, computed on the small block)."""

    def __init__(self, base, fn: Callable[[np.ndarray, tuple], np.ndarray] | None, dtype, step: int = 1) -> None:
        self.base, self.fn, self.dtype, self.step = base, fn, np.dtype(dtype), int(step)
        shape = [int(v) for v in base.shape]
        shape[-2:] = [-(-v // self.step) for v in shape[-2:]]
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def __getitem__(self, index):
        """The block at `index`; a lazy `Crop` while a leading (slice) axis is still a range: napari cuts a
        multiscale level to the part on screen first, then takes the slice (reading every slice of the crop
        there would read the volume)."""
        index = _full_index(index if isinstance(index, tuple) else (index,), self.ndim)
        if self.ndim > 2 and not all(isinstance(i, (int, np.integer)) for i in index[:-2]):
            return Crop(self, [range(n)[i] if isinstance(i, slice) else int(i) for i, n in zip(index, self.shape)])
        return self.read(index)

    def read(self, index: tuple) -> np.ndarray:
        """Compute the block at a full `index` (`_full_index`)."""
        read = index if self.step == 1 else (*index[:-2], *(_strided(i, n, self.step) for i, n in
                                                           zip(index[-2:], self.base.shape[-2:])))
        block = np.asarray(self.base[read])
        out = block if self.fn is None else self.fn(block, index)
        return np.asarray(out).astype(self.dtype, copy=False)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.read(_full_index((Ellipsis,), self.ndim)), dtype=dtype)


class Crop:
    """A lazy part of a `LazyView`: per axis a range of its indices (or one index, the axis dropped);
    indexing it composes with the ranges, and reads once every leading axis is a single index."""

    def __init__(self, view: LazyView, ranges: list) -> None:
        self.view, self.ranges = view, ranges
        self.shape = tuple(len(r) for r in ranges if isinstance(r, range))
        self.ndim, self.dtype = len(self.shape), view.dtype
        self.size = int(np.prod(self.shape))

    def __getitem__(self, index):
        index = _full_index(index if isinstance(index, tuple) else (index,), self.ndim)
        it = iter(index)
        ranges = [r if not isinstance(r, range) else (r[i] if isinstance(i, slice) else r[int(i)])
                  for r, i in ((r, next(it) if isinstance(r, range) else None) for r in self.ranges)]
        return self.view[tuple(_as_index(r) for r in ranges)]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.view.read(tuple(_as_index(r) for r in self.ranges)), dtype=dtype)


def _as_index(r):
    """A range as the slice that selects it (an int stays an int)."""
    return slice(r.start, r.stop, r.step) if isinstance(r, range) else r


class SharedReads:
    """One zarr array read by several layers (the entropy and its > gamma outlines): the last few blocks
    read are kept, so a slice on screen is read and decompressed once, not once per layer. `forget()`
    (after maps were written) drops them."""

    KEEP = 4

    def __init__(self, base) -> None:
        self.base, self.shape, self.dtype = base, tuple(base.shape), base.dtype
        self._blocks: dict[tuple, np.ndarray] = {}

    def __getitem__(self, index) -> np.ndarray:
        key = tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i for i in
                    (index if isinstance(index, tuple) else (index,)))
        if key not in self._blocks:
            while len(self._blocks) >= self.KEEP:
                self._blocks.pop(next(iter(self._blocks)))
            block = np.array(self.base[index])
            block.setflags(write=False)  # shared by the layers: nobody writes into it
            self._blocks[key] = block
        return self._blocks[key]

    def forget(self) -> None:
        self._blocks.clear()


def forget_reads(layers) -> None:
    """Drop the blocks `SharedReads` kept for the model's view among `layers` (the viewer's layer list:
    their maps were just written)."""
    for layer in (layers[n] for n in MODEL_VIEW if n in layers):
        for data in (layer.data if getattr(layer, "multiscale", False) else [layer.data]):
            forget = getattr(getattr(data, "base", None), "forget", None)
            if forget is not None:
                forget()


def _full_index(index: tuple, ndim: int) -> tuple:
    """`index` with its Ellipsis expanded and trailing axes filled with full slices."""
    if any(i is Ellipsis for i in index):
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        index = (*index[:at], *([slice(None)] * (ndim - len(index) + 1)), *index[at + 1:])
    return (*index, *([slice(None)] * (ndim - len(index))))


def _strided(i, n: int, step: int):
    """A level's index `i` on an axis of `n` full-resolution pixels, as an index into the full resolution."""
    if isinstance(i, slice):
        start, stop, stride = i.indices(-(-n // step))
        return slice(start * step, min(stop * step, n), stride * step)
    return int(i) * step


def levels(base, fn: Callable[[np.ndarray, tuple], np.ndarray] | None, dtype, shape: tuple[int, ...]):
    """The data of an overlay of a volume of `shape`: one `LazyView`, or for slices with a side above
    PYRAMID_SIDE a list of them halving down to LEVEL_SIDE (give the layer multiscale=True)."""
    side = max(shape[-2:])
    if side <= PYRAMID_SIDE:
        return LazyView(base, fn, dtype)
    steps = [1]
    while side / steps[-1] > LEVEL_SIDE:
        steps.append(steps[-1] * 2)
    return [LazyView(base, fn, dtype, step) for step in steps]


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` (last two axes) with a 4-neighbour outside it or outside the block: its outline,
    one pixel wide (cheaper than napari's own contour, a grey dilation and erosion of the slice on the GUI
    thread; a multiscale level's block is the part on screen, so its edge is the screen's)."""
    inner = np.zeros_like(mask)
    inner[..., 1:-1, 1:-1] = (mask[..., 1:-1, 1:-1] & mask[..., :-2, 1:-1] & mask[..., 2:, 1:-1]
                              & mask[..., 1:-1, :-2] & mask[..., 1:-1, 2:])
    return mask & ~inner


def meta(session) -> dict:
    return {SESSION_KEY: str(session.folder.resolve()), "class_names": list(session.classes.names)}


def prediction_view(session) -> LazyView:
    """Class k shown as k + 1, and 0 on slices whose maps were never computed."""

    def fn(block: np.ndarray, index: tuple) -> np.ndarray:
        out = block.astype(np.uint8) + 1
        if len(session.shape) == 2:
            return out * bool(session.state.maps)
        zs = np.arange(session.shape[0])[index[0]] if index else np.arange(session.shape[0])
        done = np.isin(zs, [int(z) for z in session.state.maps])
        return out * (done if np.ndim(zs) == 0 else done.reshape(-1, *([1] * (out.ndim - 1)))).astype(np.uint8)

    return levels(session.maps["prediction"], fn, np.uint8, session.shape)


def session_layers(session, gamma: Callable[[], float], with_image: bool) -> list[Callable[[], object]]:
    """Makers of the session's layers, bottom to top: (image,) prediction, entropy, entropy > gamma, labels,
    regions. Called on the GUI thread one per event-loop turn (a layer built in a worker thread crashed
    vispy's next draw on resume). The routing layers come with the first routing: built here, empty and
    hidden, they made each map refresh and model-view toggle 30-40 ms slower for a person who never routes."""
    from napari.layers import Image, Labels

    m, colors = meta(session), session.classes.layer_colors()

    def image():
        lo, hi = session.state.image["lo"], session.state.image["hi"]
        return Image(session.image, name=IMAGE, colormap="gray", contrast_limits=(lo, hi or lo + 1), metadata=m)

    multiscale = max(session.shape[-2:]) > PYRAMID_SIDE
    entropy = SharedReads(session.maps["entropy"])  # read once for the entropy layer and its outlines

    def above():  # outlines: the image inside the highlighted areas stays visible
        data = levels(entropy, lambda a, _: outline(a > gamma()), np.uint8, session.shape)
        return Labels(data, name=ABOVE, colormap={0: "transparent", None: "transparent", 1: HIGHLIGHT},
                      opacity=OPACITY[ABOVE], visible=False, metadata=m, multiscale=multiscale)

    makers = [image] if with_image else []
    makers.append(lambda: Labels(prediction_view(session), name=PRED, colormap=colors, opacity=OPACITY[PRED],
                                 visible=False, metadata=m, multiscale=multiscale))
    makers.append(lambda: Image(levels(entropy, None, np.float32, session.shape),
                                name=ENTROPY, colormap="magma", multiscale=multiscale,
                                contrast_limits=(0.0, math.log(session.n_classes)), blending="translucent",
                                opacity=OPACITY[ENTROPY], visible=False, metadata=m))
    makers.append(above)
    makers.append(lambda: Labels(session.labels, name=LABELS, colormap=colors, opacity=OPACITY[LABELS], metadata=m))
    makers.append(lambda: regions_layer.new_layer(session, REGIONS))
    return makers


def put_layer(layers, layer) -> str:
    """Add `layer`, or move its content into the layer of that name already there (a previous session's: cheaper
    than removing and adding, and removing all of them before adding new ones crashed vispy's next draw);
    returns its name. The image goes under the session's overlays; a regions layer is emptied (filled later)."""
    name = layer.name
    old = layers[name] if name in layers else None
    if (old is None or type(old) is not type(layer) or old.ndim != layer.ndim
            or getattr(old, "multiscale", False) != getattr(layer, "multiscale", False)):
        if old is not None:
            layers.remove(old)
        below = [i for i, la in enumerate(layers) if la.name in SESSION_LAYERS] if name == IMAGE else []
        layers.insert(min(below), layer) if below else layers.append(layer)  # the scan under its overlays
        return name
    if name == REGIONS:  # emptied here, filled by the hub's refresh_regions
        old.selected_data = set(range(len(old.data)))
        old.remove_selected()
    else:
        old.data = layer.data
        old.colormap = layer.colormap
        if name == IMAGE:
            old.contrast_limits = layer.contrast_limits
        if hasattr(old, "contour"):
            old.contour = layer.contour
        old.visible, old.opacity = layer.visible, layer.opacity
    old.metadata = layer.metadata
    return name


def routing_image(routed, three_d: bool) -> tuple[np.ndarray, tuple, tuple]:
    """The routing overlay of a routed slice as one pixel per patch (model index + 1), with the layer scale
    and translate that stretch it over the slice: (data, scale, translate). Pixel (r, c) covers image pixels
    r * ch ... (r + 1) * ch - 1, so its centre sits at (ch - 1) / 2 past the cell's first pixel; a 1024-patch
    2048^2 slice is a 32 x 32 image, drawn as one texture whatever the zoom."""
    data = (np.asarray(routed.routing) + 1).astype(np.uint8)  # -1 (not routed yet) shows nothing
    ch, cw = routed.grid().cell
    scale, translate = (float(ch), float(cw)), ((ch - 1) / 2, (cw - 1) / 2)
    if three_d:
        data, scale, translate = data[None], (1.0, *scale), (float(routed.z), *translate)
    return data, scale, translate


def routing_colormap(n_models: int) -> dict:
    """Label colours of the routing overlay: model k (label k + 1) in MODEL_COLORS[k]; 0 transparent."""
    cmap: dict = {0: "transparent", None: "transparent"}
    cmap.update({k + 1: MODEL_COLORS[k % len(MODEL_COLORS)] for k in range(n_models)})
    return cmap


def routing_steps(viewer, session, routed, routed_data=None) -> list[Callable[[], None]]:
    """Show slice `routed.z`'s routing: the overlay (one pixel per patch in its model's colour, scaled up by
    the layer's transform), then PaSeR's segmentation (`routed_data`, the zarr array the routing job wrote
    it into); two steps for two event-loop turns (a first add of each builds vispy nodes)."""
    steps = [lambda: _show_overlay(viewer, session, routed)]
    if routed.segmentation is not None and routed_data is not None:
        steps.append(lambda: _show_routed(viewer, session, routed, routed_data))
    return steps


def overlay_shown(layers) -> bool:
    """Whether the routing overlay shows a routed slice (a resumed session empties and hides it)."""
    return ROUTING in layers and layers[ROUTING].visible and bool(np.asarray(layers[ROUTING].data).any())


def _show_overlay(viewer, session, routed) -> None:
    """The routing overlay: a labels layer added by the first routing, then updated in place (its few pixels,
    scale and the slice it sits on): removing a layer costs napari a full garbage collection. No text on the
    patches (a thousand labels blur into a texture at whole-slice zoom): the Maps step's legend names the
    colours, and the layer's features name the models in use."""
    import pandas as pd
    from napari.layers import Labels

    three_d = len(session.shape) == 3
    data, scale, translate = routing_image(routed, three_d)
    used = np.unique(data[data > 0])
    features = pd.DataFrame({"index": used.astype(int), "model": [routed.names[int(v) - 1] for v in used]})
    layer = viewer.layers[ROUTING] if ROUTING in viewer.layers else None
    if layer is not None and (not isinstance(layer, Labels) or layer.ndim != data.ndim):
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        viewer.add_labels(data, name=ROUTING, scale=scale, translate=translate, opacity=OPACITY[ROUTING],
                          colormap=routing_colormap(len(routed.names)), features=features, metadata=meta(session))
        return
    layer.scale, layer.translate = scale, translate
    layer.data = data
    layer.features = features
    layer.visible = True


def reset_routing(viewer, ndim: int, routed_data=None) -> None:
    """Empty and hide the routing layers for a new session: kept, not removed (see `_show_overlay`), unless
    the new session's dimensionality differs; the segmentation layer takes the new session's (empty)
    `routed_data`."""
    for name in (ROUTING, ROUTED):
        if name not in viewer.layers:
            continue
        layer = viewer.layers[name]
        data = routed_levels(routed_data) if name == ROUTED and routed_data is not None else None
        if layer.ndim != ndim or (name == ROUTED and (data is None or layer.multiscale != isinstance(data, list))):
            viewer.layers.remove(layer)
            continue
        if name == ROUTING:
            layer.data = np.zeros_like(layer.data)
        else:
            layer.data = data
        layer.visible = False


def routed_array(session, folder) -> object:
    """An empty zarr array of the session's shape for PaSeR's routed segmentation (class k stored as k + 1,
    0 = not routed) in `folder`: the routing job writes a slice into it, the layer reads only the slice on
    screen (no in-memory copy of a slice per routing or per move of the slider)."""
    import zarr

    shape = tuple(int(v) for v in session.shape)
    chunks = (1, *(min(512, v) for v in shape[-2:])) if len(shape) == 3 else tuple(min(512, v) for v in shape)
    return zarr.create_array(str(folder), shape=shape, dtype=np.uint8, chunks=chunks, fill_value=0, overwrite=True)


def write_routed(array, routed, n_classes: int) -> None:
    """Store a routed slice's segmentation into `routed_array` (run in the routing worker); a partial one
    (`routed.done`) leaves the patches not routed yet empty (0)."""
    from napari_paser.data.labels_convention import classes_to_layer

    done = None if routed.done is None else np.asarray(routed.done).ravel()[routed.grid().cell_index_map()]
    data = classes_to_layer(routed.segmentation, done, n_classes=n_classes)
    if array.ndim == 3:
        array[int(routed.z)] = data
    else:
        array[...] = data


def routed_levels(routed_data):
    """The routed segmentation layer's data over `routed_array` (multiscale for large slices, see `levels`)."""
    return levels(routed_data, None, np.uint8, routed_data.shape)


def _source(layer):
    """The array a layer of `levels` reads (its full-resolution level's base)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return getattr(data, "base", None)


def _show_routed(viewer, session, routed, routed_data) -> None:
    """PaSeR's segmentation as a labels layer over `routed_data` (read lazily, only the part on screen):
    the routing job already wrote slice z, so the layer is only refreshed."""
    data = routed_levels(routed_data)
    if ROUTED in viewer.layers:
        layer = viewer.layers[ROUTED]
        if _source(layer) is routed_data:
            layer.refresh()
            return
        if layer.multiscale == isinstance(data, list) and layer.ndim == routed_data.ndim:
            layer.data = data
            return
        viewer.layers.remove(ROUTED)
    viewer.add_labels(data, name=ROUTED, colormap=session.classes.layer_colors(), opacity=0.5,
                      visible=False, metadata=meta(session), multiscale=isinstance(data, list))
