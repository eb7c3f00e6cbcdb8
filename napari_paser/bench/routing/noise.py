"""The routing benchmark's noise block (the paper's Table 3): f1', f2' briefly fine-tuned on clean
and noisy patches, every method rerun on the noisy test images.
"""

from __future__ import annotations

import copy

import numpy as np
from torch import nn

from learners.routing import GRID
from learners.training import TrainConfig, train
from napari_paser.bench.routing.config import RoutingBenchConfig, Inputs, METHODS, parse_noise
from napari_paser.bench.routing.methods import make_tables, Routers, run_methods
from napari_paser.data.degrade import salt_and_pepper


def noisy_copy(images: np.ndarray, amount: float, seed: int) -> np.ndarray:
    return salt_and_pepper(images, amount, np.random.default_rng(seed))


def noise_models(models, inp: Inputs, amount: float, cfg: RoutingBenchConfig) -> list[nn.Module]:
    """f0 unchanged; copies of f1, f2 fine-tuned on clean + noisy pretrain patches (Table 3).

    No validation pass (it would cost as much as the training): the last weights are kept.
    """
    px, py = inp.splits["pretrain"]
    tx = np.concatenate([px, noisy_copy(px, amount, cfg.seed + 11)])
    tc = TrainConfig(epochs=cfg.epochs_noise, batch_size=16, lr=5e-4, patience=cfg.epochs_noise,
                     max_steps_per_epoch=cfg.noise_steps, seed=cfg.seed)
    out = [models[0]]
    for k in range(1, len(models)):
        m = copy.deepcopy(models[k])
        train(m, tx, np.concatenate([py, py]), None, None, tc, grid=GRID, progress=cfg.progress,
              desc=f"noise fine-tune f{k}")
        out.append(m)
    return out


def noise_block(models, routers: Routers, inp: Inputs, clean: dict, cfg: RoutingBenchConfig, tick) -> dict:
    """Every method on noisy test images with the noise-trained f1, f2, against its clean row.

    As in the paper's Table 3 the clean reference is the main table (models before the noise
    fine-tuning); PaSeR's clean routing does not depend on f1, f2 at all.
    """
    amount = parse_noise(cfg.noise)
    nmodels = noise_models(models, inp, amount, cfg)
    x, y = inp.splits["test"]
    xn = noisy_copy(x, amount, cfg.seed + 13)
    tick("noisy test tables")
    noisy = run_methods(nmodels, routers, xn, y, make_tables(nmodels, xn, y, cfg), cfg, inp.n_classes, tick)
    methods = {}
    for name in METHODS:
        c, z = clean[name], noisy[name]
        methods[name] = {"iou": z["iou"], "iou_clean": c["iou"], "iou_drop": c["iou"] - z["iou"],
                         "relative_drop": (c["iou"] - z["iou"]) / c["iou"] if c["iou"] else None,
                         "share_upward_clean": c["share_upward"], "share_upward": z["share_upward"],
                         "gflops_per_image": z["gflops_per_image"], "patch_share": z["patch_share"],
                         "evaluated": z["evaluated"]}
    return {"noise": cfg.noise, "setup": "f1, f2 fine-tuned on clean + noisy pretrain patches "
            f"({cfg.epochs_noise} x {cfg.noise_steps} batches of 16); f0 and the policy not retrained",
            "methods": methods}
