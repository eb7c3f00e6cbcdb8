"""`paser predict`, `paser route` and `paser segment`: a run's models on images and whole volumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from learners.errors import InputError
from napari_paser.cli_args import COUNT, SEED, TILE, UNIT, int_range


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_paser.jobs.predict import predict_file

    out = predict_file(args.run, args.image, args.out, samples=args.samples, tile=args.tile, progress=not args.quiet)
    print(f"wrote prediction.tif, entropy.tif and bald.tif to {out}")
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


def add_inference_parsers(sub) -> None:
    """`paser predict`, `paser route` and `paser segment`."""
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
