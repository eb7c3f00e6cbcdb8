"""`paser weights`: the starting weights a new session begins from (napari_paser/weights).

f0 (tiny) and f1 (medium) learn on the package's own synthetic microstructures (`napari_paser.data.synth`)
with random phase fractions, feature sizes (correlation length 3-9 px), heterogeneity, grey
levels (ordered dark to bright: pore 0.05-0.25 < binder anywhere between < active 0.75-0.95)
and texture, each volume degraded with one of the package's
degradation presets (`napari_paser.data.degrade`) and normalised by robust percentiles as a
session normalises its image. Training is the same crop training a session retrain runs
(class-balanced random crops, flips, rotations, intensity jitter), for a fixed number of
steps. Everything is seeded, so the command below rebuilds the shipped file:

    paser weights --out napari_paser/weights              # f0-3class.pt (tiny), ~6 CPU min
    paser weights --out napari_paser/weights --role f1    # f1-3class.pt (medium), ~40 CPU min
    paser weights --out napari_paser/weights --role f2 --steps 2000   # f2-3class.pt (wide), ~45 CPU min

writes <role>-3class.pt and <role>-3class.json (provenance: command, options, presets, per-preset
mIoU on held-out synthetic volumes, torch version, date, time taken). f1 ships so that a
session's router has a medium model that starts as knowing as f0 (trained from scratch on a
few regions it lost to f0 everywhere), and f2 ships in the "wide" size (4.3M
parameters) because the paper's large costs ~5 s per step on a CPU core.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from learners.atomic import atomic_write_text
from learners.checkpoint import save_checkpoint
from learners.inference import predict_classes
from learners.metrics import confusion_matrix, iou_from_confusion
from learners.training import TrainConfig, iter_training, run_training
from learners.unet import UNet, count_parameters, preset_config
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.data.degrade import PRESETS, degrade
from napari_paser.data.synth import CLASS_NAMES_DEFAULT, synth_volume
from napari_paser.errors import PaserInputError
from napari_paser.weights import N_CLASSES, SHIPPED, weights_path

TRAIN_PRESETS = ("clean", "lowres", "lowres-severe", "lowres-varying", "lowres-shading")
"""Degradations the starting weights see (every preset but salt-and-pepper)."""


def random_volume(seed: int, n_slices: int, size: int, preset: str) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume under `preset`, normalised as a session would: (images, labels)."""
    rng = np.random.default_rng(seed)
    fractions = rng.dirichlet((5.0, 5.0, 5.0))
    fractions = np.maximum(fractions, 0.08)
    fractions /= fractions.sum()
    c0, c2 = rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95)  # darkest and brightest phase
    levels = (c0, c0 + rng.uniform(0.25, 0.75) * (c2 - c0), c2)  # the middle one anywhere between
    clean, labels = synth_volume(
        n_slices, size, fractions=tuple(fractions), seed=seed,
        correlation_length=float(rng.uniform(3.0, 9.0)), heterogeneity=float(rng.uniform(0.0, 1.0)),
        contrast=tuple(float(v) for v in levels), texture=float(rng.uniform(0.01, 0.06)),
    )
    images = degrade(clean, PRESETS[preset], seed=seed)
    return normalise(images, *robust_range(images)), labels


def synthetic_set(seed: int, n_volumes: int, n_slices: int, size: int) -> tuple[list, list, list[str]]:
    """Slices of n_volumes random volumes, the presets taken in turn: (images, labels, preset per slice)."""
    images, labels, presets = [], [], []
    for v in range(n_volumes):
        preset = TRAIN_PRESETS[v % len(TRAIN_PRESETS)]
        x, y = random_volume(seed * 100_003 + v, n_slices, size, preset)
        images += list(x)
        labels += list(y)
        presets += [preset] * len(x)
    return images, labels, presets


def per_preset_miou(model: UNet, images: list, labels: list, presets: list[str]) -> dict[str, float]:
    """mIoU of `model` on held-out synthetic slices, per degradation preset."""
    out = {}
    for name in dict.fromkeys(presets):
        idx = [i for i, p in enumerate(presets) if p == name]
        pred = predict_classes(model, np.stack([images[i] for i in idx]))
        cm = confusion_matrix(pred, np.stack([labels[i] for i in idx]), model.config.n_classes)
        out[name] = round(float(np.nanmean(iou_from_confusion(cm))), 4)
    return out


def make_starting_weights(out: str | Path, steps: int = 3000, seed: int = 0, n_volumes: int = 40,
                          n_slices: int = 4, size: int = 160, progress: bool = True, role: str = "f0") -> dict:
    """Train the starting weights of `role` and write `<role>-3class.pt` + `.json` into `out`; return the record."""
    if role not in SHIPPED:
        raise PaserInputError(f"starting weights exist for {', '.join(SHIPPED)}, not {role!r}")
    if steps < 50 or n_volumes < len(TRAIN_PRESETS) or size < 64:
        raise PaserInputError(f"need steps >= 50, n_volumes >= {len(TRAIN_PRESETS)} and size >= 64 "
                              f"(got {steps}, {n_volumes}, {size})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x, y, _ = synthetic_set(seed, n_volumes, n_slices, size)
    vx, vy, vp = synthetic_set(seed + 1, len(TRAIN_PRESETS) * 2, 2, size)
    epochs = max(1, steps // 250)
    cfg = TrainConfig(epochs=epochs, steps_per_epoch=-(-steps // epochs), batch_size=16, lr=3e-3, crop=64,
                      balanced=True, class_weighted=False, jitter=0.15, scheduler="cosine", early_stop=False,
                      seed=seed)
    torch.manual_seed(seed)
    size_name = SHIPPED[role]
    model = UNet(preset_config(size_name, n_classes=N_CLASSES))
    gen = iter_training(model, x, y, None, None, cfg)
    run_training(gen, cfg.epochs * cfg.steps_per_epoch, f"{role} starting weights", progress)
    record = {
        "what": f"starting weights of {role} ({size_name} UNet) for new sessions, 3 classes ordered dark to bright",
        "class_names": list(CLASS_NAMES_DEFAULT),
        "command": "paser weights " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["weights"] else "paser weights",
        "options": {"steps": steps, "seed": seed, "n_volumes": n_volumes, "n_slices": n_slices, "size": size},
        "train_config": asdict(cfg),
        "data": "napari_paser.data.synth volumes with random fractions, feature size, heterogeneity, grey "
                "levels and texture; degradation presets " + ", ".join(TRAIN_PRESETS),
        "parameters": count_parameters(model),
        "heldout_synthetic_miou": per_preset_miou(model, vx, vy, vp),
        "torch": torch.__version__, "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - t0, 1),
    }
    path = weights_path(role, out)
    save_checkpoint(path, model, {"class_names": list(CLASS_NAMES_DEFAULT), "source": "paser weights",
                                  "seed": seed, "steps": steps})
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=1))
    return record
