"""Reproduce benchmarks/results/al-*.json: make the datasets, train the DQN agents, run `paser bench al`.

Datasets are written under --work (default /tmp/paser-al; SOC data never enters the repo):
- synthetic: synth_volume(24, 128, fractions 0.3/0.2/0.5, seed 0, correlation_length 8), `lowres`
- imbalanced: the same with fractions 0.02/0.38/0.6 (phase 0 at 2% of pixels), `lowres`
- soc: ../shared/data/soc_pristine degraded `lowres`, central 128x128 crop of each slice
Each dataset: `paser al train-dqn` on its rl split (reward on val), then `paser bench al` on
the pretrain+finetune pool, test split. About 15 minutes per step on 2 shared CPU cores.

    .venv/bin/python benchmarks/bench_al.py [--only synthetic,imbalanced,soc] [--seeds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


from napari_paser.data.degrade import degrade_folder
from napari_paser.data.synth import write_synthetic

ROOT = Path(__file__).resolve().parents[1]
SOC = ROOT.parent / "shared" / "data" / "soc_pristine"
RESULTS = ROOT / "benchmarks" / "results"
FRACTIONS = {"synthetic": (0.3, 0.2, 0.5), "imbalanced": (0.02, 0.38, 0.6)}
BUDGETS = {"synthetic": "8,12,16,24,32,48,64", "imbalanced": "8,12,16,24,32,48,64", "soc": "8,12,16,24,32,48,64"}
CROP = {"soc": ["--crop", "128"]}


def prepare(name: str, work: Path) -> Path:
    """The degraded dataset folder for `name`."""
    out = work / f"{name}_lowres"
    if (out / "images.tif").exists():
        return out
    if name == "soc":
        source = SOC
    else:
        source = write_synthetic(work / f"{name}_clean", 24, 128, fractions=FRACTIONS[name], seed=0, correlation_length=8)
    degrade_folder(source, out, "lowres", seed=0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="synthetic,imbalanced,soc")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/tmp/paser-al"))
    args = parser.parse_args()
    paser = [sys.executable, "-m", "napari_paser.cli"]
    for name in args.only.split(","):
        data = prepare(name, args.work)
        agent = args.work / f"{name}-dqn.pt"
        subprocess.run(paser + ["al", "train-dqn", "--data", str(data), "--out", str(agent), "--episodes",
                                str(args.episodes), "--steps", "5", "--k", "8"] + CROP.get(name, []), check=True)
        subprocess.run(paser + ["bench", "al", "--data", str(data), "--samplers", "random,entropy,bald,taudis,dqn",
                                "--budgets", BUDGETS[name], "--seeds", str(args.seeds), "--dqn", str(agent),
                                "--out", str(RESULTS / f"al-{name}.json")] + CROP.get(name, []), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
