"""Label by correcting: mIoU against the pixels a person touches, for painting and correcting.

Every session row drives the real `Session` (napari_paser.session) started with the shipped
starting weights (`new_models()`), proposing with the real samplers (`sampling.registry`) and
retraining with `Session.retrain` after each round of k regions:
- paint-random: random regions painted from scratch: effort = every labeled pixel;
- correct-random / correct-taudis / correct-effort: each proposed region arrives filled with the
  model's suggestion (`Session.suggestion`) and a simulated annotator fixes every wrong pixel
  (`napari_paser.bench.al_sim.correct_region`): effort = pixels changed (and strokes = connected
  groups of them), accepted with `Session.accept(..., from_suggestion=True)`;
- oracle-wrong / oracle-cheap / oracle-gain-per-px: correcting, with benchmark-only samplers that know
  the ground truth (`oracle_samplers.py`): the most wrong pixels of f0's prediction, the fewest, and an
  oracle's mIoU gain per corrected pixel: ceilings for what any sampler could save;
- rf-2d / rf-3d: the ilastik-style random forest (50 trees) trained on the labeled pixels of
  correct-taudis's accepted regions at each of its steps, on 2D per-slice features
  (`napari_paser.data.baselines.pixel_features`) or on skimage's multiscale_basic_features of the
  whole (Z, H, W) volume (ilastik's 3D mode); its x-axis is correct-taudis's changed pixels;
- session-assisted: what the session itself would segment after each of correct-taudis's rounds: its forest
  assist (`Session.assisted`: f0, a forest on 3D features of the accepted regions, or their mean, whichever
  scored best on the regions the session accepted, each before f0 trained on it; `napari_paser.session.forest`),
  with `picks` the assist's mode per round; the session rows' suggestions follow the same mode
  (`--assist off`: f0's guesses only, as sessions without the assist); assist-sum / assist-last: the
  modes other weights of older scores would have picked from the same session's scores (`choose_mode`),
  and session-blend / session-forest: f0 with the forest's mean and the forest alone at every round;
- session+rf3d-blend: the mean of correct-taudis's f0 class probabilities and rf-3d's at each step;
  session-or-rf3d-by-heldout (and session-rf3d-blend-by-heldout, the best of the three): what a choice
  by held-out regions would show: per step, the one scoring highest on `--heldout` pool regions that
  correct-taudis never accepted (their ground truth; a person would correct them once, their changed
  pixels under the round-1 suggestion are in `heldout_px_per_seed`) is scored on the test slices.

Per method: budgets_px (mean over seeds of the cumulative effort after each round; round 0 is the
starting weights with no labels), miou_mean, miou_per_seed, px_to_95 (the effort at the first
round reaching 95% of full supervision: the starting weights fine-tuned on every pool pixel; null
where never reached) and px_to_95_per_seed. Comparisons are paired per seed with percentile-
bootstrap 95% intervals (`napari_paser.bench.al.bootstrap_ci`).

Datasets (`benchmarks/common.py`): soc-lowres-varying (SOC slices degraded per slice, as
bench_coldstart), soc_stack-3d (consecutive slices degraded in 3D: blur, 2x down-sampling in z, y
and x, noise; the pool is a block of consecutive slices of the first half, the test a block of the
held-back second half), battery_nanoct (set a: three slices pool, three test).

    nice -n 10 PYTHONPATH=. python benchmarks/bench_effort.py [--datasets soc-lowres-varying,soc_stack-3d,battery]
        [--seeds 10] [--crop 128] [--rounds 5] [--k 4] [--methods correct-random,correct-taudis,oracle-wrong,...]
        [--out benchmarks/results/effort.json]

`--ratio-ceiling` measures only the bound on painted / corrected pixels (`ratio_ceiling`).

Each dataset can run in its own process (--datasets NAME --out part.json); --merge part*.json joins them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from skimage.feature import multiscale_basic_features

import common
import oracle_samplers
from labeling_loop import CLASSES, load as load_soc, miou
from router_scoring import load_battery
from learners.generators import collect, drain
from learners.inference import predict_classes, predict_logits
from learners.training import IGNORE_INDEX, iter_training
from learners.unet import preset_config
from napari_paser.bench.al import bootstrap_ci, verdict
from napari_paser.bench.al_sim import correct_region
from napari_paser.data.baselines import FEATURE_SIGMAS, fit_pixel_forest, forest_probabilities, pixel_features
from napari_paser.data.dataset import normalise
from napari_paser.session import Session
from napari_paser.session.forest import choose_mode
from napari_paser.session.training import RETRAIN_CONFIG
from napari_paser.weights import starting_model

SESSION_METHODS = {"paint-random": ("random", False), "correct-random": ("random", True),
                   "correct-taudis": ("taudis", True), "correct-effort": ("effort", True),
                   **{name: (name, True) for name in oracle_samplers.ORACLES}}
ASSIST_ROWS = ("session-assisted", "assist-sum", "assist-last", "session-blend", "session-forest")
FOREST_ROWS = ("rf-2d", "rf-3d", "session+rf3d-blend", "session-or-rf3d-by-heldout", "session-rf3d-blend-by-heldout")
DATASETS = ("soc-lowres-varying", "soc_stack-3d", "battery")


# ----------------------------------------------------------------------------- data


def dataset(name: str, seed: int, crop: int, pool: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool images, pool labels, test images, test labels) of one seed; images float32, labels 0..C-1."""
    rng = np.random.default_rng(seed)
    if name == "soc-lowres-varying":
        images, labels, splits = load_soc("lowres-varying", crop)
        test = splits["test"][:4]
        others = [i for i in range(len(images)) if i not in splits["test"]]
        chosen = sorted(rng.choice(others, pool, replace=False).tolist())
        return images[chosen], labels[chosen], images[test], labels[test]
    if name == "soc_stack-3d":
        images, labels = common.soc_stack_3d(crop)
        half = len(images) // 2
        z0 = int(rng.integers(0, half - pool))
        t0 = half + int(rng.integers(0, half - pool))
        return images[z0:z0 + pool], labels[z0:z0 + pool], images[t0:t0 + pool], labels[t0:t0 + pool]
    if name == "battery":
        images, labels = load_battery("a")  # classes dark to bright, as the session's models order them
        h, w = images.shape[1:]
        y0, x0 = int(rng.integers(0, h - crop)), int(rng.integers(0, w - crop))
        images, labels = images[:, y0:y0 + crop, x0:x0 + crop], labels[:, y0:y0 + crop, x0:x0 + crop]
        order = rng.permutation(len(images))
        p, t = sorted(order[:3].tolist()), sorted(order[3:].tolist())
        return images[p], labels[p], images[t], labels[t]
    raise SystemExit(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- the simulated person


class EffortLoop:
    """One simulated person working through a real Session: propose k, paint or correct, retrain."""

    def __init__(self, folder: Path, images, labels, sampler: str, correct: bool, seed: int, args) -> None:
        self.s = Session.create(folder, images, classes=CLASSES, region_size=args.region, val_every=0)
        self.s.new_models()  # the shipped starting weights
        self.s.set_forest_assist(args.assist == "on")
        if sampler in oracle_samplers.ORACLES:
            oracle_samplers.register(labels, len(CLASSES))
        self.truth, self.sampler, self.correct, self.seed, self.args = labels, sampler, correct, seed, args
        self.cfg = replace(RETRAIN_CONFIG, epochs=args.epochs, steps_per_epoch=args.steps, seed=seed)
        self.effort, self.strokes, self.rounds = 0, 0, 0
        drain(self.s.compute_maps(samples=args.samples))

    def round(self) -> None:
        for p in self.s.propose(self.args.k, self.sampler, seed=self.seed * 1000 + self.rounds):
            region = self.s.region(p.region_id)
            truth = self.truth[region.slices]
            if self.correct:
                final, effort = correct_region(self.s.suggestion(p.region_id), truth)
                self.s.accept(p.region_id, final, from_suggestion=True)
                self.effort += effort.changed_px
                self.strokes += effort.strokes
            else:
                self.s.accept(p.region_id, truth.astype(np.uint8) + 1)
                self.effort += truth.size
        collect(self.s.retrain(self.cfg, samples=self.args.samples, refresh=False))
        drain(self.s.compute_maps(samples=self.args.samples))  # every pool slice: the samplers see the volume
        self.rounds += 1

    def canvas_labels(self) -> np.ndarray:
        lab = np.asarray(self.s.labels[:]).astype(np.int16) - 1
        return np.where(lab >= 0, lab, IGNORE_INDEX).astype(np.uint8)


def features_3d(volume: np.ndarray) -> list[np.ndarray]:
    """skimage's multiscale features of the whole volume (as ilastik's 3D mode), per slice (H, W, F)."""
    f = multiscale_basic_features(np.asarray(volume, np.float32), intensity=True, edges=True, texture=True,
                                  sigma_min=FEATURE_SIGMAS[0], sigma_max=FEATURE_SIGMAS[1])
    return list(f.astype(np.float32))


def full_reference(px, py, test_norm, ty, lo, hi, args, seed, error: bool = False):
    """The starting weights fine-tuned on every pool pixel (args.full_factor x a retrain's steps): its test
    mIoU (with `error`, also its share of wrong test pixels)."""
    model = starting_model("f0", preset_config("tiny", n_classes=3))
    cfg = replace(RETRAIN_CONFIG, epochs=args.epochs * args.full_factor, steps_per_epoch=args.steps, seed=seed)
    drain(iter_training(model, list(normalise(px, lo, hi)), list(py), None, None, cfg))
    pred = predict_classes(model, test_norm)
    return (miou(pred, ty), float((pred != ty).mean())) if error else miou(pred, ty)


def ratio_ceiling(name: str, seeds: list[int], args) -> dict:
    """The most correcting can save over painting in this protocol. A simulated person who fixes every wrong
    pixel ends with the same labels as one who paints, so both reach 95% of full supervision at the same
    round, and painted / changed pixels there is 1 / (the share of wrong pixels in the suggestions so far).
    No suggestion is better than full supervision's model on unseen slices: 1 / its pixel error bounds the
    ratio from above (a 5x saving needs suggestions at least 80% right)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            px, py, tx, ty = dataset(name, seed, args.crop, args.pool)
            s = Session.create(Path(tmp) / f"s{seed}", px, classes=CLASSES, region_size=args.region, val_every=0)
            lo, hi = s.state.image["lo"], s.state.image["hi"]
            s.close()
            full, err = full_reference(px, py, normalise(tx, lo, hi), ty, lo, hi, args, seed, error=True)
            rows.append({"seed": seed, "full_miou": round(full, 4), "full_pixel_error": round(err, 4),
                         "ratio_ceiling": round(1 / max(err, 1e-6), 2)})
            print(f"  {name} seed {seed}: full mIoU {full:.3f}, wrong pixels {err:.1%}, ratio at most {1 / err:.1f}x",
                  flush=True)
    return {"per_seed": rows, "ratio_ceiling": bootstrap_ci([r["ratio_ceiling"] for r in rows]),
            "full_pixel_error": bootstrap_ci([r["full_pixel_error"] for r in rows])}


def run_seed(name: str, seed: int, args) -> dict:
    px, py, tx, ty = dataset(name, seed, args.crop, args.pool)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            sampler, correct = SESSION_METHODS[method]
            t0 = time.time()
            loop = EffortLoop(Path(tmp) / method, px, py, sampler, correct, seed, args)
            lo, hi = loop.s.state.image["lo"], loop.s.state.image["hi"]
            test_norm = normalise(tx, lo, hi)
            row = {"budgets_px": [0], "miou": [miou(predict_classes(loop.s.models["f0"], test_norm), ty)],
                   "strokes": [0], "regions": [0]}
            labeled, f0_probs = [], [(probs(loop.s.models["f0"], test_norm), probs(loop.s.models["f0"], normalise(px, lo, hi)))]
            assisted = {"budgets_px": [0], "miou": [row["miou"][0]], "picks": ["f0"], "batches_after_round": [0]}
            candidates: dict[str, list] = {}  # the test mIoU of each mode the assist could pick, per round
            for _ in range(args.rounds):
                loop.round()
                row["budgets_px"].append(loop.effort)
                row["strokes"].append(loop.strokes)
                row["regions"].append(len(loop.s.accepted))
                row["miou"].append(miou(predict_classes(loop.s.models["f0"], test_norm), ty))
                labeled.append(loop.canvas_labels())
                if method == "correct-taudis":
                    f0_probs.append((probs(loop.s.models["f0"], test_norm), probs(loop.s.models["f0"], normalise(px, lo, hi))))
                    assisted["budgets_px"].append(loop.effort)
                    assisted["miou"].append(miou(loop.s.assisted(tx).argmax(1), ty))
                    assisted["picks"].append(loop.s.forest.mode)
                    p_f0, p_rf = loop.s.assisted(tx, mode="f0"), loop.s.assisted(tx, mode="forest")
                    for mode, p in (("f0", p_f0), ("blend", (p_f0 + p_rf) / 2), ("forest", p_rf)):
                        candidates.setdefault(mode, [row["miou"][0]]).append(miou(p.argmax(1), ty))
                    assisted["batches_after_round"].append(len(loop.s.forest.record.get("batches", [])))
            row["seconds"] = round(time.time() - t0, 1)
            out[method] = row
            print(f"  {name} seed {seed} {method:15s} effort {row['budgets_px']} mIoU "
                  f"{[round(v, 3) for v in row['miou']]} ({row['seconds']:.0f} s)", flush=True)
            if method == "correct-taudis":
                assisted["batches"] = loop.s.forest.record.get("batches", [])  # the scores behind the picks
                out["session-assisted"] = assisted
                print(f"  session-assisted {[round(v, 3) for v in assisted['miou']]} {assisted['picks']}", flush=True)
                out.update(assist_rules(assisted, candidates, loop.s.forest.record.get("batches", [])))
                held = heldout_regions(loop.s, args.heldout, seed)
                out["heldout_px"] = heldout_cost(held, f0_probs[0][1], py)
                out.update(forests(px, py, tx, ty, labeled, row, lo, hi, args, seed, f0_probs, held))
            loop.s.close()
        out["full"] = full_reference(px, py, test_norm, ty, lo, hi, args, seed)
    return out


ASSIST_RULES = {"assist-sum": 1.0, "assist-last": 0.0}  # other weights of older batches than the product's DECAY


def assist_rules(assisted: dict, candidates: dict[str, list], batches: list[dict]) -> dict:
    """The test mIoU another decision rule would have reached with the same scores (the session's own batch
    confusions, `forest.choose_mode` with another weight of older batches), and each mode's test mIoU."""
    out = {}
    for name, decay in ASSIST_RULES.items():
        picks = [choose_mode(batches[:n], decay=decay)[0] for n in assisted["batches_after_round"]]
        out[name] = {"budgets_px": list(assisted["budgets_px"]),
                     "miou": [candidates[m][i] if i else assisted["miou"][0] for i, m in enumerate(picks)],
                     "picks": picks}
    for mode in ("blend", "forest"):
        out[f"session-{mode}"] = {"budgets_px": list(assisted["budgets_px"]), "miou": candidates[mode]}
    shown = {k: [round(v, 3) for v in r["miou"]] for k, r in out.items()}
    print(f"  assist rules {shown}", flush=True)
    return out


def probs(model, images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) softmax of f0's deterministic logits (the prediction the test mIoU scores)."""
    return torch.softmax(predict_logits(model, images), 1).numpy()


def forest_proba(forest, feats: list[np.ndarray], n_classes: int) -> np.ndarray:
    """(N, C, H, W) class probabilities of the forest (classes it never saw: 0)."""
    return np.stack([forest_probabilities(forest, f, n_classes) for f in feats])


def heldout_regions(session: Session, n: int, seed: int) -> list[tuple]:
    """`n` random pool regions the session never accepted (their slices into the pool arrays)."""
    accepted = {int(a.region_id) for a in session.accepted}
    free = [int(r) for r in session.pool.ids if int(r) not in accepted]
    rng = np.random.default_rng(10_000 + seed)
    return [session.region(int(r)).slices for r in rng.choice(free, min(n, len(free)), replace=False)]


def heldout_cost(held: list[tuple], pool_probs: np.ndarray, py: np.ndarray) -> int:
    """Pixels a person would change to correct the held-out regions under the starting weights' guess."""
    guess = pool_probs.argmax(1)
    return int(sum((guess[z, ys, xs] != py[z, ys, xs]).sum() for z, ys, xs in held))


def heldout_miou(pool_probs: np.ndarray, py: np.ndarray, held: list[tuple]) -> float:
    guess = pool_probs.argmax(1)
    return miou(np.concatenate([guess[z, ys, xs].ravel() for z, ys, xs in held]),
                np.concatenate([py[z, ys, xs].ravel() for z, ys, xs in held]))


def forests(px, py, tx, ty, labeled: list[np.ndarray], taudis: dict, lo, hi, args, seed,
            f0_probs: list[tuple], held: list[tuple]) -> dict:
    """rf-2d and rf-3d on correct-taudis's labeled pixels after each of its rounds (round 0: no labels); the
    blend of f0 (after the same round) with rf-3d, and the picks held-out regions would make."""
    pn, tn = normalise(px, lo, hi), normalise(tx, lo, hi)
    feats = {"rf-2d": ([pixel_features(im) for im in pn], [pixel_features(im) for im in tn]),
             "rf-3d": (features_3d(pn), features_3d(tn))}
    c = len(CLASSES)
    out = {}
    for name, (fp, ft) in feats.items():
        scores, kept = [None], [None]  # no labels: no forest
        for lab in labeled:
            forest = fit_pixel_forest(fp, list(lab), n_estimators=args.trees, seed=seed)
            test_p = forest_proba(forest, ft, c)
            scores.append(miou(test_p.argmax(1), ty))
            if name == "rf-3d":
                kept.append((test_p, forest_proba(forest, fp, c)))
        out[name] = {"budgets_px": list(taudis["budgets_px"]), "miou": scores}
        print(f"  {name} {[None if v is None else round(v, 3) for v in scores]}", flush=True)
    blend, pick2, pick3, picks2, picks3 = [], [], [], [], []
    for (f0_test, f0_pool), rf in zip(f0_probs, kept):
        paths = {"session": (f0_test, f0_pool)}
        if rf is not None:
            paths["rf-3d"] = rf
            paths["blend"] = ((f0_test + rf[0]) / 2, (f0_pool + rf[1]) / 2)
        test_score = {k: miou(v[0].argmax(1), ty) for k, v in paths.items()}
        held_score = {k: heldout_miou(v[1], py, held) for k, v in paths.items()}
        blend.append(test_score.get("blend", test_score["session"]))
        two = max(("session", "rf-3d") if rf is not None else ("session",), key=lambda k: held_score[k])
        three = max(paths, key=lambda k: held_score[k])
        pick2.append(test_score[two])
        pick3.append(test_score[three])
        picks2.append(two)
        picks3.append(three)
    for name, scores, picks in (("session+rf3d-blend", blend, None), ("session-or-rf3d-by-heldout", pick2, picks2),
                                ("session-rf3d-blend-by-heldout", pick3, picks3)):
        out[name] = {"budgets_px": list(taudis["budgets_px"]), "miou": scores}
        if picks:
            out[name]["picks"] = picks
        print(f"  {name} {[round(v, 3) for v in scores]} {picks or ''}", flush=True)
    return out


# ----------------------------------------------------------------------------- summary


def px_to(row_budgets: list[int], row_miou: list, target: float) -> int | None:
    for b, m in zip(row_budgets, row_miou):
        if m is not None and m >= target:
            return int(b)
    return None


def summarise(runs: list[dict]) -> dict:
    """Per method: budgets, mIoU per seed and mean, pixels to 95% of full supervision; comparisons."""
    full = [r["full"] for r in runs]
    methods = {}
    for m in (m for m in (*SESSION_METHODS, *ASSIST_ROWS, *FOREST_ROWS) if m in runs[0]):
        budgets = [r[m]["budgets_px"] for r in runs]
        per = [r[m]["miou"] for r in runs]
        to95 = [px_to(b, s, 0.95 * f) for b, s, f in zip(budgets, per, full)]
        cols = list(zip(*per))
        methods[m] = {
            "budgets_px": [round(float(np.mean(c)), 1) for c in zip(*budgets)], "budgets_px_per_seed": budgets,
            "miou_mean": [None if any(v is None for v in c) else round(float(np.mean(c)), 4) for c in cols],
            "miou_per_seed": [[None if v is None else round(v, 4) for v in s] for s in per],
            "px_to_95": None if any(v is None for v in to95) else round(float(np.mean(to95)), 1),
            "px_to_95_per_seed": to95,
        }
        if "strokes" in runs[0][m]:
            methods[m]["strokes_per_seed"] = [r[m]["strokes"] for r in runs]
            methods[m]["seconds_per_seed"] = [r[m]["seconds"] for r in runs]
        if "picks" in runs[0][m]:
            methods[m]["picks_per_seed"] = [r[m]["picks"] for r in runs]
        if "batches" in runs[0][m]:
            methods[m]["batches_per_seed"] = [r[m]["batches"] for r in runs]
    extra = {"heldout_px_per_seed": [r["heldout_px"] for r in runs]} if "heldout_px" in runs[0] else {}
    return {"methods": methods, "full_miou_per_seed": [round(f, 4) for f in full], **extra,
            "comparisons": compare(methods)}


def compare(methods: dict) -> dict:
    """The targets' comparisons, paired per seed (bootstrap 95% intervals), for the rows present."""
    out = {}
    rand = methods["correct-random"]["px_to_95_per_seed"]
    if "paint-random" in methods:
        paint = methods["paint-random"]["px_to_95_per_seed"]
        ratio = [p / r if p is not None and r else None for p, r in zip(paint, rand)]
        out["paint_over_correct_px_to_95"] = {**bootstrap_ci(ratio), "per_seed": ratio, "target": ">= 5"}
        # effort per round at the same number of regions: painting pays the region, correcting its errors
        pr = np.array(methods["paint-random"]["budgets_px_per_seed"], float)[:, -1]
        cr = np.array(methods["correct-random"]["budgets_px_per_seed"], float)[:, -1]
        out["paint_over_correct_px_same_regions"] = bootstrap_ci((pr / np.maximum(cr, 1)).tolist())
        out["paint-random_over_correct-random_px_to_common"] = common_target(methods["paint-random"],
                                                                             methods["correct-random"])
    for m in (m for m in (*SESSION_METHODS,) if m in methods and m not in ("paint-random", "correct-random")):
        best = methods[m]["px_to_95_per_seed"]
        cut = [1 - b / r if b is not None and r else None for b, r in zip(best, rand)]
        ci = bootstrap_ci(cut)
        gain = np.array(methods[m]["miou_per_seed"], float) - np.array(methods["correct-random"]["miou_per_seed"], float)
        eff = np.array(methods[m]["budgets_px_per_seed"], float) - np.array(methods["correct-random"]["budgets_px_per_seed"], float)
        common = common_target(methods[m], methods["correct-random"])
        common_cut = bootstrap_ci([None if v is None else 1 - v for v in common["per_seed"]])
        out[f"{m}_vs_correct-random"] = {
            "px_to_95_cut": {**ci, "per_seed": cut, "target": ">= 0.30, interval above 0", "verdict": verdict(ci)},
            "px_to_common_cut": {**common_cut, "verdict": verdict(common_cut)},
            "reached_95": {"this": sum(v is not None for v in best), "random": sum(v is not None for v in rand),
                           "seeds": len(rand)},
            # every seed counts: one where this row never reaches 95% (or random does not) is no 30% cut
            "seeds_cut_30": {"met": sum(c is not None and c >= 0.30 for c in cut), "seeds": len(cut)},
            "miou_gain_per_round": [bootstrap_ci(gain[:, i]) for i in range(1, gain.shape[1])],
            "extra_changed_px_per_round": [bootstrap_ci(eff[:, i]) for i in range(1, eff.shape[1])],
        }
        out[f"{m}_over_correct-random_px_to_common"] = common
    if "correct-taudis" in methods:  # the assist against f0 alone on the same session's labels
        f0 = np.array(methods["correct-taudis"]["miou_per_seed"], float)[:, 1:]
        for m in (m for m in ASSIST_ROWS if m in methods):
            rows = np.array(methods[m]["miou_per_seed"], float)[:, 1:]
            out[f"{m}_minus_correct-taudis_per_round"] = [bootstrap_ci(rows[:, i] - f0[:, i]) for i in range(f0.shape[1])]
    if "rf-3d" in methods:
        rf3 = np.array([[np.nan if v is None else v for v in s] for s in methods["rf-3d"]["miou_per_seed"]])[:, 1:]
        for m in ("correct-taudis", "session-assisted", "assist-sum", "assist-last", "session-blend", "session-forest",
                  "session+rf3d-blend", "session-or-rf3d-by-heldout", "session-rf3d-blend-by-heldout"):
            if m not in methods:
                continue
            session = np.array(methods[m]["miou_per_seed"], float)[:, 1:]
            diffs = [bootstrap_ci(session[:, i] - rf3[:, i]) for i in range(session.shape[1])]
            out[f"{m}_minus_rf-3d_per_round"] = {
                "per_round": diffs, "target": "session >= rf-3d at every budget",
                "met": bool(all(d["mean"] is not None and d["mean"] >= 0 for d in diffs)),
                "met_with_interval": bool(all(d["lo"] is not None and d["lo"] >= 0 for d in diffs))}
    return out


def common_target(a: dict, b: dict) -> dict:
    """Per seed, the effort each of two methods needs to reach the lower of their best mIoUs (both reach
    it, so it is defined where px_to_95 is not): the ratio a / b, with its bootstrap interval."""
    ratios, targets = [], []
    for ba, ma, bb, mb in zip(a["budgets_px_per_seed"], a["miou_per_seed"], b["budgets_px_per_seed"], b["miou_per_seed"]):
        target = min(max(v for v in ma if v is not None), max(v for v in mb if v is not None))
        pa, pb = px_to(ba, ma, target), px_to(bb, mb, target)
        targets.append(round(target, 4))
        ratios.append(pa / pb if pa and pb else None)
    return {**bootstrap_ci(ratios), "per_seed": ratios, "targets": targets}


def join_seeds(a: dict, b: dict) -> dict:
    """One dataset's results of two runs on different seeds as one (means recomputed from the per-seed rows)."""
    out = {"full_miou_per_seed": a["full_miou_per_seed"] + b["full_miou_per_seed"],
           "seeds_done": a["seeds_done"] + b["seeds_done"], "seconds": a["seconds"] + b["seconds"], "methods": {}}
    if "heldout_px_per_seed" in a and "heldout_px_per_seed" in b:
        out["heldout_px_per_seed"] = a["heldout_px_per_seed"] + b["heldout_px_per_seed"]
    for m, ra in a["methods"].items():
        if m not in b["methods"]:  # a row only one part ran cannot be paired over the joined seeds
            continue
        rb = b["methods"][m]
        row = {k: ra[k] + rb[k] for k in ra if k.endswith("_per_seed")}
        row["budgets_px"] = [round(float(np.mean(c)), 1) for c in zip(*row["budgets_px_per_seed"])]
        row["miou_mean"] = [None if any(v is None for v in c) else round(float(np.mean(c)), 4)
                            for c in zip(*row["miou_per_seed"])]
        to95 = row["px_to_95_per_seed"]
        row["px_to_95"] = None if any(v is None for v in to95) else round(float(np.mean(to95)), 1)
        out["methods"][m] = row
    return out


def recompare(files: list[Path], out: Path) -> int:
    """Join result files (one per dataset) and recompute every dataset's comparisons from its per-seed rows."""
    parts = [json.loads(p.read_text()) for p in files]
    merged = {"datasets": {}, "config": parts[0]["config"]}
    merged["config"]["seeds_run"] = sorted({s for p in parts for s in p["config"]["seeds_run"]})
    for part in parts:
        for name, d in part["datasets"].items():
            if name in merged["datasets"]:  # more seeds of a dataset: join the per-seed rows
                d = join_seeds(merged["datasets"][name], d)
            merged["datasets"][name] = d
    for d in merged["datasets"].values():
        d["comparisons"] = compare(d["methods"])
    out.write_text(json.dumps(merged, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=10, help="the full spec: 10 seeds per dataset")
    parser.add_argument("--seed-list", help="run these seeds only (e.g. 3,4)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--pool", type=int, default=4, help="pool slices per seed (battery: always 3)")
    parser.add_argument("--region", type=int, default=32)
    parser.add_argument("--k", type=int, default=4, help="regions per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="retrain epochs (RETRAIN_CONFIG has 4)")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per retrain epoch (RETRAIN_CONFIG: 75)")
    parser.add_argument("--samples", type=int, default=3, help="MC-dropout passes of the maps")
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--methods", default=",".join(SESSION_METHODS),
                        help="session rows to run (correct-random and correct-taudis are always needed)")
    parser.add_argument("--assist", choices=("on", "off"), default="on",
                        help="the sessions' forest assist (on: the product's default; off: f0's guesses only)")
    parser.add_argument("--heldout", type=int, default=3, help="never-accepted pool regions that pick a path")
    parser.add_argument("--full-factor", type=int, default=4)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "effort.json")
    parser.add_argument("--ratio-ceiling", action="store_true",
                        help="only the bound on painted / corrected pixels: full supervision's share of wrong pixels")
    parser.add_argument("--merge", nargs="*", type=Path,
                        help="join per-dataset result files into --out (comparisons recomputed) and stop")
    args = parser.parse_args()
    if args.merge:
        return recompare(args.merge, args.out)
    torch.set_num_threads(1)
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(SESSION_METHODS))
    if unknown or not {"correct-random", "correct-taudis"} <= set(args.methods):
        raise SystemExit(f"--methods: choose among {', '.join(SESSION_METHODS)}, with correct-random and "
                         f"correct-taudis (unknown: {', '.join(unknown) or 'none'})")
    seeds = [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    if args.ratio_ceiling:
        out = {name: ratio_ceiling(name, seeds, args) for name in args.datasets.split(",")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"datasets": out, "config": {k: str(v) for k, v in vars(args).items()},
                                        "date": time.strftime("%Y-%m-%d")}, indent=1))
        return 0
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "merge"}
    config.update(seeds_run=seeds, machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, torch 1 thread, "
                  "2 shared cores, nice 10", date=time.strftime("%Y-%m-%d"),
                  retrain={"epochs": args.epochs, "steps_per_epoch": args.steps, "rest": "RETRAIN_CONFIG"})
    result = {"datasets": {}, "config": config}
    for name in args.datasets.split(","):
        runs, t0 = [], time.time()
        for seed in seeds:  # written after every seed, so a stopped run keeps what it finished
            runs.append(run_seed(name, seed, args))
            result["datasets"][name] = {**summarise(runs), "seeds_done": len(runs), "seconds": round(time.time() - t0)}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
