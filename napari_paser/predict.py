"""`paser predict`: segment a greyscale volume with a trained f0 and write its uncertainty.

The volume is normalised by its own robust percentiles (the data contract every model was
trained under), then each slice goes through MC dropout (T passes) one at a time, so memory
stays bounded by one slice whatever the volume's depth. Outputs are written atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from tqdm.auto import tqdm

from learners.atomic import atomic_path
from learners.checkpoint import load_checkpoint
from learners.uncertainty import UncertaintyMaps, uncertainty_maps
from learners.unet import UNet
from napari_paser.dataset import normalise, read_image, robust_range


@dataclass
class VolumeMaps:
    """Per-slice prediction (class indices), entropy and BALD of a volume."""

    prediction: np.ndarray  # (N, H, W) uint8
    entropy: np.ndarray  # (N, H, W) float32, nats
    bald: np.ndarray  # (N, H, W) float32, nats


def iter_slice_maps(model: UNet, volume: np.ndarray, samples: int = 5, tile: int | None = None) -> Iterator[UncertaintyMaps]:
    """MC-dropout maps slice by slice of a normalised (N, H, W) volume (for progress and cancel)."""
    for z in range(volume.shape[0]):
        yield uncertainty_maps(model, np.asarray(volume[z], np.float32), samples=samples, tile=tile, seed=z)


def volume_maps(model: UNet, raw: np.ndarray, samples: int = 5, tile: int | None = None, progress: bool = True,
                should_stop: Callable[[], bool] | None = None) -> VolumeMaps:
    """Prediction, entropy and BALD for every slice of a raw (N, H, W) volume."""
    volume = normalise(raw, *robust_range(raw))
    n, h, w = volume.shape
    out = VolumeMaps(np.zeros((n, h, w), np.uint8), np.zeros((n, h, w), np.float32), np.zeros((n, h, w), np.float32))
    maps = iter_slice_maps(model, volume, samples, tile)
    for z, m in enumerate(tqdm(maps, total=n, desc="segment", unit="slice", disable=not progress)):
        out.prediction[z], out.entropy[z], out.bald[z] = m.prediction, m.entropy, m.bald
        if should_stop is not None and should_stop():
            break
    return out


def predict_file(run: str | Path, image: str | Path, out: str | Path, samples: int = 5, tile: int | None = None,
                 progress: bool = True) -> Path:
    """Segment `image` (TIFF) with `run`/f0.pt; write prediction.tif, entropy.tif, bald.tif into `out`."""
    ckpt = load_checkpoint(Path(run) / "f0.pt")
    maps = volume_maps(ckpt.model, read_image(image), samples, tile, progress)
    out = Path(out)
    for name, arr in (("prediction", maps.prediction), ("entropy", maps.entropy), ("bald", maps.bald)):
        with atomic_path(out / f"{name}.tif") as tmp:
            tifffile.imwrite(tmp, arr, compression="zlib")
    return out
