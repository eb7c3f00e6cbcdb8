"""`paser segment`: a whole volume, blockwise, on dask.distributed, into a resumable OME-Zarr.

A volume of 1000-2000 slices of 2000^2 pixels does not fit in memory as float32, and PaSeR
only saves time at that size, so the job never holds the volume: it is cut into blocks of one
slice by `tile` x `tile` pixels, each block is read with a halo (f0's receptive field, so f0's
maps inside the block equal the whole-slice maps), normalised by the volume's robust
percentiles (estimated once on a sample of chunks, stored with the job), and segmented:

    maps   f0's MC-dropout mean prediction, entropy and BALD (routing map: f0 everywhere)
    route  PaSeR: f0's prediction and entropy feed the policy, which sends each patch of the
           tile (the policy's grid over the tile, e.g. 4 x 4 patches of 128 px for --tile 512)
           to f0..fm; only the chosen models run (`learners.routing.router`)
    f2     the largest model on every patch (the baseline PaSeR saves compute against)

Blocks run as tasks on dask.distributed: a LocalCluster of `workers` processes, an existing
cluster (`scheduler` address; dask-jobqueue starts one on SLURM/PBS/LSF), or in this process
(`workers=0`). Each worker process loads the models once (`_worker_models`, cached per run,
mode, device and thread) and sets its torch threads. Each block writes its chunks of the
output and then a marker file; a rerun of the same job skips marked blocks, so an interrupted
or killed job resumes where it stopped and ends with the output an uninterrupted run gives
(MC dropout is seeded by the block index). A worker that dies mid-block has its blocks
rescheduled by dask.

The job is one generator, `segment_steps`, yielding a `SegmentProgress` per finished block and
returning the `SegmentSummary`: `segment_volume` (the CLI) drives it with a tqdm bar, the napari
dock (`gui.segment_step`) in a thread worker with its job bar, and `should_stop` (or closing the
generator) cancels it with the same resumable state a Ctrl-C leaves. `lazy_output` is the output
as a viewer sees it while the job runs (unfinished blocks read as 0).

Output (OME-Zarr, NGFF 0.4, zarr format 2): OUT.zarr/segmentation/0 (uint8 class indices),
entropy/0 and bald/0 (float32 nats; not in f2 mode), routing/0 (uint8 model index per pixel),
each an NGFF image group; OUT.zarr's attributes hold the provenance under "paser" (run,
lambda, GFLOPs spent, f2-everywhere GFLOPs, normalisation, ...).

A damaged input (a truncated TIFF page, a zarr or HDF5 chunk that does not decode, an
unreadable slice file) stops the job with one `DamagedVolumeError` line naming the file, the
slice or chunk and the block; the blocks finished before it (and those already running on a
cluster, which finish first) keep their markers, so a rerun does not redo them, and the
provenance records the failure under "failed_block". With
`skip_damaged` a block whose input cannot be read is written as unlabeled instead
(`UNREADABLE` in segmentation and routing, NaN in entropy and BALD), listed under
"damaged_blocks", and tried again by the next run (the file may have been re-exported); a
block whose own pixels read but whose halo reaches a damaged neighbour is segmented with its
halo mirrored from itself (borders as at the volume's edge) and listed under
"halo_damaged_blocks".
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learners.atomic import atomic_write_text
from learners.device import pick_device
from learners.flops import image_flops
from learners.generators import drain
from learners.grid import Grid, Patching
from learners.routing.router import F0State, execute_routing, policy_probabilities
from learners.uncertainty import receptive_halo, uncertainty_maps  # noqa: F401 (receptive_halo: its home was here)
from napari_paser.data.dataset import normalise
from napari_paser.data.pyramid import write_pyramids
from napari_paser.data.read_errors import DamagedVolumeError
from napari_paser.data.volumes import cached_volume, ngff_attrs, open_volume
from napari_paser.errors import PaserInputError

MODES = ("maps", "route", "f2")
JOB_DIR = ".paser"
JOB_FILE = "job.json"
DONE_DIR = "done"
DAMAGED_DIR = "damaged"
FORMAT = "napari-paser/segment"
UNREADABLE = 255
"""Class index and model index of a block whose input could not be read (`skip_damaged`): no class."""
SKIP_HINT = ("re-export the volume and rerun the same command, or rerun with --skip-damaged to leave the damaged "
             "blocks unlabeled (listed in the output's provenance)")


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class SegmentJob:
    """What defines one segmentation job; a rerun with the same fields resumes it."""

    run: str  # resolved run folder
    image: str  # volume spec (see napari_paser.data.volumes)
    out: str  # resolved output .zarr folder
    what: str  # maps | route | f2
    lam: float | None  # the policy's lambda (route), as chosen from the bank
    tile: int
    halo: int
    samples: int
    seed: int
    shape: tuple[int, int, int]
    lo: float  # normalisation, estimated once and kept so a resumed job normalises the same
    hi: float
    grid: tuple[int, int]  # routing grid per tile
    n_classes: int
    patch_halo: int = 0  # context f1/f2 see around each routing patch (the policy's; reflected at tile borders)

    def identity(self) -> dict:
        """The fields a rerun must match to resume (normalisation is read from the job, not compared)."""
        d = asdict(self)
        for k in ("lo", "hi"):
            d.pop(k)
        d["shape"], d["grid"] = list(self.shape), list(self.grid)
        return d


@dataclass(frozen=True)
class Block:
    """One slice's tile: index (also the MC-dropout seed offset) and its box in the volume."""

    index: int
    z: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def name(self) -> str:
        return f"z{self.z}-y{self.y0}-x{self.x0}"


def plan_blocks(shape: tuple[int, int, int], tile: int) -> list[Block]:
    """Blocks of (1, tile, tile) covering the volume, z-major; edge tiles are clipped."""
    nz, ny, nx = shape
    g = Grid((ny, nx), (tile, tile))
    out = []
    for z in range(nz):
        for b in g.boxes():
            out.append(Block(len(out), z, b.y0, b.y0 + b.h, b.x0, b.x0 + b.w))
    return out


# ----------------------------------------------------------------------------- worker side


@dataclass
class WorkerModels:
    models: list  # f0..fm on the worker's device (maps: f0 only)
    policy: torch.nn.Module | None
    device: torch.device


@functools.lru_cache(maxsize=4)
def _worker_models(run: str, what: str, lam: float | None, device: str, threads: int, thread_id: int) -> WorkerModels:
    """Load the job's models once per worker process (and thread: modules toggle their modes
    during MC dropout, so threads must not share them); set torch's threads."""
    from learners.checkpoint import load_checkpoint
    from napari_paser.jobs.policy import load_run_models
    from napari_paser.jobs.predict import run_policy

    if threads > 0:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    run_path = Path(run)
    policy = None
    if what == "maps":
        models = [load_checkpoint(run_path / "f0.pt").model]
    else:
        n_classes = load_checkpoint(run_path / "f0.pt").config.n_classes
        models = load_run_models(run_path, n_classes)
        if what == "route":
            _, policy = run_policy(run_path, lam)
            models = models[: policy.config.n_models]
            policy = policy.to(dev).eval()
    return WorkerModels([m.to(dev).eval() for m in models], policy, dev)


def process_block(job: SegmentJob, block: Block, device: str = "auto", threads: int = 0,
                  skip_damaged: bool = False) -> dict:
    """Segment one block, write its chunks, then its marker; return {part: FLOPs}. Idempotent.

    A block whose input cannot be read raises `DamagedVolumeError` naming it; with `skip_damaged` it
    is written as unlabeled and recorded in the damaged folder instead (and returns no FLOPs)."""
    marker = _marker(job.out, block)
    if marker.is_file():
        return json.loads(marker.read_text())["flops"]
    wm = _worker_models(job.run, job.what, job.lam, device, threads, threading.get_ident())
    damaged = _damaged_marker(job.out, block)
    try:
        with torch.no_grad():
            arrays, flops, halo_damage = _segment_block(job, block, wm, skip_damaged)
    except DamagedVolumeError as exc:
        exc = exc.with_job(block.name, "", exc.hint)
        if not skip_damaged:
            raise exc from None
        _write_block(job, block, {name: np.full((block.y1 - block.y0, block.x1 - block.x0),
                                                np.nan if dtype == "float32" else UNREADABLE, dtype)
                                  for name, dtype in arrays_of(job.what).items()})
        damaged.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(damaged, json.dumps({"index": block.index, **exc.record()}))
        return {}
    _write_block(job, block, arrays)
    record = {"block": block.index, "flops": flops, **({"halo_damaged": halo_damage} if halo_damage else {})}
    atomic_write_text(marker, json.dumps(record))
    damaged.unlink(missing_ok=True)  # read this time: the file was re-exported
    return flops


def _block_task(job: SegmentJob, block: Block, device: str, threads: int, skip_damaged: bool,
                ) -> dict | DamagedVolumeError:
    """`process_block` as a dask task: a damaged input comes back as its error (raised by the client),
    so workers neither retry a read that cannot succeed nor log it as a failed task."""
    try:
        return process_block(job, block, device, threads, skip_damaged)
    except DamagedVolumeError as exc:
        return exc


def _write_block(job: SegmentJob, block: Block, arrays: dict[str, np.ndarray]) -> None:
    root = _open_out(job.out)
    box = (slice(block.z, block.z + 1), slice(block.y0, block.y1), slice(block.x0, block.x1))
    for name, arr in arrays.items():
        root[name]["0"][box] = arr[None]


def tile_grid(patching: Patching, tile: int) -> tuple[int, int]:
    """The routing grid of one tile: the policy's count, or as many of its fixed-size patches as fit
    (a session's policy routes 64 px patches: a 512 px tile is 8 x 8 of them, on the volume's own grid)."""
    if patching.size is None:
        return tuple(patching.count)
    ph, pw = patching.size
    if tile % ph or tile % pw:
        raise PaserInputError(f"--tile {tile}: the policy routes {ph}x{pw} px patches; use a multiple of {ph}")
    return tile // ph, tile // pw


def _segment_block(job: SegmentJob, block: Block, wm: WorkerModels, skip_damaged: bool = False,
                   ) -> tuple[dict, dict, str]:
    """(arrays, FLOPs, where the halo was damaged: "" when it was read)."""
    ny, nx = job.shape[1:]
    halo = job.halo if job.what != "f2" else 0
    hy0, hy1 = max(block.y0 - halo, 0), min(block.y1 + halo, ny)
    hx0, hx1 = max(block.x0 - halo, 0), min(block.x1 + halo, nx)
    raw, halo_damage = _read_with_halo(job, block, (hy0, hy1, hx0, hx1), skip_damaged)
    image = normalise(raw, job.lo, job.hi)
    inner = (slice(block.y0 - hy0, block.y1 - hy0), slice(block.x0 - hx0, block.x1 - hx0))
    h, w = block.y1 - block.y0, block.x1 - block.x0
    seed = job.seed + block.index
    out: dict[str, np.ndarray] = {}
    flops: dict[str, int] = {}
    f0 = wm.models[0]
    if job.what in ("maps", "route"):
        maps = uncertainty_maps(f0, image, samples=job.samples, seed=seed)
        flops["f0"] = job.samples * image_flops(f0, *image.shape)
        out["segmentation"] = maps.prediction[inner]
        out["entropy"] = maps.entropy[inner]
        if job.what == "maps":
            out["bald"] = maps.bald[inner]
            out["routing"] = np.zeros((h, w), np.uint8)
            return out, flops, halo_damage
    tile_img = _pad_to(image[inner], job.tile)
    if job.what == "route":
        pred = _pad_to(out["segmentation"], job.tile)
        ent = _pad_to(out["entropy"], job.tile)
        state = F0State(torch.from_numpy(pred)[None].to(wm.device), torch.from_numpy(ent)[None].to(wm.device),
                        job.n_classes, job.samples)
        actions = policy_probabilities(wm.policy, state).argmax(-1)
    else:
        actions = torch.full((1, job.grid[0] * job.grid[1]), len(wm.models) - 1, dtype=torch.long)
        state = None
    result = execute_routing(wm.models, tile_img[None], actions.cpu(), Patching(count=job.grid, halo=job.patch_halo),
                             state, job.samples, seed, policy=wm.policy)
    routed = {k: int(v) for k, v in result.flops.items() if k != "f0"}
    flops.update(routed)
    cells = Grid.divide(job.tile, job.tile, *job.grid).cell
    routing = np.repeat(np.repeat(result.routing[0], cells[0], 0), cells[1], 1)[:h, :w]
    out["segmentation"] = result.segmentation[0][:h, :w]
    out["routing"] = routing.astype(np.uint8)
    return out, flops, halo_damage


def _read_with_halo(job: SegmentJob, block: Block, box: tuple[int, int, int, int], skip_damaged: bool,
                    ) -> tuple[np.ndarray, str]:
    """(the block's slice with its halo, "" or the damaged place): with `skip_damaged`, a halo that reaches
    a damaged chunk of a neighbour is mirrored from the block itself, so the block is still segmented
    (its borders as at the volume's edge) rather than left unlabeled; a damaged block itself raises."""
    vol = cached_volume(job.image)
    hy0, hy1, hx0, hx1 = box
    z = slice(block.z, block.z + 1)
    try:
        return vol.read(z, slice(hy0, hy1), slice(hx0, hx1))[0], ""
    except DamagedVolumeError as exc:
        if not skip_damaged or box == (block.y0, block.y1, block.x0, block.x1):
            raise
        inner = vol.read(z, slice(block.y0, block.y1), slice(block.x0, block.x1))[0]
        pads = ((block.y0 - hy0, hy1 - block.y1), (block.x0 - hx0, hx1 - block.x1))
        return np.pad(inner, pads, mode="symmetric"), exc.place


def _pad_to(a: np.ndarray, tile: int) -> np.ndarray:
    """An edge tile mirrored out to tile x tile, so every tile routes at the same patch size."""
    py, px = tile - a.shape[0], tile - a.shape[1]
    return np.pad(a, ((0, py), (0, px)), mode="symmetric") if py or px else a


# ----------------------------------------------------------------------------- output store


def _marker(out: str, block: Block) -> Path:
    return Path(out) / JOB_DIR / DONE_DIR / f"{block.name}.json"


def _damaged_marker(out: str, block: Block) -> Path:
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


def _open_out(out: str):
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


def _create_output(job: SegmentJob) -> None:
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


def _previous_job(out: Path) -> dict | None:
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


def _resume_or_refuse(job: SegmentJob, previous: dict) -> SegmentJob:
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


# ----------------------------------------------------------------------------- planning the job


def plan_job(run: str | Path, image: str | Path, out: str | Path, what: str = "route", lam: float | None = None,
             tile: int = 512, samples: int = 5, seed: int = 0, skip_damaged: bool = False) -> tuple[SegmentJob, bool]:
    """(job, resumed): check the inputs, estimate the normalisation (without the chunks that cannot be
    read when `skip_damaged`), create or reopen the output."""
    from learners.checkpoint import load_checkpoint

    if what not in MODES:
        raise PaserInputError(f"--what {what!r}: choose one of {', '.join(MODES)}")
    run = Path(run).resolve()
    f0 = load_checkpoint(run / "f0.pt").model
    depth_step = 2 ** len(f0.downs)
    if tile < 16 or tile % depth_step:
        raise PaserInputError(f"--tile {tile}: use a multiple of {depth_step} (f0's downsampling), at least 16")
    if samples < 1:
        raise PaserInputError("--samples must be at least 1")
    volume = open_volume(image)
    lam_chosen, grid, patch_halo = None, (4, 4), 0
    if what == "route":
        from napari_paser.jobs.predict import run_policy

        lam_chosen, policy = run_policy(run, lam)
        grid, patch_halo = tile_grid(policy.config.patching, tile), policy.config.halo
    elif what == "f2":
        from napari_paser.jobs.train import GRID

        grid = tuple(GRID)
        if not (run / "f1.pt").is_file():
            raise PaserInputError(f"{run} has no f1.pt/f2.pt: --what f2 needs the larger models of `paser train`")
    if tile % grid[0] or tile % grid[1]:
        raise PaserInputError(f"--tile {tile} must be divisible by the routing grid {grid[0]}x{grid[1]}")
    out = Path(out).resolve()
    previous = _previous_job(out)
    job = SegmentJob(str(run), volume.spec, str(out), what, lam_chosen, int(tile), receptive_halo(f0), int(samples),
                     int(seed), volume.shape, 0.0, 1.0, grid, int(f0.config.n_classes), int(patch_halo))
    if previous is not None:
        return _resume_or_refuse(job, previous), True
    try:
        lo, hi = volume.intensity_range(skip_damaged=skip_damaged)
    except DamagedVolumeError as exc:
        raise exc.with_job(None, " while sampling its intensity range (nothing was segmented)", SKIP_HINT) from None
    job = SegmentJob(**{**asdict(job), "lo": lo, "hi": hi})
    _create_output(job)
    return job, False


def f2_everywhere_flops(job: SegmentJob, n_blocks: int) -> int:
    """FLOPs of the largest model on every patch of every (padded) tile: the cost PaSeR saves against."""
    from learners.checkpoint import load_checkpoint

    roles = sorted(p.stem for p in Path(job.run).glob("f[0-9].pt"))
    largest = load_checkpoint(Path(job.run) / f"{roles[-1]}.pt").model
    ch, cw = Grid.divide(job.tile, job.tile, *job.grid).cell
    return n_blocks * job.grid[0] * job.grid[1] * image_flops(largest, ch, cw)


# ----------------------------------------------------------------------------- running it


@dataclass
class SegmentSummary:
    out: str
    what: str
    blocks: int
    done_before: int
    seconds: float
    gflops: float
    f2_everywhere_gflops: float
    flops: dict = field(default_factory=dict)
    cancelled: bool = False
    blocks_done: int = 0
    damaged: int = 0  # blocks left unlabeled because their input could not be read (skip_damaged)

    def line(self) -> str:
        share = self.gflops / self.f2_everywhere_gflops if self.f2_everywhere_gflops else float("nan")
        resumed = f" ({self.done_before} already done)" if self.done_before else ""
        if self.cancelled:
            return (f"cancelled after {self.blocks_done} of {self.blocks} blocks ({self.what}); finished blocks are "
                    f"kept in {self.out}: run the same job again to finish the rest")
        cost = (f"{self.gflops:.1f} GFLOPs" if self.what == "maps"  # f0's MC maps: no routing to compare
                else f"{self.gflops:.1f} GFLOPs, {share:.0%} of the largest model everywhere")
        many = self.damaged > 1
        segmented, where = ((f"{self.blocks - self.damaged} of {self.blocks}",
                             f"{self.damaged} block{'s' if many else ''} could not be read and {'are' if many else 'is'} "
                             f"left unlabeled ({UNREADABLE}), listed under damaged_blocks in the provenance of {self.out}")
                            if self.damaged else (f"{self.blocks}", f"output in {self.out}"))
        return f"segmented {segmented} blocks{resumed} in {self.seconds:.1f} s ({self.what}): {cost}; {where}"


@dataclass
class SegmentProgress:
    """One event of a running job, for a progress bar (tqdm in the CLI, the dock's job bar in napari):
    `done` of `total` blocks; stage "plan" (output ready: its layers may be shown), "segment" (a block
    finished: `block`), "cancelled"."""

    stage: str
    done: int
    total: int
    message: str
    out: str
    block: Block | None = None


def segment_volume(run: str | Path, image: str | Path, out: str | Path, what: str = "route", lam: float | None = None,
                   tile: int = 512, workers: int = 1, scheduler: str | None = None, device: str = "auto",
                   samples: int = 5, seed: int = 0, threads: int | None = None, progress: bool = True,
                   processes: bool = True, max_blocks: int | None = None, skip_damaged: bool = False,
                   ) -> SegmentSummary:
    """Run (or resume) the job with a tqdm bar; see the module doc and `segment_steps`."""
    gen = segment_steps(run, image, out, what, lam, tile, workers, scheduler, device, samples, seed, threads,
                        processes, max_blocks, skip_damaged=skip_damaged)
    bars: list = []

    def show(event: SegmentProgress) -> None:
        if not bars:
            bars.append(tqdm(total=event.total, initial=event.done, desc=f"segment ({what})", unit="block",
                             disable=not progress, smoothing=0.1))
        bars[0].update(event.done - bars[0].n)

    try:
        return drain(gen, show)
    finally:
        gen.close()
        for bar in bars:
            bar.close()


def segment_steps(run: str | Path, image: str | Path, out: str | Path, what: str = "route", lam: float | None = None,
                  tile: int = 512, workers: int = 1, scheduler: str | None = None, device: str = "auto",
                  samples: int = 5, seed: int = 0, threads: int | None = None, processes: bool = True,
                  max_blocks: int | None = None, should_stop: Callable[[], bool] | None = None,
                  skip_damaged: bool = False) -> Generator[SegmentProgress, None, SegmentSummary]:
    """The job as a generator of `SegmentProgress` (what `paser segment` and the napari dock both drive).

    `max_blocks` stops after that many new blocks (to test resuming); `processes=False` runs a
    LocalCluster's workers as threads; `should_stop` (checked between blocks, and every 0.2 s while
    waiting for a cluster) cancels: running blocks are dropped, finished ones keep their markers, so
    running the same job again finishes only the missing blocks. Closing the generator does the same.
    A block whose input cannot be read stops the job with a `DamagedVolumeError` (finished blocks kept,
    the failure in the provenance) or, with `skip_damaged`, is left unlabeled (see the module doc).
    """
    started = time.perf_counter()
    if scheduler is None:
        pick_device(device)  # a device this machine lacks fails here, before any worker starts
    job, _ = plan_job(run, image, out, what, lam, tile, samples, seed, skip_damaged)
    blocks = plan_blocks(job.shape, job.tile)
    todo = [b for b in blocks if not _marker(job.out, b).is_file()]
    done_before = len(blocks) - len(todo)
    if max_blocks is not None:
        todo = todo[:max_blocks]
    done, cancelled = done_before, False
    yield SegmentProgress("plan", done, len(blocks), f"{done} of {len(blocks)} blocks done; starting", job.out)
    stop = should_stop or (lambda: False)
    try:
        for block in _run_blocks(job, todo, workers, scheduler, device, threads, processes, stop, skip_damaged):
            if block is None:
                cancelled = True
                break
            done += 1
            eta = _eta(time.perf_counter() - started, done - done_before, len(blocks) - done)
            yield SegmentProgress("segment", done, len(blocks), f"block {done} of {len(blocks)}{eta}", job.out, block)
    except DamagedVolumeError as exc:  # finished blocks keep their markers; say so, and record the failure
        kept, *_ = _finish(job, blocks, failed=exc.record())
        raise exc.with_job(exc.block, f"; {kept} of {len(blocks)} blocks are finished and kept in {job.out} (a rerun "
                                      "does not redo them)", SKIP_HINT) from None
    on_disk, flops, f2_all, n_damaged = _finish(job, blocks)  # a cluster may finish a block past a cancel
    if on_disk == len(blocks):  # multiscale OME-Zarr: the result opens fast in napari
        write_pyramids(job.out, arrays_of(job.what))
    summary = SegmentSummary(job.out, what, len(blocks), done_before, time.perf_counter() - started,
                             sum(flops.values()) / 1e9, f2_all / 1e9, flops, cancelled, on_disk, n_damaged)
    if cancelled:
        yield SegmentProgress("cancelled", on_disk, len(blocks), summary.line(), job.out)
    return summary


def _finish(job: SegmentJob, blocks: list[Block], failed: dict | None = None) -> tuple[int, dict, int, int]:
    """Write the provenance as the output stands: (finished blocks, FLOPs by model, f2-everywhere FLOPs,
    blocks left unlabeled as damaged), each marker read once."""
    (flops, halo_damaged, done), f2_all = _sum_flops(job, blocks), f2_everywhere_flops(job, len(blocks))
    damaged = damaged_blocks(job.out)
    _write_provenance(job, blocks, flops, f2_all, done, damaged, failed, halo_damaged)
    return done, flops, f2_all, len(damaged)


def _eta(elapsed: float, new: int, left: int) -> str:
    if new < 1 or left < 1:
        return ""
    s = elapsed / new * left
    return f", about {s:.0f} s left" if s < 120 else f", about {s / 60:.0f} min left"


def _run_blocks(job, todo, workers, scheduler, device, threads, processes, stop, skip_damaged=False,
                ) -> Iterator[Block | None]:
    """Each finished block; None (then nothing more) when `stop()` turned true."""
    if not todo:
        return
    if scheduler is None and workers == 0:
        t = threads or 0
        for b in todo:
            if stop():
                yield None
                return
            process_block(job, b, device, t, skip_damaged)
            yield b
        return
    yield from _run_distributed(job, todo, workers, scheduler, device, threads, processes, stop, skip_damaged)


def _run_distributed(job, todo, workers, scheduler, device, threads, processes, stop, skip_damaged=False,
                     ) -> Iterator[Block | None]:
    import logging

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is not None:
        try:  # never the process's default scheduler: napari's and the session's dask reads stay local
            client = Client(scheduler, timeout="5s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise PaserInputError(f"cannot reach the dask scheduler at {scheduler} ({type(exc).__name__}): start one "
                                  "(`dask scheduler`) or check the address, e.g. tcp://HOST:8786") from None
        per_worker = threads or 0  # 0: the worker keeps torch's default (its cores)
    else:
        if workers < 1:
            raise PaserInputError("--workers must be at least 1 (0 runs in this process)")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster, set_as_default=False)
        per_worker = threads or max(1, (os.cpu_count() or 1) // workers)
    futures: list = []  # in flight: at most two per worker thread, so a cancel stops within a block or two
    try:
        queue, block_of = list(todo), {}
        pending = as_completed([], loop=client.loop)

        def top_up() -> None:  # the window follows workers that join or leave a running cluster
            n = max(0, max(2, 2 * sum(client.nthreads().values())) - len(futures))
            for b in queue[:n]:
                f = client.submit(_block_task, job, b, device=device, threads=per_worker, skip_damaged=skip_damaged,
                                  retries=2, pure=False, key=f"paser-block-{b.name}-{os.getpid()}")
                block_of[f.key] = b
                futures.append(f)
                pending.add(f)
            del queue[:n]

        top_up()
        while not pending.is_empty():
            if stop():
                yield None
                return
            if not pending.has_ready():
                time.sleep(0.2)
                continue
            for fut in pending.next_batch(block=False):
                result = fut.result()
                futures.remove(fut)
                if isinstance(result, DamagedVolumeError):
                    client.gather(futures, errors="skip")  # the few blocks in flight (two per thread) finish
                    raise result
                top_up()
                yield block_of.pop(fut.key)
    finally:  # Ctrl-C, cancel or an error: stop the rest; finished blocks keep their markers
        client.cancel(futures)
        client.close()
        if cluster is not None:
            cluster.close()


def _sum_flops(job: SegmentJob, blocks: list[Block]) -> tuple[dict[str, int], list[dict], int]:
    """(FLOPs by model of the finished blocks, those whose halo was damaged: block and place, how many
    blocks are finished)."""
    total: dict[str, int] = {}
    halo_damaged = []
    done = 0
    for b in blocks:
        m = _marker(job.out, b)
        if m.is_file():
            done += 1
            record = json.loads(m.read_text())
            for k, v in record["flops"].items():
                total[k] = total.get(k, 0) + int(v)
            if record.get("halo_damaged"):
                halo_damaged.append({"block": b.name, "place": record["halo_damaged"]})
    return total, halo_damaged, done


def _write_provenance(job: SegmentJob, blocks, flops: dict, f2_all: int, done: int, damaged: list[dict],
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
