"""`paser demo --gui`: napari with the PaSeR dock on the sample data and models ready, walking
through the workflow (session, maps, routing, proposals, accept, retrain, export) and saving
a screenshot of each step into the output folder.

Models come from the headless demo's cache (`napari_paser.demo`: f0/f1/f2 trained once in
`<out>/run`); a routing policy is trained briefly on the demo data's "rl" split the first time
and cached as `<out>/gui/policy.pt`. With no display the demo re-runs itself under `xvfb-run`
and exits after the last screenshot; with a display it leaves napari open for the person.
The "person" of the walkthrough paints proposals from the sample's ground truth.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

PLUGIN, DOCK = "napari-paser", "PaSeR (all steps)"
POLICY_EPOCHS, POLICY_LAMBDA = 40, 0.0  # lambda 0: route by accuracy alone (quick demo models are close)
ACCEPT, RETRAIN_EPOCHS = 5, 3
XVFB_ENV = "PASER_DEMO_UNDER_XVFB"
WINDOW = (1600, 900)
GAMMA = 0.9  # of log(3) = 1.10: the quick demo f0 is unsure almost everywhere


def main(out: Path, keep_open: bool = True) -> int:
    """Run the walkthrough (under Xvfb when there is no display); return an exit status."""
    if not _has_display():
        return _rerun_under_xvfb(out)
    return walkthrough(Path(out), keep_open=keep_open and not os.environ.get(XVFB_ENV))


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _rerun_under_xvfb(out: Path) -> int:
    exe = shutil.which("xvfb-run")
    if exe is None:
        from napari_paser.errors import PaserInputError

        raise PaserInputError("no display and no xvfb-run: install xvfb (apt-get install xvfb) or run with a display")
    cmd = [exe, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m", "napari_paser.cli", "demo", "--gui",
           "--out", str(out)]
    print("no display: running the GUI demo under Xvfb (screenshots only)")
    return subprocess.call(cmd, env={**os.environ, XVFB_ENV: "1"})


# ----------------------------------------------------------------------------- models


def models_ready(out: Path) -> tuple[Path, Path]:
    """The demo run folder (trained on first use) and a routing policy for it (trained on first use)."""
    from napari_paser.demo import run_demo

    run_demo(out)
    policy = out / "gui" / "policy.pt"
    if not policy.is_file() or policy.stat().st_mtime < (out / "run" / "f2.pt").stat().st_mtime:
        train_demo_policy(out / "data" / "lowres", out / "run", policy)
    return out / "run", policy


def train_demo_policy(data: Path, run: Path, path: Path) -> Path:
    """Stage 2 of PaSeR, briefly: REINFORCE on the frozen f0/f1/f2 over the data's "rl" slices."""
    import torch

    from learners.checkpoint import load_checkpoint
    from learners.policy import PolicyConfig, PolicyNet, save_policy
    from learners.router_training import RLConfig, prepare_routing_data, train_policy
    from napari_paser.dataset import normalise, read_dataset, robust_range

    print(f"training a routing policy for {run} (lambda {POLICY_LAMBDA}, {POLICY_EPOCHS} epochs) ...")
    ds = read_dataset(data)
    x = normalise(ds.images, *robust_range(ds.images))
    idx = ds.split["rl"]
    models = [load_checkpoint(run / f"{r}.pt").model.eval() for r in ("f0", "f1", "f2")]
    torch.manual_seed(0)
    with torch.no_grad():
        table = prepare_routing_data(models, x[idx], ds.labels[idx], (4, 4), samples=5)
    policy = PolicyNet(PolicyConfig(n_classes=ds.n_classes, n_models=3, grid=(4, 4)))
    history = train_policy(policy, table, RLConfig(epochs=POLICY_EPOCHS, batch_size=4, lr=1e-3, lam=POLICY_LAMBDA))
    share = ", ".join(f"f{k} {s:.0%}" for k, s in enumerate(history[-1].share))
    print(f"policy: greedy reward {history[-1].greedy_reward:.3f}; patch shares {share}")
    save_policy(path, policy, {"lambda": POLICY_LAMBDA, "epochs": POLICY_EPOCHS, "run": str(run)})
    return path


# ----------------------------------------------------------------------------- walkthrough


def walkthrough(out: Path, keep_open: bool) -> int:
    """Open napari, do every step through the widgets, screenshot each."""
    import napari
    import torch

    run, policy = models_ready(out)
    shots = out / "gui"
    shots.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")  # keep the toast off the shots
    viewer = napari.Viewer(title="napari-paser demo")
    viewer.window._qt_window.resize(*WINDOW)  # screenshot code: a fixed window size
    viewer.open_sample(PLUGIN, "synthetic_lowres")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK)
    _settle(0.5)
    viewer.reset_view()
    steps = Steps(viewer, dock, shots, run, policy)
    for step in (steps.session, steps.maps, steps.routing, steps.propose, steps.accept, steps.retrain, steps.export):
        step()
    print(f"screenshots in {shots}")
    if keep_open:
        napari.run()
    else:
        viewer.close()
    return 0


class Steps:
    """The walkthrough's steps, each driving the dock's widgets as a person would."""

    def __init__(self, viewer, dock, shots: Path, run: Path, policy: Path) -> None:
        self.viewer, self.dock, self.shots, self.run, self.policy = viewer, dock, shots, run, policy
        self.hub = dock.hub
        self.n = 0

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole window (dock included)."""
        _settle(0.3)
        _close_toasts(self.viewer)
        self.n += 1
        path = self.shots / f"{self.n:02d}-{name}.png"
        self.viewer.screenshot(str(path), canvas_only=False, flash=False)
        print(f"  step {self.n}: {name} -> {path}")
        return path

    def wait(self, timeout: float = 600.0) -> None:
        t0 = time.monotonic()
        while self.hub.busy and time.monotonic() - t0 < timeout:
            _settle(0.05)

    def session(self) -> None:
        w = self.dock.show_step("Session")
        w.layer_box.setCurrentText("synthetic low-res (lowres)")
        folder = self.shots.parent / "gui-session"
        shutil.rmtree(folder, ignore_errors=True)
        w.folder.setText(str(folder))
        w.start()
        w.run_folder.setText(str(self.run))
        w.load_models()
        self.hub.require().load_policy(self.policy)
        self.hub.models_changed.emit()
        self.viewer.layers["phases (ground truth)"].visible = False
        self.viewer.dims.set_current_step(0, 8)
        self.shot("session")

    def maps(self) -> None:
        w = self.dock.show_step("Maps")
        w.compute(volume=True)
        self.wait()
        w.gamma.setValue(GAMMA)
        self.viewer.layers["paser f0 prediction"].visible = False
        self.shot("entropy")

    def routing(self) -> None:
        w = self.dock.show_step("Maps")
        for name in ("paser f0 entropy", "paser entropy > gamma"):
            self.viewer.layers[name].visible = False
        w.route()
        self.wait()
        self.shot("routing")
        self.viewer.layers["paser routing"].visible = False

    def propose(self) -> None:
        w = self.dock.show_step("Label")
        w.sampler.setCurrentText("entropy")
        w.k.setValue(8)
        w.propose()
        self.viewer.layers["paser entropy > gamma"].visible = True
        self.shot("proposals")

    def accept(self) -> None:
        """Paint the proposals on screen from the ground truth and accept them one by one."""
        w = self.dock.show_step("Label")
        s, truth = self.hub.require(), self.viewer.layers["phases (ground truth)"].data
        for _ in range(ACCEPT):
            p = w.current
            ix = (p.z, slice(p.y0, p.y0 + p.h), slice(p.x0, p.x0 + p.w))
            s.labels[ix] = np.asarray(truth[ix], np.uint8)
            self.viewer.layers["paser labels"].refresh()
            w.accept()
        self.viewer.layers["paser entropy > gamma"].visible = False
        last = s.accepted[-1]
        self.viewer.dims.set_current_step(0, last.z)
        self.viewer.reset_view()
        self.shot("accepted")

    def retrain(self) -> None:
        w = self.dock.show_step("Train")
        w.epochs.setValue(RETRAIN_EPOCHS)
        w.retrain()
        self.wait()
        self.viewer.layers["paser f0 prediction"].visible = True
        self.viewer.layers["paser labels"].visible = False
        self.viewer.reset_view()
        self.shot("retrained")
        self.viewer.layers["paser labels"].visible = True

    def export(self) -> None:
        w = self.dock.show_step("Export")
        target = self.shots.parent / "gui-export"
        shutil.rmtree(target, ignore_errors=True)
        w.out.setText(str(target))
        w.full.setChecked(True)
        w.export()
        self.shot("export")


def _close_toasts(viewer) -> None:
    """Close napari's notification pop-ups so they do not cover the screenshot (screenshot code: private API)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _settle(0.1)


def _settle(seconds: float) -> None:
    """Let Qt process events (paint, worker signals) for a while."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)
