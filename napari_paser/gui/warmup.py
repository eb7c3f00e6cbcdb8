"""Import in a background thread what the first actions would otherwise import on the GUI thread.

Measured in a napari window on the SOC volume (2 cores): the session's first Labels layer imports
pandas (napari's layer features), 1.0 s of a 2.4 s freeze at Start. Importing it while the person
is still choosing an image takes that second off Start; a Start clicked sooner waits for the same
import, as it would have anyway. (torch._dynamo, ~800 modules that the first routing imports through
`F.pad`'s compile guard, is left to the routing worker: importing it here competed with the GUI
thread for seconds. Freezing the collector's long-lived objects with `gc.freeze()` would shorten
napari's full collections, 0.6-1.5 s on each layer removal, to 0.1-0.3 s; not done: a viewer alive
at the freeze could never be collected. The session's layers are reused in place instead. Nor is
pint's application registry warmed, which napari builds on the GUI thread for a viewer's first
layer: about half of the 1.0 s that "Open session" into an empty viewer froze (1.07 of
2.1 s under cProfile for napari's first Image layer alone); pint's LazyRegistry swaps its class before it initialises, so warming
it here would race napari's own layer creation on the GUI thread.)
A module that fails to import here is left for the action that needs it to report.
"""

from __future__ import annotations

import importlib
import threading

WARM_MODULES = ("pandas",)
STEP_EXTRAS = ("matplotlib.figure", "matplotlib.backends.backend_qtagg", "napari_paser.data.baselines")
"""What a dock's later tabs import beside their own modules (matplotlib: the Train step's learning curve;
scikit-learn's forest and skimage's features: the forest assist of the first retrain, whose import in the
retrain's worker held the GIL for up to half a second).
With those modules (`widgets.STEPS`), about a second the GUI thread froze for when the dock opened. Imported
by `warm_steps` while the dock shows its first tab; the dock builds those tabs only once that import is over
(two threads importing one package at once can see it half made)."""
_threads: dict[str, threading.Thread] = {}


def warm_imports(modules: tuple[str, ...] = WARM_MODULES) -> threading.Thread:
    """Start (once per process) a daemon thread that imports `modules`; return it."""
    return _once("paser-warm-imports", modules)


def warm_steps(modules: tuple[str, ...]) -> threading.Thread:
    """Start (once per process) a daemon thread that imports the dock's later steps' `modules` and
    `STEP_EXTRAS`; return it."""
    return _once("paser-warm-steps", (*modules, *STEP_EXTRAS))


def _once(name: str, modules: tuple[str, ...]) -> threading.Thread:
    if name not in _threads:
        _threads[name] = threading.Thread(target=_import_all, args=(modules,), name=name, daemon=True)
        _threads[name].start()
    return _threads[name]


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the action that needs it raises with its own message
            continue
