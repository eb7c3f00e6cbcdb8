"""Routing a large slice shows the part on screen first: a preview of the mapped tiles, patches outside
them left out, before the whole slice is mapped and the routed models run; the full routing follows and
equals a plain `Session.route`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.generators import collect
from learners.routing.policy import PolicyConfig, PolicyNet, save_policy
from learners.unet import UNetConfig
from napari_paser.session import maps as session_maps
from napari_paser.session.core import Session
from napari_paser.session.routing import policy_models, route_in_view, route_slice

NO_DROPOUT = UNetConfig(base=4, depth=2, dropout=0.0)


def routed_session(tmp_path) -> Session:
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((2, 64, 64)) * 1000).astype(np.uint16), region_size=16)
    s.new_models({"f0": NO_DROPOUT, "f1": NO_DROPOUT}, start="scratch")
    save_policy(tmp_path / "policy.pt", PolicyNet(PolicyConfig(n_models=2, grid=(4, 4), width=4)))
    s.load_policy(tmp_path / "policy.pt")
    return s


def test_the_part_on_screen_is_routed_first(tmp_path, monkeypatch):
    monkeypatch.setattr(session_maps, "MAP_TILE", 32)  # a 64^2 slice in 4 tiles of 32^2
    s = routed_session(tmp_path)
    previews = []
    events, routed = collect(route_in_view(s, 1, samples=1, view=(40, 40, 64, 64), preview=previews.append))
    assert len(previews) == 2 and previews[0].segmentation is None  # map and cost only: no routed model ran
    first = previews[0].routing
    assert first.shape == (4, 4) and (first[2:, 2:] >= 0).all() and (first[:2, :] == -1).all()
    assert (first[:, :2] == -1).all()  # only the tile on screen (rows/cols 2..3 of 16 px patches) is routed
    assert [e.stage for e in events] == ["maps"] * 4 + ["route"] and s.fresh_slices() == [1]
    assert routed.segmentation is not None and (routed.routing >= 0).all()
    np.testing.assert_array_equal(previews[1].routing, routed.routing)  # then the whole map, before the models ran
    np.testing.assert_array_equal(first[2:, 2:], routed.routing[2:, 2:])  # no dropout: the preview holds
    plain = s.route(1, samples=1)
    np.testing.assert_array_equal(routed.segmentation, plain.segmentation)


def test_a_slice_already_mapped_is_routed_at_once(tmp_path):
    s = routed_session(tmp_path)
    collect(s.compute_maps(0, samples=1))
    previews = []
    events, routed = collect(route_in_view(s, 0, samples=1, preview=previews.append))
    assert [e.stage for e in events] == ["route"] and routed.segmentation is not None
    assert len(previews) == 1 and previews[0].segmentation is None  # the map first, at once
    np.testing.assert_array_equal(previews[0].routing, routed.routing)


def test_a_stopped_routing_returns_nothing_and_keeps_the_slice_unmapped(tmp_path, monkeypatch):
    monkeypatch.setattr(session_maps, "MAP_TILE", 32)
    s = routed_session(tmp_path)
    events, routed = collect(route_in_view(s, 0, samples=1, should_stop=lambda: True))
    assert routed is None and events[-1].stage == "cancelled" and s.fresh_slices() == []


def test_the_routed_models_run_on_the_patches_on_screen_first(tmp_path):
    s = routed_session(tmp_path)
    collect(s.compute_maps(0, samples=1))
    policy = s.pick_policy(None)[1]
    chosen = np.tile(np.array([1, 1, 0, 0]), (4, 1))  # f1 on the left half: larger models on and off screen
    policy.forward = lambda state: torch.nn.functional.one_hot(torch.as_tensor(chosen).reshape(1, -1), 2).float()
    previews = []
    events, routed = collect(route_in_view(s, 0, samples=1, view=(0, 0, 16, 64), preview=previews.append))
    assert [e.stage for e in events] == ["route", "route"]
    assert len(previews) == 2 and previews[0].segmentation is None
    part = previews[1]
    assert part.done is not None and part.done[0].all() and not part.done[1:].any()  # the top row of patches
    np.testing.assert_array_equal(part.routing, chosen)
    models = policy_models(policy, s.models, "the policy")  # the same routing in one go
    plain = route_slice(models, policy, s.image_slice(0), 0, 1, s.f0_state(0, 1), actions=chosen)
    np.testing.assert_array_equal(part.segmentation[:16], plain.segmentation[:16])
    np.testing.assert_array_equal(routed.segmentation, plain.segmentation)
    assert routed.done is None and routed.gflops == pytest.approx(plain.gflops)
