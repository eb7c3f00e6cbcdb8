"""The worker side: one block segmented (maps, routed or f2) from its slice read with a halo, its chunks
written, then its marker; the models loaded once per worker process and thread."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from learners.atomic import atomic_write_text
from learners.device import pick_device
from learners.flops import image_flops
from learners.grid import Grid, Patching
from learners.routing.router import F0State, execute_routing, policy_probabilities
from learners.uncertainty import uncertainty_maps
from napari_paser.data.dataset import normalise
from napari_paser.data.read_errors import DamagedVolumeError
from napari_paser.data.volumes import cached_volume
from napari_paser.jobs.segment.job import UNREADABLE, Block, SegmentJob
from napari_paser.jobs.segment.store import arrays_of, damaged_path, marker_path, write_block


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
    marker = marker_path(job.out, block)
    if marker.is_file():
        return json.loads(marker.read_text())["flops"]
    wm = _worker_models(job.run, job.what, job.lam, device, threads, threading.get_ident())
    damaged = damaged_path(job.out, block)
    try:
        with torch.no_grad():
            arrays, flops, halo_damage = _segment_block(job, block, wm, skip_damaged)
    except DamagedVolumeError as exc:
        exc = exc.with_job(block.name, "", exc.hint)
        if not skip_damaged:
            raise exc from None
        write_block(job, block, {name: np.full((block.y1 - block.y0, block.x1 - block.x0),
                                                np.nan if dtype == "float32" else UNREADABLE, dtype)
                                  for name, dtype in arrays_of(job.what).items()})
        damaged.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(damaged, json.dumps({"index": block.index, **exc.record()}))
        return {}
    write_block(job, block, arrays)
    record = {"block": block.index, "flops": flops, **({"halo_damaged": halo_damage} if halo_damage else {})}
    atomic_write_text(marker, json.dumps(record))
    damaged.unlink(missing_ok=True)  # read this time: the file was re-exported
    return flops



def block_task(job: SegmentJob, block: Block, device: str, threads: int, skip_damaged: bool,
                ) -> dict | DamagedVolumeError:
    """`process_block` as a dask task: a damaged input comes back as its error (raised by the client),
    so workers neither retry a read that cannot succeed nor log it as a failed task."""
    try:
        return process_block(job, block, device, threads, skip_damaged)
    except DamagedVolumeError as exc:
        return exc



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
