"""The job's output store: the OME-Zarr it writes (one NGFF image per array), the job file and the
per-block markers a rerun resumes from, the damaged-block records, the provenance, and the output as a
viewer sees it while the job runs (`lazy_output`)."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from learners.atomic import atomic_write_text
from napari_paser.data.volumes import ngff_attrs
from napari_paser.errors import PaserInputError
from napari_paser.jobs.segment.job import Block, SegmentJob

JOB_DIR = ".paser"
JOB_FILE = "job.json"
DONE_DIR = "done"
DAMAGED_DIR = "damaged"
FORMAT = "napari-paser/segment"


def marker_path(out: str, block: Block) -> Path:
    return Path(out) / JOB_DIR / DONE_DIR / f"{block.name}.json"



def damaged_path(out: str, block: Block) -> Path:
    return Path(out) / JOB_DIR / DAMAGED_DIR / f"{block.name}.json"



def damaged_blocks(out: str | Path) -> list[dict]:
    """The blocks of an output left unlabeled because their input could not be read (file, place, reason)."""
    folder = Path(out) / JOB_DIR / DAMAGED_DIR
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: r.get("index", 0))



def open_output(out: str):
    import zarr

    return zarr.open_group(out, mode="r+")



def arrays_of(what: str) -> dict[str, str]:
    """{array name: dtype} the job writes."""
    names = {"segmentation": "uint8", "routing": "uint8"}
    if what in ("maps", "route"):
        names["entropy"] = "float32"
    if what == "maps":
        names["bald"] = "float32"
    return names



def write_block(job: SegmentJob, block: Block, arrays: dict[str, np.ndarray]) -> None:
    root = open_output(job.out)
    box = (slice(block.z, block.z + 1), slice(block.y0, block.y1), slice(block.x0, block.x1))
    for name, arr in arrays.items():
        root[name]["0"][box] = arr[None]



def create_output(job: SegmentJob) -> None:
    import zarr

    root = zarr.open_group(job.out, mode="w", zarr_format=2)
    for name, dtype in arrays_of(job.what).items():
        group = root.create_group(name)
        group.attrs.update(ngff_attrs(name))
        fill = np.nan if dtype == "float32" else 0
        group.create_array("0", shape=job.shape, chunks=(1, job.tile, job.tile), dtype=dtype, fill_value=fill)
    root.attrs["paser"] = {"format": FORMAT, "complete": False, "images": list(arrays_of(job.what))}
    state = root.create_group(JOB_DIR)  # zarr groups, so zarr readers do not warn about foreign folders
    state.create_group(DONE_DIR)
    state.create_group(DAMAGED_DIR)
    atomic_write_text(Path(job.out) / JOB_DIR / JOB_FILE, json.dumps({**asdict(job), "format": FORMAT}, indent=2))



def previous_job(out: Path) -> dict | None:
    """The job.json of an earlier run in `out`, None if `out` does not exist; an error if `out` is
    something else (never overwrite what this job did not write)."""
    if not out.exists():
        return None
    path = out / JOB_DIR / JOB_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError
        return data
    except (OSError, ValueError):
        raise PaserInputError(f"{out} exists and is not a previous `paser segment` output: choose another --out "
                              "or delete it") from None



def resume_or_refuse(job: SegmentJob, previous: dict) -> SegmentJob:
    prev = SegmentJob(**{k: (tuple(v) if k in ("shape", "grid") else v)
                         for k, v in previous.items() if k in SegmentJob.__dataclass_fields__})
    mine, theirs = job.identity(), prev.identity()
    diff = [k for k in mine if mine[k] != theirs[k]]
    if diff:
        k = diff[0]
        raise PaserInputError(f"{job.out} holds a different segmentation job ({k} {theirs[k]!r} there, {mine[k]!r} "
                              "now): rerun the original command to finish it, or choose another --out")
    return prev  # keeps the stored normalisation



def lazy_output(out: str | Path, name: str, offset: int = 0):
    """A lazy (Z, Y, X) dask view of output array `name` in which the blocks not finished yet read as 0 and
    finished ones as their values + `offset` (1 for a napari Labels layer of class indices; NaN entropy
    reads as 0): what a viewer shows while the job runs. Each read checks the blocks' markers, so a
    re-read (napari's `layer.refresh()`, with the layer's dask cache off) shows the blocks done since."""
    import dask.array as da
    import zarr

    done_dir = Path(out) / JOB_DIR / DONE_DIR
    arr = da.from_zarr(zarr.open_array(str(Path(out) / name / "0"), mode="r"))

    def finished_only(block: np.ndarray, block_info=None) -> np.ndarray:
        (z, _), (y0, _), (x0, _) = block_info[0]["array-location"]
        if not (done_dir / f"z{z}-y{y0}-x{x0}.json").is_file():
            return np.zeros_like(block)
        if block.dtype.kind == "f":
            return np.nan_to_num(block, nan=0.0)
        return block + np.asarray(offset, block.dtype) if offset else block

    return arr.map_blocks(finished_only, dtype=arr.dtype)



def sum_flops(job: SegmentJob, blocks: list[Block]) -> tuple[dict[str, int], list[dict], int]:
    """(FLOPs by model of the finished blocks, those whose halo was damaged: block and place, how many
    blocks are finished)."""
    total: dict[str, int] = {}
    halo_damaged = []
    done = 0
    for b in blocks:
        m = marker_path(job.out, b)
        if m.is_file():
            done += 1
            record = json.loads(m.read_text())
            for k, v in record["flops"].items():
                total[k] = total.get(k, 0) + int(v)
            if record.get("halo_damaged"):
                halo_damaged.append({"block": b.name, "place": record["halo_damaged"]})
    return total, halo_damaged, done



def write_provenance(job: SegmentJob, blocks, flops: dict, f2_all: int, done: int, damaged: list[dict],
                      failed: dict | None = None, halo_damaged: list[dict] | None = None) -> None:
    import zarr

    root = zarr.open_group(job.out, mode="r+")
    root.attrs["paser"] = {
        "format": FORMAT, "complete": done == len(blocks), "blocks": len(blocks), "blocks_done": int(done),
        "damaged_blocks": damaged, "failed_block": failed,
        "halo_damaged_blocks": halo_damaged or [],
        "images": list(arrays_of(job.what)), "run": job.run, "image": job.image, "what": job.what,
        "lambda": job.lam, "tile": job.tile, "halo": job.halo, "samples": job.samples, "seed": job.seed,
        "grid": list(job.grid), "normalisation": {"lo": job.lo, "hi": job.hi},
        "gflops": sum(flops.values()) / 1e9, "gflops_by_model": {k: v / 1e9 for k, v in flops.items()},
        "f2_everywhere_gflops": f2_all / 1e9,
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
