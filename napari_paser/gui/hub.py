"""The shared state of the docked widgets of one viewer: the Session, its layers, the one
background job, and the error-to-notification boundary.

Every widget of a viewer talks to the same `Hub` (`hub_for(viewer)`), so the widgets can be
docked separately or together and still act on one session. Layers read the session's zarr
arrays lazily (`LazyView`), so a volume larger than memory is never loaded; after the session
changes an array, `refresh_*` asks napari to re-read the visible slice.
"""

from __future__ import annotations

import functools
import math
import threading
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from learners.errors import InputError
from napari_paser.errors import PaserInputError
from napari_paser.gui.io import SESSION_KEY, region_shapes
from napari_paser.session.core import Session

LABELS, PRED, ENTROPY, ABOVE = "paser labels", "paser f0 prediction", "paser f0 entropy", "paser entropy > gamma"
ROUTING, REGIONS, ROUTED = "paser routing", "paser regions", "paser routed segmentation"
IMAGE = "paser image"
MODEL_COLORS = ("#2ca02c", "#ffbf00", "#d62728", "#9467bd", "#8c564b")
"""Routing overlay colours of f0, f1, f2, ...: green = cheap, red = expensive."""
HIGHLIGHT = "#00ffff"


def guarded(fn: Callable) -> Callable:
    """Turn user errors of a GUI action into a napari notification (never a traceback dialog)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            show_error(str(exc))
            return None

    return wrapper


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


class Hub(QObject):
    """One viewer's session, layers and background job; widgets listen to its signals."""

    session_changed = Signal()
    models_changed = Signal()
    maps_changed = Signal()
    regions_changed = Signal()
    accepted = Signal(int)  # how many regions were accepted
    curve_changed = Signal()
    busy_changed = Signal(bool)

    def __init__(self, viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.session: Session | None = None
        self.gamma = 0.5
        self.worker = None
        self.stop = threading.Event()

    # ------------------------------------------------------------------ session

    def require(self) -> Session:
        if self.session is None:
            raise PaserInputError("no session yet: start one on an image layer (or open a session folder) first")
        return self.session

    def start(self, folder: str | Path, layer, classes=None, colors=None, region_size: int = 64) -> Session:
        """A new session on an image layer; the layer stays as it is and the label canvas goes on top."""
        if getattr(layer, "rgb", False):
            raise PaserInputError(f"layer {layer.name!r} is RGB: convert it to greyscale first (one value per pixel)")
        if getattr(layer, "multiscale", False):
            raise PaserInputError(f"layer {layer.name!r} is multiscale: open its full-resolution level as an image")
        session = Session.create(folder, layer.data, classes=classes, colors=colors, region_size=region_size,
                                 source=layer.name)
        self._set(session, image_layer=layer)
        return session

    def open(self, folder: str | Path) -> Session:
        """Resume a session folder: its image, labels, maps, regions and models."""
        session = Session.open(folder)
        opened = str(session.folder.resolve())
        for layer in [la for la in self.viewer.layers if la.metadata.get(SESSION_KEY) == opened]:
            self.viewer.layers.remove(layer)  # the reader's copies (File > Open) give way to live layers
        self._set(session, image_layer=None)
        return session

    def _set(self, session: Session, image_layer) -> None:
        self.remove_layers()
        self.session = session
        if image_layer is None:
            lo, hi = session.state.image["lo"], session.state.image["hi"]
            self.viewer.add_image(session.image, name=IMAGE, colormap="gray", contrast_limits=(lo, hi or lo + 1),
                                  metadata=self._meta())
        self.add_map_layers()
        self.viewer.add_labels(session.labels, name=LABELS, colormap=session.classes.layer_colors(), opacity=0.6,
                               metadata=self._meta())
        self.refresh_regions()
        self.select(LABELS)
        self.session_changed.emit()
        self.models_changed.emit()
        self.curve_changed.emit()

    def _meta(self) -> dict:
        return {SESSION_KEY: str(self.require().folder.resolve()), "class_names": list(self.require().classes.names)}

    def remove_layers(self) -> None:
        for name in (IMAGE, LABELS, PRED, ENTROPY, ABOVE, ROUTING, ROUTED, REGIONS):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    def select(self, name: str) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[name]

    def current_z(self) -> int:
        """The slice on screen (0 for a 2D image)."""
        s = self.require()
        return int(self.viewer.dims.current_step[0]) if len(s.shape) == 3 else 0

    # ------------------------------------------------------------------ map layers

    def add_map_layers(self) -> None:
        """f0 prediction (labels), entropy (magma) and the entropy > gamma highlight, read lazily."""
        s = self.require()
        meta, top = self._meta(), math.log(s.n_classes)
        self.viewer.add_labels(LazyView(s.maps["prediction"], self._prediction, np.uint8), name=PRED,
                               colormap=s.classes.layer_colors(), opacity=0.5, visible=False, metadata=meta)
        self.viewer.add_image(s.maps["entropy"], name=ENTROPY, colormap="magma", contrast_limits=(0.0, top),
                              blending="additive", opacity=0.7, visible=False, metadata=meta)
        self.viewer.add_labels(LazyView(s.maps["entropy"], lambda a, _: a > self.gamma, np.uint8), name=ABOVE,
                               colormap={0: "transparent", None: "transparent", 1: HIGHLIGHT}, opacity=0.8,
                               visible=False, metadata=meta)

    def _prediction(self, block: np.ndarray, index: tuple) -> np.ndarray:
        """Class k shown as k + 1, and 0 on slices whose maps were never computed."""
        s = self.require()
        out = block.astype(np.uint8) + 1
        if len(s.shape) == 2:
            return out * bool(s.state.maps)
        zs = np.arange(s.shape[0])[index[0]] if index else np.arange(s.shape[0])
        done = np.isin(zs, [int(z) for z in s.state.maps])
        return out * (done if np.ndim(zs) == 0 else done.reshape(-1, *([1] * (out.ndim - 1)))).astype(np.uint8)

    def refresh_maps(self, show: bool = True) -> None:
        for name in (PRED, ENTROPY, ABOVE):
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.visible = layer.visible or (show and name in (PRED, ENTROPY))
                layer.refresh()
        self.maps_changed.emit()

    def set_gamma(self, gamma: float) -> None:
        """Highlight pixels whose entropy exceeds gamma (the paper's Fig. 7)."""
        self.gamma = float(gamma)
        if ABOVE in self.viewer.layers:
            layer = self.viewer.layers[ABOVE]
            layer.visible = True
            layer.refresh()

    # ------------------------------------------------------------------ regions

    def refresh_regions(self) -> None:
        """Replace the regions layer (proposals numbered by rank, accepted ones in another colour),
        keeping the layer the person paints with selected."""
        s = self.require()
        active = self.viewer.layers.selection.active
        if REGIONS in self.viewer.layers:
            self.viewer.layers.remove(REGIONS)
        shapes = region_shapes(s, name=REGIONS)
        if shapes is not None:
            data, kwargs, _ = shapes
            self.viewer.add_shapes(data, **kwargs)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self.regions_changed.emit()

    def go_to(self, z: int, y0: int, x0: int, h: int, w: int) -> None:
        """Show slice z and centre the camera on the box, zoomed to about three boxes across."""
        s = self.require()
        if len(s.shape) == 3:
            self.viewer.dims.set_current_step(0, int(z))
        self.viewer.reset_view()
        camera = self.camera()
        camera.center = (y0 + h / 2 - 0.5, x0 + w / 2 - 0.5)
        camera.zoom = camera.zoom * max(1.0, min(s.shape[-2:]) / (3 * max(h, w)))

    def camera(self):
        """The viewer's camera (napari 0.9 moved it to viewer.scene)."""
        scene = getattr(self.viewer, "scene", None)
        return scene.camera if scene is not None else self.viewer.camera

    # ------------------------------------------------------------------ routing

    def show_routing(self, routed) -> None:
        """The patch grid of slice `routed.z`, each patch filled with the colour of its model."""
        s = self.require()
        grid = routed.grid()
        rects, models = [], []
        for cell, box in enumerate(grid.boxes()):
            corners = np.array([[box.y0, box.x0], [box.y0, box.x0 + box.w], [box.y0 + box.h, box.x0 + box.w],
                                [box.y0 + box.h, box.x0]], float) - 0.5
            if len(s.shape) == 3:
                corners = np.hstack([np.full((4, 1), float(routed.z)), corners])
            rects.append(corners)
            models.append(int(routed.routing.ravel()[cell]))
        colors = [MODEL_COLORS[m % len(MODEL_COLORS)] for m in models]
        if ROUTING in self.viewer.layers:
            self.viewer.layers.remove(ROUTING)
        active = self.viewer.layers.selection.active
        self.viewer.add_shapes(rects, shape_type="rectangle", name=ROUTING, face_color=colors, edge_color="white",
                               edge_width=1, opacity=0.45, features={"model": [routed.names[m] for m in models]},
                               text={"string": "{model}", "color": "white", "size": 9})
        if routed.segmentation is not None:
            self._show_routed(routed)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def _show_routed(self, routed) -> None:
        """PaSeR's segmentation of slice z as a labels layer of that one slice (placed at z in a volume,
        so it costs one slice of memory whatever the volume's depth)."""
        from napari_paser.data.labels_convention import classes_to_layer

        s = self.require()
        data = classes_to_layer(routed.segmentation, n_classes=s.n_classes)
        translate = (0.0, 0.0)
        if len(s.shape) == 3:
            data, translate = data[None], (float(routed.z), 0.0, 0.0)
        if ROUTED in self.viewer.layers:
            self.viewer.layers.remove(ROUTED)
        self.viewer.add_labels(data, name=ROUTED, translate=translate, colormap=s.classes.layer_colors(),
                               opacity=0.5, visible=False, metadata=self._meta())

    # ------------------------------------------------------------------ the background job

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def run(self, job: Callable, on_yield: Callable | None = None, on_return: Callable | None = None,
            on_done: Callable | None = None, what: str = "a job"):
        """Start `job(should_stop)` (a generator or plain function) in a napari thread worker.

        One job at a time (maps, routing and training share f0). User errors raised inside the
        worker become notifications too. `on_done` runs after return, error or abort.
        """
        from napari.qt.threading import create_worker

        if self.worker is not None:
            raise PaserInputError(f"another job is running: wait for it or cancel it before starting {what}")
        self.stop.clear()
        worker = create_worker(job, self.stop.is_set, _start_thread=False, _connect={"errored": self._errored})
        if on_yield is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(on_yield)
        if on_return is not None:
            worker.returned.connect(on_return)
        worker.finished.connect(functools.partial(self._finished, worker, on_done))
        self.worker = worker
        self.busy_changed.emit(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the job to stop at its next check (between slices or optimiser steps: well under a second)."""
        self.stop.set()

    def _errored(self, exc: Exception) -> None:
        if isinstance(exc, InputError):
            show_error(str(exc))
            return
        traceback.print_exception(type(exc), exc, exc.__traceback__)  # a bug: keep the trace for the report
        show_error(f"the background job failed: {type(exc).__name__}: {exc}")

    def _finished(self, worker, on_done) -> None:
        if self.worker is worker:
            self.worker = None
        self.busy_changed.emit(False)
        if on_done is not None:
            on_done()


_HUBS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hub_for(viewer) -> Hub:
    """The hub of `viewer` (one per viewer, shared by all its PaSeR widgets)."""
    hub = _HUBS.get(viewer)
    if hub is None:
        hub = _HUBS[viewer] = Hub(viewer)
    return hub


def info(message: str) -> None:
    show_info(message)
