"""Diagnostic (issue 11): would an ilastik-style forest help the session's f0 where it trails it?

On the SOC slices degraded with `lowres-varying` the session loop trails the pixel forest on its own
labeled pixels from 12k pixels on (BENCHMARKS "Cold start"). This drives the real `Session` loop of
`bench_coldstart.py` (shipped starting weights, TAUDIS proposals, labels from the ground truth, the
session's retrain) and, at each budget, scores on the test split:
- `single`: f0 after the session's retrain (what the benchmark reports), one pass;
- `tta`: the same f0 averaged over the 8 flips/90-degree rotations;
- `rf`: the forest (50 trees, `napari_paser.data.baselines`) on the session's labeled pixels;
- `blend`: the mean of f0's and the forest's class probabilities;
- `distill`: f0 retrained from the weights before this budget's retrain (same config) on the labels
  plus the forest's confident predictions (probability >= --tau) on the pool's unlabeled pixels.
Nothing here is shipped: it measures whether a forest assist would be worth building.

    PYTHONPATH=. .venv/bin/python benchmarks/forest_assist_diagnostic.py --seeds 0,1 --out RESULT.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import labeling_loop as bc
from learners.inference import predict_logits
from learners.training import IGNORE_INDEX, iter_training
from napari_paser.data.baselines import fit_pixel_forest, pixel_features
from napari_paser.data.dataset import normalise
from napari_paser.session.training import role_config


def probs(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(predict_logits(model, x), 1).numpy()


def dihedral_probs(model, x: np.ndarray) -> np.ndarray:
    acc = 0.0
    for k in range(4):
        for flip in (False, True):
            y = np.rot90(x, k, axes=(1, 2))
            y = y[:, :, ::-1] if flip else y
            p = probs(model, np.ascontiguousarray(y))
            acc = acc + np.rot90(p[..., ::-1] if flip else p, -k, axes=(2, 3))
    return acc / 8


def forest_probs(forest, feats: list[np.ndarray], n: int) -> np.ndarray:
    out = []
    for f in feats:
        pp = forest.predict_proba(f.reshape(-1, f.shape[-1])).reshape(*f.shape[:2], -1)
        full = np.zeros((n, *f.shape[:2]), np.float32)
        for j, c in enumerate(forest.classes_):
            full[int(c)] = pp[..., j]
        out.append(full)
    return np.stack(out)


def run_seed(images, labels, splits, seed: int, budgets: list[int], tau: float) -> list[dict]:
    rng = np.random.default_rng(seed)
    test = splits["test"]
    pool = sorted(rng.choice([i for i in range(len(images)) if i not in test], 6, replace=False).tolist())
    px, py, tx, ty = images[pool], labels[pool], images[test], labels[test]
    fp, ft = [pixel_features(im) for im in px], [pixel_features(im) for im in tx]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        loop = bc.Loop(Path(tmp) / "a", px, py, 32, "taudis", False, seed)
        s = loop.s
        lo, hi = s.state.image["lo"], s.state.image["hi"]
        tn, pn = normalise(tx, lo, hi).astype(np.float32), normalise(px, lo, hi).astype(np.float32)
        for budget in budgets:
            before, cfg = copy.deepcopy(s.models["f0"]), role_config(s, loop.cfg, "f0")
            loop.label_until(budget)
            lab = loop.canvas_labels()
            forest = fit_pixel_forest(fp, list(lab), n_estimators=50, seed=seed)
            pool_rf, test_rf = forest_probs(forest, fp, 3), forest_probs(forest, ft, 3)
            train = np.where(lab != IGNORE_INDEX, lab, np.where(pool_rf.max(1) >= tau, pool_rf.argmax(1), IGNORE_INDEX))
            for rec in s.state.accepted:  # held-out regions stay out of training, as in the session
                if rec.split == "val":
                    train[rec.z, rec.y0:rec.y0 + rec.h, rec.x0:rec.x0 + rec.w] = IGNORE_INDEX
            student = copy.deepcopy(before)
            for _ in iter_training(student, list(pn), list(train.astype(np.uint8)), None, None, cfg):
                pass
            p1, pd = probs(s.models["f0"], tn), probs(student, tn)
            row = {"seed": seed, "budget": budget, "pixels": loop.labeled(),
                   "single": bc.miou(p1.argmax(1), ty), "tta": bc.miou(dihedral_probs(s.models["f0"], tn).argmax(1), ty),
                   "rf": bc.miou(test_rf.argmax(1), ty), "blend": bc.miou((p1 + test_rf).argmax(1), ty),
                   "distill": bc.miou(pd.argmax(1), ty)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="lowres-varying")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budgets", default="1024,3072,12288,49152")
    parser.add_argument("--tau", type=float, default=0.7, help="distill: forest probability to take a pixel")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels, splits = bc.load(args.preset, 192)
    rows = []
    for seed in (int(v) for v in args.seeds.split(",")):
        rows += run_seed(images, labels, splits, seed, [int(b) for b in args.budgets.split(",")], args.tau)
        args.out.write_text(json.dumps({"preset": args.preset, "tau": args.tau, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
