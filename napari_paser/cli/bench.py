"""`paser bench routing`, `paser bench al` and `paser al train-dqn`: the benchmarks and the RALIS agent's
training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from learners.errors import InputError
from napari_paser.cli.training import policy_arguments
from napari_paser.cli_args import BUDGETS, COUNT, LAMBDAS, RATE, REGION, SEED, UNIT


def cmd_bench_routing(args: argparse.Namespace) -> int:
    from napari_paser.bench.routing import SWEEP_LAMBDAS, RoutingBenchConfig, format_table, run_bench

    cfg = RoutingBenchConfig(args.data, args.run, args.out, lam=args.lam, noise=args.noise, sweep=args.sweep,
                      epochs_rl=args.epochs_rl, epochs_ft=args.epochs_ft, ft_models=not args.policy_only_ft,
                      epochs_noise=args.epochs_noise, noise_steps=args.noise_steps, batch_size=args.batch_size, rl_lr=args.rl_lr,
                      rollouts=args.rollouts, flips=args.flips, gradient=args.gradient,
                      samples=args.samples, seed=args.seed, sweep_lambdas=args.sweep_lambdas or SWEEP_LAMBDAS,
                      threads=args.threads, fast=args.fast, progress=not args.quiet)
    results = run_bench(cfg)
    print(format_table(results))
    print(f"wrote {args.out}" + (f" and {results['plot']}" if "plot" in results else ""))
    return 0


def _sim_config(args: argparse.Namespace):
    """The simulation settings of `paser bench al` / `paser al train-dqn` (also sets torch's threads)."""
    import torch

    from napari_paser.bench.al_sim import SimConfig

    torch.set_num_threads(args.threads)
    return SimConfig(region=args.region, train_steps=args.train_steps, seed_steps=args.seed_steps,
                     batch_size=args.batch_size, lr=args.lr, warm_lr=args.warm_lr, samples=args.samples,
                     pool_size=args.pool_size,
                     state_regions=args.state_regions)


def cmd_bench_al(args: argparse.Namespace) -> int:
    from napari_paser.bench.al import ALBenchConfig, format_table, run_bench

    cfg = ALBenchConfig(args.data, args.out, tuple(s.strip() for s in args.samplers.split(",")), args.budgets, args.seeds,
                      args.dqn, _sim_config(args), tuple(args.pool_splits.split(",")), args.test_split, args.crop,
                      "paser " + " ".join(sys.argv[1:]), not args.quiet)
    results = run_bench(cfg)
    print(format_table(results))
    print(f"wrote {args.out} and {results['plot']}")
    return 0


SYNTH_AGENT_FRACTIONS = (0.05, 0.35, 0.6)
"""`paser al train-dqn --synthetic`: a rare phase, as in the imbalanced benchmark set."""


def _synthetic_training_data(n: int, size: int, seed: int) -> Path:
    """A degraded (`lowres-varying`) synthetic dataset folder in a temporary directory."""
    import tempfile

    from napari_paser.data.degrade import degrade_folder
    from napari_paser.data.synth import write_synthetic

    work = Path(tempfile.mkdtemp(prefix="paser-dqn-"))
    write_synthetic(work / "clean", n, size, fractions=SYNTH_AGENT_FRACTIONS, seed=seed, correlation_length=8)
    degrade_folder(work / "clean", work / "data", "lowres-varying", seed=seed)
    return work / "data"


def cmd_al_train_dqn(args: argparse.Namespace) -> int:
    from napari_paser.bench.al_sim import DQNTrainConfig, load_splits, train_dqn

    if (args.data is None) == (args.synthetic is None):
        raise InputError("give --data DIR (a labeled dataset folder) or --synthetic N (N generated slices), not both")
    folder = args.data or _synthetic_training_data(args.synthetic, args.synthetic_size, args.seed)
    (data, reward), n_classes = load_splits(folder, [args.train_splits.split(","), args.reward_splits.split(",")],
                                            args.crop)
    cfg = DQNTrainConfig(episodes=args.episodes, steps=args.steps, k=args.k, n_seed=args.n_seed, seed=args.seed,
                         teacher_episodes=args.teacher_episodes, imitation_steps=args.imitation_steps,
                         imitation_weight=args.imitation_weight, eval_episodes=args.eval_episodes)
    meta = {"dataset": str(args.data) if args.data else f"synthetic {args.synthetic} x {args.synthetic_size}^2, "
            f"fractions {SYNTH_AGENT_FRACTIONS}, seed {args.seed}, lowres-varying",
            "command": "paser " + " ".join(sys.argv[1:])}
    info = train_dqn(data, reward, n_classes, args.out, _sim_config(args), cfg, meta, progress=not args.quiet)
    ev = {k: f"{np.mean(v):.2f}" for k, v in info["eval_gains"].items()}
    print(f"reward-split mIoU gain per episode (points): {ev}; saved policy: {info['chosen']}; "
          f"{info['seconds']['total']:.0f} s; agent saved to {args.out}")
    return 0


def _sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", type=REGION, default=32, help="region edge in pixels (default 32)")
    p.add_argument("--train-steps", type=COUNT, default=30, help="optimiser steps per retraining (default 30)")
    p.add_argument("--seed-steps", type=COUNT, default=60, help="optimiser steps on the seed set (default 60)")
    p.add_argument("--batch-size", type=COUNT, default=4)
    p.add_argument("--lr", type=RATE, default=2e-3, help="learning rate on the seed set (default 2e-3)")
    p.add_argument("--warm-lr", type=RATE, default=5e-4,
                   help="learning rate of each retraining after it, warm-started (default 5e-4)")
    p.add_argument("--samples", type=COUNT, default=5, help="MC-dropout passes (default 5)")
    p.add_argument("--pool-size", type=COUNT, default=10, help="DQN candidates per pool (default 10)")
    p.add_argument("--state-regions", type=COUNT, default=8, help="DQN state set size, from the seed set (default 8)")
    p.add_argument("--crop", type=REGION, help="keep the central CROPxCROP pixels of each slice (CPU-sized runs)")
    p.add_argument("--threads", type=COUNT, default=1,
                   help="torch CPU threads (default 1: tiny models run fastest single-threaded on a shared CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _al_parsers(sub, bench) -> None:
    """`paser bench al` and `paser al train-dqn`."""
    p = bench.add_parser("al", help="label efficiency of the region samplers under simulated labeling")
    p.add_argument("--data", required=True, type=Path, help="labeled dataset folder")
    p.add_argument("--samplers", default="random,entropy,bald,taudis",
                   help="comma-separated: random,entropy,bald,taudis,dqn (the --dqn agent, else the shipped one), "
                        "dqn:shipped")
    p.add_argument("--budgets", type=BUDGETS, default=(8, 16, 24, 32, 48, 64),
                   help="labeled regions; the first is the random seed set (default 8,16,24,32,48,64)")
    p.add_argument("--seeds", type=COUNT, default=3)
    p.add_argument("--out", required=True, type=Path, help="results JSON (the plot goes beside it as .png)")
    p.add_argument("--dqn", type=Path,
                   help="agent checkpoint from `paser al train-dqn` for the dqn sampler (default: the shipped agent)")
    p.add_argument("--pool-splits", default="pretrain,finetune", help="splits forming the unlabeled pool")
    p.add_argument("--test-split", default="test")
    _sim_arguments(p)
    p.set_defaults(func=cmd_bench_al)

    al = sub.add_parser("al", help="active learning").add_subparsers(dest="al_command", required=True)
    p = al.add_parser("train-dqn", help="train the RALIS query agent by playing simulated labeling episodes")
    p.add_argument("--data", type=Path, help="labeled dataset folder (or --synthetic)")
    p.add_argument("--synthetic", type=COUNT, metavar="N",
                   help="train on N generated slices (3 phases, one rare; lowres-varying): how the shipped agent is made")
    p.add_argument("--synthetic-size", type=REGION, default=64, help="edge of the generated slices (default 64)")
    p.add_argument("--out", required=True, type=Path, help="agent checkpoint to write (.pt)")
    p.add_argument("--train-splits", default="rl", help="splits the episodes label from (default rl)")
    p.add_argument("--reward-splits", default="val", help="splits the reward mIoU is measured on (default val)")
    p.add_argument("--episodes", type=COUNT, default=10)
    p.add_argument("--steps", type=COUNT, default=5, help="proposal steps per episode (default 5)")
    p.add_argument("--k", type=COUNT, default=8, help="regions per step (default 8)")
    p.add_argument("--n-seed", type=COUNT, default=8, help="seed set regions (default 8)")
    p.add_argument("--teacher-episodes", type=int, default=4, help="episodes played by the BALD teacher (default 4)")
    p.add_argument("--imitation-steps", type=int, default=200, help="pre-training steps on its rankings (default 200)")
    p.add_argument("--imitation-weight", type=float, default=1.0,
                   help="weight of the imitation term in each DQN step (default 1; 0 = pure DQN)")
    p.add_argument("--eval-episodes", type=COUNT, default=4,
                   help="greedy episodes comparing DQN, imitation and teacher before saving (default 4)")
    p.add_argument("--seed", type=SEED, default=0)
    _sim_arguments(p)
    p.set_defaults(func=cmd_al_train_dqn)


def add_bench_parsers(sub) -> None:
    """`paser bench routing`, `paser bench al` and `paser al train-dqn`."""
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser("routing", help="PaSeR against each model alone, the IDK cascade, random and oracle routers")
    p.add_argument("--data", required=True, type=Path, help="dataset folder (uses its rl, finetune, val, test splits)")
    p.add_argument("--run", required=True, type=Path, help="run folder from `paser train` (f0.pt, f1.pt, f2.pt)")
    p.add_argument("--out", required=True, type=Path, help="results JSON (the --sweep plot goes beside it as .png)")
    p.add_argument("--lambda", dest="lam", type=UNIT, default=0.5, help="cost weight of the reward (default 0.5)")
    p.add_argument("--noise", default="sp:0.01", help="test-time noise, sp:FRACTION (default sp:0.01)")
    p.add_argument("--sweep", action="store_true", help="trace accuracy-cost curves and plot them")
    p.add_argument("--sweep-lambdas", type=LAMBDAS,
                   help="lambdas of PaSeR's curve, comma-separated (default 0,0.02,0.05,0.1,0.2,0.3,0.5,0.7,1)")
    p.add_argument("--threads", type=COUNT, help="torch threads (default: torch's choice)")
    p.add_argument("--fast", action="store_true",
                   help="score the IDK cascades on the patch table instead of executing them (large images)")
    p.add_argument("--epochs-rl", type=COUNT, default=100, help="policy training epochs, stage 2 (default 100)")
    p.add_argument("--epochs-ft", type=COUNT, default=10, help="joint fine-tuning epochs, stage 3 (default 10)")
    p.add_argument("--policy-only-ft", action="store_true",
                   help="stage 3 tunes the policy only; f1..fm stay as pretrained (an ablation of Algorithm 1)")
    p.add_argument("--epochs-noise", type=COUNT, default=2, help="f1/f2 fine-tuning epochs on noisy data (default 2)")
    p.add_argument("--noise-steps", type=COUNT, default=25, help="batches per noise fine-tuning epoch (default 25)")
    policy_arguments(p, "--rl-lr")
    p.set_defaults(func=cmd_bench_routing)

    _al_parsers(sub, bench)
