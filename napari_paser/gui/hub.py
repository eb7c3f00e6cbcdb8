"""The shared state of the docked widgets of one viewer: the Session, its layers, the model's view toggle,
the keyboard shortcuts, and the error-to-notification boundary.

Every widget of a viewer talks to the same `Hub` (`hub_for(viewer)`), so the widgets can be
docked separately or together and still act on one session. Nothing slow runs on the GUI
thread: session work (create, open, propose, maps, routing, retrain, export) runs in a napari
thread worker, one job at a time, with its progress broadcast to every job bar (the hub is a
`runner.JobRunner`); layers are added one per event-loop turn; the regions and routing layers are
updated in place. Layers read the session's zarr arrays lazily (`LazyView`), so a volume larger than
memory is never loaded. The camera's arithmetic is in `camera`, where a layer's image was read from in
`image_source`.
"""

from __future__ import annotations

import functools
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal

from learners.errors import InputError
from napari_paser.errors import PaserInputError, os_error_line
from napari_paser.gui import camera as C
from napari_paser.gui import layers as L
from napari_paser.gui import regions_layer
from napari_paser.gui.image_source import in_place, layer_path
from napari_paser.gui.io import SESSION_KEY
from napari_paser.gui.layers import ABOVE, IMAGE, LABELS, MODEL_VIEW, REGIONS
from napari_paser.gui.layers import (  # noqa: F401 (re-exported for widgets, tests)
    ENTROPY, HIGHLIGHT, MODEL_COLORS, PRED, ROUTED, ROUTING, LazyView)
from napari_paser.gui.runner import JobRunner
from napari_paser.gui.warmup import warm_imports
from napari_paser.session.core import Session
from napari_paser.session.lock import FolderNotWritableError, SessionLockedError

SHORTCUTS = (
    ("N", "next", "go to the next proposal"),
    ("Shift-A", "accept", "accept the region on screen"),
    ("Shift-U", "accept_unchanged", "accept the model's suggestion on screen unchanged"),
    ("Shift-R", "revert", "revert the region on screen to the model's suggestion"),
    ("Shift-S", "skip", "skip the proposal on screen"),
    ("H", "model_view", "show / hide the model's view (prediction, entropy, entropy > gamma, routing)"),
)
"""Keyboard shortcuts of the viewer: key, action, what it does (listed in the dock and the README)."""
LAZY_REFRESH_MS = 400
"""A stale slice shown this long gets its maps refreshed in the background (not every slice scrolled past)."""


def guarded(fn: Callable) -> Callable:
    """Turn user errors of a GUI action into a napari notification (never a traceback dialog)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            show_error(str(exc))
            return None
        except OSError as exc:  # a path the user chose cannot be read or written: theirs to fix
            show_error(os_error_line(exc))
            return None

    return wrapper


class Hub(JobRunner):
    """One viewer's session and layers, and its background job (`JobRunner`); widgets listen to its signals."""

    session_changed = Signal()
    models_changed = Signal()
    maps_changed = Signal()
    regions_changed = Signal()
    accepted = Signal(int)  # how many regions were accepted
    curve_changed = Signal()
    model_view_changed = Signal(bool)
    routing_preview = Signal(object)  # a SliceRouting of the part on screen, emitted by a routing job's worker

    def __init__(self, viewer) -> None:
        super().__init__(on_error=self.notify_error)
        self._viewer = weakref.ref(viewer)  # the hub lives as long as its viewer, never longer
        self.session: Session | None = None
        self.gamma = 0.5
        self.samples = 5  # MC samples of maps (the Maps step's spin box)
        self.focus_z = 0  # the slice on screen, read by workers (refresh order)
        self.actions: dict[str, Callable[[], object]] = {}  # shortcut actions, registered by the widgets
        self._shown = set(L.MODEL_VIEW_DEFAULT)
        self._routed: tuple[Session, object] | None = None  # (session, its routed segmentation array)
        self._routed_dir = None
        self._routed_n = 0
        self._lazy = QTimer(self)
        self._lazy.setSingleShot(True)
        self._lazy.setInterval(LAZY_REFRESH_MS)
        self._lazy.timeout.connect(self._refresh_shown)
        viewer.dims.events.current_step.connect(self._on_step)
        for key, action, _ in SHORTCUTS:
            viewer.bind_key(key, functools.partial(self._shortcut, action), overwrite=True)

    @property
    def viewer(self):
        viewer = self._viewer()
        if viewer is None:
            raise PaserInputError("the viewer of this PaSeR dock was closed")
        return viewer

    # ------------------------------------------------------------------ session

    def require(self) -> Session:
        if self.session is None:
            raise PaserInputError("no session yet: start one on an image layer (or open a session folder) first")
        return self.session

    def start(self, folder: str | Path, layer, classes=None, colors=None, region_size: int = 64,
              on_ready: Callable[[Session], None] | None = None, copy: bool = False):
        """A new session on an image layer, created in the background; the layer stays as it is and the
        label canvas goes on top. A layer read from a zarr, OME-Zarr or HDF5 file is read in place from
        that file (nothing copied) unless `copy`. `on_ready(session)` runs once its layers are in the viewer."""
        if getattr(layer, "rgb", False):
            raise PaserInputError(f"layer {layer.name!r} is RGB: convert it to greyscale first (one value per pixel)")
        data, source, path = layer.data, layer.name, layer_path(layer)
        if getattr(layer, "multiscale", False):  # a pyramid (OME-Zarr): the session works on its full resolution
            data = data[0]

        def job(should_stop):
            image = data if copy or path is None else in_place(path, data) or data
            session = Session.create(folder, image, classes=classes, colors=colors, region_size=region_size,
                                     source=source, copy=copy)
            return session, L.session_layers(session, lambda: self.gamma, with_image=False)

        how = f"reading {Path(path).name} in place" if path and not copy else "copying the image"
        return self.run(job, on_return=functools.partial(self._install, on_ready=on_ready, remove=()),
                        what=f"starting the session ({how})", final="session started")

    def open(self, folder: str | Path, on_ready: Callable[[Session], None] | None = None):
        """Resume a session folder in the background: its image, labels, maps, regions and models."""

        def job(should_stop):
            try:
                session = Session.open(folder)
            except (SessionLockedError, FolderNotWritableError) as exc:  # view it; never a second writer
                session = Session.open(folder, read_only=True)
                session.warnings.insert(0, f"opened read-only: {exc}")
            return session, L.session_layers(session, lambda: self.gamma, with_image=True)

        def reader_copies(session) -> list[str]:  # File > Open's copies give way to the live layers
            opened, ours = str(session.folder.resolve()), {IMAGE, *L.SESSION_LAYERS}
            return [la.name for la in self.viewer.layers
                    if la.metadata.get(SESSION_KEY) == opened and la.name not in ours]

        def install(result) -> None:
            self._install(result, on_ready=on_ready, remove=reader_copies(result[0]))

        return self.run(job, on_return=install, what="opening the session (loading its models)",
                        final=f"opened the session {Path(folder).name}")

    def _install(self, result, on_ready, remove) -> None:
        """Swap in a new session's layers, one layer per event-loop turn (each add builds vispy nodes).

        Layers of the previous session are reused (new data set in place) rather than removed and added:
        cheaper, and removing all of them before adding new ones crashed vispy's next draw."""
        session, makers = result
        old = [n for n in dict.fromkeys((*remove, IMAGE)) if n in self.viewer.layers]
        added: list[str] = []
        previous = self.session
        steps = [functools.partial(setattr, self, "session", session)]
        if previous is not None and previous is not session:
            steps.append(previous.close)  # releases its hold on its folder (the lock is per folder and process)
        steps += [functools.partial(show_warning, note) for note in session.warnings]
        steps += [functools.partial(self._add, make, added) for make in makers]
        steps += [lambda n=name: n in added or self._remove(n) for name in old]  # one per turn: each removal
        # costs napari a full garbage collection
        steps.append(lambda: L.reset_routing(self.viewer, len(session.shape), self.routed_data(session)))

        def done() -> None:
            self.refresh_regions()
            self.select(LABELS)
            self.model_view_changed.emit(False)
            self.session_changed.emit()
            self.models_changed.emit()
            self.curve_changed.emit()
            if on_ready is not None:
                on_ready(session)

        self.later(steps + [done])

    def _add(self, make: Callable[[], object], added: list[str]) -> None:
        """Add a layer, or move its content into the previous session's layer of that name (`layers.put_layer`)."""
        added.append(L.put_layer(self.viewer.layers, make()))

    def _remove(self, name: str) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)

    def remove_layers(self) -> None:
        for name in (IMAGE, *L.SESSION_LAYERS):
            self._remove(name)

    def select(self, name: str) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[name]

    def current_z(self) -> int:
        """The slice on screen (0 for a 2D image)."""
        s = self.require()
        return int(self.viewer.dims.current_step[0]) if len(s.shape) == 3 else 0

    # ------------------------------------------------------------------ map layers and the model's view

    def refresh_maps(self) -> None:
        """Re-read the slice on screen of the map layers (after maps were written); visibility is the person's."""
        L.forget_reads(self.viewer.layers)
        for name in MODEL_VIEW:
            if name in self.viewer.layers and self.viewer.layers[name].visible:
                self.viewer.layers[name].refresh()
        self.maps_changed.emit()

    def set_gamma(self, gamma: float) -> None:
        """Highlight pixels whose entropy exceeds gamma (the paper's Fig. 7)."""
        self.gamma = float(gamma)
        if ABOVE in self.viewer.layers and self.viewer.layers[ABOVE].visible:
            self.viewer.layers[ABOVE].refresh()

    @property
    def model_view(self) -> bool:
        """Whether any of the model's overlays is shown."""
        return any(self.viewer.layers[n].visible for n in MODEL_VIEW if n in self.viewer.layers)

    def set_model_view(self, on: bool) -> None:
        """Show the model's overlays (those shown last time; entropy and its contours at first) or hide them all."""
        present = [self.viewer.layers[n] for n in MODEL_VIEW if n in self.viewer.layers]
        if not on:
            shown = {la.name for la in present if la.visible}
            self._shown = shown or self._shown
        for la in present:
            visible = on and la.name in self._shown
            if visible and not la.visible:
                la.visible = True
                la.refresh()
            elif not visible:
                la.visible = False
        self.model_view_changed.emit(on)

    def toggle_model_view(self) -> None:
        self.set_model_view(not self.model_view)

    # ------------------------------------------------------------------ regions and camera

    def refresh_regions(self) -> None:
        """Bring the regions layer (proposals numbered by rank, accepted ones in another colour) up to date
        in place, keeping the layer the person paints with selected."""
        s = self.require()
        if REGIONS not in self.viewer.layers:
            active = self.viewer.layers.selection.active
            self.viewer.layers.append(regions_layer.new_layer(s, REGIONS))
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
        regions_layer.sync(self.viewer.layers[REGIONS], regions_layer.region_items(s), len(s.shape) == 3)
        self.regions_changed.emit()

    def go_to(self, z: int, y0: int, x0: int, h: int, w: int) -> None:
        """Show slice z and centre the camera on the box, zoomed to about three boxes across."""
        C.go_to(self.viewer, self.require().shape, z, y0, x0, h, w)

    def camera(self):
        """The viewer's camera (napari 0.9 moved it to viewer.scene)."""
        return C.camera(self.viewer)

    def view_box(self) -> tuple[int, int, int, int] | None:
        """(y0, x0, y1, x1) of the session's slice on screen, in its pixels; None when unknown."""
        return None if self.session is None else C.view_box(self.viewer, self.session.shape)

    def routed_data(self, session: Session):
        """The zarr array PaSeR's routed segmentation of `session` is written into and read from (one per
        session, in a temporary folder removed with the hub): a slice costs a layer only when on screen."""
        import tempfile

        if self._routed is None or self._routed[0] is not session:
            if self._routed_dir is None:
                self._routed_dir = tempfile.TemporaryDirectory(prefix="paser-routed-")
            self._routed_n += 1
            folder = Path(self._routed_dir.name) / f"routed-{self._routed_n}.zarr"
            self._routed = (session, L.routed_array(session, folder))
        return self._routed[1]

    def route_job(self, session: Session, z: int, samples: int, lam: float | None):
        """A routing job for `run`: routes slice z in the worker, the part on screen first (a preview of it
        goes to `routing_preview` once its first maps tile is done, then the whole routing map, then the
        segmentation of the patches on screen before the rest's), and writes the segmentation into
        `routed_data` there (the GUI thread only refreshes the layer)."""
        from napari_paser.session.routing import route_in_view

        data, view = self.routed_data(session), self.view_box()

        def preview(routed) -> None:  # the segmentation of the patches on screen is written before it is shown
            if routed.segmentation is not None:
                L.write_routed(data, routed, session.n_classes)
            self.routing_preview.emit(routed)

        def job(should_stop):
            routed = yield from route_in_view(session, z, samples, lam, view, should_stop, preview)
            if routed is not None:
                L.write_routed(data, routed, session.n_classes)
            return routed

        return job

    def show_routing(self, routed) -> None:
        """The routing overlay of slice `routed.z` (in place), its segmentation layer refreshed; the model's
        view counts as shown (its toggle and H then hide the overlay at once)."""
        active = self.viewer.layers.selection.active
        session = self.require()

        def reselect() -> None:  # adding a layer selects it; the person's active layer stays
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
            self.model_view_changed.emit(self.model_view)  # the overlay is part of the model's view: its toggle says so

        data = self.routed_data(session) if routed.segmentation is not None else None
        L.forget_reads(self.viewer.layers)  # it may have mapped z
        self.later([*L.routing_steps(self.viewer, session, routed, data), reselect])

    # ------------------------------------------------------------------ shortcuts and lazy refresh

    def _shortcut(self, action: str, viewer=None) -> None:
        if action == "model_view":
            self.toggle_model_view()
        elif action in self.actions:
            self.actions[action]()

    def _on_step(self, event=None) -> None:
        if self.session is not None and len(self.session.shape) == 3:
            self.focus_z = int(self.viewer.dims.current_step[0])
            self._lazy.start()

    def _refresh_shown(self) -> None:
        """A slice with the previous model's maps is on screen: refresh its maps in the background."""
        s = self.session
        if s is None or self._viewer() is None or self.busy or "f0" not in s.models or len(s.shape) != 3:
            return
        z = self.current_z()
        if z not in s.stale_slices():
            return
        samples = self.samples

        def job(should_stop):
            return (yield from s.compute_maps([z], samples=samples, should_stop=should_stop))

        self.run(job, on_yield=lambda _e: self.refresh_maps(), what=f"refreshing the maps of slice {z}",
                 final=f"maps of slice {z} refreshed")

    # ------------------------------------------------------------------ the error-to-notification boundary

    def notify_error(self, exc: Exception) -> None:
        """A job's, a preview's or a GUI-thread step's error: a notification (a bug keeps its trace)."""
        if isinstance(exc, InputError):
            show_error(str(exc))
            return
        if isinstance(exc, OSError):
            show_error(os_error_line(exc))
            return
        traceback.print_exception(type(exc), exc, exc.__traceback__)  # a bug: keep the trace for the report
        show_error(f"the background job failed: {type(exc).__name__}: {exc}")


_HUBS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hub_for(viewer) -> Hub:
    """The hub of `viewer` (one per viewer, shared by all its PaSeR widgets)."""
    hub = _HUBS.get(viewer)
    if hub is None:
        warm_imports()
        hub = _HUBS[viewer] = Hub(viewer)
    return hub


def info(message: str) -> None:
    show_info(message)
