"""`paser data`: make, degrade and inspect dataset folders."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_paser.cli_args import COUNT, FRACTIONS, SEED, UNIT, check_memory, float_range, image_size, int_range

SYNTH_BYTES_PER_VOXEL = 48  # peak of synth_volume + write: float64 fields, float32 image, uint16 copy, labels


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


def add_data_parsers(sub) -> None:
    """`paser data synth`, `paser data degrade` and `paser data info`."""
    data = sub.add_parser("data", help="make, degrade and inspect dataset folders").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic three-phase dataset folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=COUNT, default=32, help="number of slices (default 32)")
    p.add_argument("--size", type=image_size, default=(128, 128), help="slice size HxW or S (default 128)")
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
