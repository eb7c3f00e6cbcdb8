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
(`workers=0`). Each worker process loads the models once (`block._worker_models`, cached per run,
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

The package, by job: `job` (the job's fields, its blocks, a tile's routing grid), `plan` (checking
the inputs, the normalisation, creating or reopening the output), `block` (the worker side: one block
segmented and written), `store` (the output: zarr arrays, job file, markers, damaged records,
provenance, the lazy view) and `run` (`segment_steps`, `segment_volume`, dask, the summary).
"""

from __future__ import annotations

from learners.uncertainty import receptive_halo
from napari_paser.jobs.segment.block import WorkerModels, process_block
from napari_paser.jobs.segment.job import MODES, SKIP_HINT, UNREADABLE, Block, SegmentJob, plan_blocks, tile_grid
from napari_paser.jobs.segment.plan import f2_everywhere_flops, plan_job
from napari_paser.jobs.segment.run import SegmentProgress, SegmentSummary, segment_steps, segment_volume
from napari_paser.jobs.segment.store import (DAMAGED_DIR, DONE_DIR, FORMAT, JOB_DIR, JOB_FILE, arrays_of, damaged_blocks,
                                             lazy_output)

__all__ = ["DAMAGED_DIR", "DONE_DIR", "FORMAT", "JOB_DIR", "JOB_FILE", "MODES", "SKIP_HINT", "UNREADABLE", "Block",
           "SegmentJob", "SegmentProgress", "SegmentSummary", "WorkerModels", "arrays_of", "damaged_blocks",
           "f2_everywhere_flops", "lazy_output", "plan_blocks", "plan_job", "process_block", "receptive_halo",
           "segment_steps", "segment_volume", "tile_grid"]
