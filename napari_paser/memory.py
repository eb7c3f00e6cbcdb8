"""Handing freed C heap back to the system between the stages of long work (no Qt, no napari)."""

from __future__ import annotations

import functools


def release_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc `malloc_trim`) after a job or a stage of one: each
    worker thread allocates from its own arena, and what a finished stage freed there otherwise stays in the
    process's resident memory, so the peaks of successive stages add up. A no-op where glibc is not the C
    library."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
