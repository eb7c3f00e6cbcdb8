"""What every benchmark script shares: where the real data lives, how to say it is missing, and a timer.

The data sets are not part of the repository (`../shared/data/` beside it holds them: the SOC
slices and stack, the battery nano-CT). `PASER_DATA` points elsewhere, e.g. at a copy on a
cluster's scratch disk. Scripts run as `python benchmarks/NAME.py`, so this folder is on
`sys.path` and `import common` needs no path manipulation. Helpers that several benchmarks share live
beside it the same way (`router_scoring`, `labeling_loop`, `gui_probe`): a benchmark never imports another.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def data_root() -> Path:
    """The folder that holds the shared data sets: `$PASER_DATA`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("PASER_DATA", REPO.parent / "shared" / "data"))


SOC = data_root() / "soc_pristine"          # 50 labeled SOC slices, every 5th of the stack
SOC_STACK = data_root() / "soc_stack"       # 250 consecutive labeled SOC slices (3D)
BATTERY = data_root() / "battery_nanoct"    # battery nano-CT, sets a/ and b/


_STACK_3D: dict = {}


def soc_stack_3d(crop: int):
    """(volume (Z, crop, crop) float32, labels uint8) of the SOC stack's central crop degraded in 3D (the
    benchmarks' "soc_stack-3d"): normalised to its 0.5-99.5 percentiles, Gaussian blur (sigma 1), 2x
    down-sampling of z, y and x with linear re-sampling back, Gaussian noise (sd 0.08 of the range, seed 0);
    labels at full resolution. Cached per crop."""
    if crop not in _STACK_3D:
        import numpy as np
        import tifffile
        from scipy import ndimage

        from napari_paser.data.dataset import normalise

        folder = require(SOC_STACK)
        raw = tifffile.imread(folder / "images.tif").astype(np.float32)
        lab = tifffile.imread(folder / "labels.tif").astype(np.uint8)
        h, w = raw.shape[1:]
        ys, xs = slice((h - crop) // 2, (h - crop) // 2 + crop), slice((w - crop) // 2, (w - crop) // 2 + crop)
        raw, lab = raw[:, ys, xs], lab[:, ys, xs]
        lo, hi = np.percentile(raw, [0.5, 99.5])
        vol = ndimage.gaussian_filter(normalise(raw, float(lo), float(hi)), 1.0)
        low = ndimage.zoom(vol, 0.5, order=1)
        vol = ndimage.zoom(low, np.array(vol.shape) / np.array(low.shape), order=1)[: len(lab), :crop, :crop]
        vol = vol + np.random.default_rng(0).normal(0, 0.08, vol.shape).astype(np.float32)
        _STACK_3D[crop] = (vol.astype(np.float32), lab)
    return _STACK_3D[crop]


def require(path: Path) -> Path:
    """`path`, or exit with one line saying where the data was looked for and how to point elsewhere."""
    if not Path(path).exists():
        sys.exit(f"data not found at {path}: put ../shared/data beside the repository or set PASER_DATA")
    return Path(path)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """(fn(), the seconds it took)."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def machine(load_average: object, **extra: object) -> dict:
    """What a results file says about the machine it ran on: platform, CPUs, Python, the load average
    (the CPU may be shared) and whatever else the benchmark fixes, such as its torch threads."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": load_average, **extra}


def write_results(path: Path, result: dict) -> None:
    """Write `result` as indented JSON at `path` (its folder made if missing) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
