"""The main job until the napari plugin lands: the headless pipeline on the embedded
synthetic dataset. Generate a synthetic three-phase volume, degrade it to low resolution,
train f0/f1/f2 briefly (progress bars), and print per-model test IoU, GFLOPs per image and
parameter counts. Data and weights are reused on a second run when nothing changed.
"""

from __future__ import annotations

import json
from pathlib import Path


from napari_paser.data.dataset import fingerprint, read_dataset
from napari_paser.data.degrade import degrade_folder
from napari_paser.data.synth import write_synthetic
from napari_paser.jobs.train import format_metrics, train_run

DEMO_SLICES, DEMO_SIZE, DEMO_SEED, DEMO_DEGRADATION = 40, 128, 0, "lowres"
DEMO_CORRELATION = 8.0  # phase features of ~8 px survive the 4x down-sampling of "lowres"


def embedded_dataset(folder: Path) -> Path:
    """Write (once) the default synthetic dataset and its low-resolution copy; return the latter."""
    clean, low = folder / "clean", folder / "lowres"
    if not (low / "labels.tif").exists():
        write_synthetic(clean, DEMO_SLICES, DEMO_SIZE, seed=DEMO_SEED, correlation_length=DEMO_CORRELATION)
        degrade_folder(clean, low, DEMO_DEGRADATION, seed=DEMO_SEED)
    return low


def run_demo(out: Path, progress: bool = True) -> dict:
    """Data, training (skipped when a run for the same data exists) and the results table."""
    data = embedded_dataset(out / "data")
    run = out / "run"
    metrics_path = run / "metrics.json"
    ds = read_dataset(data)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if metrics is None or metrics.get("fingerprint") != fingerprint(ds.images, ds.labels):
        print(f"training f0 (tiny), f1 (medium), f2 (large) on {data} ({DEMO_DEGRADATION}) ...")
        metrics = train_run(data, run, preset="quick", progress=progress, overwrite=True)  # a stale run
    else:
        print(f"reusing the trained models in {run} (delete it to retrain)")
    print(f"\nsynthetic {DEMO_SLICES} slices of {DEMO_SIZE}x{DEMO_SIZE}, degradation {DEMO_DEGRADATION}; test split:")
    print(format_metrics(metrics))
    return metrics
