"""What should the ranked router rank patches by? (issue 12) Mean f0 entropy against the share of very uncertain pixels.

For each session folder (the SOC session benchmark's, 192 px slices; test = the stack's last 10 slices, as
`bench_session_routing.py` makes them), on a copy: the ranked bank is made again from the session's own
models without retraining anything (`Session.train_router(train_models=False, tail=T)`), once per `--tails`
value (0: each patch's mean entropy, as up to session 11; T > 0: its share of the pool's T most uncertain
pixels, `learners.routing.ranked.TAIL`), and the test split is routed by every member through the session
benchmark's own `evaluate` (executed routing, the oracle at PaSeR's share). Same models, same shares: the
rows differ only in the ranking.

    PYTHONPATH=. python benchmarks/bench_ranking.py --sessions /tmp/bsr-taudis-x/s,/tmp/bsr-routing-y/s \
        --tails 0,0.1 --out /tmp/ranking.json [--samples 3] [--threads 1]
    PYTHONPATH=. python benchmarks/bench_ranking.py --merge a.json b.json --out benchmarks/results/ranking-soc.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from learners.atomic import atomic_write_text
from learners.generators import drain
from router_scoring import evaluate, load_soc, session_copy

KEEP = ("f0", "f0_mc", "f1", "f2", "paser", "oracle", "oracle_at_share", "paser_by_lambda")


def rank_session(folder: str, tails: list[float], test, samples: int) -> list[dict]:
    """One row per tail on a copy of the session folder."""
    rows, measured = [], None
    with session_copy(folder) as s:
        for tail in tails:
            result = drain(s.train_router(policy="ranked", train_models=False, tail=tail, samples=samples,
                                          refresh=False))
            methods, table = evaluate(s, *test, samples, result.summary, measured)
            measured = ({k: v for k, v in methods.items() if k in ("f0", "f0_mc", "f1", "f2")}, table)
            rows.append({"session": folder, "tail": tail, "entropy_level": result.summary.get("entropy_level"),
                         "accepted": len(s.accepted), "methods": {k: methods[k] for k in KEEP}})
    return rows


def matched(rows: list[dict], fractions=(0.2, 0.25, 0.3)) -> list[dict]:
    """Per session, each tail's mIoU at the same GFLOPs (fractions of f2's on every patch), linearly
    interpolated along its bank's members: the realised test share of a member differs between rankings,
    so comparing the default members alone mixes ranking with compute."""
    by: dict[str, dict[float, dict]] = {}
    for r in rows:
        by.setdefault(r["session"], {})[r["tail"]] = r["methods"]
    out = []
    for session, tails in by.items():
        f2 = next(iter(tails.values()))["f2"]["gflops_per_image"]
        entry = {"session": session, "f2_gflops": f2, "iou_at": {}}
        for tail, m in sorted(tails.items()):
            pts = np.array(sorted((v["gflops_per_image"], v["iou"]) for v in m["paser_by_lambda"].values()))
            entry["iou_at"][f"{tail:g}"] = {f"{f:g}": float(np.interp(f * f2, pts[:, 0], pts[:, 1])) if pts[0, 0] <= f * f2
                                            else None for f in fractions}
        out.append(entry)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", required=True, help="comma-separated session folders")
    p.add_argument("--tails", default="0,0.1", help="comma-separated tails (0: mean entropy)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="lowres-shading")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="+", type=Path, help="only merge these output files (and their matched table) "
                                                          "into --out")
    args = p.parse_args()
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        rows = [r for part in parts for r in part["rows"]]
        merged = {"commands": [part["command"] for part in parts], "merged_by": " ".join(shlex.quote(a) for a in sys.argv),
                  "rows": rows, "matched": matched(rows)}
        atomic_write_text(args.out, json.dumps(merged, indent=2, default=float))
        return
    torch.set_num_threads(args.threads)
    tails = [float(t) for t in args.tails.split(",")]
    _, _, tx, ty = load_soc(192, 40, 10, args.preset)
    out = {"command": " ".join(shlex.quote(a) for a in sys.argv), "rows": []}
    for folder in args.sessions.split(","):
        for row in rank_session(folder, tails, (tx, ty), args.samples):
            out["rows"].append(row)
            m = row["methods"]
            best = max(m[k]["iou"] for k in ("f0", "f0_mc", "f2"))
            print(f"[{Path(folder).parent.name} tail {row['tail']}] paser {m['paser']['iou']:.4f} "
                  f"({100 * (m['paser']['iou'] - best):+.2f} vs best single, f2 share {m['paser']['patch_share']['f2']:.2f}, "
                  f"{m['paser']['gflops_per_image']:.2f} GF vs f2 {m['f2']['gflops_per_image']:.2f}); oracle at that share "
                  f"{m['oracle_at_share']['iou']:.4f}", flush=True)
            out["matched"] = matched(out["rows"])
            atomic_write_text(args.out, json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
