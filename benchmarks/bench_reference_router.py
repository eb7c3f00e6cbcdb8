"""The reference for a session's router (issue 12): `paser policy`'s dataset-trained bank on the same models.

For each finished run of `bench_session_routing.py` (its results file names the session folders): the
session's f0/f1/f2 are exported as a run (`Session.export_run`), the session's pool slices with *every*
pixel labeled become a dataset folder, and `paser policy` (`napari_paser.jobs.policy.train_policies`,
the paper's 4 x 4 grid of patches, the session's halo) trains its policy network on the rl split (the
first 36 slices; val: the last 4). Each member then routes the run's test slices (`route`, executed,
timed), beside that run's rows. It answers whether PaSeR's network, given full labels on the labeled
volume instead of ~50 regions, finds what the ranked rule finds. (The session's f1/f2 trained on ~50
of the pool's regions, so the table is slightly in-sample for them there.)

    PYTHONPATH=. .venv/bin/python benchmarks/bench_reference_router.py \
        --results benchmarks/results/session-routing-soc.json --out benchmarks/results/reference-router-soc.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import timed
from learners.atomic import atomic_write_text
from learners.routing.bank import load_bank
from learners.routing.router import route
from napari_paser.data.dataset import normalise, write_dataset
from napari_paser.jobs.policy import load_run_models, train_policies
from napari_paser.session.core import Session
from napari_paser.session.router import ROUTER_LAMBDAS
from router_scoring import CLASSES, load_soc, row


def reference(entry: dict, config: dict, args) -> dict:
    pool_x, pool_y, test_x, test_y = load_soc(config["crop"], config["pool_slices"], config["n_test"], config["preset"])
    n, halo = len(pool_x), entry["router"]["halo"]
    split = {"pretrain": [], "rl": list(range(n - 4)), "finetune": [], "val": list(range(n - 4, n)), "test": []}
    with tempfile.TemporaryDirectory() as tmp:
        with Session.open(entry["session"], read_only=True) as session:
            run = session.export_run(Path(tmp) / "run")
            lo, hi = session.state.image["lo"], session.state.image["hi"]
        data = write_dataset(Path(tmp) / "data", pool_x, pool_y, CLASSES, split)
        t = time.time()
        summary = train_policies(data, run, lambdas=args.lambdas, default=args.lambdas[len(args.lambdas) // 2],
                                 epochs=args.epochs, samples=args.samples, halo=halo, progress=False)
        seconds = round(time.time() - t, 1)
        models = load_run_models(run, len(CLASSES))
        bank = load_bank(run)
    x = normalise(test_x, lo, hi)
    rows = {}
    with torch.no_grad():
        for lam, policy in sorted(bank.policies.items()):
            res, wall = timed(lambda: route(models, policy, x, samples=args.samples))
            rows[f"{lam:.3f}"] = row(res, test_y, wall)
    default = f"{summary['default_lambda']:.3f}"
    return {"sampler": entry["sampler"], "seed": entry["seed"], "session": entry["session"], "seconds": seconds,
            "grid": "4x4 (paser policy)", "halo": halo, "by_lambda": rows, "default_lambda": summary["default_lambda"],
            "paser_policy": rows[default], "val": summary["policies"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True, help="a bench_session_routing.py results file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lambdas", default=",".join(map(str, ROUTER_LAMBDAS)))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.lambdas = [float(v) for v in args.lambdas.split(",")]
    torch.set_num_threads(args.threads)
    results = json.loads(args.results.read_text())
    configs = results.get("configs") or [results["config"]] * len(results["results"])
    out = {"command": " ".join(shlex.quote(a) for a in sys.argv), "results": []}
    for entry, config in zip(results["results"], configs):
        ref = reference(entry, config, args)
        m = entry["methods"]
        ref["session_rows"] = {k: m[k]["iou"] for k in ("f0", "f0_mc", "f1", "f2", "paser", "paser_network", "oracle")
                               if k in m}
        out["results"].append(ref)
        members = ", ".join(f"{k}: {v['iou']:.3f}" for k, v in ref["by_lambda"].items())
        print(f"[{ref['sampler']} {ref['seed']}] paser policy {ref['paser_policy']['iou']:.3f} (lambda "
              f"{ref['default_lambda']}), members {members}; session rows {ref['session_rows']}", flush=True)
        atomic_write_text(args.out, json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
