"""What salt-and-pepper noise does to a run's models before any noise training (the paper's Table 3 set-up).

For each noise amount, on the test split: f0's mean MC-dropout entropy per patch (the policy's
input; quartiles over patches) and the test mIoU of f0, f1 and f2 alone. Tells whether the
router can see the noise at all, and whether the larger models need noise training.

    .venv/bin/python benchmarks/noise_diagnostic.py --data runs/soc-shading/data --run runs/soc-shading/run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from learners.routing.router import build_patch_table
from napari_paser.bench.routing.noise import noisy_copy
from napari_paser.data.dataset import normalise, read_dataset, robust_range
from napari_paser.jobs.policy import load_run_models
from learners.routing import GRID
from napari_paser.jobs.train import split_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--amounts", type=lambda s: [float(v) for v in s.split(",")], default=[0, 0.01, 0.03, 0.05])
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    ds = read_dataset(args.data)
    x = normalise(ds.images, *robust_range(ds.images))
    models = load_run_models(args.run, ds.n_classes)
    tx, ty = split_arrays(ds, ["test"], x)
    for amount in args.amounts:
        xn = noisy_copy(tx, amount, args.seed) if amount > 0 else tx
        with torch.no_grad():
            table, _ = build_patch_table(models, xn, ty, GRID, samples=5)
        entropy = table.entropy[:, :, 0]
        alone = ", ".join(f"f{k} {table.miou(np.full(entropy.shape, k)):.3f}" for k in range(table.n_models))
        print(f"s&p {amount:g}: f0 patch entropy mean {np.nanmean(entropy):.4f}, quartiles "
              f"{np.round(np.nanquantile(entropy, [0.25, 0.5, 0.75]), 4).tolist()}; test mIoU {alone}", flush=True)


if __name__ == "__main__":
    main()
