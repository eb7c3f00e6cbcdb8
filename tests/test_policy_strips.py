"""A large slice goes through the policy's convolutions in strips: the same routing as one pass, exactly."""

from __future__ import annotations

import pytest
import torch

from learners.routing import policy as P
from learners.routing.policy import PolicyConfig, PolicyNet


@pytest.mark.parametrize("config,shape", [
    (PolicyConfig(n_classes=3, width=4), (1, 4, 200, 120)),  # a rows x cols grid, rows not a multiple of 8
    (PolicyConfig(n_classes=3, width=4, patch=(16, 16), halo=4), (2, 4, 96, 72)),
])
def test_strips_give_the_whole_pass(monkeypatch, config, shape):
    torch.manual_seed(0)
    policy = PolicyNet(config).eval()
    with torch.no_grad():
        policy.head.weight.normal_()
        x = torch.rand(shape)
        whole = policy(x)
        monkeypatch.setattr(P, "STRIP_PIXELS", 100)
        monkeypatch.setattr(P, "STRIP_ROWS", 32)
        calls = []
        policy.features.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[-2]))
        strips = policy(x)
    assert len(calls) > 2 and max(calls) <= 32 + 2 * P.STRIP_HALO  # it did cut the input
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-6)
    assert torch.equal(strips.argmax(-1), whole.argmax(-1))
