"""The npe2 manifest is valid, ships inside the package, and its sample data opens in napari."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "napari.yaml"
PLUGIN = "napari-paser"
SAMPLE_KEY = "synthetic_lowres"


def test_manifest_file_validates():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == PLUGIN
    assert manifest.display_name == "PaSeR"
    assert [s.key for s in manifest.contributions.sample_data] == [SAMPLE_KEY]


def test_package_manifest_is_a_symlink_to_the_root_one():
    link = ROOT / "napari_paser" / "napari.yaml"
    assert link.is_symlink()
    assert os.readlink(link) == "../napari.yaml"
    assert link.resolve() == MANIFEST.resolve()


def test_manifest_found_through_installed_entry_point():
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    assert manifest.name == PLUGIN
    assert manifest == npe2.PluginManifest.from_file(MANIFEST)


def test_npe2_validate_cli_with_imports():
    exe = Path(sys.executable).parent / "npe2"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "npe2"]
    result = subprocess.run(
        [*cmd, "validate", PLUGIN, "--imports"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def _check_sample_layers(layers):
    assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
    (image, image_kw, _), (labels, labels_kw, _) = layers
    assert image.dtype == np.float32 and image.ndim == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert labels.shape == image.shape
    assert np.issubdtype(labels.dtype, np.integer)
    # napari Labels convention: every voxel has a phase, so 1..3 only, never 0 ('not labeled').
    assert set(np.unique(labels).tolist()) <= {1, 2, 3}
    assert labels_kw["name"] == "phases (ground truth)"
    assert labels_kw["metadata"]["class_names"] == ["pore", "binder", "active"]
    return image, labels


def test_sample_function_returns_image_and_labels():
    from napari_paser.gui.sample_data import make_sample_synthetic_lowres

    image, labels = _check_sample_layers(make_sample_synthetic_lowres())
    assert image.shape == (16, 128, 128)


def test_sample_command_in_manifest_runs():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    (sample,) = manifest.contributions.sample_data
    (command,) = [c for c in manifest.contributions.commands if c.id == sample.command]
    module, func = command.python_name.split(":")
    layers = getattr(__import__(module, fromlist=[func]), func)(n_slices=2, size=32)
    image, _ = _check_sample_layers(layers)
    assert image.shape == (2, 32, 32)


def test_open_sample_in_viewer(make_napari_viewer):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    assert len(viewer.layers) == 2
    image, labels = viewer.layers
    assert isinstance(image, Image) and isinstance(labels, Labels)
    assert image.data.shape == labels.data.shape == (16, 128, 128)
    assert labels.name == "phases (ground truth)"
