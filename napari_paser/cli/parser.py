"""The `paser` argument parser: one subcommand per job, declared beside its command by concern
(`data`, `training`, `inference`, `session`, `bench`, `demo`), listed here in the order `paser --help` shows."""

from __future__ import annotations

import argparse

from napari_paser.cli.bench import add_bench_parsers
from napari_paser.cli.data import add_data_parsers
from napari_paser.cli.demo import add_demo_parser
from napari_paser.cli.inference import add_inference_parsers
from napari_paser.cli.session import add_session_parsers
from napari_paser.cli.training import add_models_parser, add_training_parsers

DESCRIPTION = "The `paser` command line tool."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paser", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_parsers(sub)
    add_training_parsers(sub)
    add_inference_parsers(sub)
    add_session_parsers(sub)
    add_models_parser(sub)
    add_bench_parsers(sub)
    add_demo_parser(sub)
    return parser
