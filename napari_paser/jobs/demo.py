"""`paser demo`: the headless pipeline on the embedded synthetic dataset, and the models of the GUI demo.

Generate a synthetic three-phase volume, degrade it as a fast, low-dose scan (`DEMO_DEGRADATION`:
the 4x down-sampling of `lowres` reconstructed from only 30 projection angles, so streaks cross
every slice and a pixel's phase depends on how its neighbourhood streaks), fine-tune f0 and f1
from the package's starting weights and train f2 briefly (progress bars), print per-model test
IoU, GFLOPs and parameters, and the per-patch comparison on the held-back test slices
(`patch_gains`, scored as routing runs them: f1/f2 on each patch with a `DEMO_HALO` of context).
Data and weights are reused on a second run when nothing changed.

Why this data: with `lowres-shading` on these 128 x 128
slices f0 beat the patch models on most patches and routing had nothing to decide; with the
sparse-angle streaks the medium f1 from the starting weights beats f0 on about half of the
patches, by different amounts, so the policies route a mix near the lambda where its gain pays
for its cost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from learners.atomic import atomic_write_text
from napari_paser.data.dataset import Dataset, fingerprint, normalise, read_dataset, robust_range
from napari_paser.data.degrade import degrade_folder
from napari_paser.data.synth import write_synthetic
from napari_paser.jobs.train import MODEL_PRESETS, format_metrics, train_run

DEMO_SLICES, DEMO_SIZE, DEMO_SEED = 40, 128, 0
DEMO_DEGRADATION, DEMO_SPEC = "lowres-sparse-angle", ("lowres", "angles=30")  # folder name; preset + overrides
DEMO_HALO = 16  # pixels of context f1/f2 see around each 32 x 32 routing patch (a halo gives back
# what cutting the slice into patches costs)
DEMO_CORRELATION = 8.0  # phase features of ~8 px survive the 4x down-sampling
DEMO_TRAIN_SPLITS = ("pretrain",)
DEMO_SIZES = MODEL_PRESETS  # f2 the paper's large, from scratch: with the shipped wide f2, f0, distilled
# from the better teacher, won more patches and every policy from lambda 0.05 kept f0 everywhere (measured on the demo data)
GAINS_FILE = "patch-gains.json"
MIN_GAIN = 0.01  # a patch counts as won by a larger model when its patch IoU is this much above f0's


def demo_threads() -> int:
    """Torch threads for the demo: the cores nobody else is using (at least 1, at most 4).

    On a shared machine more threads than idle cores make every convolution wait on the others
    (measured: f2's training step 2.4 s with 1 thread, 7.6 s with 2, at load 6 on 2 cores).
    """
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, min(4, cores - busy))


def embedded_dataset(folder: Path) -> Path:
    """Write (once) the demo's synthetic dataset and its degraded copy; return the latter."""
    clean, low = folder / "clean", folder / DEMO_DEGRADATION
    if not (low / "labels.tif").exists():
        write_synthetic(clean, DEMO_SLICES, DEMO_SIZE, seed=DEMO_SEED, correlation_length=DEMO_CORRELATION)
        degrade_folder(clean, low, DEMO_SPEC[0], seed=DEMO_SEED, overrides=DEMO_SPEC[1])
    return low


def held_back(data: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The demo's test slices, which no model or policy trained on: (images in [0, 1], labels, slice indices).

    Normalised with the whole dataset's robust range, as the models were trained."""
    ds = read_dataset(data)
    idx = sorted(ds.split["test"])
    x = normalise(ds.images, *robust_range(ds.images))
    return x[idx].astype(np.float32), ds.labels[idx], idx


def run_demo(out: Path, progress: bool = True) -> dict:
    """Data, training (skipped when a run for the same data exists), the results table and the per-patch gains."""
    import torch

    torch.set_num_threads(demo_threads())
    data = embedded_dataset(out / "data")
    run = out / "run"
    metrics_path = run / "metrics.json"
    ds = read_dataset(data)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if metrics is None or metrics.get("fingerprint") != fingerprint(ds.images, ds.labels) or \
            not metrics.get("shipped_start") or metrics["models"]["f2"].get("preset") != DEMO_SIZES["f2"]:
        print(f"training f0 (tiny) and f1 (medium) from the starting weights, f2 ({DEMO_SIZES['f2']}) from scratch, on {data} "
              f"({DEMO_DEGRADATION}, {torch.get_num_threads()} threads) ...")
        metrics = train_run(data, run, preset="quick", progress=progress, overwrite=True,  # a stale run goes
                            train_splits=DEMO_TRAIN_SPLITS, shipped=True, sizes=DEMO_SIZES)
    else:
        print(f"reusing the trained models in {run} (delete it to retrain)")
    print(f"\nsynthetic {DEMO_SLICES} slices of {DEMO_SIZE}x{DEMO_SIZE}, degradation {DEMO_DEGRADATION}; test split:")
    print(format_metrics(metrics))
    print(format_gains(patch_gains(ds, run)))
    return metrics


def patch_gains(ds: Dataset, run: Path, split: str = "test", halo: int = DEMO_HALO) -> dict:
    """Where f1/f2 beat f0 on the held-back slices, patch by patch (the routing grid), cached in the run.

    Every model is scored on every patch as PaSeR runs it (f0 on the whole slice with MC dropout,
    f1/f2 on the patch with `halo` pixels of context); `won` is the share of patches where a model's patch IoU is at least
    MIN_GAIN above f0's and `gain` its mean advantage there; `best` is the share each model would
    get from a router that knew the labels (the oracle at lambda 0)."""
    import torch

    from learners.checkpoint import load_checkpoint
    from learners.grid import Patching
    from learners.routing import GRID
    from learners.routing.router import build_patch_table

    path = run / GAINS_FILE
    stamp = {"split": split, "halo": halo, "f2_mtime": (run / "f2.pt").stat().st_mtime}
    if path.is_file():
        cached = json.loads(path.read_text())
        if {k: cached.get(k) for k in stamp} == stamp:
            return cached
    idx = sorted(ds.split[split])
    x = normalise(ds.images, *robust_range(ds.images))[idx]
    models = [load_checkpoint(run / f"f{k}.pt").model.eval() for k in range(3)]
    with torch.no_grad():
        table, _ = build_patch_table(models, x, ds.labels[idx], Patching(count=GRID, halo=halo), samples=5)
    iou = table.iou.reshape(-1, len(models))  # (slices x patches, models)
    best = np.nanargmax(np.nan_to_num(iou, nan=-1.0), axis=1)
    out = {**stamp, "slices": idx, "grid": list(GRID), "patches": int(len(iou)), "min_gain": MIN_GAIN,
           "patch_miou": {f"f{k}": float(np.nanmean(iou[:, k])) for k in range(len(models))},
           "best": {f"f{k}": float(np.mean(best == k)) for k in range(len(models))},
           "oracle_patch_miou": float(np.nanmean(np.nanmax(iou, axis=1)))}
    for k in range(1, len(models)):
        gain = iou[:, k] - iou[:, 0]
        won = gain >= MIN_GAIN
        out[f"f{k}"] = {"won": float(np.mean(won)), "gain": float(np.nanmean(gain[won])) if won.any() else 0.0,
                        "lost": float(np.mean(gain <= -MIN_GAIN)), "per_slice_won": [int(w.sum()) for w in
                                                                                       won.reshape(len(idx), -1)]}
    atomic_write_text(path, json.dumps(out, indent=2))
    return out


def format_gains(g: dict) -> str:
    """The per-patch comparison as a few lines for the terminal."""
    rows = [f"per patch ({g['grid'][0]}x{g['grid'][1]} grid, halo {g['halo']} px, {g['patches']} patches of the "
            f"held-back slices {g['slices'][0]}-{g['slices'][-1]}):"]
    for k in ("f1", "f2"):
        rows.append(f"  {k} beats f0 by >= {g['min_gain']:g} IoU on {g[k]['won']:.0%} of patches "
                    f"(by {g[k]['gain']:+.3f} on average there), loses on {g[k]['lost']:.0%}")
    best = ", ".join(f"{k} {v:.0%}" for k, v in g["best"].items())
    rows.append(f"  best model per patch: {best}; patch mIoU of that oracle {g['oracle_patch_miou']:.3f} "
                f"vs f0 {g['patch_miou']['f0']:.3f}")
    return "\n".join(rows)
