"""Which torch device to run on: CUDA, then Apple's MPS, then the CPU.

One function so the CLI (`--device auto|cpu|cuda|mps`), the whole-volume job and the library
defaults agree, and a request the machine cannot meet fails with one clear line instead of a
CUDA stack trace deep inside a forward pass.
"""

from __future__ import annotations

import torch

from learners.errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(request: str | torch.device | None = "auto") -> torch.device:
    """The device for `request`: "auto" (or None) takes CUDA, then MPS, then CPU; "cuda", "cuda:1",
    "mps" and "cpu" are checked against what this machine has."""
    if isinstance(request, torch.device):
        request = str(request)
    name = (request or "auto").strip().lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise InputError(f"unknown device {request!r}: use one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {request!r} asked for but torch sees no CUDA GPU here "
                         f"(torch {torch.__version__}): use --device cpu or auto, or install a CUDA build of torch")
    if kind == "cuda" and ":" in name:
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise InputError(f"device {request!r}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    if kind == "mps" and not _mps_available():
        raise InputError(f"device {request!r} asked for but MPS (Apple GPU) is not available: use --device cpu or auto")
    return torch.device(name)
