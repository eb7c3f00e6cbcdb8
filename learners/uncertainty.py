"""MC-dropout uncertainty: T stochastic passes, predictive entropy and BALD per pixel.

Dropout stays active while BatchNorm uses its running statistics (eval mode), so the
samples differ only by the dropout masks (Gal & Ghahramani 2016). The T samples run as one
batch where memory allows. Large images are processed in tiles with a halo of context so the
maps equal the whole-image maps away from tile seams up to the receptive field.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learners.errors import ConfigError, ShapeError
from learners.grid import Box, Grid

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode with dropout layers active; restore every module's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, _DROPOUT):
            m.train()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def model_device(model: nn.Module) -> torch.device:
    """Where a model's weights live (inputs go there); CPU for a model without parameters."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _like(result: torch.Tensor, template: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    return result if isinstance(template, torch.Tensor) else result.numpy()


def entropy(probs: np.ndarray | torch.Tensor, dim: int = -3) -> np.ndarray | torch.Tensor:
    """Shannon entropy in nats along the class axis (0 log 0 = 0)."""
    p = _as_tensor(probs).double()
    h = -torch.special.xlogy(p, p).sum(dim)
    return _like(h.to(_as_tensor(probs).dtype), probs)


def predictive_entropy(mc_probs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """H[mean_t p_t] for samples on axis 0 and classes on axis -3 ((T, C, H, W) or (T, N, C, H, W))."""
    p = _as_tensor(mc_probs)
    return _like(_as_tensor(entropy(p.double().mean(0))).to(p.dtype), mc_probs)


def bald(mc_probs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Mutual information H[mean_t p_t] - mean_t H[p_t], clamped at 0 against rounding."""
    p = _as_tensor(mc_probs).double()
    mi = _as_tensor(entropy(p.mean(0))) - _as_tensor(entropy(p)).mean(0)
    return _like(mi.clamp_min(0).to(_as_tensor(mc_probs).dtype), mc_probs)


@torch.no_grad()
def mc_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    samples: int = 5,
    seed: int | None = 0,
    max_batch: int = 16,
) -> torch.Tensor:
    """Softmax probabilities of `samples` dropout passes: (N, 1, H, W) -> (T, N, C, H, W).

    With a seed the dropout masks are reproducible and the global RNG is left untouched.
    A `learners.unet.UNet` with plain dropout takes the fast path (`_unet_mc_probabilities`):
    the same masks in the same order, so the same samples up to float rounding.
    """
    if samples < 1:
        raise ConfigError(f"MC dropout needs at least one sample, got samples={samples}")
    with torch.random.fork_rng(enabled=seed is not None, devices=_rng_devices(images)), mc_dropout(model):
        if seed is not None:
            torch.manual_seed(seed)
        if _fast_path_applies(model, images):
            return _unet_mc_probabilities(model, images, samples, max(max_batch, 1))
        return _reference_mc_probabilities(model, images, samples, max(max_batch, 1))


def _rng_devices(images: torch.Tensor) -> list:
    """The CUDA devices whose RNG `fork_rng` must save (none for CPU tensors, which avoids a CUDA query)."""
    return [images.device] if images.device.type == "cuda" else []


def _reference_mc_probabilities(model: nn.Module, images: torch.Tensor, samples: int, max_batch: int) -> torch.Tensor:
    """The plain MC forward: the whole model on `samples` copies of the batch, `max_batch` at a time."""
    n = images.shape[0]
    reps = images.repeat(samples, 1, 1, 1)  # sample-major: index t * n + i
    out = torch.cat([model(chunk).softmax(1) for chunk in reps.split(max_batch)])
    return out.reshape(samples, n, *out.shape[1:])


# ----------------------------------------------------------------------------- fast UNet MC forward
#
# Why: f0's MC maps dominate the cost of PaSeR on a volume. In a UNet the layers before the first
# dropout (stem, first block, first down block) and every skip connection are the same in all T
# passes, and so is the skip half of each decoder block's first convolution (a convolution of a
# concatenation is the sum of convolutions of its parts). They run once; only the dropped-out path
# runs T times. BatchNorm (eval mode) is folded into the convolutions, tensors are channels_last.
# Dropout masks are drawn exactly as `nn.Dropout` draws them on CPU (a contiguous Bernoulli tensor
# of the input's shape, layer by layer, chunk by chunk), so a seed gives the reference samples.


def _fast_path_applies(model: nn.Module, images: torch.Tensor) -> bool:
    from learners.unet import UNet

    return type(model) is UNet and type(model.dropout) is nn.Dropout and images.ndim == 4


def _fold(block: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each conv of a DoubleConv with its eval-mode BatchNorm folded in."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    bns = [m for m in block if isinstance(m, nn.BatchNorm2d)]
    out = []
    for conv, bn in zip(convs, bns):
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        out.append((w.detach().contiguous(memory_format=torch.channels_last), b.detach()))
    return out


def _conv_relu(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor | None],
               extra: torch.Tensor | None = None) -> torch.Tensor:
    """relu(conv3x3(x) + extra): `extra` is a precomputed share of the same convolution."""
    y = F.conv2d(x, wb[0], wb[1], padding=1)
    if extra is not None:
        y += extra
    return y.relu_()


def _double(x: torch.Tensor, folded: list) -> torch.Tensor:
    return _conv_relu(_conv_relu(x, folded[0]), folded[1])


def _dropout(x: torch.Tensor, p: float, n: int = 1) -> torch.Tensor:
    """`nn.Dropout` in training mode on x repeated to a batch of `n`-image blocks, with the mask
    drawn as the CPU reference draws it: one contiguous Bernoulli tensor of the batch's shape."""
    shape = (x.shape[0] * n, *x.shape[1:])
    if p == 0:
        return x.expand(n, *x.shape).reshape(shape) if n > 1 else x
    noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p).div_(1 - p)
    return noise.mul_(x) if n == 1 else noise.view(n, *x.shape).mul_(x).view(shape)


_LAYOUT = torch.channels_last


def _unet_mc_probabilities(model: nn.Module, images: torch.Tensor, samples: int, max_batch: int) -> torch.Tensor:
    n, p, depth = images.shape[0], model.dropout.p, len(model.downs)
    downs = [_fold(d[1]) for d in model.downs]
    ups = [_fold(u.conv) for u in model.ups]
    head_w = model.head.weight.contiguous(memory_format=_LAYOUT)
    x = images.contiguous(memory_format=_LAYOUT)
    clean = [_double(model.stem(x), _fold(model.inc))]  # the same in every pass
    clean.append(_double(F.max_pool2d(clean[0], 2), downs[0]))
    # decoder block i reads skip depth-1-i; the clean skips' share of its first conv runs once
    skip_terms = {}
    for i in range(depth):
        level = depth - 1 - i
        if level < len(clean):
            w, b = ups[i][0]
            skip_terms[i] = F.conv2d(clean[level], w[:, : clean[level].shape[1]], b, padding=1)
    outs = []
    for idx in (torch.arange(samples * n, device=images.device) % n).split(max_batch):  # sample-major
        blocks = len(idx) // n if len(idx) % n == 0 and int(idx[0]) == 0 else 0
        take = (lambda t: t) if blocks else (lambda t: t[idx])
        reps = blocks if blocks else 1  # whole n-image blocks broadcast instead of copying
        h = _dropout(take(clean[1]), p, reps).contiguous(memory_format=_LAYOUT)
        skips: list = [None, None]
        for k in range(1, depth):
            skips.append(_double(F.max_pool2d(h, 2), downs[k]))
            h = _dropout(skips[-1], p).contiguous(memory_format=_LAYOUT)
        for i in range(depth):
            level = depth - 1 - i
            size = clean[min(level, 1)].shape[-2:] if level < 2 else skips[level].shape[-2:]
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
            (w, b), second = ups[i]
            if i in skip_terms:
                h = F.conv2d(h, w[:, clean[level].shape[1]:], None, padding=1)
                term = take(skip_terms[i])
                h = (h.view(reps, -1, *h.shape[1:]).add_(term).view(h.shape) if blocks else h.add_(term)).relu_()
            else:
                h = _conv_relu(torch.cat([skips[level], h], 1), (w, b))
            h = _conv_relu(h, second)
            if i == 0:
                h = _dropout(h, p).contiguous(memory_format=_LAYOUT)
        outs.append(F.conv2d(h, head_w, model.head.bias).softmax(1))
    out = torch.cat(outs).contiguous()
    return out.reshape(samples, n, *out.shape[1:])


@dataclass
class UncertaintyMaps:
    """Per-pixel results of MC dropout on one 2D image."""

    mean_probs: np.ndarray  # (C, H, W) float32
    entropy: np.ndarray  # (H, W) float32, nats
    bald: np.ndarray  # (H, W) float32, nats

    @property
    def prediction(self) -> np.ndarray:
        """Class index of the mean prediction, (H, W) uint8."""
        return self.mean_probs.argmax(0).astype(np.uint8)


def uncertainty_maps(
    model: nn.Module,
    image: np.ndarray,
    samples: int = 5,
    tile: int | None = None,
    halo: int = 16,
    seed: int | None = 0,
) -> UncertaintyMaps:
    """MC-dropout mean probabilities, entropy and BALD of a 2D float32 image.

    With `tile`, the image is processed in `tile` x `tile` cells, each run with `halo` pixels
    of surrounding context, so memory stays bounded on large slices. With `tile` and `halo`
    multiples of 2**depth and `halo` at least the receptive-field radius (`receptive_halo`), a
    model without dropout gives the whole-image maps exactly; with dropout the masks (not the
    expectation) differ between tiles.
    """
    image = _slice_image(image)
    h, w = image.shape
    mean = ent = mi = None
    for box, m in iter_tile_maps(model, image, samples, tile, halo, seed):
        if mean is None:
            mean = np.empty((m.mean_probs.shape[0], h, w), np.float32)
            ent, mi = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
        ys, xs = box.slices
        mean[:, ys, xs], ent[ys, xs], mi[ys, xs] = m.mean_probs, m.entropy, m.bald
    return UncertaintyMaps(mean, ent, mi)


def iter_tile_maps(
    model: nn.Module,
    image: np.ndarray,
    samples: int = 5,
    tile: int | None = None,
    halo: int = 16,
    seed: int | None = 0,
    view: tuple[int, int, int, int] | None = None,
) -> Iterator[tuple[Box, UncertaintyMaps]]:
    """The maps of each `tile` x `tile` cell of a 2D image (run with `halo` pixels of context), one cell
    at a time, so a caller can store and show each as it is done with memory bounded by one tile.

    `view` = (y0, x0, y1, x1), the part of the image on screen: its cells come first (`visible_first`).
    Every cell uses the same dropout seed, so the order never changes the maps.
    """
    image = _slice_image(image)
    h, w = image.shape
    device = model_device(model)
    grid = Grid((h, w), (tile, tile) if tile else (h, w))
    for box in visible_first(grid, view):
        y0, x0 = max(box.y0 - halo, 0), max(box.x0 - halo, 0)
        y1, x1 = min(box.y0 + box.h + halo, h), min(box.x0 + box.w + halo, w)
        x = torch.from_numpy(image[y0:y1, x0:x1].copy())[None, None].to(device)
        probs = mc_probabilities(model, x, samples=samples, seed=seed)[:, 0]  # (T, C, h, w)
        probs = probs[:, :, box.y0 - y0:box.y0 - y0 + box.h, box.x0 - x0:box.x0 - x0 + box.w]
        mean, ent, mi = (t.cpu().numpy() for t in _summaries(probs))
        yield box, UncertaintyMaps(mean, ent, mi)


def _slice_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ShapeError(f"uncertainty_maps takes one 2D slice, got shape {image.shape}")
    return image


def visible_first(grid: Grid, view: tuple[int, int, int, int] | None = None) -> list[Box]:
    """The grid's cells, those intersecting `view` = (y0, x0, y1, x1) first, each group nearest the
    view's centre first (what a person looks at is computed first); row-major without a view."""
    boxes = grid.boxes()
    if view is None:
        return boxes
    vy0, vx0, vy1, vx1 = view
    cy, cx = (vy0 + vy1) / 2, (vx0 + vx1) / 2

    def key(b: Box) -> tuple[bool, float]:
        inside = b.y0 < vy1 and b.y0 + b.h > vy0 and b.x0 < vx1 and b.x0 + b.w > vx0
        return (not inside, (b.y0 + b.h / 2 - cy) ** 2 + (b.x0 + b.w / 2 - cx) ** 2)

    return sorted(boxes, key=key)


def receptive_halo(model: nn.Module) -> int:
    """Pixels of context a UNet needs on each side for exact tiled maps, a multiple of 2**depth.

    Two 3x3 convolutions per UNet level (radius 2 * 2**level), a max-pool and a bilinear
    upsampling per level change (up to 2**level each), summed over encoder and decoder.
    """
    depth = len(getattr(model, "downs", ())) or 4
    enc = sum(2 * 2**lv + 2**lv for lv in range(depth + 1))
    dec = sum(2 * 2**lv + 2**lv for lv in range(depth))
    step = 2**depth
    return -(-(enc + dec) // step) * step


def _summaries(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean probabilities, predictive entropy and BALD of (T, C, H, W) float32 samples in one pass.

    Float32 throughout (`predictive_entropy`/`bald` work in float64): on per-pixel maps the
    difference is float rounding (below 1e-5 nats), at a fifth of the cost.
    """
    mean = probs.mean(0)
    ent = -torch.special.xlogy(mean, mean).sum(0)
    expected = -torch.special.xlogy(probs, probs).sum(1).mean(0)
    return mean, ent, (ent - expected).clamp_min_(0)
