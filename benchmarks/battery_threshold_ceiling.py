"""How far grey levels alone go on the battery nano-CT: per slice, the best two-threshold rule chosen on that
slice's own labels (an oracle no method has), on the raw slice and after Gaussian smoothing (sigma 1, 2).

If a forest on multiscale filter features lands near this oracle, it is reading grey levels (plus a little
texture), and what is left needs context the features do not carry. Classes in the session's order, dark to
bright (pore, binder, active) by mean grey level.

    PYTHONPATH=. .venv/bin/python benchmarks/battery_threshold_ceiling.py --out benchmarks/results/battery-threshold-ceiling.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from router_scoring import load_battery

BINS = 128


def best_two_thresholds(image: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    """(mIoU, class IoUs) of the best rule "below t1: 0, below t2: 1, else 2" over quantile bins of `image`."""
    edges = np.quantile(image, np.linspace(0, 1, BINS + 1))
    bins = np.clip(np.searchsorted(edges, image) - 1, 0, BINS - 1)
    hist = np.stack([np.bincount(bins[labels == c], minlength=BINS) for c in range(3)])
    cum, total = np.cumsum(hist, 1), hist.sum(1)
    best = (0.0, [0.0, 0.0, 0.0])
    for t1 in range(1, BINS - 1):
        for t2 in range(t1 + 1, BINS):
            band = np.stack([cum[:, t1 - 1], cum[:, t2 - 1] - cum[:, t1 - 1], total - cum[:, t2 - 1]], 1)
            tp = np.diag(band)
            iou = tp / np.maximum(band.sum(0) + total - tp, 1)
            if iou.mean() > best[0]:
                best = (float(iou.mean()), [round(float(v), 3) for v in iou])
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    out: dict = {"rule": "per-slice oracle two-threshold rule", "sets": {}}
    for name in ("a", "b"):
        x, y = load_battery(name)
        rows = []
        for z in range(len(x)):
            for sigma in (0, 1, 2):
                image = gaussian_filter(x[z], sigma) if sigma else x[z]
                miou, ious = best_two_thresholds(image, y[z])
                rows.append({"z": z, "sigma": sigma, "miou": round(miou, 3), "class_iou": ious})
        means = {s: round(float(np.mean([r["miou"] for r in rows if r["sigma"] == s])), 3) for s in (0, 1, 2)}
        out["sets"][name] = {"mean_miou_by_sigma": means, "slices": rows}
        print(name, means, flush=True)
    args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
