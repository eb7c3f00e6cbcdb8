"""Opening a plain zarr array in napari runs on the GUI thread: the reader imports nothing heavy for it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import zarr


def test_a_plain_zarr_opens_without_importing_dask_array(tmp_path):
    path = tmp_path / "scan.zarr"
    zarr.create_array(str(path), shape=(2, 16, 16), dtype=np.uint16, chunks=(1, 16, 16))[...] = 7
    code = ("import sys; from napari_paser.gui.io import read_path; "
            f"layers = read_path({str(path)!r}); "
            "assert len(layers) == 1 and layers[0][0].shape == (2, 16, 16), layers; "
            "assert 'dask.array' not in sys.modules, 'dask.array imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
