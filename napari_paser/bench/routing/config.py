"""The routing benchmark's options (the CLI flags), its method names and its inputs: the run's
models and the dataset's splits, normalised as the run was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path

import numpy as np
from torch import nn

from learners.checkpoint import load_checkpoint
from learners.routing import GRID
from learners.routing.training import RLConfig
from napari_paser.data.dataset import normalise, read_dataset, robust_range
from napari_paser.errors import PaserInputError


ROLES = ("f0", "f1", "f2")


N_PATCHES = GRID[0] * GRID[1]


METHODS = ("f0", "f0_mc", "f1", "f2", "idk_cascade", "idk_cascade_iou_match", "random", "paser", "oracle")


METHOD_LABELS = {"f0": "f0 (one pass)", "f0_mc": "f0 (MC mean, as PaSeR computes it)"}
"""f0 alone two ways: one deterministic pass (the cheapest f0), and the mean of its MC-dropout passes,
which is what PaSeR's f0 patches are; routing is credited only for what it adds over the second."""


SWEEP_LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


RANDOM_STEP = 0.25  # simplex grid of the random policy's routing probabilities


@dataclass(frozen=True)
class RoutingBenchConfig:
    """Options of one benchmark run (the CLI flags)."""

    data: Path
    run: Path
    out: Path
    lam: float = 0.5
    noise: str = "sp:0.01"
    sweep: bool = False
    epochs_rl: int = 100
    epochs_ft: int = 10
    ft_models: bool = True  # False: stage 3 tunes the policy only (f1..fm stay as pretrained)
    epochs_noise: int = 2
    noise_steps: int = 25  # patch batches (of 16) per noise fine-tuning epoch: bounds the large model's cost
    batch_size: int = 4
    rl_lr: float = 3e-3
    rollouts: int = 1  # REINFORCE: routings per slice and step (> 1: per-patch leave-one-out baseline)
    flips: bool = False  # mirror augmentation of policy training
    gradient: str = "expected"  # stage 2 (and policy-only stage 3): "expected" or "reinforce"
    samples: int = 5
    seed: int = 0
    sweep_lambdas: tuple[float, ...] = SWEEP_LAMBDAS
    cascade_steps: int = 11
    threads: int | None = None  # torch threads; 1 is fastest for the small policy on a busy machine
    fast: bool = False  # score the cascades on the patch table too (same decisions up to MC-dropout seeds)
    progress: bool = True

    def command(self) -> str:
        """The `paser bench routing` command line that reproduces this run."""
        flags = {"--lambda": self.lam, "--noise": self.noise, "--epochs-rl": self.epochs_rl,
                 "--epochs-ft": self.epochs_ft, "--epochs-noise": self.epochs_noise,
                 "--noise-steps": self.noise_steps, "--batch-size": self.batch_size,
                 "--rl-lr": self.rl_lr, "--gradient": self.gradient, "--rollouts": self.rollouts,
                 "--samples": self.samples, "--seed": self.seed}
        parts = ["paser bench routing", f"--data {self.data}", f"--run {self.run}", f"--out {self.out}"]
        if not self.ft_models:
            parts.append("--policy-only-ft")
        if self.flips:
            parts.append("--flips")
        if self.sweep:
            flags["--sweep-lambdas"] = ",".join(map(str, self.sweep_lambdas))
        if self.threads:
            flags["--threads"] = self.threads
        parts += [f"{k} {v}" for k, v in flags.items()]
        parts += [f for f, on in (("--sweep", self.sweep), ("--fast", self.fast)) if on]
        return " ".join(parts)

    def rl_config(self) -> RLConfig:
        """Stage 2 settings at the benchmark's lambda."""
        return RLConfig(epochs=self.epochs_rl, batch_size=self.batch_size, lr=self.rl_lr, lam=self.lam,
                        rollouts=self.rollouts, flips=self.flips, gradient=self.gradient, seed=self.seed)

    def check(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise PaserInputError(f"--lambda must lie in [0, 1], got {self.lam}")
        if min(self.epochs_rl, self.epochs_ft, self.epochs_noise, self.noise_steps, self.batch_size,
               self.rollouts) < 1:
            raise PaserInputError("--epochs-rl, --epochs-ft, --epochs-noise, --noise-steps, --batch-size and "
                                  "--rollouts must be at least 1")
        if not self.sweep_lambdas or not all(0.0 <= v <= 1.0 for v in self.sweep_lambdas):
            raise PaserInputError(f"--sweep-lambdas must be values in [0, 1], got {self.sweep_lambdas}")
        if self.threads is not None and self.threads < 1:
            raise PaserInputError(f"--threads must be at least 1, got {self.threads}")
        if self.samples < 1:
            raise PaserInputError(f"--samples must be at least 1 (f0's entropy needs MC passes), got {self.samples}")
        parse_noise(self.noise)


def parse_noise(text: str) -> float:
    """'sp:0.01' -> 0.01, the salt-and-pepper fraction (the only noise the paper's Table 3 uses)."""
    kind, _, value = text.partition(":")
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if kind.strip().lower() != "sp" or not 0.0 < amount <= 1.0:
        raise PaserInputError(f"--noise {text!r}: use sp:FRACTION, e.g. sp:0.01 for 1% salt-and-pepper pixels")
    return amount


@dataclass
class Inputs:
    """The dataset's splits (normalised) and the run's pretrained models."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    models: list[nn.Module]
    n_classes: int
    normalisation: dict
    dataset: str


def load_inputs(cfg: RoutingBenchConfig) -> Inputs:
    """Read the dataset and f0/f1/f2; normalise by the dataset's robust range (as `paser train` did)."""
    ds = read_dataset(cfg.data)
    missing = [s for s in ("pretrain", "rl", "finetune", "val", "test") if not ds.split.get(s)]
    if missing:
        raise PaserInputError(f"{cfg.data}: splits {missing} are empty; the benchmark needs at least 5 slices")
    models = [load_checkpoint(Path(cfg.run) / f"{r}.pt") for r in ROLES]
    classes = {c.config.n_classes for c in models}
    if classes != {ds.n_classes}:
        raise PaserInputError(f"the models in {cfg.run} predict {sorted(classes)} classes but {cfg.data} has "
                              f"{ds.n_classes}; benchmark a run trained on this dataset")
    lo, hi = robust_range(ds.images)
    x = normalise(ds.images, lo, hi)
    splits = {name: (x[idx], ds.labels[idx]) for name, idx in ds.split.items()}
    trained = models[0].meta.get("normalisation", {})
    norm = {"lo": lo, "hi": hi, "checkpoint_lo": trained.get("lo"), "checkpoint_hi": trained.get("hi")}
    return Inputs(splits, [c.model for c in models], ds.n_classes, norm, str(cfg.data))
