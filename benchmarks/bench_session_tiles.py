"""Maps of one large slice in a labeling session: tiled (the default above 512 px) against the whole slice at
once (issue 13: a 2048 x 2048 slice took 6.1 GB untiled). Each configuration runs in its own process, so its
peak RSS is its own: a session on a synthetic 2048 x 2048 uint16 slice written as zarr and read in place, f0
with the shipped starting weights, T = 5, one torch thread. Reports wall time, peak RSS, and the time until
the tile holding the centre of a 512 x 512 view is stored (what a person looking there waits for).

    python benchmarks/bench_session_tiles.py [--size 2048] [--out benchmarks/results/session-tiles.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_results

OUT = Path(__file__).parent / "results" / "session-tiles.json"


def child(size: int, tile: int | None) -> dict:
    """One configuration in this process: create the session, compute the maps of its slice, report."""
    import numpy as np
    import torch
    import zarr

    from napari_paser.session.core import Session

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        img = synth_image(size)
        zarr.create_array(f"{tmp}/scan.zarr", data=img[None], chunks=(1, 512, 512))
        s = Session.create(f"{tmp}/s", f"{tmp}/scan.zarr")
        s.new_models({"f0": "tiny"})
        view = (size // 2 - 256, size // 2 - 256, size // 2 + 256, size // 2 + 256)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        t0 = time.perf_counter()
        first = None
        events = 0
        for event in s.compute_maps(0, samples=5, tile=tile, view=view):
            events += 1
            if first is None:
                first = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        ok = bool((np.asarray(s.slice_maps(0)["entropy"]) > 0).mean() > 0.99)
        s.close()
    return {"tile": tile or "auto", "tiles": events, "seconds": round(wall, 2), "first_tile_in_view_s": round(first, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
            "rss_before_maps_gb": round(base, 3), "maps_complete": ok}


def synth_image(size: int):
    """A deterministic grey-level microstructure of size x size (uint16)."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 6)
    phases = np.digitize(field, np.quantile(field, [0.35, 0.7]))
    img = phases * 12000.0 + 8000 + rng.normal(0, 2500, (size, size))
    return np.clip(img, 0, 65535).astype(np.uint16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.size, None if args.child == "auto" else int(args.child))))
        return 0
    runs = []
    load = [round(v, 2) for v in os.getloadavg()]
    for tile in ("auto", str(args.size)):  # tiled (512) and the whole slice at once
        res = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--child", tile], check=True,
                             capture_output=True, text=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    result = {"benchmark": "session-tiles", "command": "python benchmarks/bench_session_tiles.py " + " ".join(sys.argv[1:]),
              "data": f"synthetic {args.size} x {args.size} uint16 slice as zarr, read in place", "samples": 5,
              "model": "f0 tiny, shipped starting weights", "runs": runs,
              "machine": machine({"start": load, "end": [round(v, 2) for v in os.getloadavg()]}, torch_threads=1)}
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
