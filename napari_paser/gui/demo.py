"""`paser demo --gui`: napari with the PaSeR dock on the demo data and models ready, walking
through the workflow (session, maps, routing, proposals, accept, retrain, export) and saving
a screenshot of each step into the output folder.

Models come from the headless demo's cache (`napari_paser.jobs.demo`: f0/f1/f2 trained once in
`<out>/run` on synthetic slices of a sparse-angle, low-resolution scan); a bank of routing policies
(one per lambda, `paser policy`, patches with the demo's halo of context) is trained briefly on the
demo data's "rl" split the first time and cached in `<out>/run/policies`. The routing step opens at
the bank's lambda whose routing of the "val" slices is the most mixed (`opening_lambdas`) and then
moves the slider to the lambda that routes most differently from it. The image the walkthrough
opens is the demo data's held-back test slices, which neither the models nor the policies saw. With no display the demo re-runs itself under `xvfb-run`
and exits after the last screenshot; with a display it leaves napari open for the person.
The "person" of the walkthrough paints proposals from the demo data's ground truth, clicks the
dock's buttons and waits for each background job as a person would; the screenshots show the
window as it is (overlays and notifications included), through public napari API only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PLUGIN, DOCK = "napari-paser", "PaSeR (all steps)"
POLICY_EPOCHS, POLICY_LAMBDAS = 40, (0.0, 0.05, 0.07, 0.1, 0.3, 1.0)  # f1 costs 6% of the models' parameters
POLICY_DEFAULT = 0.05  # policy.pt: below the lambda where f1's gain over f0 on the demo data stops paying for its cost
ACCEPT, RETRAIN_EPOCHS, ROUNDS = 5, 3, 3  # rounds of propose, accept, retrain: a learning curve of 3 points
XVFB_ENV = "PASER_DEMO_UNDER_XVFB"
WINDOW = (1800, 1050)  # wide enough for the dock (tabs, learning curve) beside the canvas
REGION = 32  # labeling regions = the routing patches of the demo's 128 x 128 slices (4 x 4 per slice)
IMAGE_LAYER, TRUTH_LAYER = "demo scan (held-back slices)", "phases (ground truth)"
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
    cmd = [exe, "-a", "-s", "-screen 0 1920x1200x24", sys.executable, "-m", "napari_paser.cli", "demo", "--gui",
           "--out", str(out)]
    print("no display: running the GUI demo under Xvfb (screenshots only)")
    return subprocess.call(cmd, env={**os.environ, XVFB_ENV: "1"})


# ----------------------------------------------------------------------------- models


def models_ready(out: Path) -> Path:
    """The demo run folder, with its models and policy bank trained on first use."""
    from napari_paser.jobs.demo import DEMO_HALO, embedded_dataset, run_demo
    from napari_paser.jobs.policy import format_bank, train_policies

    run_demo(out)
    run = out / "run"
    if not _bank_is_current(run, DEMO_HALO):
        print(f"training routing policies for {run} (lambda {', '.join(map(str, POLICY_LAMBDAS))}, "
              f"halo {DEMO_HALO} px) ...")
        summary = train_policies(embedded_dataset(out / "data"), run, POLICY_LAMBDAS, default=POLICY_DEFAULT,
                                 epochs=POLICY_EPOCHS, halo=DEMO_HALO)
        print(format_bank(summary))
    return run


def _bank_is_current(run: Path, halo: int) -> bool:
    """Whether `run` holds a bank trained after its f2, with the demo's lambdas and halo."""
    path = run / "policies" / "bank.json"
    if not path.is_file() or path.stat().st_mtime < (run / "f2.pt").stat().st_mtime:
        return False
    bank = json.loads(path.read_text())
    return bank.get("halo") == halo and bank.get("lambdas") == list(POLICY_LAMBDAS)


def opening_lambdas(run: Path, lambdas: list[float]) -> tuple[float, float]:
    """The lambda the routing step opens at and the one it moves to: the bank member whose routing of the
    val slices is the most mixed (largest share of its second model; `bank.json`), and the member whose
    shares differ most from it (the farthest lambda among equals). Without bank.json (a run from
    elsewhere): the lowest and the highest."""
    path = run / "policies" / "bank.json"
    rows = json.loads(path.read_text())["policies"] if path.is_file() else {}
    shares = {lam: np.array(list(rows[f"{lam:.3f}"]["patch_share"].values())) for lam in lambdas
              if f"{lam:.3f}" in rows}
    if len(shares) < 2:
        return lambdas[0], lambdas[-1]
    first = max(shares, key=lambda lam: np.sort(shares[lam])[-2])
    distance = {lam: round(float(np.abs(v - shares[first]).sum()), 6) for lam, v in shares.items()}
    second = max(shares, key=lambda lam: (distance[lam], abs(lam - first)))
    return first, second


# ----------------------------------------------------------------------------- walkthrough


def walkthrough(out: Path, keep_open: bool) -> int:
    """Open napari, do every step through the widgets, screenshot each."""
    import napari
    import torch

    from napari_paser.jobs.demo import demo_threads

    run = models_ready(out)
    shots = out / "gui"
    torch.set_num_threads(demo_threads())
    viewer = napari.Viewer(title="napari-paser demo")
    viewer.window.resize(*WINDOW)  # after showing: napari's show() sets its own (settings') size
    run_steps(viewer, run, shots)
    print(f"screenshots in {shots}")
    if keep_open:
        napari.run()
    else:
        viewer.close()
    return 0


def run_steps(viewer, run: Path, shots: Path, data: Path | None = None) -> list[Path]:
    """On `viewer`: open the demo's held-back slices (`data`, default the dataset beside `run`), dock the
    plugin, do every step with `run`'s models; the screenshots."""
    shots.mkdir(parents=True, exist_ok=True)
    open_held_back(viewer, data if data is not None else _demo_data(run))
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK)
    _settle(0.5)
    viewer.reset_view()
    steps = Steps(viewer, dock, shots, run)
    for step in (steps.session, steps.maps, steps.routing, steps.propose, steps.accept, steps.retrain, steps.export):
        step()
    return steps.paths


def _demo_data(run: Path) -> Path:
    from napari_paser.jobs.demo import embedded_dataset

    return embedded_dataset(run.parent / "data")


def open_held_back(viewer, data: Path) -> None:
    """The demo data's test slices as the person's scan, with their ground truth (hidden once the session starts)."""
    from napari_paser.data.labels_convention import classes_to_layer
    from napari_paser.jobs.demo import DEMO_DEGRADATION, held_back

    images, labels, idx = held_back(data)
    viewer.add_image(images, name=IMAGE_LAYER, colormap="gray", contrast_limits=(0.0, 1.0),
                     metadata={"source": str(data), "slices": idx, "degradation": DEMO_DEGRADATION})
    viewer.add_labels(classes_to_layer(labels, n_classes=3), name=TRUTH_LAYER, opacity=0.4)


def focus_slice(run: Path, n_slices: int) -> int:
    """The held-back slice where f1 and f2 beat f0 on the most patches (`patch-gains.json`), else the middle one:
    the slice where routing has the most to decide."""
    from napari_paser.jobs.demo import GAINS_FILE

    path = run / GAINS_FILE
    if not path.is_file():
        return n_slices // 2
    gains = json.loads(path.read_text())
    won = np.add(gains["f1"]["per_slice_won"], gains["f2"]["per_slice_won"])
    return int(np.argmax(won)) if len(won) == n_slices else n_slices // 2


class Steps:
    """The walkthrough's steps, each driving the dock's widgets as a person would."""

    def __init__(self, viewer, dock, shots: Path, run: Path) -> None:
        self.viewer, self.dock, self.shots, self.run = viewer, dock, shots, run
        self.hub = dock.hub
        self.paths: list[Path] = []

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole window (dock included), as the person sees it."""
        _settle(0.5)
        path = self.shots / f"{len(self.paths) + 1:02d}-{name}.png"
        self.viewer.screenshot(str(path), canvas_only=False, flash=False)
        self.paths.append(path)
        print(f"  step {len(self.paths)}: {name} -> {path}")
        return path

    def wait(self, timeout: float = 600.0) -> None:
        """Wait for the background job (and the layers it adds) as a person would, watching the progress bar."""
        t0 = time.monotonic()
        while (self.hub.busy or self.hub.previewing) and time.monotonic() - t0 < timeout:
            _settle(0.05)

    def session(self) -> None:
        w = self.dock.show_step("Session")
        w.layer_box.setCurrentText(IMAGE_LAYER)
        folder = self.shots.parent / "gui-session"
        shutil.rmtree(folder, ignore_errors=True)
        w.folder.setText(str(folder))
        w.region.setValue(REGION)
        w.start_button.click()
        self.wait()
        w.run_folder.setText(str(self.run))
        w.load_button.click()
        self.wait()
        self.viewer.layers[TRUTH_LAYER].visible = False  # the person's own image has no ground truth
        self.viewer.dims.set_current_step(0, focus_slice(self.run, len(self.viewer.layers[IMAGE_LAYER].data)))
        self.shot("session")

    def maps(self) -> None:
        w = self.dock.show_step("Maps")
        w.gamma.setValue(GAMMA)
        w.volume_button.click()
        self.wait()
        self.shot("entropy")

    def routing(self) -> None:
        w = self.dock.show_step("Maps")
        first, second = opening_lambdas(self.run, self.hub.require().policy_lambdas)
        w.lam.setValue(first)
        w.route_button.click()
        self.wait()
        self.shot("routing")
        w.lam.setValue(second)  # live: the bank's policy at that lambda re-routes the slice
        self.wait()
        self.shot("routing-other-lambda")
        w.lam.setValue(first)
        self.wait()
        self.press("model_view")  # done looking at the model: hide its view (H) to label on the image itself

    def press(self, action: str) -> None:
        """Press the keyboard shortcut of `action`, as the person would."""
        from napari.utils.key_bindings import coerce_keybinding

        from napari_paser.gui.hub import SHORTCUTS

        key = next(k for k, a, _ in SHORTCUTS if a == action)
        self.viewer.keymap[coerce_keybinding(key)](self.viewer)
        _settle(0.1)

    def propose(self) -> None:
        w = self.dock.show_step("Label")
        w.sampler.setCurrentText("entropy")
        w.k.setValue(8)
        w.propose_button.click()
        self.wait()
        self.shot("proposals")

    def paint_and_accept(self, n: int) -> int | None:
        """Paint the proposal on screen from the ground truth and accept it, n times; the last one's slice."""
        w = self.dock.show_step("Label")
        s, truth = self.hub.require(), self.viewer.layers[TRUTH_LAYER].data
        z = None
        for _ in range(n):
            p = w.current
            if p is None:
                break
            ix = (p.z, slice(p.y0, p.y0 + p.h), slice(p.x0, p.x0 + p.w))
            s.labels[ix] = np.asarray(truth[ix], np.uint8)
            self.viewer.layers["paser labels"].refresh()
            w.accept_button.click()
            _settle(0.1)
            z = p.z
        return z

    def accept(self) -> None:
        z = self.paint_and_accept(ACCEPT)
        if z is not None:  # look back at the whole slice: painted, accepted (cyan) and pending (yellow) regions
            self.viewer.dims.set_current_step(0, z)
            self.viewer.reset_view()
        self.shot("accepted")

    def retrain(self) -> None:
        """Rounds of retrain, propose, paint and accept: the learning curve grows a point per round."""
        for round_ in range(ROUNDS):
            w = self.dock.show_step("Train")
            w.epochs.setValue(RETRAIN_EPOCHS)
            w.train_button.click()
            self.wait()
            if round_ < ROUNDS - 1:
                label = self.dock.show_step("Label")
                label.propose_button.click()
                self.wait()
                self.paint_and_accept(ACCEPT)
        self.dock.show_step("Train")
        self.press("model_view")  # the new model's view (entropy and its contours over the image)
        self.shot("retrained")

    def export(self) -> None:
        w = self.dock.show_step("Export")
        target = self.shots.parent / "gui-export"
        shutil.rmtree(target, ignore_errors=True)
        w.out.setText(str(target))
        w.full.setChecked(True)
        w.button.click()
        self.wait()
        self.shot("export")


def _settle(seconds: float) -> None:
    """Let Qt process events (paint, worker signals) for a while."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)
