"""Degradation: shapes and range, each effect measurable, spatial variation, spec round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_paser.data.degrade import PRESETS, Degradation, degrade, get_degradation, salt_and_pepper
from napari_paser.errors import PaserInputError
from napari_paser.data.synth import synth_image, synth_labels


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synth_image(synth_labels((96, 96), seed=0), seed=0)


def _block_std(x: np.ndarray, block: int = 16) -> np.ndarray:
    h, w = (s - s % block for s in x.shape)
    return x[:h, :w].reshape(h // block, block, w // block, block).std(axis=(1, 3))


def test_clean_preset_is_identity(image):
    assert PRESETS["clean"].is_identity
    assert np.array_equal(degrade(image, PRESETS["clean"]), image)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(96, 96), (3, 50, 37)])
def test_every_preset_keeps_shape_and_range(image, name, shape):
    x = image[: shape[-2], : shape[-1]]
    x = np.stack([x] * shape[0]) if len(shape) == 3 else x
    out = degrade(x, PRESETS[name], seed=1)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_deterministic_per_seed_and_slices_independent(image):
    spec = PRESETS["lowres-varying"]
    stack = np.stack([image, image])
    a = degrade(stack, spec, seed=7)
    assert np.array_equal(a, degrade(stack, spec, seed=7))
    assert not np.array_equal(a, degrade(stack, spec, seed=8))
    assert not np.array_equal(a[0], a[1])  # each slice its own noise
    assert np.array_equal(degrade(image, spec, seed=7), a[0])  # 2D == slice 0 of a stack


def test_downsampling_removes_high_frequencies(image):
    out = degrade(image, Degradation(factor=4))
    lap_in = ndimage.laplace(image.astype(np.float64)).var()
    lap_out = ndimage.laplace(out.astype(np.float64)).var()
    assert lap_out < 0.2 * lap_in
    assert abs(out.mean() - image.mean()) < 0.01  # area averaging keeps the mean
    assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.8


def test_non_divisible_shape_has_no_dark_border():
    flat = np.full((30, 37), 0.6, np.float32)
    out = degrade(flat, Degradation(factor=4))
    assert np.allclose(out, 0.6, atol=1e-6)


def test_gaussian_noise_std_matches_request():
    flat = np.full((128, 128), 0.5, np.float32)
    out = degrade(flat, Degradation(noise=0.05))
    assert abs(out.std() - 0.05) < 0.004
    assert abs(out.mean() - 0.5) < 0.003


def test_poisson_noise_relative_to_intensity():
    spec = Degradation(noise=0.05, noise_kind="poisson")
    bright = degrade(np.full((128, 128), 0.9, np.float32), spec)
    dark = degrade(np.full((128, 128), 0.2, np.float32), spec)
    assert abs(bright.std() - 0.05 * np.sqrt(0.9)) < 0.005
    assert abs(dark.std() - 0.05 * np.sqrt(0.2)) < 0.004  # darker pixels: fewer photons, less noise


def test_spatially_varying_noise_varies_across_the_image():
    flat = np.full((128, 128), 0.5, np.float32)
    uniform = _block_std(degrade(flat, Degradation(noise=0.15)))
    varying = _block_std(degrade(flat, Degradation(noise=0.02, noise_max=0.3)))
    assert varying.std() > 4 * uniform.std()
    assert varying.min() < 0.1 and varying.max() > 0.2
    assert varying.max() < 0.3 + 0.05


def test_varying_blur_leaves_some_areas_sharper():
    """On white noise (same texture everywhere) blur loss per block is flat unless blur varies."""
    x = (np.random.default_rng(0).random((96, 96)) > 0.5).astype(np.float32)

    def block_loss(spec: Degradation) -> np.ndarray:
        return np.abs(degrade(x, spec, seed=2) - x).reshape(6, 16, 6, 16).mean(axis=(1, 3))

    varying = block_loss(Degradation(blur=0.0, blur_max=3.0, field_scale=0.3))
    uniform = block_loss(Degradation(blur=1.5))
    assert varying.max() > 3 * varying.min()
    assert varying.std() > 5 * uniform.std()


def test_salt_and_pepper_fraction():
    flat = np.full((100, 100), 0.5, np.float32)
    out = degrade(flat, PRESETS["sp1"])
    changed = out != 0.5
    assert changed.sum() == 100
    assert set(np.unique(out[changed])) <= {0.0, 1.0}
    assert 20 < (out == 1.0).sum() < 80
    direct = salt_and_pepper(flat, 0.1, np.random.default_rng(0))
    assert (direct != 0.5).sum() == 1000 and np.all(flat == 0.5)  # input untouched


def test_sparse_angle_correlates_but_differs(image):
    out = degrade(image, Degradation(angles=20))
    r = np.corrcoef(out.ravel(), image.ravel())[0, 1]
    assert 0.8 < r < 0.995
    assert np.abs(out - image).mean() > 0.01
    many = degrade(image, Degradation(angles=180))
    assert np.abs(many - image).mean() < np.abs(out - image).mean()


def test_shading_is_a_smooth_background_of_the_given_strength():
    flat = np.full((128, 128), 0.5, np.float32)
    out = degrade(flat, Degradation(shade=0.1, field_scale=0.25), seed=3)
    assert 0.05 < out.std() < 0.15  # about the std asked for (one field realisation)
    steps = np.abs(np.diff(out, axis=1))
    assert steps.max() < 0.1 * out.std() * 4 and steps.mean() < 0.02 * out.std() * 4  # smooth
    far = np.abs(out[:, :16].mean() - out[:, -16:].mean()) + np.abs(out[:16].mean() - out[-16:].mean())
    assert far > 0.02  # it varies across the field of view (not a global offset)
    assert np.array_equal(degrade(flat, Degradation(shade=0.1), seed=3), out)
    assert np.array_equal(degrade(flat, Degradation()), flat)  # no shading unless asked


def test_spec_round_trip():
    text = "factor=4,blur=0.7,noise=0.02:0.3,sp=0.01,angles=90,shade=0.1,kind=poisson"
    d = Degradation.parse(text)
    assert d == Degradation(factor=4, blur=0.7, noise=0.02, noise_max=0.3, salt_pepper=0.01,
                            angles=90, shade=0.1, noise_kind="poisson")
    assert str(d) == text
    assert Degradation.parse(str(d)) == d
    for spec in [*PRESETS.values(), Degradation(blur=0.1, blur_max=2.5, field_scale=0.4)]:
        assert Degradation.parse(str(spec)) == spec
    assert Degradation.parse(" factor = 2 , noise=0.1 ") == Degradation(factor=2, noise=0.1)


def test_get_degradation_presets_and_specs():
    assert get_degradation("lowres") == Degradation(factor=4, blur=0.7, noise=0.08)
    assert get_degradation("lowres-varying").noise_max == 0.3
    assert get_degradation("factor=2,sp=0.05") == Degradation(factor=2, salt_pepper=0.05)
    with pytest.raises(PaserInputError, match="lowres-severe"):
        get_degradation("very-bad")


@pytest.mark.parametrize(
    ("text", "word"),
    [("factor=4,colour=3", "factor, blur, noise"), ("factor=2.5", "integer"), ("noise=abc", "number"),
     ("noise=0.3:0.1", "noise_max"), ("blur=-1", "blur"), ("kind=uniform", "poisson"),
     ("factor", "key=value"), ("sp=2", "salt_pepper"), ("angles=1", "angles"),
     ("shade=-0.1", "shade")],
)
def test_bad_specs_raise(text, word):
    with pytest.raises(PaserInputError, match=word):
        Degradation.parse(text)


def test_bad_image_raises():
    with pytest.raises(PaserInputError, match="shape"):
        degrade(np.zeros((2, 2, 2, 2), np.float32), PRESETS["clean"])
    with pytest.raises(PaserInputError, match="NaN"):
        degrade(np.full((4, 4), np.nan, np.float32), PRESETS["clean"])
