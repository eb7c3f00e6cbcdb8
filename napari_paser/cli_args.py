"""Checks at the command line's boundary: argparse types that range-check numbers where they are
parsed, a memory estimate that refuses absurd sizes before anything is allocated, and the one
line every OS error on a path becomes.

An argparse type raising `ArgumentTypeError` makes argparse print the usage and
"argument --x: <message>" and exit with status 2, as every `paser` user error does.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from napari_paser.errors import PaserInputError


def _bounds(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    left = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
    right = "" if hi is None else f"<= {hi:g}"
    return " and ".join(s for s in (left, right) if s)


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer within [lo, hi] (either end open when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: need a whole number {_bounds(lo, hi)}")
        return value

    parse.__name__ = "int"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number within [lo, hi] ((lo, hi] with `lo_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) or (
                hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: need a number {_bounds(lo, hi, lo_open)}")
        return value

    parse.__name__ = "float"
    return parse


def list_of(item: Callable[[str], float], example: str) -> Callable[[str], tuple]:
    """An argparse type: comma-separated values, each checked by `item`."""

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated values like {example}")
        try:
            return tuple(item(p) for p in parts)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}; use values like {example}") from None

    parse.__name__ = "list"
    return parse


# the ranges `paser` options share
COUNT = int_range(1)  # epochs, steps, slices, samples, threads ...
SEED = int_range(0, 2**32 - 1)
RATE = float_range(0, lo_open=True)  # learning rates
UNIT = float_range(0, 1)  # lambdas, fractions of pixels
N_CLASSES = int_range(2, 255)
REGION = int_range(8)
TILE = int_range(16)
LAMBDAS = list_of(UNIT, "0,0.1,0.5")
BUDGETS = list_of(COUNT, "8,16,32")
FRACTIONS = list_of(float_range(0, lo_open=True), "0.3,0.2,0.5")


def image_size(text: str) -> tuple[int, int]:
    """An argparse type: an image size HxW (224x256, 224,256) or one number for a square, both at least 8."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: use HxW like 224x256, or one number for a square") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"size {text!r}: need HxW with both at least 8 pixels")
    return parts[0], parts[1]


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: float, what: str, fix: str, limit: int | None = None) -> None:
    """Refuse work whose estimated peak memory exceeds half of this machine's RAM, before allocating."""
    limit = limit if limit is not None else physical_memory()
    if limit is not None and nbytes > limit / 2:
        raise PaserInputError(f"{what} would need about {_human(nbytes)} of memory, more than half of this "
                              f"machine's {_human(limit)}: {fix}")


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} EiB"  # unreachable
