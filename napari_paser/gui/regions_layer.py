"""The proposals/regions Shapes layer, kept in sync with the session in place: pending proposals numbered
by rank, accepted regions unnumbered in their own colour (`io.REGION_COLORS`).

Deleting and re-adding the layer on every Accept cost 1.2-1.5 s of frozen viewer (vispy nodes
torn down and rebuilt, then garbage collection). An Accept only changes one region's status, so
the layer keeps one rectangle per region id: regions that left are removed, new ones added, and
the features (rank, status) and edge colours are rewritten (tens of milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_paser.gui.io import REGION_COLORS, SESSION_KEY, rectangle


@dataclass(frozen=True)
class RegionItem:
    region_id: int
    z: int
    y0: int
    x0: int
    h: int
    w: int
    rank: int
    status: str  # "proposed" | "accepted"


def region_items(session) -> list[RegionItem]:
    """Pending proposals (by rank), then accepted regions (rank 0 for those accepted outside proposals)."""
    items = [RegionItem(p.region_id, p.z, p.y0, p.x0, p.h, p.w, p.rank, "proposed") for p in session.pending_proposals]
    items += [RegionItem(a.region_id, a.z, a.y0, a.x0, a.h, a.w, a.rank or 0, "accepted") for a in session.accepted]
    return items


def _number(item: RegionItem) -> str:
    """The text on a rectangle: the rank of a pending proposal; none on accepted regions, whose ranks come from
    earlier rounds and would repeat the current round's numbers."""
    return str(item.rank) if item.status == "proposed" else ""


def new_layer(session, name: str):
    """An empty regions layer for `session` (built once per session; `sync` fills it)."""
    from napari.layers import Shapes

    return Shapes(
        None, ndim=len(session.shape), name=name, shape_type="rectangle", face_color="transparent", edge_width=2,
        features={"region_id": np.zeros(0, int), "rank": np.zeros(0, int), "status": np.zeros(0, str),
                  "number": np.zeros(0, str)},
        text={"string": "{number}", "color": "white", "size": 10, "anchor": "upper_left"},
        metadata={SESSION_KEY: str(Path(session.folder).resolve())},
    )


def sync(layer, items: list[RegionItem], three_d: bool) -> None:
    """Make `layer` show `items`: remove rectangles of regions no longer listed, add new ones, rewrite
    rank/status/colour of all. Rectangles of regions that stay are not touched."""
    import pandas as pd

    wanted = {it.region_id: it for it in items}
    present = [int(r) for r in layer.features["region_id"]] if len(layer.data) else []
    gone = [i for i, rid in enumerate(present) if rid not in wanted]
    if gone:
        layer.selected_data = set(gone)
        layer.remove_selected()
    kept = [rid for rid in present if rid in wanted]
    kept_set = set(kept)
    new = [it for it in items if it.region_id not in kept_set]
    if new:
        layer.add([rectangle(it.z, it.y0, it.x0, it.h, it.w, three_d) for it in new], shape_type="rectangle", edge_width=2,
                  edge_color=[REGION_COLORS[it.status] for it in new], face_color="transparent")
    order = [wanted[rid] for rid in kept] + new
    if not order and not gone and not new:
        return
    layer.features = pd.DataFrame({"region_id": [it.region_id for it in order], "rank": [it.rank for it in order],
                                   "status": [it.status for it in order], "number": [_number(it) for it in order]})
    if order:
        layer.edge_color = [REGION_COLORS[it.status] for it in order]
    layer.selected_data = set()
