"""Module modes: run a network in eval mode and give it back in the mode it came in.

Inference, FLOP counting, embeddings and Q-values all need BatchNorm's running statistics
and no dropout, but the caller may be half-way through training: `eval_mode` is the one
place that switches and restores. (MC dropout, which keeps dropout on, is
`learners.uncertainty.mc_dropout`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode for the block; its training flag is restored afterwards, even on error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
