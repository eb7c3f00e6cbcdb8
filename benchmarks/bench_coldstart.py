"""Cold start: mIoU on the SOC test slices against labeled pixels, for the real labeling session
and the classical tools a scientist would otherwise use.

Data: ../shared/data/soc_pristine (50 slices 501x501, 3 phases) degraded with a preset
(`lowres-shading`, `lowres-varying`), splits by slice (make_splits seed 0, blocks): the test
split is evaluated, each seed draws `--pool` of the other slices as the session's volume.
Slices are cropped to their central `--crop` square to fit 2 shared CPU cores.

Methods, at each labeled-pixel budget (about 1k, 3k, 12k, 50k, 120k):
- session: the real `Session` (napari_paser.session.Session) started with `new_models()`
  (the shipped starting weights), proposals by `--sampler` (TAUDIS by default; entropy with
  --sampler entropy) on the maps of every slice, each proposed region accepted with its
  ground truth, `Session.retrain` (RETRAIN_CONFIG; previous weights kept only on a drop beyond
  the held-out noise, `session.guard`) after each batch; 32x32 regions, so a region is 1,024 labeled pixels (held-out "val" regions,
  every 5th, count in the budget but do not train);
- session-scribble: the same loop (64x64 regions, entropy proposals) where the person paints
  strokes instead of whole regions: per proposed region and phase, the skeleton of the phase
  eroded by 2 px, drawn 3 px wide inside the phase; strokes are painted into the canvas and
  never accepted (scribbles train without a confirmation), so there is no held-out set;
- rf: the ilastik-style random forest (napari_paser.data.baselines, multiscale features) on the
  session's labeled pixels (all of them, held-out regions included); rf-scribble on the strokes;
- otsu: multi-Otsu thresholds with bands mapped to classes by the session's labeled pixels;
- start: the shipped starting weights with no labels (budget 0);
- full: the starting weights fine-tuned on every pixel of the pool (same crop training,
  --full-factor x the steps): the full-supervision reference; and rf-full, the forest on
  200k pool pixels.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_coldstart.py [--presets lowres-shading,lowres-varying]
        [--seeds 3] [--crop 192] [--pool 6] [--trees 50] [--out benchmarks/results/coldstart-soc.json]

Each preset and seed can run in its own process (--presets P --seed-list S --out part.json) and
`--merge part*.json --out benchmarks/results/coldstart-soc.json` joins them.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, SOC
from labeling_loop import Loop, load, miou
from learners.inference import predict_classes
from learners.training import IGNORE_INDEX, iter_training
from learners.generators import drain
from napari_paser.data.baselines import (
    fit_multiotsu, fit_pixel_forest, pixel_features, predict_multiotsu, predict_pixel_forest,
)
from napari_paser.data.dataset import normalise
from napari_paser.session import guard
from napari_paser.session.training import RETRAIN_CONFIG, WARM_LR_FACTOR
from napari_paser.weights import starting_model

BUDGETS = (1024, 3072, 12288, 49152, 122880)


def run_seed(preset: str, seed: int, images, labels, splits, args) -> dict:
    """Every method at every budget for one seed."""
    rng = np.random.default_rng(seed)
    test = splits["test"]
    others = [i for i in range(len(images)) if i not in test]
    pool = sorted(rng.choice(others, args.pool, replace=False).tolist())
    px, py = images[pool], labels[pool]
    tx, ty = images[test], labels[test]
    feats_pool = [pixel_features(im) for im in px]
    feats_test = [pixel_features(im) for im in tx]
    out: dict[str, list] = {}
    if args.loops == ["none"]:  # the references only: no labels, full supervision, the Otsu floor
        lo, hi = float(np.percentile(px, 0.5)), float(np.percentile(px, 99.5))
        test_norm = normalise(tx, lo, hi)
        out["start"] = [miou(predict_classes(starting_model("f0", _tiny()), test_norm), ty)]
        th, band = fit_multiotsu(normalise(px, lo, hi), py, 3)
        out["otsu-full"] = [miou(predict_multiotsu(test_norm, th, band), ty)]
        out.update(full_supervision(px, py, lo, hi, test_norm, ty, feats_pool, feats_test, args, seed))
        return out
    with tempfile.TemporaryDirectory() as tmp:
        loops = {"session": lambda: Loop(Path(tmp) / "a", px, py, 32, args.sampler, False, seed),
                 "session-scribble": lambda: Loop(Path(tmp) / "b", px, py, 64, "entropy", True, seed)}
        loops = {name: make() for name, make in loops.items() if name in args.loops}
        first = next(iter(loops.values())).s
        lo, hi = first.state.image["lo"], first.state.image["hi"]
        test_norm = normalise(tx, lo, hi)
        out["start"] = [miou(predict_classes(first.models["f0"], test_norm), ty)]
        for name, loop in loops.items():
            rf_name = "rf" if name == "session" else "rf-scribble"
            for key in (name, rf_name, "otsu" if name == "session" else None, f"{name}-pixels"):
                if key:
                    out.setdefault(key, [])
            for budget in args.budgets:
                loop.label_until(budget)
                out[f"{name}-pixels"].append(loop.labeled())
                out[name].append(miou(predict_classes(loop.s.models["f0"], test_norm), ty))
                lab = loop.canvas_labels()
                t0 = time.time()
                forest = fit_pixel_forest(feats_pool, list(lab), n_estimators=args.trees, seed=seed)
                pred = np.stack([predict_pixel_forest(forest, f) for f in feats_test])
                out[rf_name].append(miou(pred, ty))
                if name == "session":
                    mask = lab != IGNORE_INDEX
                    th, band = fit_multiotsu(normalise(px, lo, hi)[mask], lab[mask], 3)
                    out["otsu"].append(miou(predict_multiotsu(test_norm, th, band), ty))
                print(f"  {preset} seed {seed} {name:17s} {loop.labeled():7d} px: {out[name][-1]:.3f}  "
                      f"{rf_name} {out[rf_name][-1]:.3f} (rf {time.time() - t0:.0f} s)  [{loop.last_message}]",
                      flush=True)
                if args.partial:  # what is done so far, in case the run is stopped
                    args.partial.write_text(json.dumps(out))
            out[f"{name}-retrains-kept"] = [loop.kept, loop.retrains]
            out[f"{name}-seconds"] = [round(loop.seconds, 1)]
        if not args.no_full:
            out.update(full_supervision(px, py, lo, hi, test_norm, ty, feats_pool, feats_test, args, seed))
    return out


def full_supervision(px, py, lo, hi, test_norm, ty, feats_pool, feats_test, args, seed) -> dict:
    """The starting weights fine-tuned on every pool pixel (4x the retrain steps), and the forest on the pool."""
    model = starting_model("f0", _tiny())
    cfg = replace(RETRAIN_CONFIG, epochs=RETRAIN_CONFIG.epochs * args.full_factor, seed=seed)
    drain(iter_training(model, list(normalise(px, lo, hi)), list(py), None, None, cfg))
    forest = fit_pixel_forest(feats_pool, list(py), n_estimators=args.trees, max_pixels=200_000, seed=seed)
    pred = np.stack([predict_pixel_forest(forest, f) for f in feats_test])
    return {"full": [miou(predict_classes(model, test_norm), ty)], "rf-full": [miou(pred, ty)]}


def _tiny():
    from learners.unet import preset_config

    return preset_config("tiny", n_classes=3)


def summarise(per_seed: list[dict]) -> dict:
    keys = per_seed[0].keys()
    out = {}
    for k in keys:
        arr = np.array([r[k] for r in per_seed], np.float64)
        out[k] = {"mean": arr.mean(0).round(4).tolist(), "std": arr.std(0).round(4).tolist(), "per_seed": arr.tolist()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="lowres-shading,lowres-varying")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-list", help="run these seeds only (e.g. 2), one process each; then --merge")
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--pool", type=int, default=6, help="session slices per seed (from the non-test slices)")
    parser.add_argument("--trees", type=int, default=50, help="random forest trees (ilastik's default is 100)")
    parser.add_argument("--full-factor", type=int, default=2, help="full supervision: this many times the retrain steps")
    parser.add_argument("--sampler", default="taudis", help="session proposals: taudis or entropy")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="labeled-pixel budgets")
    parser.add_argument("--out", type=Path, default=RESULTS / "coldstart-soc.json")
    parser.add_argument("--loops", default="session,session-scribble", help="which session loops to run")
    parser.add_argument("--no-full", action="store_true", help="skip the full-supervision reference")
    parser.add_argument("--partial", type=Path, help="write per-budget results here as they come")
    parser.add_argument("--from-logs", nargs="*", type=Path,
                        help="build --out from the per-budget lines of stopped runs' logs (session, rf) and stop")
    parser.add_argument("--refs", nargs="*", type=Path, default=[],
                        help="with --from-logs: result files of --loops none runs (start, full, rf-full, otsu-full)")
    parser.add_argument("--merge", nargs="*", type=Path, help="join per-preset result files into --out and stop")
    args = parser.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.loops = args.loops.split(",")
    args.seed_list = [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    if args.merge:
        return merge(args.merge, args.out)
    if args.from_logs:
        return from_logs(args.from_logs, args)
    if not (SOC / "images.tif").is_file():
        print(f"no SOC data at {SOC}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    details = {}
    for preset in args.presets.split(","):
        images, labels, splits = load(preset, args.crop)
        t0, runs = time.time(), []
        for seed in args.seed_list:  # written after every seed, so a stopped run keeps what it finished
            runs.append(run_seed(preset, seed, images, labels, splits, args))
            details[preset] = {"summary": summarise(runs), "seconds": round(time.time() - t0), "seeds_done": len(runs)}
            write(details, args)
    return 0


def write(details: dict, args) -> None:
    """The headline table (mean over presets and seeds of each method) plus details per preset."""
    methods = {}
    names = ("session", "session-scribble", "rf", "rf-scribble", "otsu")
    for m in names:
        if any(m not in details[p]["summary"] for p in details):
            continue
        per = np.array([details[p]["summary"][m]["per_seed"] for p in details])  # (presets, seeds, budgets)
        flat = per.reshape(-1, per.shape[-1])
        methods[m] = {"miou_mean": flat.mean(0).round(4).tolist(), "miou_std": flat.std(0).round(4).tolist()}
    for m in ("start", "full", "rf-full", "otsu-full"):
        if any(m not in details[p]["summary"] for p in details):
            continue
        flat = np.array([details[p]["summary"][m]["per_seed"] for p in details]).ravel()
        methods[m] = {"miou_mean": round(float(flat.mean()), 4), "miou_std": round(float(flat.std()), 4)}
    result = {
        "budgets_pixels": list(args.budgets),
        "methods": methods,
        "presets": details,
        "setup": {"data": str(SOC), "presets": list(details), "seeds": args.seeds, "crop": args.crop,
                  "pool_slices": args.pool, "rf_trees": args.trees, "sampler": args.sampler,
                  "seeds_done": {p: d.get("seeds_done", args.seeds) for p, d in details.items()},
                  "retrain_config": {k: v for k, v in vars(RETRAIN_CONFIG).items()},
                  "warm_lr_factor": WARM_LR_FACTOR,
                  "keep_previous_if": {"p_worse_at_least": guard.LEVEL, "drop_at_least": guard.MIN_DROP,
                                       "resamples": guard.RESAMPLES},
                  "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch 1 thread",
                  "date": time.strftime("%Y-%m-%d")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(methods, indent=1))


def merge(files: list[Path], out: Path) -> int:
    """Join result files of separate processes (presets or seeds): per-seed values are pooled."""
    parts = [json.loads(f.read_text()) for f in files]
    details: dict[str, dict] = {}
    for part in parts:
        for preset, d in part["presets"].items():
            runs = details.setdefault(preset, {"per_seed": {}, "seconds": 0, "seeds_done": 0})
            for key, v in d["summary"].items():
                runs["per_seed"].setdefault(key, []).extend(v["per_seed"])
            runs["seconds"] += d["seconds"]
            runs["seeds_done"] += d.get("seeds_done", len(next(iter(d["summary"].values()))["per_seed"]))
    for preset, d in details.items():
        n, per_seed = d["seeds_done"], d.pop("per_seed")
        d["summary"] = summarise([{k: v[i] for k, v in per_seed.items()} for i in range(n)])
    setup = parts[0]["setup"]
    args = argparse.Namespace(out=out, budgets=parts[0]["budgets_pixels"], seeds=sum(d["seeds_done"] for d in
                              details.values()) // len(details), crop=setup["crop"], pool=setup["pool_slices"],
                              trees=setup["rf_trees"], sampler=setup["sampler"])
    write(details, args)
    return 0


LINE = re.compile(r"^\s+(\S+) seed (\d+) (\S+)\s+(\d+) px: ([\d.]+)\s+(\S+) ([\d.]+)")


def from_logs(logs: list[Path], args) -> int:
    """Results of runs stopped before their end, from the lines they printed after every budget:
    per preset, method and budget, mean and std over the seeds that reached it (and how many did)."""
    rows: dict = {}
    for log in logs:
        for line in log.read_text().splitlines():
            m = LINE.match(line)
            if m:
                preset, seed, name, px, score, rf_name, rf = m.groups()
                for method, value in ((name, float(score)), (rf_name, float(rf)), (f"{name}-pixels", int(px))):
                    rows.setdefault(preset, {}).setdefault(method, {}).setdefault(int(seed), []).append(value)
    details, methods = {}, {}
    for preset, per in rows.items():
        summary = {}
        for method, seeds in per.items():
            n = max(len(v) for v in seeds.values())
            cols = [[v[i] for v in seeds.values() if len(v) > i] for i in range(n)]
            summary[method] = {"mean": [round(float(np.mean(c)), 4) for c in cols],
                               "std": [round(float(np.std(c)), 4) for c in cols],
                               "seeds": [len(c) for c in cols], "per_seed": {str(k): v for k, v in seeds.items()}}
        details[preset] = {"summary": summary, "from_logs": [str(p) for p in logs]}
    for method in {m for d in details.values() for m in d["summary"] if not m.endswith("-pixels")}:
        cols: list[list[float]] = []
        for d in details.values():
            for seed_vals in d["summary"].get(method, {}).get("per_seed", {}).values():
                for i, v in enumerate(seed_vals):
                    cols.extend([] for _ in range(i + 1 - len(cols)))
                    cols[i].append(v)
        methods[method] = {"miou_mean": [round(float(np.mean(c)), 4) for c in cols],
                           "miou_std": [round(float(np.std(c)), 4) for c in cols], "runs": [len(c) for c in cols]}
    for ref in args.refs:
        part = json.loads(ref.read_text())
        for preset, d in part["presets"].items():
            details.setdefault(preset, {"summary": {}})["summary"].update(d["summary"])
        for method, v in part["methods"].items():
            methods.setdefault(method, {"miou_mean": [], "miou_std": [], "runs": []})
    for method in {m for p in args.refs for m in json.loads(p.read_text())["methods"]}:
        flat = [x for d in details.values() if method in d["summary"] for x in np.ravel(d["summary"][method]["per_seed"])]
        methods[method] = {"miou_mean": round(float(np.mean(flat)), 4), "miou_std": round(float(np.std(flat)), 4),
                           "runs": len(flat)}
    result = {"budgets_pixels": list(args.budgets), "methods": methods, "presets": details,
              "setup": {"data": str(SOC), "crop": args.crop, "pool_slices": args.pool, "rf_trees": args.trees,
                        "sampler": args.sampler, "note": "built from the per-budget log lines (--from-logs)",
                        "machine": f"{platform.machine()}, torch 1 thread", "date": time.strftime("%Y-%m-%d")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(methods, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
