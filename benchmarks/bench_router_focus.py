"""Does training the routed f2 where f0 is unsure make the ranked router pay? (issue 12, the +0.5 target)

Takes the sessions of a `bench_session_routing.py` results file at one budget (default: the last), and per
`--focus` value trains the router again on a copy of each (`Session.train_router(policy="ranked",
focus=F)`: f2 retrains for `ROUTED_RETRAIN`'s steps from its current weights, crop centres drawn in
proportion to f0's region-mean entropy to the power F, 0 = uniform as before), then scores the test split
with the session benchmark's own `evaluate` (f0, f0 MC, f2, PaSeR per share, the oracle). Every focus starts
from the same copy, so the rows differ only in where f2's steps went.

    PYTHONPATH=. python benchmarks/bench_router_focus.py --results benchmarks/results/session-routing-soc.json \
        --focus 0,2 --out /tmp/focus.json [--sessions 0,2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from learners.atomic import atomic_write_text
from learners.generators import drain
from router_scoring import evaluate, last_entries, load_soc, session_copy


def entries(path: Path, budget: int | None) -> list[dict]:
    """The results file's entries at `budget` (default: each run's last)."""
    results = json.loads(path.read_text())
    if budget is None:
        return last_entries(results)
    return [e for e in results["results"] if e["n_regions"] == budget]


def one(entry: dict, focus: float, test, samples: int) -> dict:
    """Train the router with `focus` on a copy of the entry's session; the test rows."""
    with session_copy(entry["session"]) as s:
        t = time.time()
        result = drain(s.train_router(policy="ranked", focus=focus, samples=samples, refresh=False))
        seconds = time.time() - t
        methods, table = evaluate(s, *test, samples, result.summary)
    iou = np.asarray(table.iou)
    gain = (iou[:, :, 2] - iou[:, :, 0]).ravel()
    ent = np.asarray(table.entropy[:, :, 0]).ravel()
    top = ent >= np.quantile(ent, 0.8)
    kept = list(result.retrain.kept_previous) if result.retrain is not None else []
    return {"sampler": entry["sampler"], "seed": entry["seed"], "n_regions": entry["n_regions"], "focus": focus,
            "f2_kept_previous": "f2" in kept, "seconds": round(seconds, 1),
            "f2_gain_top_fifth": float(gain[top].mean()), "f2_gain_rest": float(gain[~top].mean()),
            "methods": {k: methods[k] for k in ("f0", "f0_mc", "f2", "paser", "oracle", "paser_by_lambda")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True, help="a bench_session_routing.py results JSON")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--focus", default="0,2", help="comma-separated focus values (0: uniform crops)")
    p.add_argument("--budget", type=int, default=None, help="the entries at this many regions (default: each run's last)")
    p.add_argument("--sessions", default=None, help="comma-separated indices of those entries (default: all)")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    chosen = entries(args.results, args.budget)
    if args.sessions:
        chosen = [chosen[int(i)] for i in args.sessions.split(",")]
    _, _, tx, ty = load_soc(192, 40, 10, "lowres-shading")
    rows = []
    for entry in chosen:
        for focus in (float(f) for f in args.focus.split(",")):
            r = one(entry, focus, (tx, ty), args.samples)
            rows.append(r)
            m = r["methods"]
            best = max(m["f0"]["iou"], m["f0_mc"]["iou"], m["f2"]["iou"])
            print(f"[{r['sampler']} {r['seed']} N={r['n_regions']} focus {focus}] f0_mc {m['f0_mc']['iou']:.3f} "
                  f"f2 {m['f2']['iou']:.3f} paser {m['paser']['iou']:.3f} ({100 * (m['paser']['iou'] - best):+.1f} vs best) "
                  f"oracle {m['oracle']['iou']:.3f}; f2 gain top fifth {100 * r['f2_gain_top_fifth']:+.1f} rest "
                  f"{100 * r['f2_gain_rest']:+.1f}; kept previous f2 {r['f2_kept_previous']}; {r['seconds']} s", flush=True)
            atomic_write_text(args.out, json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2, default=float))


if __name__ == "__main__":
    main()
