"""Micro-benchmark: score 10,000 candidate 64x64 regions from precomputed per-pixel maps.

The issue's target: random, entropy and BALD sampling of 10,000 candidate regions in well
under a second. The volume is 40 slices of 1024 x 1024 (10,240 regions, 240 marked labeled);
maps are float32 as `learners.uncertainty` returns them. TAUDIS is timed too (its set cover
only sees the top alpha * k regions). Prints the median of `--repeats` runs per sampler.

Whole volumes (`--volume`): a 2048 x 2048 x 1000 volume has 1,024,000 regions of 64 x 64. Its
per-pixel maps (16 GB as float32) are reduced to per-region sums once, as they are computed;
proposals then read those sums (`entropy=`/`bald=` as 1D arrays). Timed: entropy, BALD and
TAUDIS over the million regions (TAUDIS with a (n_regions, 8) embedding array), TAUDIS over
10,000 regions with a `RegionEmbedder` running a tiny f0 on only the oversampled regions of a
real (lazy) volume, against embedding every slice as the session did before (`RegionPool.embed`
of whole-slice features; timed on `--slices-timed` slices and scaled, labelled as such).
Results go to benchmarks/results/samplers_volume.json.

    python benchmarks/bench_samplers.py [--k 100] [--repeats 5] [--volume]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from sampling.regions import RegionPool
from sampling.taudis import TaudisSampler
from sampling.uncertainty import BaldSampler, EntropySampler, RandomSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=100, help="regions chosen per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--volume", action="store_true", help="the whole-volume benchmark (a million regions)")
    parser.add_argument("--slices-timed", type=int, default=3, help="--volume: slices embedded whole for the baseline")
    args = parser.parse_args()
    if args.volume:
        return bench_volume(args)

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


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = fn(r)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_volume(args) -> None:
    import torch

    from learners.unet import build_unet

    torch.set_num_threads(1)
    results = {"command": "python benchmarks/bench_samplers.py --volume", "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "load_before": os.getloadavg(), "k": args.k, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    shape = (1000, 2048, 2048)
    pool = RegionPool(shape, 64)
    rng = np.random.default_rng(0)
    n = len(pool)
    needs = {"pool": pool, "entropy": rng.random(n) * 4096, "bald": rng.random(n) * 400,
             "embeddings": rng.normal(size=(n, 8)).astype(np.float32)}
    cands = pool.candidates()
    print(f"{n:,} regions of 64x64 in a {shape} volume (per-region sums), k={args.k}, median of {args.repeats}")
    for sampler in (EntropySampler(), BaldSampler(), TaudisSampler()):
        t, sel = _median_time(lambda r: sampler.select(cands, args.k, np.random.default_rng(r), **needs), args.repeats)
        assert sel.ids.size == args.k
        results[f"{sampler.name}_1M_s"] = t
        print(f"  {sampler.name:8s} {t * 1000:8.1f} ms")
    # TAUDIS over 10,000 regions of a volume, embedding only what it looks at

    torch.manual_seed(0)
    f0 = build_unet("tiny").eval()
    results.update(_taudis_10k(f0, args))
    results["load_after"] = os.getloadavg()
    out = Path(__file__).parent / "results" / "samplers_volume.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def _taudis_10k(f0, args) -> dict:
    import torch

    from sampling.regions import RegionEmbedder

    shape = (40, 1024, 1024)  # 10,240 regions, as the session's 17 s case (40 fresh slices)
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    pool = RegionPool(shape, 64)
    ent = np.random.default_rng(2).random(len(pool)) * 4096
    embedder = RegionEmbedder(f0.features, image, pool, halo=32)
    sampler = TaudisSampler(measure="entropy")

    def run(r):
        embedder.calls = 0
        return sampler.select(pool.candidates(), args.k, np.random.default_rng(r), pool=pool, entropy=ent,
                              embeddings=embedder)
    t, _ = _median_time(run, args.repeats)
    with torch.no_grad():
        t0 = time.perf_counter()
        for z in range(args.slices_timed):
            pool.embed(f0.features(torch.from_numpy(image[z])[None, None]).numpy())  # the old way, per slice
        per_slice = (time.perf_counter() - t0) / args.slices_timed
    print(f"  taudis over {len(pool):,} regions with on-demand embeddings: {t * 1000:.0f} ms "
          f"({embedder.calls} regions embedded); embedding all {shape[0]} slices first: "
          f"{per_slice * shape[0]:.1f} s (extrapolated from {args.slices_timed} slices)")
    return {"taudis_10k_on_demand_s": t, "taudis_10k_regions_embedded": embedder.calls,
            "embed_all_slices_s_extrapolated": per_slice * shape[0], "embed_slice_s": per_slice}


if __name__ == "__main__":
    main()
