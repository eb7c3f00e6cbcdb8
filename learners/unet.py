"""The UNet family behind PaSeR: one configurable architecture, three named sizes.

The layout follows the PaSeR paper's models (a 1x1 "soft" input convolution, double 3x3
conv blocks with BatchNorm, max-pool down, bilinear up with the bottleneck halved, dropout on
the deeper encoder levels and the first decoder level). Presets reproduce the paper's
parameter counts within 1% for 1 input channel and 3 classes:
tiny 16,571 / medium 1,080,595 / large 17,275,459.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from learners.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a UNet; stored in checkpoints."""

    in_channels: int = 1
    n_classes: int = 3
    base: int = 64
    depth: int = 4
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.n_classes < 2:
            raise ConfigError(f"a UNet needs in_channels >= 1 and n_classes >= 2 (a segmentation has at least two classes), "
                              f"got {self.in_channels} and {self.n_classes}")
        if self.base < 2 or self.base % 2 or self.depth < 1:
            raise ConfigError(f"base must be an even number >= 2 and depth >= 1, got base={self.base}, depth={self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(base=8, depth=2),
    "medium": UNetConfig(base=16, depth=4),
    "wide": UNetConfig(base=32, depth=4),
    "large": UNetConfig(base=64, depth=4),
}
"""f0, f1, f2 of the paper, and "wide" (4.3M parameters): the f2 a CPU can train and that ships
starting weights (the paper's large costs ~5 s per training step on one core, 4x wide's).
`preset_config(name, n_classes=...)` adapts them."""

PAPER_PARAMS = {"tiny": 16_571, "medium": 1_080_595, "large": 17_275_459}


def preset_config(name: str, n_classes: int = 3, in_channels: int = 1, **overrides) -> UNetConfig:
    """The named preset for a given number of classes and channels."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], n_classes=n_classes, in_channels=in_channels, **overrides)


def preset_of(config: UNetConfig) -> str:
    """The preset `config` was built from (any classes and channels), or "custom"."""
    return next((n for n, c in PRESETS.items()
                 if replace(c, n_classes=config.n_classes, in_channels=config.in_channels) == config), "custom")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice; bias-free convs since BatchNorm follows."""

    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None) -> None:
        c_mid = c_mid or c_out
        super().__init__(
            nn.Conv2d(c_in, c_mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Bilinear upsampling to the skip connection's size, concatenation, DoubleConv.

    align_corners=False keeps the network translation-equivariant (for shifts by multiples of
    2**depth), so tiled inference matches whole-image inference.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = DoubleConv(c_in, c_out, c_in // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """A UNet of any depth and width; works on any image size (upsampling matches the skips)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        b, d = config.base, config.depth
        widths = [b * 2**i for i in range(d + 1)]  # encoder widths, the last one halved below
        self.stem = nn.Conv2d(config.in_channels, b // 2, kernel_size=1)
        self.inc = DoubleConv(b // 2, b)
        self.downs = nn.ModuleList()
        for i in range(1, d + 1):
            c_out = widths[i] // 2 if i == d else widths[i]
            self.downs.append(nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i - 1], c_out)))
        self.ups = nn.ModuleList()
        for i in range(d, 0, -1):
            c_out = widths[i - 1] // 2 if i > 1 else widths[0]
            self.ups.append(Up(widths[i], c_out))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Conv2d(b, config.n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, base, H, W) last decoder features before the 1x1 head: pooled per region, the
        embeddings TAUDIS compares (forward is head(features))."""
        feats = [self.inc(self.stem(x))]
        h = feats[0]
        for down in self.downs:  # skips stay clean; the path downwards is dropped out
            feats.append(down(h))
            h = self.dropout(feats[-1])
        for i, up in enumerate(self.ups):
            h = up(h, feats[-2 - i])
            if i == 0:
                h = self.dropout(h)
        return h


def build_unet(config: UNetConfig | str, **overrides) -> UNet:
    """A fresh UNet from a config or a preset name."""
    if isinstance(config, str):
        config = preset_config(config, **overrides)
    return UNet(config)


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (the cost unit of the PaSeR paper's Eq. 3)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
