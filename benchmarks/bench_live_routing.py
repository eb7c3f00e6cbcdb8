"""How live is the lambda slider? Routing one slice from scratch against re-routing it at another lambda.

A session on a dataset's test slices with a run's f0/f1/f2 and policy bank (`paser policy`):
for one slice, the time of (a) f0's MC-dropout state (what every policy reads), (b) a routed
segmentation at lambda 0 (f0 state cached; the routed f1/f2 patches run), and (c) a preview
at each other lambda of the bank (f0 state cached, only the policy runs: what the slider does).
Medians over repeats. Writes benchmarks/results/live-routing.json.

    .venv/bin/python benchmarks/bench_live_routing.py --data runs/soc-varying/data --run runs/soc-varying/long
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

OUT = Path(__file__).parent / "results" / "live-routing.json"


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls of fn (after one warm-up) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--run", required=True, type=Path, help="run folder with f0/f1/f2 and policies/ (paser policy)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    import torch

    from napari_paser.data.dataset import read_dataset
    from napari_paser.session.core import Session
    from napari_paser.session.routing import slice_state

    ds = read_dataset(args.data)
    test = ds.images[ds.split["test"][:2]]
    with tempfile.TemporaryDirectory() as tmp:
        s = Session.create(Path(tmp) / "s", test, classes=ds.class_names)
        s.load_models(args.run)
        lambdas = s.policy_lambdas
        if len(lambdas) < 2:
            raise SystemExit(f"{args.run} has no policy bank: run `paser policy --data {args.data} --run {args.run}`")
        image = s.image_slice(0)
        state_s, _ = timed(lambda: slice_state(s.models["f0"], image, 0, args.samples), args.repeats)
        routed_s, routed = timed(lambda: s.route(0, args.samples, lam=lambdas[0]), args.repeats)
        previews = {}
        for lam in lambdas[1:]:
            sec, res = timed(lambda: s.route(0, args.samples, lam=lam, execute=False), args.repeats)
            previews[f"{lam:g}"] = {"seconds": round(sec, 4), "shares": res.shares, "gflops": round(res.gflops, 3)}
    preview_s = statistics.median(p["seconds"] for p in previews.values())
    results = {
        "benchmark": "live-routing",
        "command": "python benchmarks/bench_live_routing.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "date": date.today().isoformat(),
        "slice": list(test.shape[1:]),
        "f0_state_seconds": round(state_s, 4),
        "routed_lambda0_seconds_cached_state": round(routed_s, 4),
        "routed_lambda0_shares": routed.shares,
        "preview_seconds_median": round(preview_s, 4),
        "previews": previews,
        "speedup_preview_vs_route_from_scratch": round((state_s + routed_s) / preview_s, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    }
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
