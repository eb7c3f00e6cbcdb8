"""`paser session ...`: jobs on a labeling session folder (train its router, export it as a run, relink
its image)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from napari_paser.cli_args import COUNT, LAMBDAS, SEED, float_range, int_range


def cmd_session_train_router(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from learners.generators import drain
    from napari_paser.session.core import Session
    from napari_paser.session.router import ROUTED_RETRAIN, format_router

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


def add_session_parsers(sub) -> None:
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
