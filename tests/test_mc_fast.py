"""The fast UNet MC-dropout forward gives the reference samples; pick_device."""

import numpy as np
import pytest
import torch

from learners import uncertainty as U
from learners.device import pick_device
from learners.errors import InputError
from learners.unet import UNetConfig, build_unet


def _model(depth: int, seed: int = 0):
    torch.manual_seed(seed)
    m = build_unet(UNetConfig(base=8, depth=depth, n_classes=3)).eval()
    for mod in m.modules():  # non-trivial BatchNorm statistics, so folding them is tested
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


def _reference(model, x, samples, seed, max_batch):
    with torch.no_grad(), torch.random.fork_rng(), U.mc_dropout(model):
        torch.manual_seed(seed)
        return U._reference_mc_probabilities(model, x, samples, max_batch)


@pytest.mark.parametrize("depth,n,max_batch", [(2, 1, 16), (2, 2, 4), (2, 3, 5), (3, 2, 16), (1, 1, 2)])
def test_fast_mc_path_equals_the_reference_path(depth, n, max_batch):
    model = _model(depth)
    x = torch.from_numpy(np.random.default_rng(1).random((n, 1, 40, 56), dtype=np.float32))
    ref = _reference(model, x, 5, 7, max_batch)
    fast = U.mc_probabilities(model, x, samples=5, seed=7, max_batch=max_batch)
    assert fast.shape == ref.shape
    assert torch.allclose(fast, ref, atol=1e-5)
    assert not torch.allclose(fast[0], fast[1])  # the samples really differ (dropout active)


def test_fast_maps_equal_reference_maps():
    model = _model(2)
    image = np.random.default_rng(2).random((64, 48), dtype=np.float32)
    maps = U.uncertainty_maps(model, image, samples=5, seed=3)
    ref = _reference(model, torch.from_numpy(image)[None, None], 5, 3, 16)[:, 0].double()
    np.testing.assert_allclose(maps.mean_probs, ref.mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(maps.entropy, U.predictive_entropy(ref).numpy(), atol=1e-5)
    np.testing.assert_allclose(maps.bald, U.bald(ref).numpy(), atol=1e-5)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device(None) == auto
    with pytest.raises(InputError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            pick_device("cuda")
