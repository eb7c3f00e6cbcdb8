"""The `paser` command line tool.

    paser data synth   --out DIR --n N --size S --seed K      synthetic dataset folder
    paser data degrade --data DIR --out DIR --preset lowres    low-resolution copy of a dataset
    paser data info    --data DIR                              shape, classes, splits
    paser train        --data DIR --out RUN [--preset quick|paper] [--epochs N] [--seed K]
    paser models       [--size 224x256] [--json]               parameters and GFLOPs per preset
    paser demo         [--out demo_out]                        the headless pipeline end to end

User errors print one line saying what is wrong and how to fix it (exit code 2), never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from learners.errors import InputError


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


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"fractions {text!r}: use comma-separated numbers like 0.3,0.2,0.5") from None


def cmd_synth(args: argparse.Namespace) -> int:
    from napari_paser.dataset import write_dataset
    from napari_paser.synth import CLASS_NAMES_DEFAULT, synth_volume

    images, labels = synth_volume(args.n, args.size, fractions=args.fractions, seed=args.seed)
    names = CLASS_NAMES_DEFAULT if len(args.fractions) == 3 else None
    write_dataset(args.out, np.round(images * 65535).astype(np.uint16), labels, class_names=names)
    print(f"wrote {args.n} synthetic slices of {args.size[0]}x{args.size[1]} to {args.out}")
    return 0


def cmd_degrade(args: argparse.Namespace) -> int:
    from napari_paser.degrade import degrade_folder

    spec = degrade_folder(args.data, args.out, args.preset, args.seed, overrides=_degrade_overrides(args))
    print(f"wrote a degraded copy of {args.data} to {args.out} ({spec})")
    return 0


def _degrade_overrides(args: argparse.Namespace) -> str:
    keys = {"factor": args.factor, "blur": args.blur, "noise": args.noise, "kind": args.noise_kind,
            "angles": args.angles, "sp": args.sp}
    return ",".join(f"{k}={v}" for k, v in keys.items() if v is not None)


def cmd_info(args: argparse.Namespace) -> int:
    from napari_paser.dataset import read_dataset

    ds = read_dataset(args.data)
    fractions = np.bincount(ds.labels.ravel(), minlength=ds.n_classes) / ds.labels.size
    print(f"{args.data}: {ds.images.shape[0]} slices of {ds.images.shape[1]}x{ds.images.shape[2]}, {ds.images.dtype}")
    for name, f in zip(ds.class_names, fractions):
        print(f"  {name:<12} {f:6.1%}")
    for name, idx in ds.split.items():
        print(f"  split {name:<9} {len(idx):3d} slices")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from napari_paser.train_run import format_metrics, train_run

    names = tuple(args.classes.split(",")) if args.classes else None
    metrics = train_run(args.data, args.out, preset=args.preset, epochs=args.epochs, seed=args.seed,
                        train_splits=tuple(args.splits.split(",")), class_names=names, progress=not args.quiet)
    print(format_metrics(metrics))
    print(f"checkpoints and metrics.json in {args.out}")
    return 0


def model_costs(size: tuple[int, int], n_classes: int = 3) -> dict:
    """{preset: {"params": N, "gflops": G}} for one whole image of `size`."""
    from learners.flops import gflops_per_image
    from learners.unet import PRESETS, build_unet, count_parameters

    out = {}
    for name in PRESETS:
        model = build_unet(name, n_classes=n_classes)
        out[name] = {"params": count_parameters(model), "gflops": round(gflops_per_image(model, *size), 4)}
    return out


def cmd_models(args: argparse.Namespace) -> int:
    costs = model_costs(args.size, args.n_classes)
    if args.json:
        print(json.dumps(costs, indent=2))
        return 0
    print(f"model presets for {args.n_classes} classes, one {args.size[0]}x{args.size[1]} image:")
    print(f"{'preset':<8}{'role':<6}{'params':>12}{'GFLOPs':>10}")
    for role, (name, c) in zip(("f0", "f1", "f2"), costs.items()):
        print(f"{name:<8}{role:<6}{c['params']:>12,}{c['gflops']:>10.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from napari_paser.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paser", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make, degrade and inspect dataset folders").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic three-phase dataset folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=32, help="number of slices (default 32)")
    p.add_argument("--size", type=_size, default=(128, 128), help="slice size HxW or S (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=_fractions, default=(0.3, 0.2, 0.5), help="phase fractions (default 0.3,0.2,0.5)")
    p.set_defaults(func=cmd_synth)

    p = data.add_parser("degrade", help="write a low-resolution copy of a dataset (labels unchanged)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="lowres", help="degradation preset or spec (default lowres)")
    p.add_argument("--factor", type=int, help="downsampling factor (overrides the preset)")
    p.add_argument("--blur", help="Gaussian blur sigma in low-res pixels, or MIN:MAX varying across the image")
    p.add_argument("--noise", help="noise level in [0,1] units, or MIN:MAX varying across the image")
    p.add_argument("--noise-kind", choices=("gaussian", "poisson"))
    p.add_argument("--angles", type=int, help="sparse-angle reconstruction with this many projections")
    p.add_argument("--sp", type=float, help="salt-and-pepper fraction (0.01 = the paper's 1%%)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_degrade)

    p = data.add_parser("info", help="describe a dataset folder")
    p.add_argument("--data", required=True, type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train the tiny, medium and large models (f0, f1, f2)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--preset", default="quick", choices=("quick", "paper"))
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", default="pretrain", help="training splits, comma-separated (default pretrain)")
    p.add_argument("--classes", help="class names, comma-separated (default: the dataset's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="parameters and GFLOPs per image of each model preset")
    p.add_argument("--size", type=_size, default=(224, 256), help="image size HxW (default 224x256)")
    p.add_argument("--n-classes", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", help="the headless pipeline on the embedded synthetic dataset")
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"paser: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paser: interrupted; files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
