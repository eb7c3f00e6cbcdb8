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
from napari_paser.gui.io import SESSION_KEY, rectangle

LABELS, PRED, ENTROPY, ABOVE = "paser labels", "paser f0 prediction", "paser f0 entropy", "paser entropy > gamma"
ROUTING, REGIONS, ROUTED = "paser routing", "paser regions", "paser routed segmentation"
IMAGE = "paser image"
SESSION_LAYERS = (PRED, ENTROPY, ABOVE, LABELS, REGIONS, ROUTING, ROUTED)
"""The layers a session adds besides its image (`IMAGE` when it has no reader layer)."""
MODEL_VIEW = (PRED, ENTROPY, ABOVE, ROUTING, ROUTED)
"""The model's view: what one toggle (and the H key) shows or hides."""
MODEL_VIEW_DEFAULT = (ENTROPY, ABOVE)
"""What the toggle shows the first time: where f0 is unsure (the prediction is one click away)."""
OPACITY = {PRED: 0.35, ENTROPY: 0.35, ABOVE: 0.8, LABELS: 0.6, ROUTING: 0.3}
MODEL_COLORS = ("#2ca02c", "#ffbf00", "#d62728", "#9467bd", "#8c564b")
"""Routing overlay colours of f0, f1, f2, ...: green = cheap, red = expensive."""
HIGHLIGHT = "#00ffff"


class LazyView:
    """A read-only array view that applies `fn` to each requested block of `base` (napari reads
    only the slice on screen), so derived layers never hold a copy of the volume."""

    def __init__(self, base, fn: Callable[[np.ndarray, tuple], np.ndarray], dtype) -> None:
        self.base, self.fn, self.dtype = base, fn, np.dtype(dtype)
        self.shape = tuple(base.shape)
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        return self.fn(np.asarray(self.base[index]), index).astype(self.dtype, copy=False)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)


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

    return LazyView(session.maps["prediction"], fn, np.uint8)


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

    def above():
        layer = Labels(LazyView(session.maps["entropy"], lambda a, _: a > gamma(), np.uint8), name=ABOVE,
                       colormap={0: "transparent", None: "transparent", 1: HIGHLIGHT}, opacity=OPACITY[ABOVE],
                       visible=False, metadata=m)
        layer.contour = 1  # outlines: the image inside the highlighted areas stays visible
        return layer

    makers = [image] if with_image else []
    makers.append(lambda: Labels(prediction_view(session), name=PRED, colormap=colors, opacity=OPACITY[PRED],
                                 visible=False, metadata=m))
    makers.append(lambda: Image(session.maps["entropy"], name=ENTROPY, colormap="magma",
                                contrast_limits=(0.0, math.log(session.n_classes)), blending="translucent",
                                opacity=OPACITY[ENTROPY], visible=False, metadata=m))
    makers.append(above)
    makers.append(lambda: Labels(session.labels, name=LABELS, colormap=colors, opacity=OPACITY[LABELS], metadata=m))
    makers.append(lambda: regions_layer.new_layer(session, REGIONS))
    return makers


def routing_rects(routed) -> tuple[list[np.ndarray], list[int]]:
    """The patch rectangles of a routed slice in (y, x) (slice 0 of a volume: the layer is translated to z)."""
    grid = routed.grid()
    rects, models = [], []
    for cell, box in enumerate(grid.boxes()):
        rects.append(rectangle(0, box.y0, box.x0, box.h, box.w, three_d=False))
        models.append(int(routed.routing.ravel()[cell]))
    return rects, models


def routing_steps(viewer, session, routed) -> list[Callable[[], None]]:
    """Show slice `routed.z`'s routing: the overlay (one rectangle per patch filled with its model's colour),
    then PaSeR's segmentation; two steps for two event-loop turns (a first add of each builds vispy nodes)."""
    steps = [lambda: _show_overlay(viewer, session, routed)]
    if routed.segmentation is not None:
        steps.append(lambda: _show_routed(viewer, session, routed))
    return steps


def overlay_shown(layers) -> bool:
    """Whether the routing overlay shows a routed slice (a resumed session empties and hides it)."""
    return ROUTING in layers and layers[ROUTING].visible and len(layers[ROUTING].data) > 0


def _show_overlay(viewer, session, routed) -> None:
    """The routing overlay: added by the first routing, then updated in place (colours, labels, the slice it
    sits on; the rectangles too when the grid changed): removing a layer costs napari a full garbage collection."""
    import pandas as pd

    rects, models = routing_rects(routed)
    three_d = len(session.shape) == 3
    if three_d:
        rects = [np.hstack([np.zeros((4, 1)), r]) for r in rects]
    colors = [MODEL_COLORS[m % len(MODEL_COLORS)] for m in models]
    features = pd.DataFrame({"model": [routed.names[m] for m in models]})
    translate = (float(routed.z), 0.0, 0.0) if three_d else (0.0, 0.0)
    layer = viewer.layers[ROUTING] if ROUTING in viewer.layers else None
    if layer is not None and layer.ndim != len(rects[0][0]):
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        viewer.add_shapes(rects, shape_type="rectangle", name=ROUTING, face_color=colors, edge_color="white",
                          edge_width=1, opacity=OPACITY[ROUTING], features=features, translate=translate,
                          text={"string": "{model}", "color": "white", "size": 9})
        return
    if len(layer.data) != len(rects) or not all(np.allclose(a, b) for a, b in zip(layer.data, rects)):
        _empty_shapes(layer)
        layer.add(rects, shape_type="rectangle", edge_color="white", edge_width=1, face_color=colors)
    layer.features = features
    layer.face_color = colors
    layer.translate = translate
    layer.visible = True


def reset_routing(viewer, ndim: int) -> None:
    """Empty and hide the routing layers for a new session: kept, not removed (see `_show_overlay`), unless
    the new session's dimensionality differs."""
    for name in (ROUTING, ROUTED):
        if name not in viewer.layers:
            continue
        layer = viewer.layers[name]
        if layer.ndim != ndim:
            viewer.layers.remove(layer)
            continue
        if name == ROUTING:  # emptied before hiding: napari refreshes a hidden layer's thumbnail only when shown
            _empty_shapes(layer)
        else:
            layer.data = np.zeros_like(layer.data)
        layer.visible = False


def _empty_shapes(layer) -> None:
    if len(layer.data):
        layer.selected_data = set(range(len(layer.data)))
        layer.remove_selected()


def _show_routed(viewer, session, routed) -> None:
    """PaSeR's segmentation of slice z as a labels layer of that one slice (placed at z in a volume,
    so it costs one slice of memory whatever the volume's depth); its data replaced in place."""
    from napari_paser.data.labels_convention import classes_to_layer

    data = classes_to_layer(routed.segmentation, n_classes=session.n_classes)
    translate = (0.0, 0.0)
    if len(session.shape) == 3:
        data, translate = data[None], (float(routed.z), 0.0, 0.0)
    if ROUTED in viewer.layers and viewer.layers[ROUTED].data.shape == data.shape:
        layer = viewer.layers[ROUTED]
        layer.data = data
        layer.translate = translate
        return
    if ROUTED in viewer.layers:
        viewer.layers.remove(ROUTED)
    viewer.add_labels(data, name=ROUTED, translate=translate, colormap=session.classes.layer_colors(),
                      opacity=0.5, visible=False, metadata=meta(session))
