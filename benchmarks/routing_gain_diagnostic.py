"""Does f0's uncertainty say where the bigger models help? The question to ask before training a router.

For every 4x4 patch of the chosen splits: f0's mean MC-dropout entropy and the IoU gain of each
larger model over f0. Prints the share of patches each model improves, the Spearman correlation
of entropy with the gain, and the mean gain per entropy quartile. A router reading f0's
prediction and entropy can only learn what these numbers show.

    .venv/bin/python benchmarks/routing_gain_diagnostic.py --data runs/soc-lowres/data --run runs/soc-lowres/run
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from learners.checkpoint import load_checkpoint
from learners.routing import GRID
from learners.routing.router import build_patch_table
from napari_paser.data.dataset import normalise, read_dataset, robust_range


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--splits", default="rl,test")
    args = parser.parse_args()
    ds = read_dataset(args.data)
    x = normalise(ds.images, *robust_range(ds.images))
    models = [load_checkpoint(f"{args.run}/f{k}.pt").model for k in range(3)]
    for split in args.splits.split(","):
        idx = ds.split[split]
        table, _ = build_patch_table(models, x[idx], ds.labels[idx], GRID, samples=5)
        entropy = table.entropy[:, :, 0].ravel()
        quartile = np.digitize(entropy, np.quantile(entropy, [0.25, 0.5, 0.75]))
        print(f"{split}: {entropy.size} patches")
        for k in (1, 2):
            gain = (table.iou[:, :, k] - table.iou[:, :, 0]).ravel()
            rho = spearmanr(entropy, gain, nan_policy="omit")[0]
            per_q = ", ".join(f"{np.nanmean(gain[quartile == q]):+.4f}" for q in range(4))
            print(f"  f{k}: better on {np.mean(gain > 0):.0%} of patches, mean gain {np.nanmean(gain):+.4f}, "
                  f"Spearman(entropy, gain) {rho:+.3f}, gain per entropy quartile {per_q}")


if __name__ == "__main__":
    main()
