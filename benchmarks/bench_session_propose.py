"""Proposal time of every sampler through the real `Session` on a real volume (issue 11: TAUDIS over
10,000 regions in under 1 s; issue 13: proposals that scale).

The path the GUI's Propose button runs in its worker: `Session.propose(k, sampler)` on a session
whose maps are computed, with the package's starting weights as f0 (what a new session has).
TAUDIS embeds only its oversampled regions on demand (`sampling.registry.region_embedder`).

    .venv/bin/python benchmarks/bench_session_propose.py [--slices 40] [--region 32] [--k 8]
        [--out benchmarks/results/session-propose.json]

Needs the SOC slices in ../shared/data/soc_pristine (degraded with `lowres-varying`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import SOC, require
from learners.generators import drain
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.data.degrade import degrade, get_degradation
from napari_paser.session import Session

SAMPLERS = ("random", "entropy", "bald", "taudis", "dqn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--region", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=3, help="MC samples of the maps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/session-propose.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = tifffile.imread(require(SOC) / "images.tif")[: args.slices]
    low = degrade(normalise(images, *robust_range(images)), get_degradation("lowres-varying"), seed=0)
    volume = (np.clip(low, 0, 1) * 65535).astype(np.uint16)  # a scan as a person has it
    with tempfile.TemporaryDirectory() as tmp:
        session = Session.create(Path(tmp) / "s", volume, region_size=args.region)
        session.new_models()
        t = time.perf_counter()
        drain(session.compute_maps(samples=args.samples))
        maps_s = time.perf_counter() - t
        rows = {}
        for name in SAMPLERS:
            times = []
            for seed in range(args.repeats):
                t = time.perf_counter()
                session.propose(args.k, name, seed=seed)
                times.append(time.perf_counter() - t)
            rows[name] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
            print(f"{name:8s} median {rows[name]['median_s']:.3f} s  max {rows[name]['max_s']:.3f} s", flush=True)
        n_regions = len(session.pool)
        session.close()
    result = {
        "command": "benchmarks/bench_session_propose.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "data": f"SOC soc_pristine, first {args.slices} slices, lowres-varying (seed 0)",
        "volume_shape": list(volume.shape), "n_regions": n_regions, "k": args.k,
        "maps_all_slices_s": round(maps_s, 1), "samplers": rows,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread, load {np.round(__import__('os').getloadavg(), 1).tolist()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n_regions} regions; maps {maps_s:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
