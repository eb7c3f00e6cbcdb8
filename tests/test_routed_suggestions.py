"""The suggestion of a proposed region is the routed prediction when the session has a routing bank and the
models it routes between (computed on the region and its context only), f0's MC mean otherwise; its source is
stored with it. Headless (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.generators import collect
from learners.routing.policy import PolicyConfig, PolicyNet
from learners.routing.router import predict_patches
from learners.grid import Patching
from learners.unet import UNet, UNetConfig
from napari_paser.data.dataset import normalise
from napari_paser.session.core import Session
from napari_paser.session.models import bank_role

TINY = UNetConfig(base=4, depth=2)


def volume(z: int = 3, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((z, size, size)) * 1000).astype(np.uint16)


def _fixed_policy(model: int, patch: int = 16, halo: int = 4) -> PolicyNet:
    """A policy that sends every patch to f{model}."""
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, patch=(patch, patch), halo=halo, width=4))
    with torch.no_grad():
        policy.head.bias.zero_()
        policy.head.bias[model] = 20.0
    return policy


def _session(tmp_path, bank_to: int | None, patch: int = 16, size: int = 96) -> Session:
    s = Session.create(tmp_path / "s", volume(size=size), region_size=32)
    s.new_models({"f0": TINY})
    collect(s.compute_maps([0], samples=2))
    if bank_to is not None:
        torch.manual_seed(1)
        s.install_models({"f1": UNet(UNetConfig(n_classes=3, base=4, depth=1)).eval(),
                          "f2": UNet(UNetConfig(n_classes=3, base=6, depth=2)).eval(),
                          bank_role(0.5): _fixed_policy(bank_to, patch)}, source="test")
    return s


def _f2_on(s: Session, region, patch: int = 16, halo: int = 4) -> np.ndarray:
    """f2 run on the whole slice patch by patch with the whole slice's context: what routing everything to
    f2 gives."""
    image = normalise(np.asarray(s.image[region.z]), s.state.image["lo"], s.state.image["hi"])
    grid = Patching(size=(patch, patch), halo=halo).grid(*image.shape)
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    pred = predict_patches(s.models["f2"], grid.context_patches(x), halo=halo)
    full = grid.paste(pred[:, None])[0, 0].numpy()
    return full[region.slices[1:]].astype(np.uint8) + 1


@pytest.mark.parametrize("z,patch,cell,size", [
    (0, 16, 4, 96),  # slice 0 has maps (f0's state read from them), patches inside the region
    (2, 16, 4, 96),  # slice 2 has none (f0 run on the window)
    (2, 24, 4, 96),  # patches that straddle the region's edges
    (1, 24, 0, 100),  # the corner region of a slice whose side is no multiple of the patch
])
def test_a_bank_routing_everything_to_f2_gives_f2s_prediction(tmp_path, z, patch, cell, size):
    s = _session(tmp_path, bank_to=2, patch=patch, size=size)
    assert s.routes_suggestions
    ids = s.pool.slice_ids(z)
    rid = int(ids[cell] if cell else ids[-1])  # an inner region, or the last one (bottom right)
    region = s.region(rid)
    sug = s.suggestion(rid)
    assert np.array_equal(sug, _f2_on(s, region, patch))
    assert not np.array_equal(sug, s.predicted_patch(region))  # not f0's guess
    info = s.state.suggestions[str(rid)]
    n = len({(y // patch, x // patch) for y in range(region.y0, region.y0 + region.h)
             for x in range(region.x0, region.x0 + region.w)})
    assert info["source"] == "routed" and info["patches"] == {"f2": n}  # the region's patches, no more
    assert s.suggestion_source(rid) == f"routed (f2 on {n} of {n} patches of this region)"
    assert s.suggestions_current()


def test_proposals_carry_the_routed_suggestion(tmp_path):
    s = _session(tmp_path, bank_to=2)
    props = s.propose(2, "entropy")
    for p in props:
        assert np.array_equal(s.suggestion(p.region_id), _f2_on(s, s.region(p.region_id)))
        assert s.suggestion_source(p.region_id).startswith("routed (f2 on")


def test_a_bank_keeping_everything_on_f0_gives_f0s_prediction(tmp_path):
    s = _session(tmp_path, bank_to=0)
    rid = int(s.pool.slice_ids(0)[4])
    assert np.array_equal(s.suggestion(rid), s.predicted_patch(s.region(rid)))
    assert s.suggestion_source(rid) == "routed (f0 on all 4 patches of this region)"


def test_without_a_bank_the_suggestion_is_f0s(tmp_path):
    s = _session(tmp_path, bank_to=None)
    assert not s.routes_suggestions
    rid = int(s.pool.slice_ids(0)[4])
    region = s.region(rid)
    sug = s.suggestion(rid)
    pred = np.asarray(s.maps["prediction"][region.z, region.y0:region.y0 + region.h, region.x0:region.x0 + region.w]) + 1
    assert np.array_equal(sug, pred) and s.suggestion_source(rid) == "f0"


def test_a_new_bank_makes_f0_suggestions_stale_and_they_are_remade_routed(tmp_path):
    s = _session(tmp_path, bank_to=None)
    rid = int(s.propose(1, "entropy")[0].region_id)
    assert s.suggestion_source(rid) == "f0" and s.suggestions_current()
    torch.manual_seed(1)
    s.install_models({"f1": UNet(UNetConfig(n_classes=3, base=4, depth=1)).eval(),
                      "f2": UNet(UNetConfig(n_classes=3, base=6, depth=2)).eval(),
                      bank_role(0.5): _fixed_policy(2)}, source="test")
    assert not s.suggestions_current()
    s.propose(1, "entropy")
    assert s.suggestion_source(rid).startswith("routed")


def test_a_policy_on_a_rows_by_cols_grid_routes_the_whole_slice(tmp_path):
    from segment_helpers import make_run

    s = Session.create(tmp_path / "s", volume(), region_size=32)
    s.load_models(make_run(tmp_path / "run"))
    rid = int(s.pool.slice_ids(1)[4])
    region = s.region(rid)
    routed = s.route(1, samples=5)
    assert np.array_equal(s.suggestion(rid), routed.segmentation[region.slices[1:]] + 1)
    assert s.suggestion_source(rid).startswith("routed (")


def test_a_grid_policy_routes_a_slice_once_for_all_its_proposed_regions(tmp_path, monkeypatch):
    from segment_helpers import make_run

    s = Session.create(tmp_path / "s", volume(), region_size=32)
    s.load_models(make_run(tmp_path / "run"))
    collect(s.compute_maps([1], samples=5))
    calls = []
    route = s.router.route  # the suggestions part routes through the session's router
    monkeypatch.setattr(s.router, "route", lambda z, *a, **kw: calls.append(z) or route(z, *a, **kw))
    proposals = s.propose(4, "entropy")
    assert len(proposals) == 4 and {p.z for p in proposals} == {1} and calls == [1]
    whole = route(1, samples=5)
    for p in proposals:
        assert np.array_equal(s.suggestion(p.region_id), whole.segmentation[p.y0:p.y0 + p.h, p.x0:p.x0 + p.w] + 1)
