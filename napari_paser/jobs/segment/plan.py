"""Planning a job: check the run, the volume and the options, estimate the normalisation once, create
the output or reopen it to resume; and the cost of the largest model everywhere, what routing saves against."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from learners.flops import image_flops
from learners.grid import Grid
from learners.uncertainty import receptive_halo
from napari_paser.data.read_errors import DamagedVolumeError
from napari_paser.data.volumes import open_volume
from napari_paser.errors import PaserInputError
from napari_paser.jobs.segment.job import MODES, SKIP_HINT, SegmentJob, tile_grid
from napari_paser.jobs.segment.store import create_output, previous_job, resume_or_refuse


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
    previous = previous_job(out)
    job = SegmentJob(str(run), volume.spec, str(out), what, lam_chosen, int(tile), receptive_halo(f0), int(samples),
                     int(seed), volume.shape, 0.0, 1.0, grid, int(f0.config.n_classes), int(patch_halo))
    if previous is not None:
        return resume_or_refuse(job, previous), True
    try:
        lo, hi = volume.intensity_range(skip_damaged=skip_damaged)
    except DamagedVolumeError as exc:
        raise exc.with_job(None, " while sampling its intensity range (nothing was segmented)", SKIP_HINT) from None
    job = SegmentJob(**{**asdict(job), "lo": lo, "hi": hi})
    create_output(job)
    return job, False



def f2_everywhere_flops(job: SegmentJob, n_blocks: int) -> int:
    """FLOPs of the largest model on every patch of every (padded) tile: the cost PaSeR saves against."""
    from learners.checkpoint import load_checkpoint

    roles = sorted(p.stem for p in Path(job.run).glob("f[0-9].pt"))
    largest = load_checkpoint(Path(job.run) / f"{roles[-1]}.pt").model
    ch, cw = Grid.divide(job.tile, job.tile, *job.grid).cell
    return n_blocks * job.grid[0] * job.grid[1] * image_flops(largest, ch, cw)
