"""The first actions of a session (start, maps, the first routings), repeated side by side.

The full action benchmark (`bench_ui_latency.py`) measures each action once, and on a shared
2-core box one measurement of a one-off action (the first Start builds napari's layers, the
first routing its overlay) moves by 2x between runs. This one runs only those actions, so two
checkouts can alternate several times in the time of one full run; BENCHMARKS.md compares them.

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/bench_ui_first_actions.py [--label after]

Run it from each checkout with PYTHONPATH set to that checkout. Prints one JSON line: the
longest event-loop gap (ms) of each action.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import SOC
from gui_probe import GapProbe, bench_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run", help="the checkout's name in the output line")
    parser.add_argument("--slices", type=int, default=50)
    parser.add_argument("--data", type=Path, default=SOC)
    args = parser.parse_args()
    import napari
    import tifffile
    import torch

    from napari_paser.gui.widgets import PaserWidget

    torch.set_num_threads(1)
    image = tifffile.imread(args.data / "images.tif")[:args.slices]
    gaps: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = bench_run(Path(tmp) / "run", int(tifffile.imread(args.data / "labels.tif").max()) + 1)
        viewer = napari.Viewer(title="first actions")
        viewer.window.resize(1600, 1000)
        viewer.add_image(image, name="scan")
        dock = PaserWidget(viewer)
        viewer.window.add_dock_widget(dock, name="PaSeR")
        hub, probe = dock.hub, GapProbe()
        session, maps = dock.steps["Session"], dock.steps["Maps"]

        def record(name: str, action) -> None:
            gaps[name] = round(probe.measure(action, hub)["max_gap_ms"])

        record("idle", lambda: None)
        session.layer_box.setCurrentText("scan")
        session.folder.setText(str(Path(tmp) / "session"))
        record("start", session.start_button.click)
        session.run_folder.setText(str(run))
        record("load_models", session.load_button.click)
        viewer.dims.set_current_step(0, args.slices // 2)
        record("maps", maps.slice_button.click)
        record("route_first", maps.route_button.click)
        record("route_again", maps.route_button.click)
        viewer.dims.set_current_step(0, args.slices // 2 + 1)
        record("maps_next_slice", maps.slice_button.click)
        record("route_next_slice", maps.route_button.click)
        viewer.close()
    print(json.dumps({"label": args.label, "max_gap_ms": gaps}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
