"""`paser demo`: the headless pipeline end to end, or its napari walkthrough (`--gui`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_demo(args: argparse.Namespace) -> int:
    if args.gui:
        from napari_paser.gui.demo import main as demo_gui

        return demo_gui(Path(args.out), keep_open=not args.close)
    from napari_paser.jobs.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)
    return 0


def add_demo_parser(sub) -> None:
    """`paser demo`."""
    p = sub.add_parser("demo", help="the headless pipeline on the embedded synthetic dataset")
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--gui", action="store_true",
                   help="open napari with the PaSeR dock and walk through the workflow, saving screenshots in OUT/gui")
    p.add_argument("--close", action="store_true", help="with --gui: close napari after the walkthrough")
