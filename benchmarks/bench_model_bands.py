"""Where in the volume does each of a session's models win? f0 (MC mean, as PaSeR computes it), f1 and
f2 (on the routing patches with their halo, as routing runs them) scored on bands of SOC slices at
growing distance from the slices the session was labeled on.

Session 8's router benchmark labeled the first 8 slices and tested on the last 10: there f2 beat f0 by
1-1.3 points, but on the held-out regions f0 won, and the router kept f0. This scores a finished
`bench_session_routing.py` session (its JSON names the folder) on slice bands, with the same
degradation and crop, to tell "f2 generalises across the volume, f0 fits where it was labeled" from
noise.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_model_bands.py --session /tmp/bsr-taudis-XXXX/s \\
        --bands 8:18,20:30,40:50 --crop 192 --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from learners.atomic import atomic_write_text
from learners.routing.router import build_patch_table
from napari_paser.data.dataset import normalise
from napari_paser.session.core import Session
from router_scoring import load_soc  # the session routing benchmark's own data: same degradation and crop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--session", type=Path, action="append", required=True, help="session folder (repeatable)")
    p.add_argument("--bands", default="8:18,20:30,40:50", help="slice ranges start:stop, comma-separated")
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--preset", default="lowres-shading")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    raw, labels, _, _ = load_soc(args.crop, 10 ** 6, 1, args.preset)  # every slice
    bands = [tuple(int(v) for v in b.split(":")) for b in args.bands.split(",")]
    out = {"command": " ".join(sys.argv), "preset": args.preset, "crop": args.crop, "results": []}
    for folder in args.session:
        s = Session.open(folder, read_only=True)
        models = [s.models[r] for r in ("f0", "f1", "f2")]
        patching = s.pick_policy()[1].config.patching  # every bank member routes on the same patches
        rows = {}
        for lo, hi in bands:
            x = normalise(raw[lo:hi], s.state.image["lo"], s.state.image["hi"])
            with torch.no_grad():
                table, _ = build_patch_table(models, x, labels[lo:hi], patching, args.samples)
            n, k = table.iou.shape[:2]
            rows[f"{lo}:{hi}"] = {f"f{m}": table.miou(np.full((n, k), m)) for m in range(3)}
            print(folder, f"z {lo}:{hi}", {m: round(v, 4) for m, v in rows[f"{lo}:{hi}"].items()}, flush=True)
        labeled = sorted({r.z for r in s.state.accepted})
        out["results"].append({"session": str(folder), "labeled_slices": labeled, "bands": rows})
        s.close()
    atomic_write_text(args.out, json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
