"""The routing benchmark behind BENCHMARKS.md: `paser bench routing --sweep` on named data.

synthetic: 40 slices of 128x128 from `synth_volume` with correlation length 8 (features
survive the 4x downsampling), degraded with `--preset` (default `lowres-shading`, as the SOC
benchmark), f0/f1/f2 trained with the quick preset, then the bench. soc: a SOC dataset folder and run (`--soc-data`, `--soc-run`;
by default the ones `benchmarks/bench_train_quality.py --dataset soc --degradation lowres
--keep runs/soc-lowres` leaves). Writes `--out` (default benchmarks/results/routing-<dataset>.json,
`--name` replacing <dataset>) and the .png beside it.

    .venv/bin/python benchmarks/bench_routing.py synthetic [--work /tmp/rs] [--preset P] [bench flags, e.g. --epochs-rl 60]
    .venv/bin/python benchmarks/bench_routing.py soc [--soc-data DIR --soc-run RUN] [bench flags]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from napari_paser import cli
from napari_paser.data.degrade import degrade_folder
from napari_paser.data.synth import write_synthetic
from napari_paser.jobs.train import train_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def synthetic_run(work: Path, preset: str) -> tuple[Path, Path]:
    """(data, run) for the synthetic benchmark, made in `work` (one data and run per preset)
    unless already there."""
    clean, data, run = work / "clean", work / preset, work / f"run-{preset}"
    if not (clean / "images.tif").exists():
        write_synthetic(clean, 40, 128, seed=0, correlation_length=8.0)
    if not (data / "images.tif").exists():
        degrade_folder(clean, data, preset, seed=0)
    if not (run / "f0.pt").exists():
        train_run(data, run, preset="quick", seed=0, overwrite=True)  # an unfinished run
    return data, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=("synthetic", "soc"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/rs"), help="synthetic data and run folder")
    parser.add_argument("--soc-data", type=Path, default=ROOT / "runs" / "soc-lowres" / "data")
    parser.add_argument("--soc-run", type=Path, default=ROOT / "runs" / "soc-lowres" / "run")
    parser.add_argument("--preset", default="lowres-shading", help="synthetic: the degradation preset")
    parser.add_argument("--name", help="results name (default: the dataset)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/routing-<name>.json)")
    args, extra = parser.parse_known_args()  # the rest goes to `paser bench routing`
    extra = [a for a in extra if a != "--"]
    if args.dataset == "synthetic":
        data, run = synthetic_run(args.work, args.preset)
    else:
        data, run = args.soc_data, args.soc_run
        if not (run / "f0.pt").exists():
            sys.exit(f"no SOC run at {run}; make it with benchmarks/bench_train_quality.py --keep runs/soc-lowres")
    out = args.out or RESULTS / f"routing-{args.name or args.dataset}.json"
    sys.exit(cli.main(["bench", "routing", "--data", str(data), "--run", str(run), "--out", str(out), "--sweep",
                       *extra]))


if __name__ == "__main__":
    main()
