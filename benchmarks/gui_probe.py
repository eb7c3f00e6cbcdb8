"""Measuring how long the GUI thread is away from its event loop while an action runs, and a run folder
to act on: what the GUI latency benchmarks (`bench_ui_latency.py`, `bench_ui_first_actions.py`) share.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

PROBE_MS = 5


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
