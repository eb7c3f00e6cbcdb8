"""Low-resolution tomography degradation of clean images; labels stay at full resolution.

This reproduces the setting the methods target (a low-res scan with high-res ground truth)
from clean data. Noise and blur can vary smoothly across the field of view, because routing
only pays where patch difficulty varies (DESIGN.md, "Degradation: where routing pays").

Pipeline per 2D slice, in this order (all in the low-res grid except the last two steps):
area-average downsample by `factor` -> Gaussian blur (sigma in low-res pixels, optionally
varying) -> sparse-angle filtered back-projection -> smooth background shading (flat-field
drift, beam-hardening cupping) -> noise (std per low-res pixel,
optionally varying) -> linear upsampling back to the input shape -> salt and pepper at full
resolution. Upsampling back keeps image and label stacks the same shape, so every model and
metric works on one grid; the image simply carries no more detail than the low-res scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.special import ndtr
from skimage.transform import downscale_local_mean, iradon, radon, resize

from napari_paser.errors import PaserInputError
from napari_paser.data.synth import smooth_field

NoiseKind = Literal["gaussian", "poisson"]
_BLUR_LEVELS = 6  # blurred copies interpolated per pixel when blur varies across the image


@dataclass(frozen=True)
class Degradation:
    """How to degrade a clean image; `str()` gives the CLI spec that `parse` reads back.

    factor: integer downsampling by area averaging (1 = none); the result is upsampled back.
    blur, blur_max: Gaussian sigma in low-res pixels; with blur_max it varies smoothly across
        the image between the two, following a smooth random field.
    noise, noise_max: noise std in units of the [0, 1] intensity range, in low-res pixels;
        with noise_max it varies smoothly between the two (e.g. 0.02..0.3).
    noise_kind: "gaussian", or "poisson" (photon counts 1/noise^2 at intensity 1, so the
        relative noise of a bright pixel is ~noise and darker pixels get less absolute noise).
    angles: sparse-angle reconstruction with this many projections over 180 degrees.
    salt_pepper: fraction of pixels set to 0 or 1 (the PaSeR paper's 1% robustness case).
    shade: std of a smooth additive background (flat-field drift, beam-hardening cupping) in
        [0, 1] intensity units; it shifts grey levels by up to about +-2 shade, so a pixel's
        phase can only be told from its neighbourhood where the shading is strong.
    field_scale: correlation length of the modulation fields, as a fraction of image size.
    """

    factor: int = 1
    blur: float = 0.0
    blur_max: float | None = None
    noise: float = 0.0
    noise_max: float | None = None
    noise_kind: NoiseKind = "gaussian"
    angles: int | None = None
    salt_pepper: float = 0.0
    shade: float = 0.0
    field_scale: float = 0.25

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise PaserInputError("Degradation " + " ".join(problems))

    @classmethod
    def parse(cls, text: str) -> Degradation:
        """Read a spec like "factor=4,blur=0.7,noise=0.02:0.3,sp=0.01,angles=90,shade=0.1,kind=poisson"."""
        kwargs: dict[str, object] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item or item.lower() in ("none", "clean"):
                continue
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or key not in _KEYS:
                raise PaserInputError(
                    f"Degradation spec {text!r}: cannot read {item!r}; write key=value pairs "
                    f"separated by commas, with keys {', '.join(_KEYS)}."
                )
            kwargs.update(_parse_value(key, value, text))
        return cls(**kwargs)

    def __str__(self) -> str:
        parts = []
        if self.factor != 1:
            parts.append(f"factor={self.factor}")
        ranges = (("blur", self.blur, self.blur_max), ("noise", self.noise, self.noise_max))
        for name, low, high in ranges:
            if low or high is not None:
                parts.append(f"{name}={_fmt(low)}" + (f":{_fmt(high)}" if high is not None else ""))
        if self.salt_pepper:
            parts.append(f"sp={_fmt(self.salt_pepper)}")
        if self.angles is not None:
            parts.append(f"angles={self.angles}")
        if self.shade:
            parts.append(f"shade={_fmt(self.shade)}")
        if self.noise_kind != "gaussian":
            parts.append(f"kind={self.noise_kind}")
        if self.field_scale != 0.25:
            parts.append(f"field={_fmt(self.field_scale)}")
        return ",".join(parts) or "factor=1"

    @property
    def is_identity(self) -> bool:
        """True when `degrade` returns its input unchanged (apart from clipping to [0, 1])."""
        return str(self) == "factor=1"


_KEYS = ("factor", "blur", "noise", "sp", "angles", "shade", "kind", "field")


def _fmt(x: float) -> str:
    """Shortest exact float text, without a trailing '.0', so parse(str(d)) == d."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _number(key: str, value: str, text: str, kind: type = float) -> float:
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise PaserInputError(f"Degradation spec {text!r}: {key}={value!r} is not {what}.") from None


def _parse_value(key: str, value: str, text: str) -> dict[str, object]:
    """One spec key -> dataclass fields; 'a:b' ranges set the *_max field of blur and noise."""
    if key in ("blur", "noise"):
        low, sep, high = value.partition(":")
        # a single value clears a range set earlier in the spec (later keys win)
        return {key: _number(key, low, text), f"{key}_max": _number(key, high, text) if sep else None}
    if key == "kind":
        return {"noise_kind": value.lower()}
    if key in ("factor", "angles"):
        return {key: int(_number(key, value, text, int))}
    return {{"sp": "salt_pepper", "field": "field_scale"}.get(key, key): _number(key, value, text)}


def _problems(d: Degradation) -> list[str]:
    """Every invalid field of `d`, each with the fix, for one clear error."""
    out = []
    if not isinstance(d.factor, (int, np.integer)) or isinstance(d.factor, bool) or d.factor < 1:
        out.append(f"factor={d.factor!r}: must be an integer >= 1 (1 = full resolution).")
    for name in ("blur", "noise", "salt_pepper", "shade"):
        value = getattr(d, name)
        if not (np.isfinite(value) and value >= 0):
            out.append(f"{name}={value!r}: must be a finite number >= 0.")
    for name in ("blur", "noise"):
        high = getattr(d, f"{name}_max")
        if high is not None and not (np.isfinite(high) and high >= getattr(d, name)):
            low = getattr(d, name)
            out.append(f"{name}_max={high!r}: must be >= {name}={low!r} (write {name}=low:high).")
    if d.noise_kind not in ("gaussian", "poisson"):
        out.append(f"noise_kind={d.noise_kind!r}: use 'gaussian' or 'poisson'.")
    if d.angles is not None and (not isinstance(d.angles, (int, np.integer)) or d.angles < 2):
        out.append(f"angles={d.angles!r}: need an integer >= 2 projections (or leave it unset).")
    if d.salt_pepper > 1:
        out.append(f"salt_pepper={d.salt_pepper!r}: is a fraction of pixels, at most 1.")
    if not (np.isfinite(d.field_scale) and d.field_scale > 0):
        out.append(f"field_scale={d.field_scale!r}: must be > 0 (fraction of the image size).")
    return out


# Presets: every benchmark names one (DESIGN.md). Intent of each:
PRESETS: dict[str, Degradation] = {
    # identity: the clean reference.
    "clean": Degradation(),
    # typical low-res microtomography; multi-Otsu floor on SOC about 0.82 mIoU.
    "lowres": Degradation(factor=4, blur=0.7, noise=0.08),
    # a hard scan; multi-Otsu floor on SOC about 0.67 mIoU.
    "lowres-severe": Degradation(factor=4, blur=1.0, noise=0.15),
    # noise varying smoothly across the field of view: per-patch difficulty varies, routing pays.
    "lowres-varying": Degradation(factor=4, blur=0.7, noise=0.02, noise_max=0.3),
    # lowres with a smooth background shading (flat-field drift): where the shading is strong a
    # pixel's phase needs context, so the model sizes differ there (SOC test mIoU f0 0.854,
    # f1 0.873, f2 0.889, gains concentrated in f0's most uncertain patches): routing pays.
    "lowres-shading": Degradation(factor=4, blur=0.7, noise=0.05, shade=0.08),
    # the PaSeR paper's robustness case: 1% salt and pepper on the clean image.
    "sp1": Degradation(salt_pepper=0.01),
}


def get_degradation(name_or_spec: str) -> Degradation:
    """A preset by name, or a spec string such as "factor=4,noise=0.1"."""
    key = name_or_spec.strip()
    if key in PRESETS:
        return PRESETS[key]
    if "=" in key:
        return Degradation.parse(key)
    raise PaserInputError(
        f"Unknown degradation {name_or_spec!r}: use a preset ({', '.join(PRESETS)}) or a spec "
        "like 'factor=4,blur=0.7,noise=0.02:0.3,sp=0.01,angles=90,kind=poisson'."
    )


def salt_and_pepper(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of `image` with round(amount * size) distinct pixels set to 0 or 1 (half each)."""
    out = np.array(image, dtype=np.float32, copy=True)
    k = int(round(amount * out.size))
    if k:
        idx = rng.choice(out.size, size=k, replace=False)
        out.reshape(-1)[idx] = (rng.random(k) < 0.5).astype(np.float32)
    return out


def degrade(image: np.ndarray, spec: Degradation, seed: int = 0) -> np.ndarray:
    """Degrade a 2D image or an (N, H, W) stack; float32 in [0, 1], same shape as the input.

    The input is expected as float in [0, 1] (normalise raw data first, see
    `dataset.normalise`); it is not rescaled. Each slice of a stack gets its own random stream
    derived from (seed, slice index), so results are deterministic and a 2D image equals
    slice 0 of a stack.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim not in (2, 3) or min(arr.shape) < 1:
        raise PaserInputError(
            f"degrade: image of shape {arr.shape}: give a 2D slice (H, W) or a stack (N, H, W)."
        )
    if not np.all(np.isfinite(arr)):
        raise PaserInputError("degrade: image holds NaN or inf; replace them before degrading.")
    stack = arr[None] if arr.ndim == 2 else arr
    out = np.stack([_degrade_slice(s, spec, _rng(seed, i)) for i, s in enumerate(stack)])
    return out[0] if arr.ndim == 2 else out


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _degrade_slice(img: np.ndarray, d: Degradation, rng: np.random.Generator) -> np.ndarray:
    """The module-level pipeline on one slice."""
    shape = img.shape
    padded = _pad_to_multiple(img, d.factor)
    low = downscale_local_mean(padded, d.factor).astype(np.float32) if d.factor > 1 else padded
    low = _blur(low, d, rng)
    if d.angles is not None:
        low = _sparse_angle(low, d.angles)
    if d.shade:
        low = low + np.float32(d.shade) * smooth_field(low.shape, d.field_scale * max(low.shape), rng)
    low = _noise(low, d, rng)
    if d.factor > 1:
        low = resize(low, padded.shape, order=1, mode="edge", anti_aliasing=False)
    out = np.clip(low[: shape[0], : shape[1]], 0.0, 1.0).astype(np.float32)
    return salt_and_pepper(out, d.salt_pepper, rng) if d.salt_pepper else out


def _pad_to_multiple(img: np.ndarray, factor: int) -> np.ndarray:
    """Edge-pad so both sides divide by `factor` (no dark border from zero padding)."""
    pad = [(0, -s % factor) for s in img.shape]
    return np.pad(img, pad, mode="edge") if any(p for _, p in pad) else img


def _modulation(shape: tuple[int, ...], d: Degradation, rng: np.random.Generator) -> np.ndarray:
    """Smooth field in (0, 1) with a uniform marginal: the share of the way from low to high."""
    return ndtr(smooth_field(shape, d.field_scale * max(shape), rng)).astype(np.float32)


def _blur(low: np.ndarray, d: Degradation, rng: np.random.Generator) -> np.ndarray:
    if d.blur_max is None or d.blur_max == d.blur:
        return ndimage.gaussian_filter(low, d.blur) if d.blur > 0 else low
    sigma = d.blur + (d.blur_max - d.blur) * _modulation(low.shape, d, rng)
    levels = np.linspace(d.blur, d.blur_max, _BLUR_LEVELS)
    copies = np.stack([ndimage.gaussian_filter(low, s) if s > 0 else low for s in levels])
    pos = (sigma - d.blur) / (d.blur_max - d.blur) * (_BLUR_LEVELS - 1)
    i = np.clip(np.floor(pos).astype(int), 0, _BLUR_LEVELS - 2)
    t = pos - i
    rows, cols = np.indices(low.shape)
    return (1 - t) * copies[i, rows, cols] + t * copies[i + 1, rows, cols]


def _sparse_angle(low: np.ndarray, angles: int) -> np.ndarray:
    """Radon transform at `angles` projections over 180 degrees, then filtered back-projection."""
    h, w = low.shape
    side = max(h, w)
    square = np.pad(low, [(0, side - h), (0, side - w)], mode="reflect" if min(h, w) > 1 else "edge")
    theta = np.linspace(0.0, 180.0, angles, endpoint=False)
    sinogram = radon(square, theta=theta, circle=False)
    recon = iradon(sinogram, theta=theta, circle=False, output_size=side, filter_name="ramp")
    return recon[:h, :w].astype(np.float32)


def _noise(low: np.ndarray, d: Degradation, rng: np.random.Generator) -> np.ndarray:
    if d.noise == 0 and not d.noise_max:
        return low
    std = np.float32(d.noise)
    if d.noise_max is not None and d.noise_max != d.noise:
        std = d.noise + (d.noise_max - d.noise) * _modulation(low.shape, d, rng)
    if d.noise_kind == "poisson":
        photons = 1.0 / np.maximum(std, 1e-6) ** 2  # counts at intensity 1
        return (rng.poisson(np.clip(low, 0, None) * photons) / photons).astype(np.float32)
    return (low + std * rng.standard_normal(low.shape)).astype(np.float32)


def degrade_folder(data: str | Path, out: str | Path, preset: str = "lowres", seed: int = 0, overrides: str = "") -> Degradation:
    """Write a degraded copy of a dataset folder: images normalised, degraded and stored as
    uint16; labels, class names and splits unchanged; `degradation.json` records the spec."""
    from learners.atomic import atomic_write_text
    from napari_paser.data.dataset import normalise, read_dataset, robust_range, to_uint16, write_dataset

    spec = get_degradation(preset)
    if overrides:
        spec = Degradation.parse(f"{spec},{overrides}")
    if Path(out).resolve() == Path(data).resolve():
        raise PaserInputError(f"--out {out} is the input folder; write the degraded copy to a new folder")
    ds = read_dataset(data)
    images = degrade(normalise(ds.images, *robust_range(ds.images)), spec, seed=seed)
    write_dataset(out, to_uint16(images), ds.labels, ds.class_names, ds.split)
    record = {"source": str(data), "spec": str(spec), "preset": preset, "overrides": overrides, "seed": seed}
    atomic_write_text(Path(out) / "degradation.json", json.dumps(record, indent=2))
    return spec
