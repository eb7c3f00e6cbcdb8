"""Foundation benchmarks: MC-dropout entropy maps, training throughput and peak memory per preset.

Each measurement runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its
own; times are medians over repeats after one warm-up. Results go to
benchmarks/results/foundation.json and a markdown table on stdout.

    .venv/bin/python benchmarks/bench_foundation.py [--repeats 3] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

PRESETS = ("tiny", "medium", "large")
RESULTS = Path(__file__).parent / "results" / "foundation.json"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(kind: str, preset: str, size: int, repeats: int) -> dict:
    """Run one measurement in this process; return times and memory."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from learners.flops import gflops_per_image
    from learners.unet import build_unet
    from learners.uncertainty import uncertainty_maps

    torch.manual_seed(0)
    model = build_unet(preset)
    rng = np.random.default_rng(0)
    base = _rss_mb()
    times = []
    if kind.startswith("entropy"):
        image = rng.random((size, size), dtype=np.float32)
        tile = 256 if kind == "entropy_tiled" else None
        for _ in range(repeats + 1):
            t = time.perf_counter()
            uncertainty_maps(model, image, samples=5, tile=tile, halo=32)
            times.append(time.perf_counter() - t)
        work = 5 * gflops_per_image(model, size, size)
        unit = "s per 512x512 map (T=5)"
    elif kind == "train":
        patch, batch = size // 4, 8
        x = torch.rand(batch, 1, patch, patch)
        y = torch.randint(0, 3, (batch, patch, patch))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        model.train()
        for _ in range(repeats + 1):
            t = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        work = 3 * batch * gflops_per_image(model, patch, patch)  # forward + ~2x backward
        unit = f"s per step of {batch} patches of {patch}x{patch}"
    else:
        raise ValueError(kind)
    med = statistics.median(times[1:])
    out = {"kind": kind, "preset": preset, "median_s": med, "times_s": times[1:], "unit": unit,
           "peak_rss_mb": _rss_mb(), "rss_before_mb": base, "gflop_per_s": work / med}
    if kind == "train":
        out["patches_per_s"] = 8 / med
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.size, args.repeats)))
        return
    rows = []
    jobs = [(k, p) for k in ("entropy", "train") for p in PRESETS] + [("entropy_tiled", "large")]
    for kind, preset in jobs:
        proc = subprocess.run([sys.executable, __file__, "--one", kind, preset, "--size", str(args.size),
                               "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{kind:<14}{preset:<8}{rows[-1]['median_s']:8.3f} s  peak {rows[-1]['peak_rss_mb']:7.0f} MB", flush=True)
    import torch

    result = {"command": "python benchmarks/bench_foundation.py " + " ".join(sys.argv[1:]),
              "date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"{platform.processor() or 'cpu'}, Python {platform.python_version()}, torch {torch.__version__}",
              "size": args.size, "repeats": args.repeats, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
