import numpy as np
import pytest
from torch import nn

from learners.flops import cost_shares, count_flops, gflops_per_image, patch_flops
from learners.unet import build_unet, count_parameters


def test_single_convolution_matches_analytic_count():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    # 2 FLOPs per multiply-add: 2 * C_out * C_in * k * k * H * W
    assert count_flops(conv, (1, 3, 10, 12)) == 2 * 8 * 3 * 9 * 10 * 12
    assert count_flops(conv, (2, 3, 10, 12)) == 2 * 2 * 8 * 3 * 9 * 10 * 12


def test_unet_flops_scale_with_area_and_size():
    tiny, medium = build_unet("tiny"), build_unet("medium")
    small, big = gflops_per_image(tiny, 64, 64), gflops_per_image(tiny, 128, 128)
    assert big == pytest.approx(4 * small, rel=1e-6)
    assert gflops_per_image(medium, 64, 64) > 5 * small
    assert gflops_per_image(tiny, 64, 64, samples=5) == pytest.approx(5 * small)


def test_patch_flops_is_one_sixteenth_of_the_image_for_divisible_sizes():
    tiny = build_unet("tiny")
    assert 16 * patch_flops(tiny, 64, 64) == pytest.approx(gflops_per_image(tiny, 64, 64) * 1e9)


def test_cost_shares_eq3():
    counts = [count_parameters(build_unet(n)) for n in ("tiny", "medium")] + [17_275_459]
    c = cost_shares(counts)
    assert c.sum() == pytest.approx(1.0)
    assert c[1] / c[0] == pytest.approx(counts[1] / counts[0])
    assert np.all(np.diff(c) > 0)
    with pytest.raises(ValueError):
        cost_shares([0, 3])
