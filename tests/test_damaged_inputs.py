"""Damaged volumes: a lazy read that fails names the file and the slice or chunk, in the library, the CLI
(one line, exit 2) and on a two-process dask cluster; finished blocks are kept, the failure is in the
output's provenance, and `--skip-damaged` leaves unreadable blocks unlabeled. Tiny volumes and models."""

from __future__ import annotations

import pickle
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from segment_helpers import make_run, volume  # noqa: E402

from napari_paser.cli import main  # noqa: E402
from napari_paser.data.read_errors import DamagedVolumeError  # noqa: E402
from napari_paser.data.volumes import open_volume  # noqa: E402
from napari_paser.errors import PaserInputError  # noqa: E402
from napari_paser.jobs import segment as seg  # noqa: E402

SHAPE = (6, 64, 64)
BAD_Z = 3  # the slice each damaged input cannot give
TILE = 32


# ----------------------------------------------------------------------------- damaged inputs, built by hand


def truncated_tiff(root: Path, v: np.ndarray) -> tuple[str, str]:
    """A multi-page TIFF cut off inside page BAD_Z (the pages after it are gone too)."""
    tifffile.imwrite(root / "good.tif", v, photometric="minisblack")
    with tifffile.TiffFile(root / "good.tif") as tf:
        start = tf.pages[0].dataoffsets[0]
    page = v[0].nbytes
    (root / "trunc.tif").write_bytes((root / "good.tif").read_bytes()[: start + BAD_Z * page + 100])
    return str(root / "trunc.tif"), f"page [{BAD_Z}-{len(v) - 1}]"  # every page from BAD_Z on is cut


def garbage_zarr_chunk(root: Path, v: np.ndarray) -> tuple[str, str]:
    z = zarr.open_array(str(root / "g.zarr"), mode="w", shape=v.shape, chunks=(1, 32, 32), dtype=v.dtype,
                        zarr_format=2)
    z[:] = v
    (root / "g.zarr" / f"{BAD_Z}.1.0").write_bytes(b"not a zstd chunk" * 4)
    return str(root / "g.zarr"), rf"chunk \({BAD_Z}, 1, 0\)"


def corrupt_hdf5_chunk(root: Path, v: np.ndarray) -> tuple[str, str]:
    with h5py.File(root / "v.h5", "w") as f:
        f.create_dataset("data", data=v, chunks=(1, 32, 32), compression="gzip")
    with h5py.File(root / "v.h5", "r") as f:
        info = f["data"].id.get_chunk_info_by_coord((BAD_Z, 32, 0))
    data = bytearray((root / "v.h5").read_bytes())
    data[info.byte_offset:info.byte_offset + info.size] = b"\xff" * info.size
    (root / "v.h5").write_bytes(bytes(data))
    return f"{root / 'v.h5'}:/data", rf"chunk \({BAD_Z}, 1, 0\)"


def unreadable_folder_slice(root: Path, v: np.ndarray) -> tuple[str, str]:
    (root / "slices").mkdir()
    for k in range(len(v)):
        tifffile.imwrite(root / "slices" / f"s{k:03d}.tif", v[k])
    bad = root / "slices" / f"s{BAD_Z:03d}.tif"
    bad.write_bytes(bad.read_bytes()[:200])
    return str(root / "slices"), f"slice {BAD_Z} of its folder"


DAMAGE = {"truncated TIFF pages": truncated_tiff, "garbage zarr chunk": garbage_zarr_chunk,
          "corrupt HDF5 chunk": corrupt_hdf5_chunk, "unreadable slice in a TIFF folder": unreadable_folder_slice}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("damaged-run") / "run")


@pytest.fixture(params=list(DAMAGE))
def damaged(request, tmp_path):
    """(spec, a regex of the place its message must name) of one kind of damaged input."""
    return DAMAGE[request.param](tmp_path, volume(SHAPE))


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ----------------------------------------------------------------------------- library


def test_each_damaged_input_fails_naming_the_file_and_the_place(damaged):
    spec, place = damaged
    vol = open_volume(spec)  # opening reads headers only: the damage shows where the data is read
    assert vol.shape == SHAPE
    with pytest.raises(DamagedVolumeError) as info:
        vol.intensity_range()
    msg = str(info.value)
    assert Path(spec.split(":/")[0]).name in msg and "cannot be read" in msg and "re-export" in msg
    assert "\n" not in msg
    with pytest.raises(DamagedVolumeError, match=place) as info:
        vol.read(slice(BAD_Z, BAD_Z + 1), slice(32, 64), slice(0, 32))
    assert info.value.z == (BAD_Z, BAD_Z + 1)
    np.testing.assert_array_equal(vol.read(slice(0, 1), slice(0, 64), slice(0, 64)), volume(SHAPE)[:1])


def test_the_error_pickles_as_it_is(tmp_path):
    exc = DamagedVolumeError("/data/scan.zarr", "chunk (3, 1, 0) (slice 3)", (3, 4), "it does not decode", "z3-y0-x0")
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is DamagedVolumeError and str(again) == str(exc) and again.z == (3, 4)
    assert isinstance(again, PaserInputError)


def test_a_truncated_page_list_is_refused_when_the_number_of_slices_is_unknown(tmp_path):
    v = volume(SHAPE)
    tifffile.imwrite(tmp_path / "ij.tif", v, imagej=True)  # ImageJ: the page count comes from the page list
    data = (tmp_path / "ij.tif").read_bytes()
    (tmp_path / "ij-cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedVolumeError, match="number of slices is unknown"):
        open_volume(tmp_path / "ij-cut.tif")


def test_a_4d_stack_and_nan_values_are_named_in_the_users_terms(tmp_path, run, capsys):
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 3, 64, 64), np.uint16), photometric="rgb",
                     planarconfig="separate")  # what tifffile writes for such an array by default
    with pytest.raises(PaserInputError, match=r"is a 4D stack, shape \(2, 3, 64, 64\)") as info:
        open_volume(tmp_path / "4d.tif")
    assert "an RGB(A) TIFF" not in str(info.value)
    nan = volume(SHAPE).astype(np.float32)
    nan[2, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan, photometric="minisblack")
    for skip in ([], ["--skip-damaged"]):  # a NaN is the data's, never taken for a damaged chunk
        rc = main(["segment", "--run", str(run), "--image", str(tmp_path / "nan.tif"), "--out",
                   str(tmp_path / "o.zarr"), "--tile", str(TILE), "--workers", "0", "--quiet", *skip])
        line = _one_line(capsys.readouterr().err)
        assert rc == 2 and "nan.tif" in line and "NaN" in line and "robust_range" not in line


# ----------------------------------------------------------------------------- CLI


def test_cli_prints_one_line_naming_the_place_and_exits_2(damaged, run, tmp_path, capsys):
    spec, place = damaged
    rc = main(["segment", "--run", str(run), "--image", spec, "--out", str(tmp_path / "o.zarr"), "--what", "maps",
               "--tile", str(TILE), "--workers", "0", "--samples", "1", "--quiet"])
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert rc == 2 and line.startswith("paser: error: ") and re.search(place, line) and "--skip-damaged" in line
    assert not (tmp_path / "o.zarr").exists()  # the range sample failed: nothing was started


def test_cli_skip_damaged_leaves_the_damaged_slice_unlabeled_and_lists_it(damaged, run, tmp_path, capsys):
    spec, place = damaged
    rc = main(["segment", "--run", str(run), "--image", spec, "--out", str(tmp_path / "o.zarr"), "--what", "maps",
               "--tile", str(TILE), "--workers", "0", "--samples", "1", "--quiet", "--skip-damaged"])
    out = capsys.readouterr().out
    assert rc == 0 and "could not be read" in out
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    prov = dict(g.attrs)["paser"]
    listed = {d["block"] for d in prov["damaged_blocks"]}
    assert prov["complete"] is False and {f"z{BAD_Z}-y32-x0"} <= listed
    assert all(re.search(place, d["place"]) for d in prov["damaged_blocks"])
    seg_out = g["segmentation"]["0"][:]
    for name in listed:
        z = int(name.split("-")[0][1:])
        assert (seg_out[z] == seg.UNREADABLE).any()
    assert not (seg_out[0] == seg.UNREADABLE).any()  # a readable slice is segmented
    assert prov["blocks_done"] + len(listed) == prov["blocks"]


# ----------------------------------------------------------------------------- finished blocks are kept


def _damage_after_planning(tmp_path: Path, run: Path, bad_z: int = BAD_Z):
    """A job planned on a good zarr whose chunk of slice `bad_z` then goes bad (the file damaged mid-job)."""
    v = volume(SHAPE)
    z = zarr.open_array(str(tmp_path / "scan.zarr"), mode="w", shape=v.shape, chunks=(1, 32, 32), dtype=v.dtype,
                        zarr_format=2)
    z[:] = v
    seg.plan_job(run, tmp_path / "scan.zarr", tmp_path / "o.zarr", "maps", tile=TILE, samples=1)
    good = (tmp_path / "scan.zarr" / f"{bad_z}.1.0").read_bytes()
    (tmp_path / "scan.zarr" / f"{bad_z}.1.0").write_bytes(b"garbage" * 9)
    return tmp_path / "scan.zarr", tmp_path / "o.zarr", good


def _markers(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (out / seg.JOB_DIR / seg.DONE_DIR).glob("*.json")}


def test_a_block_that_fails_keeps_the_finished_ones_and_a_rerun_does_not_redo_them(run, tmp_path):
    scan, out, good = _damage_after_planning(tmp_path, run)
    kw = dict(what="maps", tile=TILE, samples=1, workers=0, progress=False)
    with pytest.raises(DamagedVolumeError) as info:
        seg.segment_volume(run, scan, out, **kw)
    msg = str(info.value)
    per_slice = 4
    assert f"{BAD_Z * per_slice} of {SHAPE[0] * per_slice} blocks are finished" in msg
    assert f"chunk ({BAD_Z}, 1, 0)" in msg and f"block z{BAD_Z}-" in msg and "--skip-damaged" in msg
    kept = _markers(out)
    assert len(kept) == BAD_Z * per_slice
    prov = dict(zarr.open_group(str(out), mode="r").attrs)["paser"]
    assert prov["failed_block"]["block"].startswith(f"z{BAD_Z}-") and prov["blocks_done"] == len(kept)
    assert prov["failed_block"]["z"] == [BAD_Z, BAD_Z + 1]

    summary = seg.segment_volume(run, scan, out, skip_damaged=True, **kw)
    assert summary.done_before == len(kept) and summary.damaged == 1  # the block holding the bad chunk
    assert all(_markers(out)[k] == t for k, t in kept.items())  # not recomputed
    prov = dict(zarr.open_group(str(out), mode="r").attrs)["paser"]
    assert prov["failed_block"] is None and not prov["complete"]
    assert [d["block"] for d in prov["damaged_blocks"]] == [f"z{BAD_Z}-y32-x0"]
    # its neighbours read their own pixels: segmented, their halo into the bad chunk mirrored from themselves
    assert sorted(d["block"] for d in prov["halo_damaged_blocks"]) == [f"z{BAD_Z}-y0-x0", f"z{BAD_Z}-y0-x32",
                                                                       f"z{BAD_Z}-y32-x32"]
    labels = zarr.open_group(str(out), mode="r")["segmentation"]["0"][BAD_Z]
    assert (labels[32:, :32] == seg.UNREADABLE).all() and not (labels[:32] == seg.UNREADABLE).any()

    (scan / f"{BAD_Z}.1.0").write_bytes(good)  # re-exported: the next run fills in the damaged blocks
    summary = seg.segment_volume(run, scan, out, **kw)
    prov = dict(zarr.open_group(str(out), mode="r").attrs)["paser"]
    assert summary.damaged == 0 and prov["complete"] and prov["damaged_blocks"] == []
    assert not (zarr.open_group(str(out), mode="r")["segmentation"]["0"][:] == seg.UNREADABLE).any()


def test_a_worker_on_a_two_process_cluster_reports_the_place_and_keeps_finished_blocks(run, tmp_path):
    from distributed import Client, LocalCluster

    bad = 1
    scan, out, _ = _damage_after_planning(tmp_path, run, bad)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        # a plain read on a worker process: the error crosses the process boundary as itself
        fut = client.submit(lambda spec: open_volume(spec).read(slice(bad, bad + 1), slice(0, 64), slice(0, 64)),
                            str(scan), pure=False)
        with pytest.raises(DamagedVolumeError, match=rf"scan.zarr: chunk \({bad}, 1, 0\) \(slice {bad}, y 32-63"):
            fut.result(timeout=60)
        with pytest.raises(DamagedVolumeError) as info:
            seg.segment_volume(run, scan, out, "maps", tile=TILE, samples=1, scheduler=cluster.scheduler_address,
                               threads=1, progress=False)
    msg = str(info.value)
    assert "scan.zarr" in msg and f"chunk ({bad}, 1, 0)" in msg and "are finished and kept" in msg
    assert "\n" not in msg
    finished = _markers(out)
    assert not any(k.startswith(f"z{bad}-") for k in finished)
    prov = dict(zarr.open_group(str(out), mode="r").attrs)["paser"]
    assert prov["blocks_done"] == len(finished) and prov["failed_block"]["file"].endswith("scan.zarr")
    assert f"{len(finished)} of {SHAPE[0] * 4} blocks are finished" in msg
    for name in finished:  # what was finished is written
        z, y, x = (int(part[1:]) for part in name[:-5].split("-"))
        assert not np.isnan(zarr.open_group(str(out), mode="r")["entropy"]["0"][z, y:y + TILE, x:x + TILE]).any()


# ----------------------------------------------------------------------------- a session reading in place


def test_a_session_read_in_place_names_the_damaged_chunk(tmp_path):
    from napari_paser.session import Session

    v = volume((2, 64, 64))
    z = zarr.open_array(str(tmp_path / "scan.zarr"), mode="w", shape=v.shape, chunks=(1, 32, 32), dtype=v.dtype,
                        zarr_format=2)
    z[:] = v
    s = Session.create(tmp_path / "session", str(tmp_path / "scan.zarr"), region_size=32)
    s.close()
    (tmp_path / "scan.zarr" / "1.0.1").write_bytes(b"garbage" * 9)
    s = Session.open(tmp_path / "session")  # opening reads no data
    try:
        np.testing.assert_array_equal(s.image[0], v[0])
        with pytest.raises(DamagedVolumeError, match=r"scan.zarr: chunk \(1, 0, 1\) \(slice 1, y 0-31, x 32-63\)"):
            s.image[1]
    finally:
        s.close()


def test_skip_damaged_sample_leaves_out_only_the_damaged_chunks(tmp_path):
    v = volume(SHAPE)
    spec, _ = garbage_zarr_chunk(tmp_path, v)
    lo, hi = open_volume(spec).intensity_range(skip_damaged=True)
    keep = np.ones(v.shape, bool)
    keep[BAD_Z, 32:64, 0:32] = False
    np.testing.assert_allclose((lo, hi), np.percentile(v[keep], [0.5, 99.5]))
    shutil.rmtree(spec)
