"""`paser train`: the three PaSeR segmentation models trained on a dataset folder, evaluated on
its test split, saved as checkpoints with a `metrics.json` beside them.

A run folder holds `f0.pt` (tiny, whole images, distilled from f2), `f1.pt` (medium, patches),
`f2.pt` (large, patches), `metrics.json` and `run.json` (the options, for reproduction). Each
checkpoint is written as soon as its model is trained, so an interrupted run keeps what it
finished. A run never lands on a non-empty folder unless asked to (`overwrite`): then the
previous run's files go first, its routing policies (`policy.pt`, `policies/`) included, so
`Session.load_models` never pairs old policies with new models.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from learners.routing import GRID
from learners.atomic import atomic_write_text
from learners.checkpoint import load_checkpoint, save_checkpoint
from learners.flops import gflops_per_image, patch_flops
from learners.inference import predict_classes
from learners.metrics import confusion_matrix, iou_from_confusion, iou_per_gflop
from learners.pretrain import pretrain_segmenters
from learners.training import TrainConfig
from learners.unet import UNet, count_parameters, preset_config, preset_of
from napari_paser.data.baselines import fit_multiotsu, predict_multiotsu
from napari_paser.data.dataset import Dataset, fingerprint, normalise, read_dataset, robust_range
from napari_paser.errors import PaserInputError

ROLES = ("f0", "f1", "f2")
MODEL_PRESETS = {"f0": "tiny", "f1": "medium", "f2": "large"}
"""The paper's sizes, trained from scratch (or from --init)."""
MC_SAMPLES = 5


TRAIN_PRESETS: dict[str, tuple[TrainConfig, TrainConfig]] = {
    # (f0 on whole images, f1..fm on patches). quick: minutes on 2 CPU cores; f0 is cheap, so
    # it gets many small-batch epochs, the patch models a capped number of steps.
    "quick": (
        TrainConfig(epochs=30, batch_size=2, lr=3e-3, patience=8, kd_beta=0.5),
        TrainConfig(epochs=8, batch_size=16, lr=2e-3, patience=4, max_steps_per_epoch=25),
    ),
    # long: the patch models get 3x quick's steps at half its learning rate (on 501x501 SOC
    # slices quick gives f2 only 200 steps); best with --init from a quick run, to train on.
    "long": (
        TrainConfig(epochs=30, batch_size=2, lr=2e-3, patience=8, kd_beta=0.5),
        TrainConfig(epochs=24, batch_size=16, lr=1e-3, patience=6, max_steps_per_epoch=25),
    ),
    # the PaSeR paper's appendix B: 200 epochs, batch 32, Adam 1e-4.
    "paper": (
        TrainConfig(epochs=200, batch_size=32, lr=1e-4, patience=20, kd_beta=1.0),
        TrainConfig(epochs=200, batch_size=32, lr=1e-4, patience=20),
    ),
}


def init_models(run: str | Path, n_classes: int) -> list[UNet]:
    """The models of run folder `run` to start from (their sizes are kept); each must segment `n_classes`."""
    run = Path(run)
    models = []
    for role in ROLES:
        path = run / f"{role}.pt"
        if not path.is_file():
            raise PaserInputError(f"--init {run}: no {role}.pt there; give a run folder written by `paser train`")
        model = load_checkpoint(path).model
        if model.config.n_classes != n_classes or model.config.in_channels != 1:
            raise PaserInputError(f"--init {run}: {role}.pt segments {model.config.n_classes} classes "
                                  f"({model.config.in_channels} channels) but this dataset has {n_classes} (1 channel); "
                                  "start from a run trained on the same classes")
        models.append(model)
    return models


def model_presets(shipped: bool) -> dict[str, str]:
    """Size preset per role: the paper's, or with shipped starting weights the sizes that ship
    (f2 "wide": the paper's large is ~5 s per training step on a CPU and has no starting weights)."""
    from napari_paser.weights import SHIPPED

    return {r: SHIPPED.get(r, p) for r, p in MODEL_PRESETS.items()} if shipped else dict(MODEL_PRESETS)


def shipped_models(configs: list, seed: int = 0) -> list[UNet | None]:
    """The package's starting weights (napari_paser/weights) for the roles that ship them and fit
    their config (a fresh head for another number of classes); None for the others (f2)."""
    from napari_paser.weights import shipped_start

    return [shipped_start(role, config, seed) for role, config in zip(ROLES, configs)]


RUN_FILES = ("run.json", "metrics.json", "policy.pt", "policies", *(f"{r}.pt" for r in ROLES),
             *(f"{r}-lr-agent.json" for r in ROLES))
"""What `paser train` and `paser policy` write into a run folder: an overwrite removes them."""


def check_run_folder(out: Path, overwrite: bool) -> None:
    """A run goes into a new or empty folder, or replaces one with `overwrite`."""
    if out.exists() and not out.is_dir():
        raise PaserInputError(f"--out {out} is a file: choose a folder for the run")
    if out.is_dir() and not overwrite:
        present = sorted(p.name for p in out.iterdir())
        if present:
            raise PaserInputError(
                f"--out {out} is not empty ({', '.join(present[:4])}{' ...' if len(present) > 4 else ''}): choose a new "
                "folder, or pass --overwrite to replace the run there (its models and policies are removed)"
            )


def clear_run_folder(out: Path) -> list[str]:
    """Remove a previous run's files (models, policies, metrics) from `out`; returns their names."""
    removed = []
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def train_configs(preset: str, epochs: int | None, seed: int, scheduler: str = "fixed") -> list[TrainConfig]:
    """TrainConfig for f0 (whole images), f1 and f2 (patches) from a named preset."""
    if preset not in TRAIN_PRESETS:
        raise PaserInputError(f"unknown training preset {preset!r}; choose one of {', '.join(TRAIN_PRESETS)}")
    if epochs is not None and epochs < 1:
        raise PaserInputError(f"--epochs must be at least 1, got {epochs}")
    whole, patch = (replace(c, seed=seed, epochs=epochs or c.epochs, scheduler=scheduler) for c in TRAIN_PRESETS[preset])
    return [whole, patch, patch]


def split_arrays(ds: Dataset, names: list[str], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = sorted({i for n in names for i in ds.split.get(n, [])})
    if not idx:
        raise PaserInputError(f"{ds.root}: splits {names} hold no slices (the dataset needs at least 5 slices)")
    return x[idx], ds.labels[idx]


def evaluate_model(model: UNet, role: str, images: np.ndarray, labels: np.ndarray, class_names) -> dict:
    """Test-split IoU and cost of one model used as PaSeR uses it (f0 whole, f1..fm on patches)."""
    grid = None if role == "f0" else GRID
    pred = predict_classes(model, images, grid)
    ious = iou_from_confusion(confusion_matrix(pred, labels, len(class_names)))
    h, w = images.shape[-2:]
    gflops = gflops_per_image(model, h, w) if grid is None else GRID[0] * GRID[1] * patch_flops(model, h, w, GRID) / 1e9
    miou = float(np.nanmean(ious))
    out = {
        "preset": preset_of(model.config),
        "params": count_parameters(model),
        "iou": miou,
        "iou_per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, ious)},
        "gflops_per_image": gflops,
        "iou_per_gflop": iou_per_gflop(miou, gflops),
    }
    if role == "f0":
        out[f"gflops_per_image_mc{MC_SAMPLES}"] = gflops * MC_SAMPLES
    return out


def _check_size(shape, patch_depth: int, whole_depth: int) -> None:
    """Patch models halve a patch `depth` times; refuse images whose patches would vanish."""
    h, w = shape
    need = 2**patch_depth * max(GRID)
    if min(h, w) < need or min(h, w) < 2**whole_depth:
        raise PaserInputError(
            f"slices of {h}x{w} are too small: the {GRID[0]}x{GRID[1]} patch grid and the large "
            f"model's {patch_depth} poolings need slices of at least {need}x{need}; use larger slices"
        )


def train_run(
    data: str | Path,
    out: str | Path,
    preset: str = "quick",
    epochs: int | None = None,
    seed: int = 0,
    scheduler: str = "fixed",
    train_splits: tuple[str, ...] = ("pretrain",),
    class_names: tuple[str, ...] | None = None,
    progress: bool = True,
    init: str | Path | None = None,
    overwrite: bool = False,
    shipped: bool = False,
    sizes: dict[str, str] | None = None,
) -> dict:
    """Train f0, f1, f2 on `data`, write checkpoints and metrics into `out`; return the metrics.

    `init`: a run folder whose f0/f1/f2 the models start from (warm start, to train longer;
    it may be `out` itself with `overwrite`; its model sizes are kept). `shipped`: f0, f1 and f2
    start from the package's starting weights instead (fine-tuned on `data`; f2 is then the
    "wide" size that ships), so the small data of a demo gives them electrodes they already know.
    `sizes`: a size preset per role instead (roles whose size ships no weights start from scratch).
    `out` must be new or empty unless `overwrite`, which removes the previous run's files (stale
    policies included) before training.
    """
    started = time.time()
    check_run_folder(Path(out), overwrite)
    if shipped and init is not None:
        raise PaserInputError("start from a run folder (--init) or from the shipped starting weights, not both")
    ds = read_dataset(data)
    names = tuple(class_names or ds.class_names)
    if len(names) != ds.n_classes:
        raise PaserInputError(f"{len(names)} class names given for a dataset with {ds.n_classes} classes")
    lo, hi = robust_range(ds.images)
    x = normalise(ds.images, lo, hi)
    starts = init_models(init, ds.n_classes) if init is not None else None  # before an overwrite removes them
    if starts is not None:
        configs = [m.config for m in starts]
    else:
        chosen = {**model_presets(shipped), **(sizes or {})}
        configs = [preset_config(chosen[r], n_classes=ds.n_classes) for r in ROLES]
    presets = {r: preset_of(c) for r, c in zip(ROLES, configs)}
    tx, ty = split_arrays(ds, list(train_splits), x)
    vx, vy = split_arrays(ds, ["val"], x)
    test_x, test_y = split_arrays(ds, ["test"], x)
    _check_size(x.shape[-2:], max(c.depth for c in configs[1:]), configs[0].depth)
    out = Path(out)
    if shipped:
        starts = shipped_models(configs, seed)
    if overwrite and out.is_dir():
        clear_run_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in sys.argv) if sys.argv else ""
    options = {"data": str(data), "preset": preset, "epochs": epochs, "seed": seed, "scheduler": scheduler,
               "train_splits": list(train_splits), "class_names": list(names), "command": command,
               "init": str(init) if init is not None else None, "shipped": shipped, "sizes": presets}
    atomic_write_text(out / "run.json", json.dumps(options, indent=2))
    meta = {
        "class_names": list(names),
        "normalisation": {"lo": lo, "hi": hi, "low_percentile": 0.5, "high_percentile": 99.5},
        "fingerprint": fingerprint(ds.images, ds.labels),
        "dataset": str(Path(data).resolve()),
        "train_splits": list(train_splits),
        "grid": list(GRID),
        "seed": seed,
    }

    def save(i: int, model: UNet, result) -> None:
        role = ROLES[i]
        extra = {"role": role, "preset": presets[role], "patchwise": role != "f0",
                 "best_val_miou": result.best_val_miou, "epochs_run": len(result.history)}
        save_checkpoint(out / f"{role}.pt", model, {**meta, **extra})
        if result.lr_agent is not None:  # the learning-rate agent's Q-table travels with the run
            atomic_write_text(out / f"{role}-lr-agent.json", json.dumps(result.lr_agent, indent=2))

    cfgs = train_configs(preset, epochs, seed, scheduler)
    res = pretrain_segmenters(configs, tx, ty, vx, vy, cfgs, grid=GRID, kd_beta=cfgs[0].kd_beta,
                              seed=seed, progress=progress, names=[f"{r} ({presets[r]})" for r in ROLES],
                              on_model_done=save, init=starts)
    models = {}
    for role, model, result in zip(ROLES, res.models, res.results):
        models[role] = evaluate_model(model, role, test_x, test_y, names)
        models[role].update(best_val_miou=result.best_val_miou, epochs_run=len(result.history))
    thresholds, mapping = fit_multiotsu(tx, ty, ds.n_classes)
    otsu = predict_multiotsu(test_x, thresholds, mapping)
    metrics = {
        "dataset": str(data),
        "shipped_start": [r for r, m in zip(ROLES, starts or []) if m is not None] if shipped else [],
        "fingerprint": meta["fingerprint"],
        "command": command,
        "preset": preset,
        "train_config": {r: asdict(c) for r, c in zip(ROLES, cfgs)},
        "seed": seed,
        "image_size": list(test_x.shape[-2:]),
        "split_sizes": {k: len(v) for k, v in ds.split.items()},
        "models": models,
        "baselines": {"multiotsu": {"iou": float(np.nanmean(iou_from_confusion(confusion_matrix(otsu, test_y, ds.n_classes))))}},
        "train_seconds": round(time.time() - started, 1),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def format_metrics(metrics: dict) -> str:
    """A plain-text table of a run's metrics for the terminal."""
    rows = [f"{'model':<14}{'params':>12}{'GFLOPs/img':>12}{'test mIoU':>11}{'IoU/GFLOP':>11}"]
    for role, m in metrics["models"].items():
        rows.append(f"{role + ' (' + m['preset'] + ')':<14}{m['params']:>12,}{m['gflops_per_image']:>12.3f}"
                    f"{m['iou']:>11.3f}{m['iou_per_gflop']:>11.3f}")
    rows.append(f"{'multi-Otsu':<14}{'-':>12}{'-':>12}{metrics['baselines']['multiotsu']['iou']:>11.3f}{'-':>11}")
    return "\n".join(rows)
