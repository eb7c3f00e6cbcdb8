"""Running a job: `segment_steps`, the generator of `SegmentProgress` events that `segment_volume` (the
CLI, with a tqdm bar) and the napari dock drive, the blocks in this process or on dask.distributed, and
the `SegmentSummary` line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from learners.device import pick_device
from learners.generators import drain
from napari_paser.data.pyramid import has_pyramid, write_pyramids
from napari_paser.data.read_errors import DamagedVolumeError
from napari_paser.errors import PaserInputError
from napari_paser.jobs.segment.block import block_task, process_block
from napari_paser.jobs.segment.job import SKIP_HINT, UNREADABLE, Block, SegmentJob, plan_blocks
from napari_paser.jobs.segment.plan import f2_everywhere_flops, plan_job
from napari_paser.jobs.segment.store import arrays_of, damaged_blocks, marker_path, sum_flops, write_provenance


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
    todo = [b for b in blocks if not marker_path(job.out, b).is_file()]
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
    names = arrays_of(job.what)
    if on_disk == len(blocks) and (done > done_before or not all(has_pyramid(Path(job.out) / n) for n in names)):
        write_pyramids(job.out, names)  # multiscale OME-Zarr: the result opens fast in napari (once per result)
    summary = SegmentSummary(job.out, what, len(blocks), done_before, time.perf_counter() - started,
                             sum(flops.values()) / 1e9, f2_all / 1e9, flops, cancelled, on_disk, n_damaged)
    if cancelled:
        yield SegmentProgress("cancelled", on_disk, len(blocks), summary.line(), job.out)
    return summary



def _finish(job: SegmentJob, blocks: list[Block], failed: dict | None = None) -> tuple[int, dict, int, int]:
    """Write the provenance as the output stands: (finished blocks, FLOPs by model, f2-everywhere FLOPs,
    blocks left unlabeled as damaged), each marker read once."""
    (flops, halo_damaged, done), f2_all = sum_flops(job, blocks), f2_everywhere_flops(job, len(blocks))
    damaged = damaged_blocks(job.out)
    write_provenance(job, blocks, flops, f2_all, done, damaged, failed, halo_damaged)
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
                f = client.submit(block_task, job, b, device=device, threads=per_worker, skip_damaged=skip_damaged,
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
