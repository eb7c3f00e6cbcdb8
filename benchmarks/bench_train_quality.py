"""Accuracy and wall time of `paser train --preset quick` on real and synthetic data.

The real SOC slices (../shared/data/soc_pristine, never shipped) are degraded with a named
preset, then f0/f1/f2 are trained with the quick preset and evaluated on the test split next
to the multi-Otsu floor. Writes benchmarks/results/train-quick-<dataset>.json (the run's
metrics.json plus wall time). The SOC run takes about a quarter of an hour on 2 CPU cores.

    .venv/bin/python benchmarks/bench_train_quality.py [--dataset soc|synthetic] [--degradation lowres]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import RESULTS, SOC, require
from napari_paser.data.degrade import degrade_folder
from napari_paser.data.synth import write_synthetic
from napari_paser.jobs.train import format_metrics, train_run

SOC_CLASSES = ("pore", "YSZ", "nickel")


def prepare(dataset: str, degradation: str, work: Path) -> Path:
    """The clean source folder for `dataset`, degraded into `work`."""
    if dataset == "soc":
        source = require(SOC)
    else:
        source = write_synthetic(work / "clean", 40, 256, seed=0)
    degrade_folder(source, work / "data", degradation, seed=0)
    return work / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=("soc", "synthetic"), default="soc")
    parser.add_argument("--degradation", default="lowres")
    parser.add_argument("--keep", type=Path, help="keep the run folder here (for later benchmarks)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="paser-bench-"))
    try:
        data = prepare(args.dataset, args.degradation, work)
        names = SOC_CLASSES if args.dataset == "soc" else None
        started = time.time()
        metrics = train_run(data, work / "run", preset="quick", class_names=names, progress=False)
        wall = time.time() - started
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    metrics.update(
        dataset=f"{args.dataset} degraded with {args.degradation}",
        command="python benchmarks/bench_train_quality.py " + " ".join(sys.argv[1:]),
        wall_seconds=round(wall, 1), date=date.today().isoformat(),
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
    )
    out = RESULTS / f"train-quick-{args.dataset}.json"
    out.write_text(json.dumps(metrics, indent=2))
    print(format_metrics(metrics))
    print(f"wall time {wall:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
