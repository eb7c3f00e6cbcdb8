"""PaSeR on the person's own labels (issue 12): a router trained from a session's accepted regions.

Through the real `Session` on SOC slices degraded with `lowres-shading`: the first slices are the
session's volume, the last `--n-test` slices the test split (contiguous z blocks). Per sampler
(TAUDIS and the cost-aware `routing` sampler), regions are proposed in rounds of `--k` (the first
round random), accepted with the ground-truth labels, f0 retrained after each round
(`Session.retrain`); at each budget N the session trains f1, f2 and the policy bank from its
accepted regions (`Session.train_router`) and the test split is segmented by: f0 one pass, f0 as
PaSeR computes it (MC mean), f1, f2 (on the routing patches, as routing runs them), PaSeR at each
bank lambda (executed, wall time measured), the oracle router on the same models, and the
ilastik-style random forest on the same labeled pixels (`napari_paser.data.baselines`, when that
branch is merged). Writes `--out` (JSON).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_session_routing.py --out benchmarks/results/session-routing-soc.json \
        [--budgets 16,32,64] [--crop 256] [--pool-slices 40] [--n-test 10] [--f1 medium --f2 wide] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import SOC
from learners.atomic import atomic_write_text
from learners.generators import drain
from learners.routing.router import RoutingCost, build_patch_table
from learners.training import TrainConfig
from learners.unet import UNetConfig, preset_config
from napari_paser.data.dataset import normalise
from napari_paser.session.core import Session
from napari_paser.session.router import held_out_choice
from router_scoring import CLASSES, accept_round, evaluate, last_entries, load_soc, pick_paser, share_oracle


def size_config(name: str) -> UNetConfig:
    if name.startswith("base"):  # e.g. base16: a UNet of that width, depth 4
        return UNetConfig(n_classes=3, base=int(name[4:]), depth=4, dropout=0.0)
    return preset_config(name, n_classes=3)


def rf_row(session: Session, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """The ilastik-style random forest (`napari_paser.data.baselines`) on the session's labeled pixels:
    the training pieces and the held-out regions, as the session's own models see them."""
    from learners.metrics import confusion_matrix, iou_from_confusion
    from napari_paser.data.baselines import fit_pixel_forest, pixel_features, predict_pixel_forest

    data = session.training_data()
    images = list(data.images) + list(data.val_images)
    labels = list(data.labels) + list(data.val_labels)
    t = time.perf_counter()
    forest = fit_pixel_forest([pixel_features(im) for im in images], labels)
    test = normalise(test_x, session.state.image["lo"], session.state.image["hi"])
    pred = np.stack([predict_pixel_forest(forest, pixel_features(im)) for im in test])
    n = session.n_classes
    iou = float(np.nanmean(iou_from_confusion(confusion_matrix(pred, test_y, n))))
    labeled = int(sum((lab < n).sum() for lab in labels))
    return {"iou": iou, "wall_s": round(time.perf_counter() - t, 2), "labeled_pixels": labeled}


def rescore(path: Path, out: Path, samples: int) -> None:
    """Add the `share_oracle` row to each run's last entry of a results file (a session folder holds its last
    models only), from the session's models and bank as they are."""
    results = json.loads(path.read_text())
    last = {entry["session"]: entry for entry in last_entries(results)}
    _, _, test_x, test_y = load_soc(**{k: results["configs"][0][k] for k in ("crop", "pool_slices", "n_test")},
                                    preset=results["preset"])
    for entry in last.values():
        with Session.open(entry["session"], read_only=True) as s:
            x = normalise(test_x, s.state.image["lo"], s.state.image["hi"])
            models = [s.models[r] for r in ("f0", "f1", "f2")]
            patching = s.pick_policy()[1].config.patching
            with torch.no_grad():
                table, _ = build_patch_table(models, x, test_y, patching, samples)
            cost = RoutingCost.of(models, *x.shape[-2:], patching, samples)
            paser = entry["methods"]["paser"]
            entry["methods"]["oracle_at_share"] = share_oracle(table, paser["patch_share"]["f2"], cost)
            print(f"[{entry['sampler']} {entry['seed']} N={entry['n_regions']}] paser {paser['iou']:.3f}, the oracle "
                  f"at its f2 share {paser['patch_share']['f2']:.2f}: {entry['methods']['oracle_at_share']['iou']:.3f}",
                  flush=True)
    results["rescored"] = " ".join(shlex.quote(a) for a in sys.argv)
    atomic_write_text(out, json.dumps(results, indent=2, default=float))


def rechoose(path: Path, out: Path) -> None:
    """Apply `pick_paser` again to a stored results file (a change of the choice rule needs no rerun)."""
    results = json.loads(path.read_text())
    for entry in results["results"]:
        router = entry.get("router_network", entry["router"])  # the network bank's row (session 10 on), or the only one
        router["held_out_choice"] = held_out_choice(router)
        m = entry["methods"]
        if "router_network" in entry:
            rows = {"f0_mc": m["f0_mc"], "paser_by_lambda": m["paser_network_by_lambda"]}
            pick_paser(rows, router, router["default_lambda"])
            m["paser_network"], m["oracle_network"] = rows["paser"], rows["oracle"]
        else:
            pick_paser(m, router, router["default_lambda"])
    results["rechosen"] = " ".join(shlex.quote(a) for a in sys.argv)
    atomic_write_text(out, json.dumps(results, indent=2, default=float))


def run_sampler(sampler: str, args, pool, test) -> list[dict]:
    pool_x, pool_y = pool
    work = Path(tempfile.mkdtemp(prefix=f"bsr-{sampler}-"))
    s = Session.create(work / "s", pool_x, classes=list(CLASSES), region_size=args.region, val_every=5)
    s.new_models({"f0": "tiny", "f1": size_config(args.f1), "f2": size_config(args.f2)}, seed=0)
    # 0 epochs: the session's own retraining default (RETRAIN_CONFIG), as the GUI's buttons run it
    retrain = TrainConfig(epochs=args.f0_epochs, batch_size=8, lr=args.lr, patience=5) if args.f0_epochs else None
    models_cfg = TrainConfig(epochs=args.model_epochs, batch_size=8, lr=args.lr, patience=5) if args.model_epochs else None
    seconds = {"propose": 0.0, "retrain_f0": 0.0, "train_router": 0.0}
    drain(s.compute_maps(samples=args.samples))
    first = True
    for budget in args.budgets:
        while len(s.accepted) < budget:
            k = min(args.k, budget - len(s.accepted))
            seconds["propose"] += accept_round(s, pool_y, k, "random" if first else sampler,
                                               1000 * args.seed + len(s.accepted))
            first = False
            t = time.time()
            drain(s.retrain(retrain, roles=("f0",), samples=args.samples, refresh=False))
            drain(s.compute_maps(samples=args.samples))
            seconds["retrain_f0"] += time.time() - t
            print(f"[{sampler}] {len(s.accepted)} regions accepted", flush=True)
        network, net, measured = None, None, None
        if "network" in args.banks:  # the network bank first (it retrains f1/f2), then the ranked bank on the same models
            t = time.time()
            lambdas = {} if args.lambdas is None else {"lambdas": args.lambdas}
            network = drain(s.train_router(policy="network", **lambdas, epochs=args.rl_epochs, model_config=models_cfg,
                                           samples=args.samples, halo=args.halo, cross_fit=args.cross_fit))
            seconds["train_router"] += time.time() - t
            net, table = evaluate(s, *test, args.samples, network.summary)
            measured = ({k: v for k, v in net.items() if k in ("f0", "f0_mc", "f1", "f2")}, table)
        t = time.time()
        shares = {} if args.shares is None else {"shares": args.shares}
        result = drain(s.train_router(policy="ranked", **shares, train_models=network is None, model_config=models_cfg,
                                      samples=args.samples, halo=args.halo))
        seconds["train_router_ranked"] = round(time.time() - t, 1)
        methods, _ = evaluate(s, *test, args.samples, result.summary, measured)
        methods["paser_by_share"] = methods.pop("paser_by_lambda")
        if net is not None:
            methods["paser_network"] = net["paser"]
            methods["paser_network_by_lambda"] = net["paser_by_lambda"]
            methods["oracle_network"] = net["oracle"]
        methods["random_forest"] = rf_row(s, *test)
        entry = {"n_regions": budget, "sampler": sampler, "seed": args.seed, "session": str(s.folder),
                 "methods": methods, "router": result.summary,
                 **({"router_network": network.summary} if network is not None else {}),
                 "seconds": {k: round(v, 1) for k, v in seconds.items()}}
        m = methods
        print(f"[{sampler}] N={budget}: f0 {m['f0']['iou']:.3f} f0_mc {m['f0_mc']['iou']:.3f} f1 {m['f1']['iou']:.3f} "
              f"f2 {m['f2']['iou']:.3f} paser {m['paser']['iou']:.3f} (share {m['paser']['share']}, "
              f"{m['paser']['gflops_per_image']:.2f} GF, {m['paser']['wall_s']} s vs f2 {m['f2']['wall_s']} s) "
              f"oracle {m['oracle']['iou']:.3f}" + (f"; network {m['paser_network']['iou']:.3f}" if net else ""), flush=True)
        yield entry
    s.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--budgets", default="16,32,64")
    p.add_argument("--samplers", default="taudis,routing")
    p.add_argument("--k", type=int, default=8, help="regions per round")
    p.add_argument("--region", type=int, default=64, help="region = routing patch size (px)")
    p.add_argument("--crop", type=int, default=501, help="centre crop of every slice (px)")
    p.add_argument("--pool-slices", type=int, default=40)
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--preset", default="lowres-shading")
    p.add_argument("--f1", default="medium", help="f1 size: a preset (tiny, medium, wide, large) or baseN")
    p.add_argument("--f2", default="wide", help="f2 size (default wide: the f2 that ships starting weights)")
    p.add_argument("--seed", type=int, default=0, help="seeds the proposals (the first round is random)")
    p.add_argument("--f0-epochs", type=int, default=10, help="f0 retraining epochs per round (0: the session default)")
    p.add_argument("--model-epochs", type=int, default=20, help="f1/f2 retraining epochs per budget (0: the session default)")
    p.add_argument("--halo", type=int, default=None, help="context px around routing patches (default: the session's)")
    p.add_argument("--cross-fit", type=int, default=2, help="folds of the cross-fitted reward table (0: off)")
    p.add_argument("--rl-epochs", type=int, default=100)
    p.add_argument("--lambdas", default=None, help="bank cost weights (default: the session's, ROUTER_LAMBDAS)")
    p.add_argument("--banks", default="network,ranked",
                   help="banks to train and compare: network,ranked (ranked alone: f2 retrains inside it, no network)")
    p.add_argument("--shares", default=None, help="ranked bank shares (default: the session's, ROUTER_SHARES)")
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of f0 and f1/f2 retraining")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rechoose", type=Path, help="only re-pick the paser row of this results file into --out")
    p.add_argument("--rescore", type=Path, help="only add the oracle at PaSeR's share to each run's last entry of "
                                                "this results file (its sessions as they are) into --out")
    args = p.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.lambdas = None if args.lambdas is None else [float(v) for v in args.lambdas.split(",")]
    args.shares = None if args.shares is None else [float(v) for v in args.shares.split(",")]
    args.banks = args.banks.split(",")
    if not set(args.banks) <= {"network", "ranked"} or "ranked" not in args.banks:
        p.error("--banks: ranked, or network,ranked")
    if args.rechoose:
        return rechoose(args.rechoose, args.out)
    if args.rescore:
        torch.set_num_threads(args.threads)
        return rescore(args.rescore, args.out, args.samples)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()
    pool_x, pool_y, test_x, test_y = load_soc(args.crop, args.pool_slices, args.n_test, args.preset)
    results = {"command": " ".join(shlex.quote(a) for a in sys.argv), "dataset": str(SOC), "preset": args.preset,
               "config": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                           "load_before": os.getloadavg()},
               "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
               "pool_shape": list(pool_x.shape), "test_shape": list(test_x.shape), "results": []}
    for sampler in args.samplers.split(","):
        for entry in run_sampler(sampler, args, (pool_x, pool_y), (test_x, test_y)):
            results["results"].append(entry)
            results["seconds"] = round(time.time() - started, 1)
            results["machine"]["load_after"] = os.getloadavg()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
