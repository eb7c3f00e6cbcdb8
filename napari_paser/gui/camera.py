"""The viewer's camera over a session's slice: which part of the slice is on screen (routing and maps start
there) and showing a region (a proposal) centred and zoomed to about three regions across."""

from __future__ import annotations

from napari_paser.gui.layers import LABELS


def camera(viewer):
    """The viewer's camera (napari 0.9 moved it to viewer.scene)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def view_box(viewer, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the slice on screen of an image of `shape`, in its pixels (from the camera's centre
    and zoom and the canvas size, through the labels layer's world-to-data transform); None when unknown."""
    layers = viewer.layers
    if LABELS not in layers or viewer.dims.ndisplay != 2:
        return None
    height, width = viewer.canvas.size
    cam = camera(viewer)
    if not (height and width and cam.zoom):
        return None
    cy, cx = cam.center[-2:]
    dy, dx = height / 2 / cam.zoom, width / 2 / cam.zoom
    layer = layers[LABELS]
    lead = list(viewer.dims.point[:-2])  # the slice shown in the world's other axes
    corners = [layer.world_to_data([*lead, y, x])[-2:] for y, x in ((cy - dy, cx - dx), (cy + dy, cx + dx))]
    (y0, x0), (y1, x1) = corners
    h, w = shape[-2:]
    box = (max(0, int(min(y0, y1))), max(0, int(min(x0, x1))), min(h, int(max(y0, y1)) + 1),
           min(w, int(max(x0, x1)) + 1))
    return box if box[0] < box[2] and box[1] < box[3] else None


def go_to(viewer, shape: tuple[int, ...], z: int, y0: int, x0: int, h: int, w: int) -> None:
    """Show slice z of an image of `shape` and centre the camera on the box, zoomed to about three boxes across."""
    if len(shape) == 3:
        viewer.dims.set_current_step(0, int(z))
    viewer.reset_view()
    cam = camera(viewer)
    cam.center = (y0 + h / 2 - 0.5, x0 + w / 2 - 0.5)
    cam.zoom = cam.zoom * max(1.0, min(shape[-2:]) / (3 * max(h, w)))
