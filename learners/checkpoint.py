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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from learners.atomic import atomic_path
from learners.errors import CheckpointError, newer_version
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


def save_payload(path: str | Path, fmt: str, module: nn.Module, config: dict, meta: dict | None = None,
                 version: int = VERSION, **extra) -> Path:
    """Write `module`'s weights with its config (plain values) and `meta` atomically, tagged `fmt`.

    The one writer of every checkpoint kind (UNet, policy, query network): plain values and
    tensors only, so `load_payload` can read it with weights_only=True.
    """
    payload = {
        "format": fmt,
        "version": version,
        "config": config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "meta": dict(meta or {}),
        **extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_payload(path: str | Path, fmt: str, what: str, hint: str, version: int = VERSION) -> dict:
    """Read a checkpoint written by `save_payload` with format tag `fmt`; every fault is a `CheckpointError`.

    `what` names the kind of file in messages ("model checkpoint"), `hint` says how to get a
    good one ("train models first with `paser train`").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; all mean the same to a user
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise CheckpointError(
                f"{what} {path} holds objects other than tensors and plain values and was refused "
                "(loading it could run code); use a file written by napari-paser"
            ) from None
        raise CheckpointError(
            f"{what} {path} is corrupt, truncated or not a torch file ({type(exc).__name__}: {exc}); {hint}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not a napari-paser {what} (no '{fmt}' format tag)")
    if payload.get("version", 0) > version:
        raise newer_version(what, path, payload["version"], version)
    return payload


def restore(module: nn.Module, payload: dict, path: str | Path, what: str) -> nn.Module:
    """Load the payload's weights into `module` (eval mode); a mismatch is a `CheckpointError`."""
    try:
        module.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{what} {path} does not match its own architecture: {exc}") from None
    return module.eval()


def save_checkpoint(path: str | Path, model: UNet, meta: dict | None = None) -> Path:
    """Write `model` and `meta` (plain JSON-like values) to `path` atomically."""
    return save_payload(path, FORMAT, model, model.config.to_dict(), meta)


def load_module(path: str | Path, fmt: str, what: str, hint: str, config_from_dict: Callable[[dict], object],
                build: Callable[[object], nn.Module], version: int = VERSION) -> tuple[nn.Module, object, dict]:
    """(module in eval mode, its config, meta) from a `save_payload` file; faults are `CheckpointError`s."""
    payload = load_payload(path, fmt, what, hint, version)
    try:
        config = config_from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{what} {path} does not match its own architecture: {exc}") from None
    return restore(build(config), payload, path, what), config, dict(payload.get("meta", {}))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model stored at `path`; raise `CheckpointError` with a clear message on any fault."""
    model, config, meta = load_module(path, FORMAT, "checkpoint", "train models first with `paser train`, or retrain",
                                      UNetConfig.from_dict, UNet)
    return Checkpoint(model, config, meta, Path(path))
