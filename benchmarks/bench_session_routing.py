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
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
import torch

from learners.atomic import atomic_write_text
from learners.routing.reward import best_actions, best_at_share
from learners.routing.router import (RoutingCost, build_patch_table, execute_routing, model_costs, route,
                                     table_summary)
from learners.training import TrainConfig
from learners.unet import UNetConfig, preset_config
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.data.degrade import degrade, get_degradation
from napari_paser.jobs.predict import WHOLE
from napari_paser.session.core import Session
from napari_paser.session.router_jobs import held_out_choice

SOC = Path("/work/shared/data/soc_pristine")
CLASSES = ("pore", "YSZ", "nickel")


def load_soc(crop: int, pool_slices: int, n_test: int, preset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool images raw-scaled uint16, pool labels, test images, test labels), degraded, centre-cropped."""
    images, labels = tifffile.imread(SOC / "images.tif"), tifffile.imread(SOC / "labels.tif")
    x = degrade(normalise(images, *robust_range(images)), get_degradation(preset), seed=0)
    h, w = x.shape[-2:]
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    x, labels = x[:, y0:y0 + c, x0:x0 + c], labels[:, y0:y0 + c, x0:x0 + c]
    raw = (x * 60000).astype(np.uint16)
    return raw[:pool_slices], labels[:pool_slices], raw[-n_test:], labels[-n_test:]


def size_config(name: str) -> UNetConfig:
    if name.startswith("base"):  # e.g. base16: a UNet of that width, depth 4
        return UNetConfig(n_classes=3, base=int(name[4:]), depth=4, dropout=0.0)
    return preset_config(name, n_classes=3)


def accept_round(session: Session, labels: np.ndarray, k: int, sampler: str, seed: int) -> float:
    """Propose k regions with `sampler` and accept them with the ground truth; seconds spent proposing."""
    t = time.time()
    props = session.propose(k, sampler, seed=seed)
    spent = time.time() - t
    for p in props:
        r = session.region(p.region_id)
        session.accept(p.region_id, labels[r.slices].astype(np.uint8) + 1)
    return spent


def drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def row(result, labels, wall) -> dict:
    s = result.summary(labels, 3)
    return {"iou": s["iou"], "gflops_per_image": s["gflops_per_image"], "wall_s": round(wall, 2),
            "patch_share": s["patch_share"]}


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


def evaluate(session: Session, test_raw: np.ndarray, test_y: np.ndarray, samples: int, summary: dict,
             measured: tuple[dict, object] | None = None) -> tuple[dict, object]:
    """(every method on the test slices with the session's models and bank, the test patch table);
    `measured`: the single models' rows and the table already measured for these models (then only the
    bank is routed)."""
    lo, hi = session.state.image["lo"], session.state.image["hi"]
    x = normalise(test_raw, lo, hi)
    models = [session.models[r] for r in ("f0", "f1", "f2")]
    policy = session.pick_policy()[1]  # the default member: every member routes on the same patches
    patching = policy.config.patching
    ranked = session.bank.knob == "share"
    with torch.no_grad():
        if measured is None:
            table, _ = build_patch_table(models, x, test_y, patching, samples)
            methods = single_rows(models, x, test_y, table, patching, samples)
        else:
            methods, table = dict(measured[0]), measured[1]
        costs = model_costs(models)
        cost = RoutingCost.of(models, *x.shape[-2:], patching, samples)
        paser = {}
        for key, pol in sorted(session.bank.policies.items()):
            res, wall = timed(lambda: route(models, pol, x, samples=samples))
            oracle = best_actions(table.iou, costs, 0.0 if ranked else key).numpy()  # ranked: the accuracy bound
            paser[f"{key:.3f}"] = {**row(res, test_y, wall),
                                   "oracle": table_summary(table, oracle, cost.for_table(oracle, True))}
    methods["paser_by_lambda"] = paser
    if ranked:  # the product routes with the default member: held-out levels do not set the share
        key = f"{session.bank.default_lambda:.3f}"
        methods["paser"] = {**paser[key], "share": float(key), "chosen_by": "the bank's default member"}
        methods["oracle"] = {**paser[key]["oracle"], "lambda": 0.0}
        methods["oracle_at_share"] = share_oracle(table, methods["paser"]["patch_share"]["f2"], cost)
        return methods, table
    return pick_paser(methods, summary, session.bank.default_lambda), table


def share_oracle(table, share: float, cost: RoutingCost) -> dict:
    """The best routing with f2 on the same share of the test patches as PaSeR's (`best_at_share`): what a
    perfect ranking would reach at PaSeR's compute."""
    actions = best_at_share(table.iou, share)
    return {**table_summary(table, actions, cost.for_table(actions, True)), "share": round(float(share), 4)}


@contextmanager
def session_copy(folder: str | Path):
    """An open Session on a throw-away copy of a benchmark session folder (its lock left behind): experiments
    on a finished run's models that leave the run as it was."""
    with tempfile.TemporaryDirectory(prefix="bsr-copy-") as tmp:
        shutil.copytree(folder, Path(tmp) / "s", ignore=shutil.ignore_patterns("session.lock"))
        s = Session.open(Path(tmp) / "s")
        try:
            yield s
        finally:
            s.close()


def last_entries(results: dict) -> list[dict]:
    """Each run's last entry of a results file: the models its session folder holds now."""
    last = {}
    for entry in results["results"]:
        last[entry["session"]] = entry
    return list(last.values())


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


def single_rows(models, x: np.ndarray, test_y: np.ndarray, table, patching, samples: int) -> dict:
    """f0 one pass, f0 as PaSeR computes it (MC mean), f1 and f2 on every routing patch."""
    n, p = len(x), table.iou.shape[1]
    methods = {}
    res, wall = timed(lambda: execute_routing(models, x, np.zeros((n, 1)), WHOLE, samples=0))
    methods["f0"] = {**row(res, test_y, wall), "label": "f0 (one pass)"}
    res, wall = timed(lambda: execute_routing(models, x, np.zeros((n, 1)), WHOLE, samples=samples))
    methods["f0_mc"] = {**row(res, test_y, wall), "label": "f0 (MC mean, as PaSeR computes it)"}
    for k in (1, 2):
        res, wall = timed(lambda: execute_routing(models, x, np.full((n, p), k), patching, samples=samples))
        methods[f"f{k}"] = {**row(res, test_y, wall), "label": f"f{k} on every routing patch"}
    return methods


def pick_paser(methods: dict, summary: dict, default: float) -> dict:
    """The "paser" row: what the held-out regions recommend (`held_out_choice`: a bank member, or f0 alone,
    PaSeR's f0 = the MC mean), never the test split; the bank's default member without held-out regions."""
    choice = held_out_choice(summary) if summary.get("policies") else default
    best = f"{default if choice is None else choice:.3f}"
    if choice is None:
        methods["paser"] = {**methods["f0_mc"], "lambda": None, "chosen_by": "held-out accepted regions: f0 alone"}
    else:
        methods["paser"] = {**methods["paser_by_lambda"][best], "lambda": float(best),
                            "chosen_by": "held-out accepted regions"}
    methods["oracle"] = {**methods["paser_by_lambda"][best]["oracle"], "lambda": float(best)}
    return methods


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
