"""Routing patches with a halo of context: the larger models see each patch with its neighbourhood."""

import numpy as np
import pytest
import torch

from learners.errors import ConfigError
from learners.grid import Grid, Patching, crop_halo
from learners.routing.policy import PolicyConfig, PolicyNet, load_policy, save_policy
from learners.routing.router import RoutingCost, execute_routing, make_grid
from learners.unet import UNet, UNetConfig


def test_context_patches_hold_each_patch_and_its_real_neighbourhood():
    img = torch.arange(48 * 40, dtype=torch.float32).reshape(1, 1, 48, 40)
    g = Grid((48, 40), (16, 16), halo=8)
    ctx, plain = g.context_patches(img), g.extract(img)
    assert ctx.shape == (len(g), 1, 32, 32)
    assert torch.equal(crop_halo(ctx, 8), plain)  # the centre is the patch extract gives
    interior = 1 * g.cols + 1  # the patch at rows 16:32, cols 16:32
    assert torch.equal(ctx[interior, 0], img[0, 0, 8:40, 8:40])  # its halo is the image around it
    assert torch.equal(Grid((48, 40), (16, 16)).context_patches(img), plain)  # halo 0: extract
    with pytest.raises(ConfigError):
        Patching(size=(16, 16), halo=-1)


def test_a_halo_gives_patchwise_inference_the_whole_slice_prediction_inside():
    torch.manual_seed(0)
    f0, f1 = (UNet(UNetConfig(n_classes=3, base=4, depth=2, dropout=0.0)).eval() for _ in range(2))
    with torch.no_grad():  # a head that does not favour one class: the argmax follows the features
        for p in f1.head.parameters():
            p.mul_(50.0) if p.ndim > 1 else p.zero_()
        x = torch.rand(1, 96, 96)
        whole = f1(x[:, None]).argmax(1)[0].numpy()
    assert len(np.unique(whole)) == 3
    actions = np.ones((1, 36), int)  # every 16 px patch to f1
    inner = (slice(16, 80), slice(16, 80))
    cut = execute_routing([f0, f1], x, actions, Patching(size=(16, 16)), samples=1).segmentation[0]
    ctx = execute_routing([f0, f1], x, actions, Patching(size=(16, 16), halo=16), samples=1).segmentation[0]
    assert np.array_equal(ctx[inner], whole[inner])  # enough context: patch by patch = the whole slice
    assert (cut[inner] != whole[inner]).mean() > 0.01  # cut from their context, patches differ


def test_the_halo_is_paid_for_in_the_routed_flops():
    models = [UNet(UNetConfig(n_classes=3, base=4, depth=2)) for _ in range(2)]
    plain = RoutingCost.of(models, 64, 64, Patching(size=(16, 16)), 1)
    ctx = RoutingCost.of(models, 64, 64, Patching(size=(16, 16), halo=8), 1)
    assert ctx.patch[1] == pytest.approx(4 * plain.patch[1], rel=0.01)  # 32x32 pixels instead of 16x16
    assert ctx.f0_image == plain.f0_image  # f0 runs on whole slices: no halo
    assert make_grid((64, 64), Patching(size=(16, 16), halo=8)).halo == 8


def test_a_policy_remembers_its_halo_and_is_written_as_version_3(tmp_path):
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, patch=(32, 32), halo=8, width=4))
    path = save_policy(tmp_path / "p.pt", policy)
    loaded = load_policy(path)
    assert loaded.config.patching == Patching(size=(32, 32), halo=8)
    assert torch.load(path, weights_only=True)["version"] == 3
    plain = save_policy(tmp_path / "q.pt", PolicyNet(PolicyConfig(n_classes=3, n_models=3, patch=(32, 32), width=4)))
    assert torch.load(plain, weights_only=True)["version"] == 2  # older readers still read halo-free policies
