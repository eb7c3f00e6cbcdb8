"""A session's labeled set written as an export (`napari_paser.data.export` holds the format): the accepted
regions' crops and manifest rows, optionally the whole label canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_paser.data.export import FORMATS, LabeledSet, layer_to_export, write_labeled_set
from napari_paser.errors import PaserInputError
from napari_paser.session.forest import KEY as FOREST_KEY
from napari_paser.session.labeling import Labeling
from napari_paser.session.store import Store


class _VolumeClasses:
    """The session's label canvas as (Z, H, W) export values, read slice by slice."""

    def __init__(self, store: Store) -> None:
        self.store, self.shape = store, store.pool.shape

    def __getitem__(self, z: int) -> np.ndarray:
        return layer_to_export(self.store.labels[self.store.index(int(z))], self.store.n_classes)


EDIT_CHOICES = ("refuse", "accept", "keep")


def export_session(labeling: Labeling, out: str | Path, full_volume: bool = False, fmt: str = "tiff",
                   edits: str = "refuse") -> Path:
    """Export a session's accepted regions (and with full_volume its whole label canvas).

    The crops are the accepted labels (what training uses); the volume is the canvas. When
    accepted regions were painted over since they were accepted the two disagree, so by
    default (`edits="refuse"`) the export is refused naming those regions; "accept" saves the
    edits first (`Session.accept_edits`), "keep" exports as it is and lists the edited regions
    in the manifest's meta (`edited_since_accept`).
    """
    if fmt not in FORMATS:
        raise PaserInputError(f"unknown volume format {fmt!r}: choose 'tiff' or 'zarr'")
    if edits not in EDIT_CHOICES:
        raise PaserInputError(f"unknown edits choice {edits!r}: choose one of {', '.join(EDIT_CHOICES)}")
    store = labeling.store
    if not store.state.accepted and not full_volume:
        raise PaserInputError("no accepted regions to export yet: accept at least one region (or export the full volume)")
    edited = labeling.edited_regions()
    if edited and edits == "refuse":
        shown = ", ".join(str(r) for r in edited[:8]) + (" ..." if len(edited) > 8 else "")
        raise PaserInputError(
            f"accepted region(s) {shown} were painted over since they were accepted, so their saved labels (used by "
            "training and the export's crops) differ from the canvas: accept the edits (Accept edits, "
            "Session.accept_edits) or undo them, then export"
        )
    if edited and edits == "accept":
        labeling.accept_edits(edited)
        edited = []
    rows, labels, images = [], {}, {}
    for rec in list(store.state.accepted):
        region = store.region(rec.region_id)
        rows.append({"region_id": rec.region_id, "slice": rec.z, "y0": rec.y0, "x0": rec.x0, "height": rec.h,
                     "width": rec.w, "sampler": rec.sampler, "rank": rec.rank, "accepted_at": rec.accepted_at,
                     "split": rec.split, "changed_px": rec.changed_px, "strokes": rec.strokes,
                     "seconds": rec.seconds, "fractions": dict(rec.fractions)})
        labels[rec.region_id] = layer_to_export(store.accepted_labels(rec.region_id), store.n_classes)
        images[rec.region_id] = store.raw_crop(region)
    meta = {"session": str(Path(store.folder).resolve()), "region_size": list(store.pool.size),
            "normalisation": {"lo": store.state.image["lo"], "hi": store.state.image["hi"]},
            "edited_since_accept": edited, "effort": labeling.effort_summary(),
            # which guess the corrections favoured (session.forest): mode and the scores behind it
            "forest_assist": {k: v for k, v in store.state.settings.get(FOREST_KEY, {}).items()
                              if k in ("enabled", "mode", "regions", "miou")}}
    data = LabeledSet(store.classes.names, rows, labels, images,
                      _VolumeClasses(store) if full_volume else None, store.shape, meta)
    return write_labeled_set(out, data, fmt)
