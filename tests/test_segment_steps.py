"""`segment_steps`: the job as a generator of progress events, cancellable and resumable (what the dock drives)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from segment_helpers import make_run, volume  # noqa: E402

from napari_paser.jobs import segment as seg  # noqa: E402

TILE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    tifffile.imwrite(root / "v.tif", volume((2, 64, 64)), photometric="minisblack")
    return root, make_run(root / "run")


def drive(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _arrays(out):
    g = zarr.open_group(str(out), mode="r")
    return {k: g[k]["0"][:] for k in g.group_keys() if not k.startswith(".")}


def test_events_say_where_the_output_is_and_count_blocks(setup, tmp_path):
    root, run = setup
    events, summary = drive(seg.segment_steps(run, root / "v.tif", tmp_path / "o.zarr", "maps", tile=TILE, workers=0))
    assert events[0].stage == "plan" and events[0].done == 0 and events[0].out == str((tmp_path / "o.zarr").resolve())
    steps = [e for e in events if e.stage == "segment"]
    assert [e.done for e in steps] == list(range(1, 9)) and {e.total for e in events} == {8}
    assert {(e.block.z, e.block.y0, e.block.x0) for e in steps} == {(z, y, x) for z in (0, 1) for y in (0, 32)
                                                                     for x in (0, 32)}
    assert not summary.cancelled and summary.blocks == 8 and summary.blocks_done == 8


@pytest.mark.parametrize("workers", [0, 1])
def test_cancel_keeps_finished_blocks_and_a_rerun_finishes_only_the_rest(setup, tmp_path, workers):
    root, run = setup
    kw = dict(tile=TILE, workers=workers, processes=False, threads=1)
    seen = []
    gen = seg.segment_steps(run, root / "v.tif", tmp_path / "o.zarr", "route", should_stop=lambda: len(seen) >= 3,
                            **kw)
    events, summary = [], None
    while True:
        try:
            e = next(gen)
        except StopIteration as stop:
            summary = stop.value
            break
        events.append(e)
        if e.stage == "segment":
            seen.append(e.block)
    assert summary.cancelled and events[-1].stage == "cancelled" and "run the same job again" in events[-1].message
    marked = sorted((tmp_path / "o.zarr" / seg.JOB_DIR / seg.DONE_DIR).glob("*.json"))
    in_flight = 2 * workers  # the cluster keeps two blocks per worker thread submitted, no more
    assert len(seen) <= len(marked) <= len(seen) + in_flight < 8
    assert not zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["paser"]["complete"]
    shown = np.asarray(seg.lazy_output(tmp_path / "o.zarr", "segmentation", offset=1))  # what the dock shows
    done = {p.stem for p in marked}
    for b in seg.plan_blocks(shown.shape, TILE):
        block = shown[b.z, b.y0:b.y1, b.x0:b.x1]
        assert (block >= 1).all() if b.name in done else not block.any(), b.name
    entropy = np.asarray(seg.lazy_output(tmp_path / "o.zarr", "entropy"))
    assert np.isfinite(entropy).all()  # unfinished blocks' NaN fill reads as 0
    events, rest = drive(seg.segment_steps(run, root / "v.tif", tmp_path / "o.zarr", "route", **kw))
    assert rest.done_before == len(marked) and len([e for e in events if e.stage == "segment"]) == 8 - len(marked)
    seg.segment_volume(run, root / "v.tif", tmp_path / "ref.zarr", "route", progress=False, **kw)
    a, b = _arrays(tmp_path / "o.zarr"), _arrays(tmp_path / "ref.zarr")
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
