"""Take one-time costs off the GUI thread before the first action: imports, and the garbage
collector's scans of objects that live as long as the process.

Measured in a napari window on the SOC volume (2 cores): the session's first Labels layer imports
pandas (napari's layer features), 1.0 s of a 2.4 s freeze at Start; the first routing imports
torch._dynamo (~800 modules, through `F.pad`'s compile guard) in the job's worker. And every full
garbage collection (napari runs one each time a layer is removed, Python when its counters say so)
scanned the millions of objects of torch, napari and their imports: 0.6-1.5 s of frozen window each.
So a daemon thread imports those modules while the person is still choosing an image, then
`gc.freeze()` moves everything alive into the collector's permanent generation; later collections
scan only what was made afterwards (measured 0.08-0.28 s). Frozen objects are still freed by
reference counting; only cycles among them stay, a one-time cost.
A module that fails to import here is left for the action that needs it to report.
"""

from __future__ import annotations

import gc
import importlib
import threading

WARM_MODULES = ("pandas", "torch._dynamo")
_started: list[threading.Thread] = []


def warm_up(modules: tuple[str, ...] = WARM_MODULES) -> threading.Thread:
    """Start (once per process) a daemon thread that imports `modules`, then freezes the collector; return it."""
    if not _started:
        thread = threading.Thread(target=_run, args=(modules,), name="paser-warm-up", daemon=True)
        _started.append(thread)
        thread.start()
    return _started[0]


def _run(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the action that needs it raises with its own message
            continue
    gc.freeze()
