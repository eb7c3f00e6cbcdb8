"""The `paser` command line tool.

    paser data synth   --out DIR --n N --size S --seed K      synthetic dataset folder
    paser data degrade --data DIR --out DIR --preset lowres    low-resolution copy of a dataset
    paser data info    --data DIR                              shape, classes, splits
    paser train        --data DIR --out RUN [--preset quick|paper] [--shipped] [--epochs N] [--seed K] [--overwrite]
    paser predict      --run RUN --image STACK.tif --out DIR     f0 segmentation + entropy/BALD maps
    paser segment      --run RUN --image VOLUME --out OUT.zarr [--what maps|route|f2] [--workers N | --scheduler ADDR]
    paser route        --run RUN --image STACK.tif --out DIR [--lambda L | --model f0|f1|f2]   PaSeR (or one model alone)
    paser session train-router --session DIR [--shares 0.1,0.2] [--policy network --lambdas 0,0.01] [--no-retrain]   router
    paser session export-run   --session DIR --out RUN [--overwrite]   the session's models and policies as a run
    paser session relink       --session DIR --image PATH      a session reading its image in place: the image moved
    paser models       [--size 224x256] [--json]               parameters and GFLOPs per preset
    paser weights      --out napari_paser/weights [--role f0|f1|f2] [--steps N]  rebuild the shipped starting weights
    paser bench routing --data DIR --run RUN --out results.json [--lambda L] [--sweep]   PaSeR vs baselines
    paser bench al     --data DIR --samplers random,entropy,... --budgets 8,16,32 --seeds 3 --out results.json [--dqn AGENT.pt]
    paser al train-dqn --data DIR | --synthetic N --out AGENT.pt [--episodes E]   train the RALIS query agent (imitation + DQN)
    paser demo         [--out demo_out]                        the headless pipeline end to end
    paser demo --gui   [--out demo_out] [--close]              napari walkthrough, a screenshot per step (Xvfb without a display)

User errors print one line saying what is wrong and how to fix it (exit code 2), never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from learners.errors import InputError
from napari_paser.cli_args import (BUDGETS, COUNT, FRACTIONS, LAMBDAS, N_CLASSES, RATE, REGION, SEED, TILE, UNIT,
                                   check_memory, float_range, int_range)
from napari_paser.errors import os_error_line

SYNTH_BYTES_PER_VOXEL = 48  # peak of synth_volume + write: float64 fields, float32 image, uint16 copy, labels
MODEL_BYTES_PER_PIXEL = 2048  # peak activations of the largest preset's forward pass (64 channels, float32)


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: use HxW like 224x256, or one number for a square") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"size {text!r}: need HxW with both at least 8 pixels")
    return parts[0], parts[1]


def cmd_synth(args: argparse.Namespace) -> int:
    from napari_paser.data.synth import write_synthetic

    check_memory(args.n * args.size[0] * args.size[1] * SYNTH_BYTES_PER_VOXEL,
                 f"{args.n} synthetic slices of {args.size[0]}x{args.size[1]}", "lower --n or --size")
    write_synthetic(args.out, args.n, args.size, fractions=args.fractions, seed=args.seed)
    print(f"wrote {args.n} synthetic slices of {args.size[0]}x{args.size[1]} to {args.out}")
    return 0


def cmd_degrade(args: argparse.Namespace) -> int:
    from napari_paser.data.degrade import degrade_folder

    spec = degrade_folder(args.data, args.out, args.preset, args.seed, overrides=_degrade_overrides(args))
    print(f"wrote a degraded copy of {args.data} to {args.out} ({spec})")
    return 0


def _degrade_overrides(args: argparse.Namespace) -> str:
    keys = {"factor": args.factor, "blur": args.blur, "noise": args.noise, "kind": args.noise_kind,
            "angles": args.angles, "sp": args.sp, "shade": args.shade}
    return ",".join(f"{k}={v}" for k, v in keys.items() if v is not None)


def cmd_info(args: argparse.Namespace) -> int:
    from napari_paser.data.dataset import read_dataset

    ds = read_dataset(args.data)
    fractions = np.bincount(ds.labels.ravel(), minlength=ds.n_classes) / ds.labels.size
    print(f"{args.data}: {ds.images.shape[0]} slices of {ds.images.shape[1]}x{ds.images.shape[2]}, {ds.images.dtype}")
    for name, f in zip(ds.class_names, fractions):
        print(f"  {name:<12} {f:6.1%}")
    for name, idx in ds.split.items():
        print(f"  split {name:<9} {len(idx):3d} slices")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from napari_paser.jobs.train import format_metrics, train_run

    names = tuple(args.classes.split(",")) if args.classes else None
    metrics = train_run(args.data, args.out, preset=args.preset, epochs=args.epochs, seed=args.seed, scheduler=args.scheduler,
                        train_splits=tuple(args.splits.split(",")), class_names=names, progress=not args.quiet,
                        init=args.init, overwrite=args.overwrite, shipped=args.shipped)
    print(format_metrics(metrics))
    print(f"checkpoints and metrics.json in {args.out}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from napari_paser.jobs.weights import make_starting_weights

    record = make_starting_weights(args.out, steps=args.steps, seed=args.seed, progress=not args.quiet, role=args.role)
    scores = ", ".join(f"{k} {v:.3f}" for k, v in record["heldout_synthetic_miou"].items())
    print(f"wrote {args.role}-3class.pt and {args.role}-3class.json to {args.out} (held-out synthetic mIoU: {scores})")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from napari_paser.jobs.policy import format_bank, train_policies

    summary = train_policies(args.data, args.run, lambdas=args.lambdas, default=args.default, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, samples=args.samples, seed=args.seed,
                             rollouts=args.rollouts, flips=args.flips, gradient=args.gradient,
                             progress=not args.quiet, halo=args.halo)
    print(format_bank(summary))
    print(f"policies in {args.run}/policies (bank.json), policy.pt = lambda {summary['default_lambda']}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from napari_paser.jobs.predict import route_file

    summary = route_file(args.run, args.image, args.out, lam=args.lam, samples=args.samples, progress=not args.quiet,
                         model=args.model)
    shares = ", ".join(f"{k} {v:.0%}" for k, v in summary["patch_share"].items())
    largest = next(v for k, v in summary.items() if k.endswith("_everywhere"))
    how = f"{args.model} alone" if args.model else f"policy lambda {summary['lambda']}"
    print(f"routed {summary['slices']} slices ({how}): {shares}; "
          f"{summary['gflops_per_slice']:.2f} GFLOPs per slice vs {largest:.2f} for the largest model everywhere")
    print(f"routed.tif, routing.tif and routing.json in {args.out}")
    return 0


def cmd_session_train_router(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from learners.generators import drain
    from napari_paser.session.core import Session
    from napari_paser.session.router_jobs import ROUTED_RETRAIN, format_router

    with Session.open(args.session) as session:
        options = {"policy": args.policy} if args.policy else {}  # --lambdas alone means the network
        if args.shares is not None:
            options["shares"] = args.shares
        if args.model_epochs is not None:
            options["model_config"] = replace(ROUTED_RETRAIN, epochs=args.model_epochs)
        if args.focus is not None:
            options["focus"] = args.focus
        if args.tail is not None:
            options["tail"] = args.tail
        gen = session.train_router(lambdas=args.lambdas, **options, epochs=args.epochs,
                                   train_models=not args.no_retrain, samples=args.samples, seed=args.seed,
                                   halo=args.halo)
        bars: dict[str, tqdm] = {}

        def show(event) -> None:
            if event.stage == "ready" and not args.quiet:  # routing works from here while f2 retrains
                tqdm.write(event.message)
            bar = bars.get(event.stage)
            if bar is None and not args.quiet:
                bar = bars[event.stage] = tqdm(total=event.total, desc=event.stage, unit="step")
            if bar is not None:
                bar.total = event.total
                bar.update(event.done - bar.n)

        result = drain(gen, show)
        for bar in bars.values():
            bar.close()
    if result.cancelled:
        print("router training cancelled; the previous policies are kept")
        return 1
    print(format_router(result.summary))
    print(f"policies saved in {args.session} (router.json); route with the GUI's {result.bank.knob} control or "
          f"`paser session export-run --session {args.session} --out RUN` then `paser route --run RUN`")
    return 0


def cmd_session_export_run(args: argparse.Namespace) -> int:
    from napari_paser.session.core import Session

    with Session.open(args.session, read_only=True) as session:
        out = session.export_run(args.out, overwrite=args.overwrite)
    print(f"run folder {out}: f0/f1/f2, policy.pt and policies/ (use it with `paser route --run {out}`)")
    return 0


def cmd_session_relink(args: argparse.Namespace) -> int:
    from napari_paser.session.core import Session

    spec = Session.relink_image(args.session, args.image)
    print(f"session {args.session} now reads its image from {spec}")
    return 0


def _session_parsers(sub) -> None:
    """`paser session ...`: jobs on a labeling session folder."""
    session = sub.add_parser("session", help="jobs on a labeling session folder").add_subparsers(
        dest="session_command", required=True)
    p = session.add_parser("train-router", help="make the routing policies with the current f2 (one per share of "
                                                "patches sent to f2 by f0's uncertainty; the default share follows "
                                                "the held-out regions, 0 when f0 alone leads there), then retrain f2 "
                                                "on the accepted regions and make them again; or retrain f1 and f2, "
                                                "then one policy network per lambda (--policy network)")
    p.add_argument("--session", required=True, type=Path, help="session folder (session.json)")
    p.add_argument("--policy", choices=("ranked", "network"), help="ranked (default): the most uncertain patches by "
                   "f0's entropy go to f2; network: PaSeR's policy network trained on the regions' reward table "
                   "(the default with --lambdas)")
    p.add_argument("--shares", type=LAMBDAS, help="ranked: shares of the session's patches sent to f2, one policy each "
                                                   "(default 0,0.05,0.1,0.2,0.3,0.5; routing uses the best on the "
                                                   "held-out regions)")
    p.add_argument("--lambdas", type=LAMBDAS, help="network: cost weights, one policy each (default 0,0.005,0.01,0.02,"
                                                    "0.05,0.1: with f2's 80%% parameter share, larger ones route f0 "
                                                    "everywhere)")
    p.add_argument("--epochs", type=COUNT, default=100, help="network: training epochs per lambda (default 100)")
    p.add_argument("--model-epochs", type=COUNT, help="epochs of f2's (network: f1's and f2's) retraining, 75 steps "
                                                       "each (default 12: f2 needs more steps than f0 to beat it)")
    p.add_argument("--tail", type=float_range(0, 1), help="ranked: score a patch by its share of the session's "
                                                           "TAIL most uncertain pixels (default 0.1; 0: by its mean "
                                                           "entropy)")
    p.add_argument("--focus", type=float_range(0), help="draw f2's training crops where f0 is unsure: centres "
                                                         "weighted by f0's region-mean entropy to this power (default "
                                                         "0: anywhere on the labels; higher values make f2 worse where f0 is "
                                                         "sure without improving routing)")
    p.add_argument("--no-retrain", action="store_true", help="keep f1/f2 as they are (only the policies: seconds)")
    p.add_argument("--halo", type=int_range(0), help="pixels of context f1/f2 see around each routing patch "
                                                     "(default: a quarter of the region size; 0: the patch alone)")
    p.add_argument("--samples", type=COUNT, default=5, help="f0 MC-dropout passes (default 5)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_session_train_router)
    p = session.add_parser("export-run", help="write the session's models and policies as a run folder")
    p.add_argument("--session", required=True, type=Path, help="session folder (session.json)")
    p.add_argument("--out", required=True, type=Path, help="new run folder")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=cmd_session_export_run)
    p = session.add_parser("relink", help="point a session that reads its image in place at the image's new place")
    p.add_argument("--session", required=True, type=Path, help="session folder (session.json)")
    p.add_argument("--image", required=True, help="the moved zarr / OME-Zarr folder or FILE.h5:/dataset")
    p.set_defaults(func=cmd_session_relink)


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_paser.jobs.predict import predict_file

    out = predict_file(args.run, args.image, args.out, samples=args.samples, tile=args.tile, progress=not args.quiet)
    print(f"wrote prediction.tif, entropy.tif and bald.tif to {out}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from napari_paser.jobs.segment import segment_volume

    if args.workers is not None and args.scheduler is not None:
        raise InputError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    try:
        summary = segment_volume(args.run, args.image, args.out, what=args.what, lam=args.lam, tile=args.tile,
                                 workers=1 if args.workers is None else args.workers, scheduler=args.scheduler,
                                 device=args.device, samples=args.samples, seed=args.seed, threads=args.threads,
                                 progress=not args.quiet, skip_damaged=args.skip_damaged)
    except KeyboardInterrupt:
        print(f"paser: interrupted; finished blocks are kept in {args.out}: rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(summary.line())
    return 0


def preset_costs(size: tuple[int, int], n_classes: int = 3) -> dict:
    """{preset: {"params": N, "gflops": G}} for one whole image of `size`."""
    from learners.flops import gflops_per_image
    from learners.unet import PRESETS, build_unet, count_parameters

    out = {}
    for name in PRESETS:
        model = build_unet(name, n_classes=n_classes)
        out[name] = {"params": count_parameters(model), "gflops": round(gflops_per_image(model, *size), 4)}
    return out


def cmd_models(args: argparse.Namespace) -> int:
    check_memory(args.size[0] * args.size[1] * MODEL_BYTES_PER_PIXEL, f"a forward pass on a "
                 f"{args.size[0]}x{args.size[1]} image", "lower --size (costs scale with the pixel count)")
    costs = preset_costs(args.size, args.n_classes)
    if args.json:
        print(json.dumps(costs, indent=2))
        return 0
    print(f"model presets for {args.n_classes} classes, one {args.size[0]}x{args.size[1]} image:")
    print(f"{'preset':<8}{'params':>12}{'GFLOPs':>10}  used as")
    for name, c in costs.items():
        print(f"{name:<8}{c['params']:>12,}{c['gflops']:>10.3f}  {preset_roles(name)}")
    return 0


def preset_roles(name: str) -> str:
    """Where a size preset serves: the paper's sizes in `paser train`, the shipped ones in new sessions."""
    from napari_paser.jobs.train import MODEL_PRESETS
    from napari_paser.weights import SHIPPED

    train = [r for r, p in MODEL_PRESETS.items() if p == name]
    shipped = [r for r, p in SHIPPED.items() if p == name]
    if train and train == shipped:
        return f"{'/'.join(train)} (shipped starting weights)"
    uses = [f"{'/'.join(shipped)} of new sessions and `paser train --shipped` (shipped starting weights)"] if shipped else []
    uses += [f"{'/'.join(train)} of `paser train`"] if train else []
    return "; ".join(uses) or "-"


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


def cmd_demo(args: argparse.Namespace) -> int:
    if args.gui:
        from napari_paser.gui.demo import main as demo_gui

        return demo_gui(Path(args.out), keep_open=not args.close)
    from napari_paser.jobs.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)
    return 0


def _policy_arguments(p: argparse.ArgumentParser, lr_flag: str) -> None:
    """The options of policy training (stage 2) shared by `paser policy` and `paser bench routing`."""
    p.add_argument("--batch-size", type=COUNT, default=4, help="images per policy step (default 4)")
    p.add_argument(lr_flag, type=RATE, default=3e-3, help="policy learning rate (default 3e-3)")
    p.add_argument("--gradient", choices=("expected", "reinforce"), default="expected",
                   help="expected: exact gradient of the expected reward from the patch table (default); "
                        "reinforce: sampled routings as in Algorithm 1")
    p.add_argument("--rollouts", type=COUNT, default=1,
                   help="reinforce: routings sampled per slice and step; above 1 each patch's baseline is the "
                        "mean of its other routings (default 1: the batch-mean baseline)")
    p.add_argument("--flips", action="store_true", help="augment policy training with mirrored slices")
    p.add_argument("--samples", type=COUNT, default=5, help="f0 MC-dropout passes (default 5)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paser", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make, degrade and inspect dataset folders").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic three-phase dataset folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=COUNT, default=32, help="number of slices (default 32)")
    p.add_argument("--size", type=_size, default=(128, 128), help="slice size HxW or S (default 128)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--fractions", type=FRACTIONS, default=(0.3, 0.2, 0.5), help="phase fractions (default 0.3,0.2,0.5)")
    p.set_defaults(func=cmd_synth)

    p = data.add_parser("degrade", help="write a low-resolution copy of a dataset (labels unchanged)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="lowres", help="degradation preset or spec (default lowres)")
    p.add_argument("--factor", type=COUNT, help="downsampling factor (overrides the preset)")
    p.add_argument("--blur", help="Gaussian blur sigma in low-res pixels, or MIN:MAX varying across the image")
    p.add_argument("--noise", help="noise level in [0,1] units, or MIN:MAX varying across the image")
    p.add_argument("--noise-kind", choices=("gaussian", "poisson"))
    p.add_argument("--angles", type=int_range(2), help="sparse-angle reconstruction with this many projections")
    p.add_argument("--sp", type=UNIT, help="salt-and-pepper fraction (0.01 = the paper's 1%%)")
    p.add_argument("--shade", type=float_range(0), help="std of a smooth background shading in [0,1] units (flat-field drift)")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=cmd_degrade)

    p = data.add_parser("info", help="describe a dataset folder")
    p.add_argument("--data", required=True, type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train the tiny, medium and large models (f0, f1, f2)")
    p.add_argument("--data", required=True, type=Path, help="dataset folder (images.tif, labels.tif)")
    p.add_argument("--out", required=True, type=Path, help="run folder for f0.pt, f1.pt, f2.pt and metrics.json")
    p.add_argument("--preset", default="quick", choices=("quick", "long", "paper"),
                   help="quick: minutes on a laptop CPU; long: 3x quick's steps for f1/f2; paper: the PaSeR "
                        "paper's 200 epochs, batch 32, Adam 1e-4")
    p.add_argument("--init", type=Path, help="start from this run folder's f0/f1/f2 (warm start, to train longer)")
    p.add_argument("--shipped", action="store_true",
                   help="start f0, f1, f2 from the package's starting weights (f2 then the wide size that ships); "
                        "not with --init")
    p.add_argument("--epochs", type=COUNT, help="override the preset's number of epochs")
    p.add_argument("--scheduler", choices=("fixed", "step", "cosine", "agent"), default="fixed",
                   help="learning-rate schedule; agent = the Q-learning scheduler (learners.lr_agent)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--splits", default="pretrain", help="training splits, comma-separated (default pretrain)")
    p.add_argument("--classes", help="class names, comma-separated (default: the dataset's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in a non-empty --out (its models, metrics and routing policies are removed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("weights", help="train the starting weights new sessions begin from (f0, f1 or f2, on synthetic data)")
    p.add_argument("--out", required=True, type=Path, help="folder for <role>-3class.pt and <role>-3class.json "
                                                          "(napari_paser/weights rebuilds the shipped ones)")
    p.add_argument("--role", choices=("f0", "f1", "f2"), default="f0", help="f0 (tiny, default), f1 (medium) or f2 (wide)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000, minutes on a CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("policy", help="train PaSeR routing policies (one per cost weight lambda) for a run folder")
    p.add_argument("--data", required=True, type=Path, help="the dataset the run was trained on (uses rl and val)")
    p.add_argument("--run", required=True, type=Path, help="run folder from `paser train` (f0.pt, f1.pt, f2.pt)")
    p.add_argument("--lambdas", type=LAMBDAS, default=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
                   help="cost weights in [0, 1], comma-separated (default 0,0.05,0.1,0.2,0.3,0.5,1)")
    p.add_argument("--default", type=UNIT, default=0.3, help="lambda of the policy.pt the plugin loads (default 0.3)")
    p.add_argument("--epochs", type=COUNT, default=100, help="REINFORCE epochs per policy (default 100)")
    p.add_argument("--halo", type=int_range(0), default=0,
                   help="pixels of context f1/f2 see around each patch (default 0: the paper's patches alone)")
    _policy_arguments(p, "--lr")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("predict", help="segment a TIFF slice or stack with a run's f0, with entropy and BALD maps")
    p.add_argument("--run", required=True, type=Path, help="run folder from `paser train` (uses f0.pt)")
    p.add_argument("--image", required=True, type=Path, help="greyscale TIFF slice or stack")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--samples", type=COUNT, default=5, help="MC-dropout passes (default 5)")
    p.add_argument("--tile", type=TILE, help="process slices in tiles of this size (bounds memory)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("route", help="segment a TIFF slice or stack with PaSeR: each patch by the model the policy picks")
    p.add_argument("--run", required=True, type=Path, help="run folder with f0/f1/f2 and policy.pt or policies/")
    p.add_argument("--image", required=True, type=Path, help="greyscale TIFF slice or stack")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--lambda", "--share", dest="lam", type=UNIT,
                   help="use the bank's policy nearest to this lambda (a session's ranked bank: share of patches to f2)")
    p.add_argument("--model", choices=("f0", "f1", "f2"),
                   help="no routing: this model alone on whole slices (f0: the mean of --samples MC passes, as "
                        "PaSeR computes it; --samples 0: one deterministic pass)")
    p.add_argument("--samples", type=int_range(0), default=5, help="f0 MC-dropout passes (default 5)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("segment", help="segment a whole volume blockwise on dask.distributed into a resumable OME-Zarr")
    p.add_argument("--run", required=True, type=Path, help="run folder from `paser train` (and `paser policy` for route)")
    p.add_argument("--image", required=True,
                   help="volume: multi-page TIFF, folder of TIFF slices, .zarr (zarr or OME-Zarr) or FILE.h5:/dataset")
    p.add_argument("--out", required=True, type=Path, help="output OME-Zarr folder (rerun the same command to resume)")
    p.add_argument("--what", choices=("maps", "route", "f2"), default="route",
                   help="maps: f0 + entropy/BALD; route: PaSeR (default); f2: the largest model everywhere")
    p.add_argument("--lambda", "--share", dest="lam", type=UNIT,
                   help="route: the bank's policy nearest to this lambda (a ranked bank: share of patches to f2)")
    p.add_argument("--tile", type=TILE, default=512, help="block edge in pixels; route: the policy's grid cuts each tile "
                                                         "into patches (default 512: 4x4 patches of 128)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int_range(0), help="local worker processes (default 1; 0 = in this process)")
    where.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://HOST:8786")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=COUNT, help="torch threads per worker (default: the cores shared out)")
    p.add_argument("--samples", type=COUNT, default=5, help="f0 MC-dropout passes (default 5)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--skip-damaged", action="store_true",
                   help="a block whose input cannot be read (damaged file) is left unlabeled (255) and listed in the "
                        "output's provenance, instead of stopping the job")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_segment)

    _session_parsers(sub)

    p = sub.add_parser("models", help="parameters and GFLOPs per image of each model preset")
    p.add_argument("--size", type=_size, default=(224, 256), help="image size HxW (default 224x256)")
    p.add_argument("--n-classes", type=N_CLASSES, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

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
    _policy_arguments(p, "--rl-lr")
    p.set_defaults(func=cmd_bench_routing)

    _al_parsers(sub, bench)

    p = sub.add_parser("demo", help="the headless pipeline on the embedded synthetic dataset")
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--gui", action="store_true",
                   help="open napari with the PaSeR dock and walk through the workflow, saving screenshots in OUT/gui")
    p.add_argument("--close", action="store_true", help="with --gui: close napari after the walkthrough")
    p.set_defaults(func=cmd_demo)
    return parser


def _fail(message: str) -> int:
    """The one line of a user error (`paser: error: ...`, on one line), exit status 2."""
    print(f"paser: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        return _fail(str(exc))
    except OSError as exc:  # a path that cannot be read or written: the user's to fix, never a traceback
        return _fail(os_error_line(exc))
    except MemoryError:
        return _fail("not enough memory for this job: lower the sizes (slices, --size, --n, --tile) or use a larger machine")
    except KeyboardInterrupt:
        print("paser: interrupted; files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
