"""Starting weights shipped with the package: a session's "new models" already know electrodes.

`f0-3class.pt` is the tiny f0 trained by `paser weights` (napari_paser.jobs.weights) on the
package's own synthetic microstructures (napari_paser.data.synth) under its degradation
presets (napari_paser.data.degrade); `f0-3class.json` records how (command, seed, steps,
presets, scores on held-out synthetic slices). The classes are ordered dark to bright in
the training data (pore < binder < active), as the plugin's default class list is.

For another number of classes `starting_model` keeps the trained body and gives the model a
fresh 1x1 head (seeded), so features learned from electrodes still help and the first
retrain teaches the head the new classes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from learners.checkpoint import load_checkpoint
from learners.unet import UNet, UNetConfig, preset_config

WEIGHTS_DIR = Path(__file__).resolve().parent
SHIPPED = {"f0": "tiny", "f1": "medium", "f2": "wide"}  # role -> size preset of the weights `paser weights --role` trains
N_CLASSES = 3


def weights_path(role: str = "f0", folder: str | Path = WEIGHTS_DIR) -> Path:
    return Path(folder) / f"{role}-{N_CLASSES}class.pt"


def provenance(role: str = "f0", folder: str | Path = WEIGHTS_DIR) -> dict:
    """The JSON record written beside the weights (empty when absent)."""
    path = weights_path(role, folder).with_suffix(".json")
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def has_starting_weights(role: str, config: UNetConfig, folder: str | Path = WEIGHTS_DIR) -> bool:
    """Whether shipped weights fit a model of `config` (any number of classes) in `role`."""
    size = SHIPPED.get(role)
    if size is None or not weights_path(role, folder).is_file():
        return False
    return replace(config, n_classes=N_CLASSES) == preset_config(size, n_classes=N_CLASSES)


def starting_model(role: str, config: UNetConfig, seed: int = 0, folder: str | Path = WEIGHTS_DIR) -> UNet:
    """A model of `config` from the shipped weights (loaded with weights_only=True); a fresh,
    seeded head when config.n_classes differs from the shipped class count."""
    ckpt = load_checkpoint(weights_path(role, folder))
    if config.n_classes == ckpt.config.n_classes:
        return ckpt.model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = UNet(config)
    body = {k: v for k, v in ckpt.model.state_dict().items() if not k.startswith("head.")}
    model.load_state_dict(body, strict=False)
    return model.eval()


def shipped_start(role: str, config: UNetConfig, seed: int = 0) -> UNet | None:
    """`starting_model` where shipped weights fit `role` and `config`; None where they do not (f2)."""
    return starting_model(role, config, seed) if has_starting_weights(role, config) else None
