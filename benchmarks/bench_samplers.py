"""Micro-benchmark: score 10,000 candidate 64x64 regions from precomputed per-pixel maps.

The issue's target: random, entropy and BALD sampling of 10,000 candidate regions in well
under a second. The volume is 40 slices of 1024 x 1024 (10,240 regions, 240 marked labeled);
maps are float32 as `learners.uncertainty` returns them. TAUDIS is timed too (its set cover
only sees the top alpha * k regions). Prints the median of `--repeats` runs per sampler.

    python benchmarks/bench_samplers.py [--k 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from sampling.regions import RegionPool
from sampling.taudis import TaudisSampler
from sampling.uncertainty import BaldSampler, EntropySampler, RandomSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=100, help="regions chosen per call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (40, 1024, 1024)
    pool = RegionPool(shape, 64)
    pool.mark_labeled(rng.choice(len(pool), len(pool) - 10_000, replace=False))
    candidates = pool.candidates()
    needs = {
        "pool": pool,
        "entropy": rng.random(shape, dtype=np.float32),
        "bald": rng.random(shape, dtype=np.float32) * 0.1,
        "embeddings": rng.normal(size=(len(pool), 16)),
    }
    samplers = [RandomSampler(), EntropySampler(), BaldSampler(), TaudisSampler()]
    print(f"{len(candidates)} candidate {pool.size[0]}x{pool.size[1]} regions of a {shape} volume, k={args.k}, "
          f"median of {args.repeats} ({platform.processor() or platform.machine()})")
    for sampler in samplers:
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            sel = sampler.select(candidates, args.k, np.random.default_rng(r), **needs)
            times.append(time.perf_counter() - t0)
        assert sel.ids.size == args.k
        print(f"  {sampler.name:8s} {statistics.median(times) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
