"""Sample data contributed to napari (File > Open Sample > PaSeR). No napari import here.

Each function returns a list of napari LayerData tuples `(data, kwargs, layer_type)`.
"""

from __future__ import annotations

from napari_paser.data.labels_convention import classes_to_layer

#: Size of the synthetic sample: small enough to open in about a second.
SAMPLE_SLICES = 16
SAMPLE_SIZE = 128
SAMPLE_PRESET = "lowres"
SAMPLE_SEED = 0


def make_sample_synthetic_lowres(
    n_slices: int = SAMPLE_SLICES,
    size: int = SAMPLE_SIZE,
    preset: str = SAMPLE_PRESET,
    seed: int = SAMPLE_SEED,
) -> list[tuple]:
    """A synthetic three-phase electrode volume, degraded like a low-resolution scan.

    Returns two layers:
    - image "synthetic low-res (<preset>)": float32 (n_slices, size, size) in [0, 1], the
      ground truth rendered and degraded with the `preset` degradation (default "lowres":
      4x down-sampling, blur 0.7, noise 0.08);
    - labels "phases (ground truth)": the true phase of every voxel, in the napari Labels
      convention (class k shown as k + 1, see `labels_convention`): 1 pore, 2 binder, 3 active.
    """
    from napari_paser.data.degrade import degrade, get_degradation
    from napari_paser.data.synth import CLASS_NAMES_DEFAULT, synth_volume

    images, classes = synth_volume(n_slices, size, seed=seed)
    degraded = degrade(images, get_degradation(preset), seed=seed)
    class_names = list(CLASS_NAMES_DEFAULT)
    legend = ", ".join(f"{k + 1} {name}" for k, name in enumerate(class_names))
    image_kwargs = {
        "name": f"synthetic low-res ({preset})",
        "colormap": "gray",
        "contrast_limits": (0.0, 1.0),
        "metadata": {"source": "napari_paser.data.synth", "degradation": preset, "seed": seed},
    }
    labels_kwargs = {
        "name": "phases (ground truth)",
        "opacity": 0.4,
        "metadata": {
            "class_names": class_names,
            "convention": f"layer value = class index + 1; 0 = not labeled ({legend})",
            "seed": seed,
        },
    }
    return [
        (degraded, image_kwargs, "image"),
        (classes_to_layer(classes, n_classes=len(class_names)), labels_kwargs, "labels"),
    ]
