"""Measuring how long the GUI thread is away from its event loop while an action runs, and a run folder
to act on: what the GUI latency benchmarks (`bench_ui_latency.py`, `bench_ui_first_actions.py`) share.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROBE_MS = 5
BENCH_FILES = ("bench_ui_latency.py", "bench_ui_actions_2048.py", "gui_probe.py")
"""The benchmarks' own files: left out of the stacks `StallSampler` reports."""


class GapProbe:
    """The gaps between ticks of a precise PROBE_MS QTimer while an action and its background work run."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PROBE_MS)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self.last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self.last) * 1000)
        self.last = now

    def measure(self, action, hub, settle: float = 0.5, timeout: float = 900) -> dict:
        """Run `action` inside the measured window, then process events until the hub is idle plus `settle` s."""
        from qtpy.QtWidgets import QApplication

        self.gaps, self.last = [], time.perf_counter()
        self.timer.start()
        t0 = time.perf_counter()
        action()
        idle_since = None
        while time.perf_counter() - t0 < timeout:
            QApplication.processEvents()
            time.sleep(0.0005)
            if hub.busy or hub.previewing:
                idle_since = None
            elif idle_since is None:
                idle_since = time.perf_counter()
            elif time.perf_counter() - idle_since > settle:
                break
        self.timer.stop()
        self._tick()
        g = np.asarray(self.gaps)
        return {"max_gap_ms": round(float(g.max()), 1), "p99_ms": round(float(np.percentile(g, 99)), 1),
                "ticks": int(g.size), "seconds": round(time.perf_counter() - t0, 2)}


def bench_run(folder: Path, n_classes: int) -> Path:
    """A run folder with f0/f1/f2 of the shipped preset sizes and a bank of three routing policies, untrained
    (latency does not depend on the weights, only on the work each action does); DQN uses the shipped agent."""
    import torch

    from learners.checkpoint import save_checkpoint
    from learners.routing.bank import PolicyBank, save_bank
    from learners.routing.policy import PolicyConfig, PolicyNet
    from learners.unet import UNet, preset_config

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for role, size in (("f0", "tiny"), ("f1", "medium"), ("f2", "large")):
        save_checkpoint(folder / f"{role}.pt", UNet(preset_config(size, n_classes=n_classes)))
    save_bank(folder, PolicyBank({lam: PolicyNet(PolicyConfig(n_classes=n_classes)) for lam in (0.0, 0.3, 1.0)}))
    return folder


class StallSampler:
    """Where the GUI thread is while the probe is late: a helper thread samples the main thread's Python
    stack every 50 ms once the last tick is over 150 ms old (frames inside Qt/C++ show as the event loop)."""

    def __init__(self, probe: GapProbe) -> None:
        import collections
        import threading

        self.probe, self.main = probe, threading.main_thread().ident
        self.counts: collections.Counter = collections.Counter()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        import traceback

        while True:
            time.sleep(0.05)
            try:
                active = self.probe.timer.isActive()
            except RuntimeError:  # the QTimer went with the application: the run is over
                return
            if active and time.perf_counter() - self.probe.last > 0.15:
                frame = sys._current_frames().get(self.main)
                if frame is not None:
                    stack = [f for f in traceback.extract_stack(frame) if not f.filename.endswith(BENCH_FILES)]
                    self.counts[" <- ".join(f"{f.name} ({Path(f.filename).name}:{f.lineno})"
                                            for f in reversed(stack[-6:])) or "Qt event loop (C++)"] += 1

    def take(self, n: int = 3) -> list[str]:
        top = [f"{c * 50} ms: {k}" for k, c in self.counts.most_common(n)]
        self.counts.clear()
        return top


def under_xvfb() -> int | None:
    """Without a display: this script run again under xvfb-run (its exit status, 2 without xvfb); else None."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    exe = shutil.which("xvfb-run")
    if exe is None:
        print("no display and no xvfb-run: install xvfb", file=sys.stderr)
        return 2
    return subprocess.call([exe, "-a", "-s", "-screen 0 1920x1200x24", sys.executable, *sys.argv])


def screenshot(viewer, folder: Path | None, name: str, pictures: list[str]) -> None:
    """Save the whole window as `folder/name.png` (nothing when `folder` is None) and note its path."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        pictures.append(str(path))


def open_dock(title: str, image: np.ndarray, name: str):
    """A 1600 x 1000 napari window showing `image` as layer `name`, with the PaSeR dock: (viewer, dock)."""
    import napari

    from napari_paser.gui.widgets import PaserWidget

    viewer = napari.Viewer(title=title)
    viewer.window.resize(1600, 1000)
    viewer.add_image(image, name=name)
    dock = PaserWidget(viewer)
    viewer.window.add_dock_widget(dock, name="PaSeR")
    return viewer, dock
