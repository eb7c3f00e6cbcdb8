"""Regenerate the user guide's screenshots from the real napari window (`make screenshots`).

Drives the same walkthrough as `paser demo --gui` (`napari_paser.gui.demo.run_steps`: the demo
data, the PaSeR dock's own buttons, a screenshot per step), then the dock's Volume step on the
same image, and copies each step's screenshot to `docs/images/gui-<step>.png`, the files the
guide's pages show. Without a display it reruns itself under `xvfb-run`, as the demo does.

    python scripts/screenshots.py [--out demo_out] [--docs docs/images]

The first run trains the demo's models into OUT/run (minutes on a laptop CPU); later runs reuse them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNDER_XVFB = "PASER_SCREENSHOTS_UNDER_XVFB"
# walkthrough step name (demo.Steps.shot) -> file name in the docs
NAMES = {"session": "gui-session.png", "entropy": "gui-maps.png", "routing": "gui-routing.png",
         "routing-other-lambda": "gui-routing-other.png", "proposals": "gui-label.png",
         "accepted": "gui-accepted.png", "retrained": "gui-train.png", "export": "gui-export.png",
         "volume": "gui-volume.png"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out", help="demo output folder (models are cached here)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "images", help="where the guide's images go")
    args = parser.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        exe = shutil.which("xvfb-run")
        if exe is None or os.environ.get(UNDER_XVFB):
            print("screenshots: no display and no xvfb-run: install xvfb or run with a display", file=sys.stderr)
            return 2
        return subprocess.call([exe, "-a", "-s", "-screen 0 1920x1200x24", sys.executable, *sys.argv],
                               env={**os.environ, UNDER_XVFB: "1"})
    shots = take(args.out.resolve())
    args.docs.mkdir(parents=True, exist_ok=True)
    for path in shots:
        name = NAMES.get(path.stem.split("-", 1)[1])
        if name:
            shutil.copyfile(path, args.docs / name)
            print(f"{path.name} -> {args.docs / name}")
    missing = sorted(set(NAMES.values()) - {p.name for p in args.docs.iterdir()})
    if missing:
        print(f"screenshots: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def take(out: Path) -> list[Path]:
    """The walkthrough's screenshots, plus one of the Volume step."""
    import napari
    import torch

    from napari_paser.gui import demo
    from napari_paser.jobs.demo import demo_threads

    run = demo.models_ready(out)
    torch.set_num_threads(demo_threads())
    viewer = napari.Viewer(title="napari-paser")
    viewer.window.resize(*demo.WINDOW)
    shots = out / "gui"
    shutil.rmtree(shots, ignore_errors=True)
    paths = demo.run_steps(viewer, run, shots)
    _, dock = viewer.window.add_plugin_dock_widget(demo.PLUGIN, demo.DOCK)  # the dock run_steps opened
    steps = demo.Steps(viewer, dock, shots, run)
    steps.paths = list(paths)
    volume = dock.show_step("Volume")
    volume.workers.setValue(0)
    volume.out.setText(str(out / "gui-volume.zarr"))
    shutil.rmtree(out / "gui-volume.zarr", ignore_errors=True)
    viewer.reset_view()  # the whole slice, as the segmentation fills it in
    volume.button.click()
    steps.wait()
    demo._settle(1.0)
    paths.append(steps.shot("volume"))
    viewer.close()
    return paths


if __name__ == "__main__":
    sys.exit(main())
