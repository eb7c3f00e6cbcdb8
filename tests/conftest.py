"""Suite-wide test settings and the shared real data sets."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests use tiny models: one torch thread runs them fastest, and several threads are far
    slower when the CPU is shared (measured 7x on the 2-core CI machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shared_data() -> Path:
    """The folder of the real data sets, as the benchmarks find it (`benchmarks/common.py`): `$PASER_DATA`,
    else `../shared/data` beside the repository."""
    return Path(os.environ.get("PASER_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def soc_data() -> Path:
    """The SOC slices folder (images.tif, labels.tif); the test is skipped where it is absent."""
    folder = shared_data() / "soc_pristine"
    if not (folder / "images.tif").exists():
        pytest.skip(f"SOC data not present at {folder} (set PASER_DATA)")
    return folder
