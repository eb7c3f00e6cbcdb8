"""Checkpoints: one file per model with its weights and what is needed to rebuild and trust it.

Format: a `torch.save`d dict of plain types and tensors only
`{"format": FORMAT, "version": 1, "config": UNetConfig dict, "state_dict": ..., "meta": {...}}`
where meta holds the class names, the intensity normalisation, the training-data fingerprint
and free-form training facts. Files are written atomically and read with
`torch.load(weights_only=True)`, which refuses pickled code; every failure becomes a
`CheckpointError` naming the file and what to do.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from learners.atomic import atomic_path
from learners.errors import CheckpointError
from learners.unet import UNet, UNetConfig

FORMAT = "napari-paser/unet"
VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) plus its metadata."""

    model: UNet
    config: UNetConfig
    meta: dict = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(path: str | Path, model: UNet, meta: dict | None = None) -> Path:
    """Write `model` and `meta` (plain JSON-like values) to `path` atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model stored at `path`; raise `CheckpointError` with a clear message on any fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train models first with `paser train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; all mean the same to a user
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain values and was refused "
                "(loading it could run code); use a file written by napari-paser"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a torch file ({type(exc).__name__}: {exc}); "
            "retrain or restore a copy"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-paser model checkpoint (no '{FORMAT}' format tag)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload['version']}; upgrade napari-paser to read it")
    try:
        config = UNetConfig.from_dict(payload["config"])
        model = UNet(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its own architecture: {exc}") from None
    model.eval()
    return Checkpoint(model, config, dict(payload.get("meta", {})), path)
