"""How far the battery nano-CT labels themselves let any model go: their agreement between neighbouring
slices, how much of them is finer than a smooth prediction can draw, and the spread of a forest's score
from one held-out slice to the next.

- Neighbouring slices: mIoU and per-class IoU of slice z's labels against slice z+1's (the sets' slices are
  76 to 257 scan slices apart, so this measures whether the phases persist that far, against the IoU two
  independent label maps with the same class shares would have).
- Label detail: mIoU of the labels against themselves shifted by 1 and 2 pixels (what a one- or two-pixel
  boundary disagreement costs), and against their own majority (mode) filter over 3, 5, 9 px windows (what a
  prediction as smooth as the image's blur cannot draw: an upper bound for such a predictor).
- `--loso`: the 50-tree forest (scikit-image `multiscale_basic_features`, each slice normalised to its own
  robust range) trained on five slices of a set and tested on the sixth, for each slice: the per-slice spread
  behind any within-set mean of three test slices.

Classes in the session's order, dark to bright (pore, binder, active).

    PYTHONPATH=. .venv/bin/python benchmarks/battery_label_consistency.py --out benchmarks/results/battery-ceiling-labels.json [--loso]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

from learners.metrics import confusion_matrix, iou_from_confusion
from napari_paser.data.baselines import fit_pixel_forest, pixel_features, predict_pixel_forest
from napari_paser.data.dataset import normalise, robust_range
from router_scoring import load_battery

N = 3
SHIFTS = (1, 2)
MODE_WINDOWS = (3, 5, 9)
FOREST_PIXELS = 50_000


def ious(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in iou_from_confusion(confusion_matrix(a, b, N))]


def chance_ious(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Expected IoU per class of two independent label maps with the class shares of `a` and `b`."""
    p = np.bincount(a.ravel(), minlength=N) / a.size
    q = np.bincount(b.ravel(), minlength=N) / b.size
    return [round(float(pc * qc / (pc + qc - pc * qc)), 4) for pc, qc in zip(p, q)]


def shifted(y: np.ndarray, d: int) -> float:
    """Mean mIoU of `y` against itself moved by d pixels along each axis, both ways (the overlap only)."""
    out = []
    for axis in (0, 1):
        for sign in (1, -1):
            a = np.moveaxis(y, axis, 0)
            lo, hi = (a[d:], a[:-d]) if sign > 0 else (a[:-d], a[d:])
            out.append(np.mean(ious(lo, hi)))
    return round(float(np.mean(out)), 4)


def mode_filter(y: np.ndarray, size: int) -> np.ndarray:
    """The most frequent class in a size x size window around each pixel."""
    votes = np.stack([uniform_filter((y == c).astype(np.float32), size) for c in range(N)])
    return votes.argmax(0).astype(np.uint8)


def neighbours(y: np.ndarray) -> list[dict]:
    rows = []
    for z in range(len(y) - 1):
        rows.append({"z": z, "iou": ious(y[z], y[z + 1]), "miou": round(float(np.mean(ious(y[z], y[z + 1]))), 4),
                     "chance_iou": chance_ious(y[z], y[z + 1]),
                     "chance_miou": round(float(np.mean(chance_ious(y[z], y[z + 1]))), 4),
                     "agreement": round(float((y[z] == y[z + 1]).mean()), 4)})
    return rows


def detail(y: np.ndarray) -> dict:
    out = {f"shift_{d}px_miou": round(float(np.mean([shifted(s, d) for s in y])), 4) for d in SHIFTS}
    for w in MODE_WINDOWS:
        per = [ious(mode_filter(s, w), s) for s in y]
        out[f"mode_{w}px_miou"] = round(float(np.mean(per)), 4)
        out[f"mode_{w}px_class_iou"] = [round(float(v), 4) for v in np.mean(per, 0)]
    return out


def loso(x: np.ndarray, y: np.ndarray) -> list[dict]:
    """The forest trained on every slice but one, scored on that one, per slice."""
    xs = np.stack([normalise(im, *robust_range(im)) for im in x]).astype(np.float32)
    feats = [pixel_features(im) for im in xs]
    rows = []
    for z in range(len(xs)):
        t = time.perf_counter()
        rest = [i for i in range(len(xs)) if i != z]
        forest = fit_pixel_forest([feats[i] for i in rest], [y[i] for i in rest], n_estimators=50, max_pixels=FOREST_PIXELS)
        iou = ious(predict_pixel_forest(forest, feats[z]), y[z])
        rows.append({"z": z, "miou": round(float(np.mean(iou)), 4), "class_iou": iou, "wall_s": round(time.perf_counter() - t, 1)})
        print(f"    loso slice {z}: {rows[-1]['miou']:.3f} {iou}", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sets", default="a,b")
    p.add_argument("--loso", action="store_true", help="also the leave-one-slice-out forest (a minute per slice)")
    args = p.parse_args()
    started = time.time()
    out: dict = {"command": "battery_label_consistency.py" + (" --loso" if args.loso else ""), "sets": {},
                 "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}}
    for name in args.sets.split(","):
        x, y = load_battery(name)
        row = {"neighbours": neighbours(y), "detail": detail(y)}
        nb = row["neighbours"]
        row["neighbours_mean"] = {"miou": round(float(np.mean([r["miou"] for r in nb])), 4),
                                  "chance_miou": round(float(np.mean([r["chance_miou"] for r in nb])), 4),
                                  "class_iou": [round(float(v), 4) for v in np.mean([r["iou"] for r in nb], 0)],
                                  "chance_class_iou": [round(float(v), 4) for v in np.mean([r["chance_iou"] for r in nb], 0)]}
        print(name, json.dumps(row["neighbours_mean"]), json.dumps(row["detail"]), flush=True)
        if args.loso:
            row["loso_forest"] = loso(x, y)
            row["loso_forest_mean"] = round(float(np.mean([r["miou"] for r in row["loso_forest"]])), 4)
        out["sets"][name] = row
    out["seconds"] = round(time.time() - started, 1)
    out["machine"]["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
