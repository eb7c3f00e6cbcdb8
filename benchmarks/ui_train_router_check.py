"""*Train router* with its defaults, clicked in a real napari window (Xvfb) on a small held-out SOC session.

A person's path: start a session on SOC slices (region 64), *New models* with its defaults (f0, f1, f2), accept
`--regions` regions with the ground truth (every 5th held out), *Retrain now* (f0), then *Train router* with
its defaults. Measured: seconds until the first routing bank is installed (the "ready" event: routing works
from then on), the time-left estimates f2's retraining shows, and the verdict the Train and Maps steps show.
After `--f2-seconds` of f2 training the script presses Cancel (the first bank stays) unless `--wait` lets
f2 finish. Screenshots of the window go to `--shots`; a JSON summary to `--out`.

    xvfb-run -a -s "-screen 0 1600x1000x24" env PYTHONPATH=. .venv/bin/python benchmarks/ui_train_router_check.py \
        --out benchmarks/results/ui-train-router.json --shots docs/ui-check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

import common
from gui_probe import open_dock


def pump(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def wait(app, cond, timeout: float) -> float:
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            raise TimeoutError("waited too long")
        app.processEvents()
        time.sleep(0.02)
    return time.monotonic() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shots", type=Path, required=True)
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--regions", type=int, default=24)
    p.add_argument("--f2-seconds", type=float, default=60.0, help="let f2 train this long, then Cancel")
    p.add_argument("--wait", action="store_true", help="let f2's retraining finish instead")
    args = p.parse_args()

    import torch

    from napari.qt import get_qapp
    from napari_paser.gui import train_step

    torch.set_num_threads(1)
    root = common.require(common.SOC)
    images, labels = tifffile.imread(root / "images.tif"), tifffile.imread(root / "labels.tif")
    step = max(1, len(images) // args.slices)
    zs = list(range(0, len(images), step))[: args.slices]
    c, (h, w) = args.crop, images.shape[-2:]
    y0, x0 = (h - c) // 2, (w - c) // 2
    image, truth = images[zs, y0:y0 + c, x0:x0 + c], labels[zs, y0:y0 + c, x0:x0 + c]
    notes: list[tuple[float, str]] = []
    original_info = train_step.info
    t0 = time.monotonic()

    def note(message: str) -> None:
        notes.append((round(time.monotonic() - t0, 1), message))
        original_info(message)

    train_step.info = note
    args.shots.mkdir(parents=True, exist_ok=True)
    out: dict = {"command": " ".join(sys.argv), "data": f"{root} slices {zs}, centre {c} x {c}",
                 "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        app = get_qapp()
        viewer, dock = open_dock("PaSeR: Train router with its defaults", image, "soc")
        hub = dock.hub
        sw = dock.steps["Session"]
        sw.layer_box.setCurrentText("soc")
        sw.region.setValue(64)
        sw.folder.setText(str(Path(tmp) / "session"))
        sw.start_button.click()
        wait(app, lambda: hub.session is not None and not hub.busy, 300)
        out["new_models_ticked"] = [r for r, box in sw.scratch.items() if box.isChecked()]
        sw.scratch_button.click()
        wait(app, lambda: not hub.busy and "f2" in hub.session.models, 300)
        s = hub.session
        rng = np.random.default_rng(0)
        for rid in sorted(rng.choice(len(s.pool), args.regions, replace=False)):
            r = s.region(int(rid))
            s.accept(int(rid), truth[r.slices].astype(np.uint8) + 1)
        hub.regions_changed.emit()
        train = dock.show_step("Train")
        t = time.monotonic()
        train.train_button.click()
        out["retrain_f0_s"] = round(wait(app, lambda: not hub.busy, 1800) + 0 * t, 1)
        out["router_defaults"] = {"then_retrain_f2": train.router_retrain.isChecked(),
                                  "f2_epochs": train.router_epochs.value()}
        ready: list[float] = []
        etas: list[tuple[float, str]] = []
        t = time.monotonic()

        def progress(event) -> None:
            if getattr(event, "stage", "") == "ready":
                ready.append(time.monotonic() - t)
            if getattr(event, "stage", "") == "train" and "left" in event.message:
                etas.append((round(time.monotonic() - t, 1), event.message))

        hub.progress.connect(progress)
        train.router_button.click()
        wait(app, lambda: bool(ready) or not hub.busy, 1800)
        out["first_routing_s"] = round(ready[0], 1) if ready else None
        pump(app, 1.0)
        maps = dock.show_step("Maps")
        viewer.dims.set_current_step(0, 1)
        out["maps_note_at_ready"] = maps.lam_note.text()
        out["share_slider_at_ready"] = maps.lam.value()
        s.route(1, samples=5)  # the bank answers while f2 trains (what the live slider preview runs)
        hub.preview(lambda: s.route(1, samples=5, lam=maps.lam.value()), maps.show_routing)
        pump(app, 5.0)
        viewer.screenshot(str(args.shots / "train-router-ready-maps.png"), canvas_only=False, flash=False)
        dock.show_step("Train")
        if args.wait:
            wait(app, lambda: not hub.busy, 3600)
        else:
            pump(app, args.f2_seconds)
            viewer.screenshot(str(args.shots / "train-router-f2-eta.png"), canvas_only=False, flash=False)
            train.job.cancel.click()
            wait(app, lambda: not hub.busy, 600)
        out["total_s"] = round(time.monotonic() - t, 1)
        pump(app, 2.0)
        out["train_message"] = train.job.message.text()
        out["eta_messages"] = etas[:3] + etas[-2:]
        out["router_json"] = {k: v for k, v in json.loads((s.folder / "router.json").read_text()).items()
                              if k in ("verdict", "default_lambda", "f0_alone", "f2_alone", "policies", "seconds",
                                       "first_bank_seconds", "val_regions", "train_regions", "retrained")}
        result = train.last_result
        out["retrain_cancelled"] = bool(result and result.retrain_cancelled)
        maps = dock.show_step("Maps")
        pump(app, 1.0)
        out["maps_note_end"] = maps.lam_note.text()
        viewer.screenshot(str(args.shots / "train-router-done-maps.png"), canvas_only=False, flash=False)
        out["notes"] = notes
        out["machine"]["load_after"] = os.getloadavg()
        viewer.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps({k: out[k] for k in ("first_routing_s", "total_s", "train_message")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
