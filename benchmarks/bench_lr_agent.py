"""The Q-learning learning-rate agent against fixed, step and cosine schedules on the same training.

Same data, model (f0, tiny UNet), initial learning rate, epochs and seeds for every scheduler;
only the schedule differs. The data is the synthetic microstructure (24 slices of 128x128,
correlation length 8) degraded with the `lowres` preset; training on the pretrain, rl and
finetune splits, validation mIoU each epoch on val (the agent's signal, and early-stopping
off), final mIoU on test with the best-validation weights. Reported per scheduler: epochs to
reach the target validation mIoU (95% of the best any run reached), final validation and
test mIoU, mean and std over seeds, and the agent's decisions and Q-table of the first seed.

    .venv/bin/python benchmarks/bench_lr_agent.py [--epochs 30] [--seeds 3] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learners.atomic import atomic_write_text
from learners.training import TrainConfig, evaluate_miou, train
from learners.unet import build_unet
from napari_paser.data.dataset import make_splits
from napari_paser.data.degrade import degrade, get_degradation
from napari_paser.data.synth import synth_volume

OUT = Path(__file__).parent / "results" / "lr-agent.json"
SCHEDULERS = ("fixed", "step", "cosine", "agent")


def data(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{train, val, test}: (images in [0, 1], labels) of the degraded synthetic volume."""
    images, labels = synth_volume(24, 128, seed=seed, correlation_length=8)
    images = degrade(images, get_degradation("lowres"), seed=seed)
    split = make_splits(len(images), seed=seed)
    train_idx = sorted(split["pretrain"] + split["rl"] + split["finetune"])
    return {name: (images[idx], labels[idx]) for name, idx in
            (("train", train_idx), ("val", split["val"]), ("test", split["test"]))}


def run(scheduler: str, seed: int, sets: dict, epochs: int, lr: float) -> dict:
    """One training run; its validation curve, final mIoUs and (agent) decisions."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_unet("tiny", n_classes=3)
    cfg = TrainConfig(epochs=epochs, batch_size=4, lr=lr, patience=epochs + 1, scheduler=scheduler, seed=seed)
    t0 = time.perf_counter()
    result = train(model, *sets["train"], *sets["val"], config=cfg, progress=False)
    return {
        "val_miou": [round(e.val_miou, 4) for e in result.history],
        "lr": [e.lr for e in result.history],
        "best_val_miou": round(result.best_val_miou, 4),
        "test_miou": round(evaluate_miou(model, *sets["test"], 3), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "agent": result.lr_agent,
    }


def epochs_to(curve: list[float], target: float) -> int | None:
    """1-based epoch at which the validation mIoU first reaches `target`, None if never."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def summarise(runs: dict[str, list[dict]]) -> tuple[float, dict]:
    best = max(r["best_val_miou"] for rs in runs.values() for r in rs)
    target = round(0.95 * best, 4)
    out = {}
    for name, rs in runs.items():
        reach = [epochs_to(r["val_miou"], target) for r in rs]
        hit = [e for e in reach if e is not None]
        out[name] = {
            "epochs_to_target": reach,
            "epochs_to_target_mean": round(float(np.mean(hit)), 2) if hit else None,
            "runs_reaching_target": len(hit),
            "best_val_miou_mean": round(float(np.mean([r["best_val_miou"] for r in rs])), 4),
            "best_val_miou_std": round(float(np.std([r["best_val_miou"] for r in rs])), 4),
            "test_miou_mean": round(float(np.mean([r["test_miou"] for r in rs])), 4),
            "test_miou_std": round(float(np.std([r["test_miou"] for r in rs])), 4),
            "final_lr": [r["lr"][-1] for r in rs],
            "val_miou_per_seed": [r["val_miou"] for r in rs],
        }
    return target, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3, help="initial learning rate of every scheduler")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = data()
    runs: dict[str, list[dict]] = {s: [] for s in SCHEDULERS}
    t0 = time.time()
    for seed in tqdm(range(args.seeds), desc="seeds"):
        for name in SCHEDULERS:
            runs[name].append(run(name, seed, sets, args.epochs, args.lr))
    target, table = summarise(runs)
    agent = runs["agent"][0]["agent"]
    results = {
        "command": "python benchmarks/bench_lr_agent.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {args.threads} torch thread(s), CPU shared with other jobs",
        "data": "synth_volume(24, 128, seed=0, correlation_length=8) degraded `lowres`; "
                "train = pretrain+rl+finetune (17 slices), val 2, test 5",
        "model": "tiny UNet (f0)", "epochs": args.epochs, "seeds": args.seeds, "initial_lr": args.lr,
        "target_val_miou": target, "target_rule": "95% of the best validation mIoU of any run",
        "schedulers": table,
        "agent_first_seed": {"decisions": agent["decisions"], "q_table": agent["q_table"]},
        "wall_seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    for name, s in table.items():
        print(f"{name:<7} epochs to {target:.3f}: {s['epochs_to_target']}  best val {s['best_val_miou_mean']:.4f}"
              f"+-{s['best_val_miou_std']:.4f}  test {s['test_miou_mean']:.4f}+-{s['test_miou_std']:.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
