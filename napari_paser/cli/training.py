"""`paser train`, `paser weights` and `paser policy`: the models and routing policies of a run folder, the
shipped starting weights; `paser models`: what each model preset costs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_paser.cli_args import COUNT, LAMBDAS, N_CLASSES, RATE, SEED, UNIT, check_memory, image_size, int_range

MODEL_BYTES_PER_PIXEL = 2048  # peak activations of the largest preset's forward pass (64 channels, float32)


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


def policy_arguments(p: argparse.ArgumentParser, lr_flag: str) -> None:
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


def add_training_parsers(sub) -> None:
    """`paser train`, `paser weights` and `paser policy`."""
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
    policy_arguments(p, "--lr")
    p.set_defaults(func=cmd_policy)


def add_models_parser(sub) -> None:
    """`paser models`."""
    p = sub.add_parser("models", help="parameters and GFLOPs per image of each model preset")
    p.add_argument("--size", type=image_size, default=(224, 256), help="image size HxW (default 224x256)")
    p.add_argument("--n-classes", type=N_CLASSES, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
