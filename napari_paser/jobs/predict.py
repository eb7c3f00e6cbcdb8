"""`paser predict`: segment a greyscale volume with a trained f0 and write its uncertainty;
`paser route`: segment it with PaSeR (the policy sends each patch to f0, f1 or f2).

The volume is normalised by its own robust percentiles (the data contract every model was
trained under), then each slice goes through MC dropout (T passes) one at a time, so memory
stays bounded by one slice whatever the volume's depth. Outputs are written atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import json

import numpy as np
import tifffile
from tqdm.auto import tqdm

from learners.atomic import atomic_path, atomic_write_text
from learners.checkpoint import load_checkpoint
from learners.routing.policy import load_policy
from learners.routing.bank import load_bank
from learners.grid import Patching
from learners.routing.router import RoutingCost, RoutingResult, execute_routing, make_grid, route
from learners.uncertainty import UncertaintyMaps, uncertainty_maps
from learners.unet import UNet
from napari_paser.data.dataset import normalise, read_image, robust_range
from napari_paser.errors import PaserInputError


WHOLE = Patching(count=(1, 1))
"""A model alone runs on whole slices: one patch per slice."""


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
    _write_tifs(out, {"prediction": maps.prediction, "entropy": maps.entropy, "bald": maps.bald})
    return out


def _write_tifs(out: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, arr in arrays.items():
        with atomic_path(out / f"{name}.tif") as tmp:
            tifffile.imwrite(tmp, arr, compression="zlib", photometric="minisblack")  # never RGB, whatever N


def run_policy(run: Path, lam: float | None):
    """(lambda or None, policy) of a run: the bank's nearest to `lam`, else policy.pt."""
    default = None
    if (run / "policy.pt").is_file():
        ckpt = load_policy(run / "policy.pt")
        default = ckpt.meta.get("lambda"), ckpt.policy
    chosen = load_bank(run).pick(lam, default)
    if chosen is not None:
        return chosen
    raise PaserInputError(f"{run} holds no routing policy (policy.pt or policies/): train one with "
                          f"`paser policy --data DIR --run {run}`")


def model_alone(models, volume: np.ndarray, k: int, samples: int, progress: bool) -> RoutingResult:
    """Model k alone on whole slices (one patch per slice): f0 as the mean of `samples` MC passes (one
    deterministic pass with 0), f1.. one eval pass; FLOPs counted on the real passes."""
    parts = [execute_routing(models, volume[z][None], np.full((1, 1), k), WHOLE, samples=samples, seed=z)
             for z in tqdm(range(len(volume)), desc=f"f{k}", unit="slice", disable=not progress)]
    return RoutingResult.concat(parts)


def route_file(run: str | Path, image: str | Path, out: str | Path, lam: float | None = None, samples: int = 5,
               progress: bool = True, model: str | None = None) -> dict:
    """PaSeR-segment `image` (TIFF) with the run's models and policy; write routed.tif (class indices),
    routing.tif ((N, rows, cols) model index per patch) and routing.json (cost, shares); return the JSON.
    `model` ("f0", "f1", ...) segments with that model alone instead (no policy needed)."""
    from napari_paser.jobs.policy import load_run_models

    run, out = Path(run), Path(out)
    if model is not None:
        chosen, policy = None, None
        n_classes = load_checkpoint(run / "f0.pt").model.config.n_classes if (run / "f0.pt").is_file() else 0
        models = load_run_models(run, n_classes)
        if int(model[1:]) >= len(models):
            raise PaserInputError(f"{run} holds no {model}.pt: choose one of {', '.join(f'f{k}' for k in range(len(models)))}")
    else:
        chosen, policy = run_policy(run, lam)
        models = load_run_models(run, policy.config.n_classes)[: policy.config.n_models]
    raw = read_image(image)
    volume = normalise(raw, *robust_range(raw))
    h, w = volume.shape[-2:]
    if policy is None:
        result = model_alone(models, volume, int(model[1:]), samples, progress)
        patching = WHOLE
    else:
        parts = [route(models, policy, volume[z], samples=samples, seed=z)
                 for z in tqdm(range(len(volume)), desc="route", unit="slice", disable=not progress)]
        result = RoutingResult.concat(parts)
        patching = policy.config.patching
    cost = RoutingCost.of(models, h, w, patching, samples, policy)
    largest = len(make_grid((h, w), patching)) * cost.patch[-1] / 1e9
    summary = {"image": str(image), "run": str(run), "lambda": chosen, "model": model, "slices": len(volume),
               "gflops_per_slice": result.gflops_per_image, f"gflops_per_slice_{result.names[-1]}_everywhere": largest,
               "patch_share": result.patch_share(), "samples": samples}
    _write_tifs(out, {"routed": result.segmentation, "routing": result.routing.astype(np.uint8)})
    atomic_write_text(out / "routing.json", json.dumps(summary, indent=2))
    return summary
