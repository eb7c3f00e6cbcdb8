"""PaSeR and the session's models on hard data (battery nano-CT) and on SOC, against the forest on the same labels.

`--mode session` (default): through the real `Session`, the pool set's slices are the session's volume and
the other set is the test split (battery: pool `a`, test `b`, and the reverse with `--directions a:b,b:a`;
SOC: `soc_pristine` slices degraded with `--soc-preset`, the first `--soc-pool` slices the pool, the last
`--soc-test` the test). Per sampler (TAUDIS, the routing sampler), regions of the session's size (64 px) are
proposed in rounds of `--k` (the first round random), accepted with the ground truth, f0 retrained after each
round with the session's default (`RETRAIN_CONFIG`); at each budget `Session.train_router` with its defaults
(the first bank with the current f2, then f2 retrained for `--f2-epochs` epochs of 75 steps and the bank made
again; default share from the held-out regions) and the test split is segmented by f0, f1, f2, PaSeR at the
bank's default share (executed, wall time measured), the oracle at PaSeR's share of f2 and the ilastik-style
forest (scikit-image `multiscale_basic_features` + a 50-tree sklearn random forest) on the same labeled pixels.

`--mode ceiling`: what the labels allow, with every pool pixel labeled: the forest and a UNet trained on all
of them (bounded steps), tested on the test set and on the pool's own slices (a leave-half-out split), with the
grey levels as given and normalised per slice; and the per-slice class means (the dark phases' order). With
`--checkpoints` the UNet is scored on the way (one constant-lr run serves every step count), and with the forest
the mean of its and the UNet's class probabilities is scored too (the two together).

Battery labels are mapped to the session's class order, dark to bright (pore, binder, active, as the shipped
starting weights are), by their mean grey level: mIoU is the same under any order.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_battery_routing.py --out benchmarks/results/battery-routing.json \
        [--datasets battery,soc] [--directions a:b,b:a] [--budgets 16,32,64] [--samplers taudis,routing] [--seeds 0,1,2]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_battery_routing.py --mode ceiling --out benchmarks/results/battery-ceiling.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_battery_routing.py --mode ceiling --norms slice --ceiling-sizes wide \
        --splits half --ceiling-steps 3000 --checkpoints 150,300,600,1500 --forest-pixels 50000 --out ...
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from learners.generators import drain
from router_scoring import accept_round, evaluate, load_battery, load_soc
from learners.atomic import atomic_write_text
from learners.metrics import confusion_matrix, iou_from_confusion
from napari_paser.data.baselines import fit_pixel_forest, pixel_features, predict_pixel_forest
from napari_paser.session.core import Session
from napari_paser.session.router import ROUTED_RETRAIN

CLASSES = ("pore", "binder", "active")
FOREST_TREES = 50


def miou(pred: np.ndarray, truth: np.ndarray, n: int = 3) -> float:
    return float(np.nanmean(iou_from_confusion(confusion_matrix(pred, truth, n))))


def forest_row(images, labels, test_x, test_y, max_pixels: int = 200_000) -> dict:
    """The 50-tree forest on the labeled pixels of (images, labels) (at most `max_pixels`, a seeded subset),
    scored on the test slices."""
    t = time.perf_counter()
    forest = fit_pixel_forest([pixel_features(im) for im in images], labels, n_estimators=FOREST_TREES,
                              max_pixels=max_pixels)
    pred = np.stack([predict_pixel_forest(forest, pixel_features(im)) for im in test_x])
    labeled = int(sum((np.asarray(lab) < 3).sum() for lab in labels))
    return {"iou": miou(pred, test_y), "wall_s": round(time.perf_counter() - t, 2), "labeled_pixels": labeled}


def session_forest(s: Session, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """The forest on exactly the session's labeled pixels (training pieces and held-out regions), test slices
    normalised as the session normalises its volume."""
    from napari_paser.data.dataset import normalise

    data = s.training_data()
    images = list(data.images) + list(data.val_images)
    labels = list(data.labels) + list(data.val_labels)
    return forest_row(images, labels, normalise(test_x, s.state.image["lo"], s.state.image["hi"]), test_y)


def run_session(dataset: str, pool, test, sampler: str, seed: int, args):
    """One session per (dataset, sampler, seed): yields a results row at each budget."""
    pool_x, pool_y = pool
    work = Path(tempfile.mkdtemp(prefix=f"bbr-{dataset}-{sampler}-"))
    s = Session.create(work / "s", pool_x, classes=list(CLASSES), region_size=args.region, val_every=5)
    s.new_models({"f0": "tiny", "f1": "medium", "f2": "wide"}, seed=seed)  # what New models starts
    router_cfg = replace(ROUTED_RETRAIN, epochs=args.f2_epochs)
    drain(s.compute_maps(samples=args.samples))
    first = True
    seconds = {"propose": 0.0, "retrain_f0": 0.0}
    for budget in args.budgets:
        while len(s.accepted) < budget:
            k = min(args.k, budget - len(s.accepted))
            seconds["propose"] += accept_round(s, pool_y, k, "random" if first else sampler, 1000 * seed + len(s.accepted))
            first = False
            t = time.time()
            drain(s.retrain(None, roles=("f0",), samples=args.samples, refresh=False))
            drain(s.compute_maps(samples=args.samples))
            seconds["retrain_f0"] += time.time() - t
        t = time.time()
        result = drain(s.train_router(model_config=router_cfg, samples=args.samples))
        seconds["train_router"] = round(time.time() - t, 1)
        methods, _ = evaluate(s, *test, args.samples, result.summary)
        methods["paser"]["share_f2"] = methods["paser"]["patch_share"].get("f2", 0.0)
        methods["paser_by_share"] = methods.pop("paser_by_lambda")
        methods["oracle_same_share"] = methods.pop("oracle_at_share")
        methods["oracle"] = methods["oracle_same_share"]  # the bound at PaSeR's compute
        methods["rf"] = session_forest(s, *test)
        m = methods
        entry = {"dataset": dataset, "pool": args.pool_name, "n_regions": budget, "sampler": sampler, "seed": seed,
                 "labeled_pixels": m["rf"]["labeled_pixels"], "methods": methods,
                 "router": {k: result.summary.get(k) for k in ("verdict", "default_lambda", "f0_alone", "f2_alone",
                                                               "val_regions", "first_bank_seconds", "seconds")},
                 "f2_steps": router_cfg.epochs * router_cfg.steps_per_epoch,
                 "seconds": {k: round(v, 1) for k, v in seconds.items()}}
        print(f"[{dataset} {args.pool_name} {sampler} s{seed}] N={budget}: f0 {m['f0']['iou']:.3f} f1 {m['f1']['iou']:.3f} "
              f"f2 {m['f2']['iou']:.3f} paser {m['paser']['iou']:.3f} (share {m['paser']['share']}, f2 on "
              f"{m['paser']['share_f2']:.0%}, {m['paser']['wall_s']} s vs f2 {m['f2']['wall_s']} s) oracle "
              f"{m['oracle']['iou']:.3f} rf {m['rf']['iou']:.3f}; {result.summary.get('verdict')}", flush=True)
        yield entry
    s.close()


def per_slice(x: np.ndarray, how: str = "slice") -> np.ndarray:
    """Each slice normalised on its own: "slice", its robust range to [0, 1] as the session normalises a
    volume (what the UNet's starting weights and intensity jitter expect); "slice-iqr", zero median and unit
    interquartile range."""
    from napari_paser.data.dataset import normalise, robust_range

    if how == "slice":
        return np.stack([normalise(im, *robust_range(im)) for im in x]).astype(np.float32)
    med = np.median(x, axis=(-2, -1), keepdims=True)
    q1, q3 = np.percentile(x, 25, axis=(-2, -1), keepdims=True), np.percentile(x, 75, axis=(-2, -1), keepdims=True)
    return ((x - med) / np.maximum(q3 - q1, 1e-6)).astype(np.float32)


def class_ious(pred: np.ndarray, truth: np.ndarray, n: int = 3) -> list[float]:
    return [round(float(v), 4) for v in iou_from_confusion(confusion_matrix(pred, truth, n))]


def scores(probs: np.ndarray, truth: np.ndarray) -> dict:
    """mIoU and class IoUs of the argmax of (N, C, H, W) class probabilities."""
    pred = probs.argmax(1).astype(np.uint8)
    return {"miou": round(miou(pred, truth), 4), "class_iou": class_ious(pred, truth)}


def forest_probs(train_x, train_y, eval_sets: dict, max_pixels: int) -> tuple[dict, float]:
    """({set name: (N, 3, H, W) class probabilities}, fit seconds) of the 50-tree forest on the labeled
    pixels of (train_x, train_y) (at most `max_pixels`, a seeded subset)."""
    t = time.perf_counter()
    forest = fit_pixel_forest([pixel_features(im) for im in train_x], list(train_y), n_estimators=FOREST_TREES,
                              max_pixels=max_pixels)
    out = {}
    for name, (x, _) in eval_sets.items():
        probs = []
        for im in x:
            f = pixel_features(im)
            probs.append(forest.predict_proba(f.reshape(-1, f.shape[-1])).reshape(*im.shape, -1).transpose(2, 0, 1))
        out[name] = np.stack(probs).astype(np.float32)
    return out, time.perf_counter() - t


def unet_probs(model, x: np.ndarray) -> np.ndarray:
    from learners.inference import predict_logits

    return np.concatenate([torch.softmax(predict_logits(model, im[None]), 1).numpy() for im in x])


def unet_full(train_x, train_y, test_sets: dict, steps: int, size: str, seed: int, jitter: float | None = None,
              checkpoints: tuple[int, ...] = (), forest: dict | None = None, crop: int | None = None,
              on_checkpoint=None, scheduler: str = "fixed") -> dict:
    """A UNet from the shipped starting weights trained on every pixel of the training slices (the session's
    retraining recipe: class-balanced augmented 64 px crops, constant lr), scored on each test set after
    `steps` steps and at each of `checkpoints` (steps) on the way; with `forest` ({set name: its class
    probabilities}), also the mean of the forest's and the UNet's probabilities there; `on_checkpoint(rows)`
    after each (to save what is measured so far)."""
    from learners.training import EpochReport, iter_training
    from learners.unet import preset_config
    from napari_paser.session.training import RETRAIN_CONFIG
    from napari_paser.weights import shipped_start

    torch.manual_seed(seed)
    role = {"tiny": "f0", "medium": "f1", "wide": "f2"}[size]
    model = shipped_start(role, preset_config(size, n_classes=3), seed)
    per_epoch = RETRAIN_CONFIG.steps_per_epoch
    cfg = replace(RETRAIN_CONFIG, epochs=max(1, steps // per_epoch), keep=0.0, seed=seed, scheduler=scheduler,
                  crop=crop or RETRAIN_CONFIG.crop, jitter=RETRAIN_CONFIG.jitter if jitter is None else jitter)
    final = cfg.epochs * per_epoch
    marks = sorted({c for c in checkpoints if c <= final} | {final})
    rows: dict = {"steps": final, "crop": cfg.crop, "checkpoints": {}}
    t, scoring = time.perf_counter(), 0.0
    for report in iter_training(model, list(train_x), list(train_y), None, None, cfg):
        if not isinstance(report, EpochReport) or (report.epoch + 1) * per_epoch not in marks:
            continue
        done = (report.epoch + 1) * per_epoch
        s0 = time.perf_counter()
        mark = {"train_s": round(s0 - t - scoring, 1), "train_loss": round(report.train_loss, 4)}
        for name, (x, y) in test_sets.items():
            probs = unet_probs(model, x)
            mark[name] = scores(probs, y)
            if forest is not None and name in forest:
                mark[f"{name}_mean_with_forest"] = scores(0.5 * (probs + forest[name]), y)
        scoring += time.perf_counter() - s0
        rows["checkpoints"][str(done)] = mark
        if on_checkpoint is not None:
            on_checkpoint(rows)
        print(f"    {size} step {done}: " + " ".join(f"{k} {v['miou']:.3f}" for k, v in mark.items() if isinstance(v, dict))
              + f" ({mark['train_s']} s training)", flush=True)
    model.eval()
    last = rows["checkpoints"][str(final)]
    rows["train_s"] = last["train_s"]
    for name in test_sets:
        rows[name] = last[name]["miou"]
    return rows


def ceiling(args) -> dict:
    """Every pool pixel labeled: forest and UNet on the test set and within the pool; per-slice class means."""
    from napari_paser.data.dataset import normalise, robust_range

    out = {"class_means": {}, "rows": []}
    for pool_name, test_name in [d.split(":") for d in args.directions]:
        px, py = load_battery(pool_name)
        tx, ty = load_battery(test_name)
        out["class_means"][pool_name] = [[round(float(px[z][py[z] == c].mean()), 3) for c in range(3)]
                                         for z in range(len(px))]
        half = np.arange(len(px)) % 2 == 0  # leave-half-out inside the pool: every other slice
        lo, hi = robust_range(px)
        for norm in args.norms:
            if norm == "volume":  # as the session normalises: the pool's robust range for both
                fx, fy_test = normalise(px, lo, hi), normalise(tx, lo, hi)
            else:
                fx, fy_test = per_slice(px, norm), per_slice(tx, norm)
            row = {"pool": pool_name, "test": test_name, "norm": norm, "unet_jitter": args.jitter, "unet_steps": args.ceiling_steps,
                   "unet_scheduler": args.scheduler}
            all_sets = {"test": (fy_test, ty), "pool_train_slices": (fx, py)}
            within_sets = {"within_pool_other_slices": (fx[~half], py[~half]), "test_from_half": (fy_test, ty),
                           "half_train_slices": (fx[half], py[half])}
            rf_all = rf_within = None
            if args.forest_pixels:  # on the pixels each UNet split trains on
                rf = row["rf_all_pool_pixels"] = {"labeled_pixels": int(py.size),
                                                  "trained_on_pixels": min(int(py.size), args.forest_pixels), "wall_s": 0.0}
                if "all" in args.splits or not args.ceiling_sizes:
                    rf_all, seconds = forest_probs(fx, py, {"test": all_sets["test"]}, args.forest_pixels)
                    test_rf = scores(rf_all["test"], ty)
                    rf |= {"test": test_rf["miou"], "test_class_iou": test_rf["class_iou"]}
                    rf["wall_s"] += round(seconds, 1)
                if "half" in args.splits or not args.ceiling_sizes:
                    rf_within, seconds = forest_probs(fx[half], py[half], {k: within_sets[k] for k in
                                                      ("within_pool_other_slices", "test_from_half")}, args.forest_pixels)
                    within_rf = scores(rf_within["within_pool_other_slices"], py[~half])
                    rf |= {"within_pool_other_slices": within_rf["miou"], "within_class_iou": within_rf["class_iou"],
                           "test_from_half": scores(rf_within["test_from_half"], ty)["miou"]}
                    rf["wall_s"] += round(seconds, 1)
                print(json.dumps(row), flush=True)
            for size in args.ceiling_sizes:
                for split in args.splits:
                    key = f"unet_{size}_all_pool_pixels" if split == "all" else f"unet_{size}_half_pool_slices"
                    print(f"  {pool_name}->{test_name} {norm} {size} {split}", flush=True)
                    x, y, sets, rf = (fx, py, all_sets, rf_all) if split == "all" else (fx[half], py[half], within_sets, rf_within)
                    def saving(rows: dict, key: str = key) -> None:
                        out["partial"] = out["rows"] + [row | {key: rows}]
                        args.save_partial(out)

                    row[key] = unet_full(x, y, sets, args.ceiling_steps, size, args.unet_seed, args.jitter,
                                         args.checkpoints, rf, args.crop, saving, args.scheduler)
                    if split == "half":  # the earlier rows' name for the within-pool score
                        row.setdefault(f"unet_{size}_all_pool_pixels", {})["within_pool_other_slices"] = \
                            row[key]["within_pool_other_slices"]
                    out["partial"] = out["rows"] + [row]
                    args.save_partial(out)
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
            out["rows"].append(row)
    out.pop("partial", None)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=("session", "ceiling"), default="session")
    p.add_argument("--datasets", default="battery", help="battery, soc or both (comma-separated)")
    p.add_argument("--directions", default="a:b", help="battery pool:test pairs, e.g. a:b,b:a")
    p.add_argument("--budgets", default="16,32,64")
    p.add_argument("--samplers", default="taudis,routing")
    p.add_argument("--seeds", default="0")
    p.add_argument("--k", type=int, default=8, help="regions per round")
    p.add_argument("--region", type=int, default=64)
    p.add_argument("--f2-epochs", type=int, default=ROUTED_RETRAIN.epochs,
                   help=f"f2's retraining in train_router, 75 steps each (default {ROUTED_RETRAIN.epochs}, the session's)")
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--soc-preset", default="lowres-varying")
    p.add_argument("--soc-crop", type=int, default=256)
    p.add_argument("--soc-pool", type=int, default=20)
    p.add_argument("--soc-test", type=int, default=6)
    p.add_argument("--norms", default="volume,slice", help="ceiling: volume (as the session normalises), slice (each slice's robust range), slice-iqr")
    p.add_argument("--ceiling-sizes", default="tiny", help="ceiling: UNet sizes trained on every pool pixel")
    p.add_argument("--ceiling-steps", type=int, default=600)
    p.add_argument("--forest-pixels", type=int, default=200_000, help="ceiling: labeled pixels the forest trains on (0: no forest)")
    p.add_argument("--jitter", type=float, default=None, help="ceiling: the UNet's intensity jitter (default: the "
                                                                 "session's RETRAIN_CONFIG.jitter)")
    p.add_argument("--splits", default="all,half", help="ceiling: the UNet trained on every pool slice (all; scored on "
                   "the test set and its own slices) and on every other pool slice (half; scored on the others)")
    p.add_argument("--no-within", action="store_true", help="ceiling: only the split on every pool slice (--splits all)")
    p.add_argument("--checkpoints", default="", help="ceiling: steps at which the UNet is also scored (e.g. 600,1500)")
    p.add_argument("--unet-seed", type=int, default=0)
    p.add_argument("--scheduler", default="fixed", help="ceiling: the UNet's lr schedule (fixed, the session's; "
                   "cosine: decays to 0 over --ceiling-steps, so only the last checkpoint is an N-step run)")
    p.add_argument("--crop", type=int, default=None, help="ceiling: the UNet's training crop (default the session's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.directions = args.directions.split(",")
    args.norms = args.norms.split(",")
    args.ceiling_sizes = [s for s in args.ceiling_sizes.split(",") if s]
    args.splits = ["all"] if args.no_within else [s for s in args.splits.split(",") if s]
    args.checkpoints = tuple(int(c) for c in args.checkpoints.split(",") if c)
    torch.set_num_threads(args.threads)
    started = time.time()
    results = {"command": " ".join(shlex.quote(a) for a in sys.argv), "mode": args.mode,
               "config": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                           "load_before": os.getloadavg()},
               "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
               "results": []}

    def save() -> None:
        results["seconds"] = round(time.time() - started, 1)
        results["machine"]["load_after"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(results, indent=2, default=float))

    if args.mode == "ceiling":
        def save_partial(partial: dict) -> None:
            results["ceiling"] = partial
            save()

        args.save_partial = save_partial
        results["ceiling"] = ceiling(args)
        save()
        return 0
    runs = []
    for dataset in args.datasets.split(","):
        if dataset == "battery":
            for d in args.directions:
                pool_name, test_name = d.split(":")
                runs.append(("battery", pool_name, load_battery(pool_name), load_battery(test_name)))
        else:
            px, py, tx, ty = load_soc(args.soc_crop, args.soc_pool, args.soc_test, args.soc_preset)
            runs.append((f"soc-{args.soc_preset}", f"soc_pristine[:{args.soc_pool}]", (px, py), (tx, ty)))
    for dataset, pool_name, pool, test in runs:
        args.pool_name = pool_name
        for seed in [int(v) for v in args.seeds.split(",")]:
            for sampler in args.samplers.split(","):
                for entry in run_session(dataset, pool, test, sampler, seed, args):
                    results["results"].append(entry)
                    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
