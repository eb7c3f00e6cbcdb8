"""The dock's actions on a real-size scan: 32 x 2048 x 2048 uint16 beside the 501^2 SOC volume.

A real napari window under Xvfb, the dock's own buttons, a zarr built from the SOC slices tiled
to 2048 x 2048 (written under the system's temp folder, read in place by the session), a run's
models loaded (f0 tiny, f1 medium, f2 large and a bank of routing policies, as
`bench_ui_latency.bench_run` makes them). Per action: the wall time until the dock is idle again,
the longest gap of a 5 ms precise QTimer on the GUI thread (what a person feels as a freeze), the
longest gap of the same timer with nothing running and the same layers shown right after (idle
napari), and the peak resident memory of the process while it ran. For maps and routing also the
time until the first part of the slice on screen is shown. Each volume runs in its own process
(its own peak memory). Screenshots of the routing overlay at whole-slice and at full zoom go to
`--shots`. After the plugin's scenario, in the same process, napari's own floor: a plain viewer with the same
layers copied into plain zarr arrays, and each action's visible change done without the plugin (`napari_floor`),
so a gap can be told apart from napari's drawing of the same change.

    python benchmarks/bench_ui_actions_2048.py [--slices 32] [--sizes 2048 501] [--shots /tmp/shots]
    (runs itself under xvfb-run without a display; writes results/ui-actions-2048.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gui_probe import PROBE_MS, GapProbe, StallSampler, bench_run, screenshot, under_xvfb
from common import RESULTS, SOC, machine, require, write_results

OUT = RESULTS / "ui-actions-2048.json"
ACTIONS = ("open", "dock", "start", "load_models", "maps", "propose", "accept", "route", "share_slider",
           "scroll", "toggle_overlays")


def rss_mb() -> float:
    """The process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak:
    """The peak of `rss_mb` sampled every 10 ms by a helper thread while in a `with` block."""

    def __enter__(self) -> "RssPeak":
        self.peak, self._on = rss_mb(), True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while self._on:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._on = False
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def build_volume(folder: Path, side: int, slices: int) -> Path:
    """A (slices, side, side) uint16 zarr of the SOC slices, each tiled to `side` (chunks 1 x 256 x 256)."""
    import tifffile
    import zarr

    path = folder / f"soc-{slices}x{side}.zarr"
    if (path / "zarr.json").is_file():
        return path
    images = tifffile.imread(require(SOC) / "images.tif")
    arr = zarr.create_array(str(path), shape=(slices, side, side), dtype=images.dtype, chunks=(1, 256, 256),
                            overwrite=True)
    reps = -(-side // images.shape[1])
    for z in range(slices):
        arr[z] = np.tile(images[z % len(images)], (reps, reps))[:side, :side]
    return path


def snapshot_layers(viewer, zs: tuple[int, ...], folder: Path) -> list[tuple]:
    """The viewer's layers as (data, state, type) with every image/labels level copied into a plain zarr array
    (chunks 1 x 256 x 256) holding the slices `zs` (the rest empty), a multiscale layer's levels read through
    dask (as napari's own examples do: napari cuts a level to the screen before taking the slice, and a zarr
    array cut that way reads every slice): the same layers for napari's own floor (`napari_floor`) without
    the plugin's lazy readers."""
    import dask.array as da
    import zarr

    out = []
    for i, layer in enumerate(viewer.layers):
        data, state, kind = layer.as_layer_data_tuple()
        state.pop("metadata", None)
        if kind in ("image", "labels"):
            levels = data if state.get("multiscale") else [data]
            copies = []
            for j, level in enumerate(levels):
                shape = tuple(int(v) for v in level.shape)
                if int(np.prod(shape)) < 2**16:  # a routing overlay's few pixels: as it is
                    copies.append(np.asarray(level))
                    continue
                arr = zarr.create_array(str(folder / f"{i}-{j}.zarr"), shape=shape, dtype=level.dtype,
                                        chunks=(1,) * (len(shape) - 2) + tuple(min(256, v) for v in shape[-2:]),
                                        fill_value=0, overwrite=True)
                for z in zs if len(shape) == 3 else ():
                    if z < shape[0]:
                        arr[z] = np.asarray(level[z])
                if len(shape) == 2:
                    arr[...] = np.asarray(level)
                copies.append(arr)
            if state.get("multiscale"):  # napari cuts a level to the screen before the slice: dask reads one
                data = [da.from_zarr(c) if isinstance(c, zarr.Array) else c for c in copies]
            else:
                data = copies[0]
        out.append((data, state, kind))
    return out


MAP_REFRESHES = 16
"""Refreshes of the floor's maps_while_computing, one a second: a 2048^2 slice's maps come in 16 tiles."""


class BusyRefreshes:
    """`refresh()` once a second, `n` times, while a thread runs a tiny UNet on 576^2 tiles without a break (the
    maps worker's CPU use without its results); `busy` until the last refresh (what `GapProbe.measure` waits on).
    napari's floor for the Maps action, whose layers are refreshed at most once a second while tiles come in."""

    previewing = False

    def __init__(self, refresh, n: int) -> None:
        self.refresh, self.n, self.left = refresh, n, 0
        self._stop = threading.Event()

    @property
    def busy(self) -> bool:
        return self.left > 0

    def start(self) -> None:
        from qtpy.QtCore import QTimer

        self.left = self.n
        self._stop.clear()
        threading.Thread(target=self._burn, daemon=True).start()
        self._timer = QTimer()
        self._timer.timeout.connect(self._tick)
        self._timer.start(1000)

    def _tick(self) -> None:
        self.refresh()
        self.left -= 1
        if self.left <= 0:
            self._timer.stop()
            self._stop.set()

    def _burn(self) -> None:
        import torch

        from learners.unet import UNet, preset_config

        model, x = UNet(preset_config("tiny", n_classes=3)).eval(), torch.rand(1, 1, 576, 576)
        with torch.no_grad():
            while not self._stop.is_set():
                model(x)


def napari_floor(snapshot: list[tuple], src: Path, z: int, probe: GapProbe, side: int) -> dict:
    """napari's own floor for each action's visible change, in a plain viewer with the same layers (plain zarr
    arrays, `snapshot_layers`) and none of the plugin's code: open = add the volume; start = add the session's
    layers but the routing and suggestion ones; maps = refresh the model's map layers (once, and
    `MAP_REFRESHES` times a second apart while a thread computes as the maps worker does:
    maps_while_computing); propose = add the
    suggestion layer (one region), update the regions layer and move the camera to a region; accept = refresh the labels canvas and the regions layer; route = add the
    routing overlay and the routed segmentation (multiscale over zarr, as the plugin's first routing does);
    share_slider = a new routing overlay (its few pixels); scroll =
    `dims.set_current_step` one slice and back; toggle_overlays = the model's layers' `visible` off and on.
    Per action the longest GUI-thread gap and the idle gap right after, as for the plugin."""
    import napari
    import zarr
    from napari.layers import Layer

    class NoHub:
        busy = previewing = False

    viewer = napari.Viewer(title=f"napari floor {side}")
    viewer.window.resize(1600, 1000)
    out: dict[str, dict] = {}
    names = [state["name"] for _, state, _ in snapshot]
    image_i = next((i for i, (_, _, kind) in enumerate(snapshot) if kind == "image"), 0)

    def rec(name: str, action, hub=None) -> None:
        res = probe.measure(action, hub or NoHub(), settle=0.5)
        idle = probe.measure(lambda: None, NoHub(), settle=1.0)
        prev = out.get(name, {})
        out[name] = {"max_gap_ms": max(prev.get("max_gap_ms", 0), res["max_gap_ms"]),
                     "idle_max_gap_ms": max(prev.get("idle_max_gap_ms", 0), idle["max_gap_ms"])}
        print(f"  {side} floor {name:16s} max gap {out[name]['max_gap_ms']:7.1f} ms "
              f"(idle {out[name]['idle_max_gap_ms']:5.1f})", flush=True)

    def layer(name: str):
        return viewer.layers[name] if name in viewer.layers else None

    try:
        rec("open", lambda: viewer.add_image(zarr.open_array(str(src), mode="r"), name=names[image_i]))

        from napari_paser.gui.layers import ABOVE, ENTROPY, LABELS, MODEL_VIEW, PRED, REGIONS, ROUTED, ROUTING

        def add(which) -> None:
            for i, (data, state, kind) in enumerate(snapshot):
                if i != image_i and which(state["name"]):
                    viewer.add_layer(Layer.create(data, state, kind))

        suggestion = "paser suggestion"  # the Label step's layer of a proposal's suggestion, added at the first
        later = (ROUTING, ROUTED, suggestion)  # the routing layers come with a routing
        rec("start", lambda: add(lambda n: n not in later))
        viewer.dims.set_current_step(0, z)
        viewer.reset_view()

        def refresh(*which: str) -> None:
            for name in which:
                if layer(name) is not None:
                    layer(name).refresh()

        def regions() -> None:
            if layer(REGIONS) is not None:
                layer(REGIONS).data = list(layer(REGIONS).data)

        def routing() -> None:
            if layer(ROUTING) is not None:
                layer(ROUTING).data = np.asarray(layer(ROUTING).data)[..., ::-1].copy()

        def go_to() -> None:
            add(lambda n: n == suggestion)
            regions()
            viewer.reset_view()
            camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
            camera.center = (side / 3, side / 3)
            camera.zoom = camera.zoom * side / 192

        rec("maps", lambda: refresh(PRED, ENTROPY, ABOVE))
        busy = BusyRefreshes(lambda: refresh(PRED, ENTROPY, ABOVE), MAP_REFRESHES)
        rec("maps_while_computing", busy.start, busy)
        rec("propose", go_to)
        for _ in range(3):
            rec("accept", lambda: (refresh(LABELS), regions()))
        viewer.reset_view()
        rec("route", lambda: add(lambda n: n in (ROUTING, ROUTED)))  # the first routing adds its two layers
        for _ in range(3):
            rec("share_slider", routing)
        for step in (z + 1, z):
            rec("scroll", lambda step=step: viewer.dims.set_current_step(0, step))
        shown = [n for n in MODEL_VIEW if layer(n) is not None and layer(n).visible]
        for on in (False, True):
            rec("toggle_overlays", lambda on=on: [setattr(layer(n), "visible", on) for n in shown])
    finally:
        viewer.close()
    return out


def run_size(side: int, slices: int, shots: Path | None) -> dict:
    """Every action of the scenario on one volume, in this process; the result per action."""
    import napari
    import tifffile
    import torch
    from napari.utils.key_bindings import coerce_keybinding

    torch.set_num_threads(1)
    truth = tifffile.imread(SOC / "labels.tif")
    n_classes = int(truth.max()) + 1
    results: dict[str, dict] = {}
    pictures: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="paser-ui2048-"))
    try:
        src = build_volume(Path(tempfile.gettempdir()), side, slices)
        run = bench_run(tmp / "run", n_classes)
        viewer = napari.Viewer(title=f"ui actions {side}")
        viewer.window.resize(1600, 1000)
        probe = GapProbe()
        stalls = StallSampler(probe)

        class NoHub:  # before the dock exists: nothing runs in the background
            busy = previewing = False

        state = {"hub": NoHub(), "first": None, "t0": 0.0}

        def record(name: str, action, settle: float = 0.5) -> dict:
            hub = state["hub"]
            state["first"], state["t0"] = None, time.perf_counter()
            with RssPeak() as mem:
                res = probe.measure(action, hub, settle=settle)
            out = {"wall_s": round(max(0.0, res["seconds"] - settle), 2), "max_gap_ms": res["max_gap_ms"],
                   "p99_ms": res["p99_ms"], "peak_rss_mb": round(mem.peak), "stalls": stalls.take()}
            if state["first"] is not None:
                out["first_visible_s"] = round(state["first"], 2)
            idle = probe.measure(lambda: None, hub, settle=1.0)
            out["idle_max_gap_ms"] = idle["max_gap_ms"]
            if name in results:  # repeated actions: keep the worst
                prev = results[name]
                out = {k: max(prev.get(k, 0), v) if isinstance(v, (int, float)) else v for k, v in out.items()}
            results[name] = out
            print(f"  {side} {name:16s} wall {out['wall_s']:6.2f} s  max gap {out['max_gap_ms']:7.1f} ms "
                  f"(idle {out['idle_max_gap_ms']:5.1f})  rss {out['peak_rss_mb']} MB"
                  + (f"  first {out['first_visible_s']} s" if "first_visible_s" in out else ""), flush=True)
            return out

        def first_seen(*_) -> None:
            if state["first"] is None:
                state["first"] = time.perf_counter() - state["t0"]

        def shot(name: str) -> None:
            screenshot(viewer, shots, f"{side}-{name}", pictures)

        record("idle", lambda: None, settle=1.0)
        record("open", lambda: viewer.open(str(src), plugin="napari-paser"))
        dock_box: list = []

        def open_dock() -> None:
            from napari_paser.gui.widgets import PaserWidget

            dock_box.append(PaserWidget(viewer))
            viewer.window.add_dock_widget(dock_box[0], name="PaSeR")

        record("dock", open_dock)
        dock = dock_box[0]
        hub = state["hub"] = dock.hub
        session_w, maps, label = (dock.steps[t] for t in ("Session", "Maps", "Label"))
        session_w.layer_box.setCurrentText(src.stem)
        session_w.folder.setText(str(tmp / "session"))
        record("start", session_w.start_button.click)
        session_w.run_folder.setText(str(run))
        record("load_models", session_w.load_button.click)
        z = slices // 2
        viewer.dims.set_current_step(0, z)

        def maps_progress(event) -> None:
            if getattr(event, "stage", "") == "maps" and getattr(event, "z", None) == z:
                first_seen()

        hub.progress.connect(maps_progress)
        record("maps", maps.slice_button.click)
        hub.progress.disconnect(maps_progress)
        label.sampler.setCurrentText("taudis")
        label.k.setValue(8)
        record("propose", label.propose_button.click)
        for _ in range(3):
            p = label.current
            ix = (p.z, slice(p.y0, p.y0 + p.h), slice(p.x0, p.x0 + p.w))
            hub.require().labels[ix] = truth[z % len(truth)][:p.h, :p.w].astype(np.uint8) + 1
            viewer.layers["paser labels"].refresh()
            record("accept", label.accept_button.click)
        viewer.dims.set_current_step(0, z)
        viewer.reset_view()
        shown = hub.show_routing

        def show_routing(routed) -> None:  # the first overlay on screen, preview or full
            first_seen()
            shown(routed)

        hub.show_routing = show_routing
        record("route", maps.route_button.click)
        results["route"]["model_view_ticked"] = maps.view.isChecked()
        viewer.reset_view()
        shot("route-whole-slice")
        camera = hub.camera()
        camera.zoom = 1.0
        camera.center = (side / 2, side / 2)
        for _ in range(5):
            probe.measure(lambda: None, hub, settle=0.2)
        shot("route-full-zoom")
        viewer.reset_view()
        for lam in (1.0, 0.0, 0.3):
            record("share_slider", lambda lam=lam: maps.lam.setValue(lam))
        for step in (z + 1, z):
            record("scroll", lambda step=step: viewer.dims.set_current_step(0, step))
        key = coerce_keybinding("H")
        for _ in range(2):
            record("toggle_overlays", lambda: viewer.keymap[key](viewer))
        snapshot = snapshot_layers(viewer, (z, z + 1), tmp / "floor")
        viewer.close()
        floor = napari_floor(snapshot, src, z, probe, side)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import resource

    return {"actions": results, "floor": floor, "screenshots": pictures,
            "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def route_view_first(side: int, slices: int, out: Path) -> int:
    """Without a window: *Route* of a mapped slice whose policy sends half its patches (every other column) to
    f1, the part on screen a 300^2 box inside one patch (as zoomed in): the time until the routing map is
    shown, until the segmentation of the patches on screen is, and until the whole slice's; the session's own
    `route_in_view`, the hub's preview callback order. Writes `out`."""
    import torch

    from learners.generators import collect
    from napari_paser.session.core import Session
    from napari_paser.session.routing import route_in_view

    torch.set_num_threads(1)
    load = {"start": [round(v, 2) for v in os.getloadavg()]}
    tmp = Path(tempfile.mkdtemp(prefix="paser-route-view-"))
    try:
        src = build_volume(Path(tempfile.gettempdir()), side, slices)
        s = Session.create(tmp / "session", str(src))
        s.load_models(bench_run(tmp / "run", int(tifffile_max_label()) + 1))
        z = slices // 2
        collect(s.compute_maps([z]))
        policy = s.pick_policy(None)[1]
        grid = policy.config.patching.grid(side, side)
        chosen = torch.zeros(grid.rows, grid.cols, dtype=torch.long)
        chosen[:, ::2] = 1
        policy.forward = lambda state: torch.nn.functional.one_hot(chosen.reshape(1, -1), policy.config.n_models).float()
        s.route(z, execute=False)  # the FLOP counts of this slice size, as after a first routing
        c = side // 2 - (side // 2) % grid.cell[0] + grid.cell[0] // 2  # inside a patch that goes to f1
        view = (c - 150, c - 150, c + 150, c + 150)
        t0, events = time.perf_counter(), {}

        def preview(routed) -> None:
            key = "map_s" if routed.segmentation is None else "on_screen_segmented_s"
            events.setdefault(key, round(time.perf_counter() - t0, 2))

        collect(route_in_view(s, z, 5, None, view, None, preview))
        events["whole_slice_s"] = round(time.perf_counter() - t0, 2)
        s.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load["end"] = [round(v, 2) for v in os.getloadavg()]
    result = {"benchmark": "route-view-first", "command": "python benchmarks/bench_ui_actions_2048.py --route-view-first",
              "slice": f"{side} x {side}, a mapped slice of the tiled SOC zarr; f1 medium on every other column of "
                       f"the policy's {grid.rows} x {grid.cols} patches, f0 tiny elsewhere; on screen: {view}",
              "note": "the policy is replaced by that fixed choice, so map_s leaves out its pass (about 0.6 s on "
                      "a 2048^2 slice, in the window benchmark's route); before the part on screen came first, its "
                      "segmentation came with the whole slice's",
              **events, "machine": machine(load, torch_threads=1),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(events))
    write_results(out, result)
    return 0


def tifffile_max_label() -> int:
    """The SOC labels' largest class index."""
    import tifffile

    return int(tifffile.imread(SOC / "labels.tif").max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 501])
    parser.add_argument("--shots", type=Path, default=None, help="folder for screenshots of the routing overlay")
    parser.add_argument("--label", default="", help="stored with the results (e.g. 'before', 'after')")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: one size, JSON to stdout
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--route-view-first", action="store_true",
                        help="only time Route's part on screen first at the largest size (no window); "
                             "writes results/route-view-first-2048.json unless --out")
    parser.add_argument("--before", type=Path, default=None,
                        help="results of an earlier run (e.g. the code before a change): stored beside, with ratios")
    args = parser.parse_args()
    if args.route_view_first:
        require(SOC)
        out = args.out if args.out != OUT else RESULTS / "route-view-first-2048.json"
        return route_view_first(max(args.sizes), args.slices, out)
    rerun = under_xvfb()
    if rerun is not None:
        return rerun
    require(SOC)
    if args.one is not None:
        result = run_size(args.one, args.slices, args.shots)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    load = {"start": [round(v, 2) for v in os.getloadavg()]}
    per_size = {}
    for side in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(side), "--slices", str(args.slices)]
        if args.shots:
            cmd += ["--shots", str(args.shots)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        print("\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("RESULT ")))
        if proc.returncode or not lines:
            print(f"the {side}^2 run failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        per_size[side] = json.loads(lines[-1][len("RESULT "):])
    load["end"] = [round(v, 2) for v in os.getloadavg()]
    big = per_size[max(per_size)]
    small = per_size.get(min(per_size)) if len(per_size) > 1 else None
    actions = {}
    for name, res in big["actions"].items():
        if name == "idle":
            continue
        row = dict(res)
        if small is not None and name in small["actions"]:
            row["small"] = {k: small["actions"][name][k] for k in ("wall_s", "max_gap_ms", "idle_max_gap_ms",
                                                                    "peak_rss_mb")}
        row["gap_ratio_to_idle"] = round(res["max_gap_ms"] / max(res["idle_max_gap_ms"], 1e-3), 2)
        floor = big.get("floor", {}).get("maps_while_computing" if name == "maps" else name)
        if floor is not None:  # napari's own gap for the same visible change, without the plugin
            row["floor_max_gap_ms"], row["floor_idle_max_gap_ms"] = floor["max_gap_ms"], floor["idle_max_gap_ms"]
            row["gap_ratio_to_floor"] = round(res["max_gap_ms"] / max(floor["max_gap_ms"], 1e-3), 2)
        actions[name] = row
    peak = max(v["peak_rss_mb"] for v in big["actions"].values())
    result = {
        "benchmark": "ui-actions-2048", "label": args.label,
        "command": "python benchmarks/bench_ui_actions_2048.py " + " ".join(sys.argv[1:]),
        "data": f"{SOC}/images.tif tiled to {args.slices} x {max(per_size)} x {max(per_size)} uint16 zarr "
                f"(chunks 1 x 256 x 256); small: {args.slices} x {min(per_size)} x {min(per_size)}",
        "models": "f0 tiny, f1 medium, f2 large (untrained) and a bank of 3 routing policies (lambda 0, 0.3, 1)",
        "probe_ms": PROBE_MS,
        "targets": {"max_gap_vs_idle": 2.0, "first_visible_maps_s": 3.0, "first_route_preview_s": 3.0,
                    "peak_rss_mb": 1536},
        "actions": actions, "idle": big["actions"]["idle"], "napari_floor": big.get("floor", {}),
        "peak_rss_mb": peak, "process_peak_rss_mb": big["process_peak_rss_mb"],
        "over_target": sorted(k for k, v in actions.items() if v["gap_ratio_to_idle"] > 2.0),
        "over_floor": sorted(k for k, v in actions.items() if v.get("gap_ratio_to_floor", 0) > 2.0),
        "screenshots": big["screenshots"] + (small["screenshots"] if small else []),
        "machine": machine(load, torch_threads=1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.before is not None:
        before = json.loads(args.before.read_text())
        result["before"] = {"label": before.get("label", ""), "date": before.get("date", ""),
                            "peak_rss_mb": before["peak_rss_mb"], "actions": {
                                k: {m: v[m] for m in ("wall_s", "max_gap_ms", "idle_max_gap_ms", "peak_rss_mb",
                                                      "first_visible_s") if m in v}
                                for k, v in before["actions"].items()}}
        result["after_vs_before"] = {
            k: {m: round(v[m] / max(before["actions"][k][m], 1e-3), 2) for m in ("wall_s", "max_gap_ms", "peak_rss_mb")}
            for k, v in actions.items() if k in before["actions"]}
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
