"""What one segmentation job is: its modes, its fields (a rerun with the same ones resumes it), its
blocks (one slice by `tile` x `tile` pixels each) and the routing grid of a tile."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from learners.grid import Grid, Patching
from napari_paser.errors import PaserInputError

MODES = ("maps", "route", "f2")
UNREADABLE = 255
"""Class index and model index of a block whose input could not be read (`skip_damaged`): no class."""
SKIP_HINT = ("re-export the volume and rerun the same command, or rerun with --skip-damaged to leave the damaged "
             "blocks unlabeled (listed in the output's provenance)")


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



def tile_grid(patching: Patching, tile: int) -> tuple[int, int]:
    """The routing grid of one tile: the policy's count, or as many of its fixed-size patches as fit
    (a session's policy routes 64 px patches: a 512 px tile is 8 x 8 of them, on the volume's own grid)."""
    if patching.size is None:
        return tuple(patching.count)
    ph, pw = patching.size
    if tile % ph or tile % pw:
        raise PaserInputError(f"--tile {tile}: the policy routes {ph}x{pw} px patches; use a multiple of {ph}")
    return tile // ph, tile // pw
