"""The cost-aware `routing` sampler: regions where f0 and the larger models disagree most per unit of cost."""

import numpy as np
import pytest
import torch
from torch import nn

from learners.unet import UNetConfig
from napari_paser.errors import PaserInputError
from napari_paser.session.core import Session
from sampling.base import SamplingError
from sampling.registry import make_sampler, needs_of, reads_maps
from sampling.regions import RegionPool
from sampling.routing_value import model_disagreement


def test_ranks_regions_by_disagreement_per_unit_of_cost():
    pool = RegionPool((1, 32, 32), 16)
    costs = np.array([0.01, 0.10, 0.89])
    d = np.array([[0, 0, 100], [0, 20, 0], [0, 0, 0], [0, 0, 200]], float)
    sampler = make_sampler("routing")
    assert needs_of("routing") == {"prediction", "disagreement", "model_costs"} and reads_maps(sampler)
    sel = sampler.select(pool.candidates(), 4, np.random.default_rng(0), pool=pool, disagreement=d, model_costs=costs)
    assert sel.ids.tolist() == [3, 1, 0, 2]  # 200/0.88 > 20/0.09 > 100/0.88 > 0
    np.testing.assert_allclose(sel.scores, [200 / 0.88, 20 / 0.09, 100 / 0.88, 0])
    with pytest.raises(SamplingError, match="disagreement"):
        sampler.select(pool.candidates(), 1, np.random.default_rng(0), pool=pool, disagreement=d[:2], model_costs=costs)


class Constant(nn.Module):
    def __init__(self, cls: int) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        out[:, self.cls] = 1.0
        return out


def test_model_disagreement_counts_pixels_per_region_and_model():
    pool = RegionPool((2, 20, 24), 16)  # partial border regions
    prediction = np.zeros((2, 20, 24), np.uint8)
    prediction[1, :10] = 1
    d = model_disagreement([Constant(1), Constant(0)], pool, lambda z: np.zeros((20, 24), np.float32), prediction, [1])
    assert d.shape == (len(pool), 3) and (d[pool.slice_ids(0)] == 0).all() and (d[:, 0] == 0).all()
    ones = RegionPool((20, 24), 16).reduce(prediction[1][None] == 1, "sum")
    np.testing.assert_array_equal(d[pool.slice_ids(1), 2], ones)  # f2 = class 0 differs where f0 says 1
    np.testing.assert_array_equal(d[pool.slice_ids(1), 1], RegionPool((20, 24), 16).area[:4] - ones)


def test_session_proposes_with_the_routing_sampler(tmp_path):
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((2, 48, 48)) * 1000).astype(np.uint16), region_size=16)
    s.new_models({"f0": UNetConfig(base=4, depth=2)})
    list(s.compute_maps(samples=2))
    with pytest.raises(PaserInputError, match="f1"):
        s.propose(3, "routing")
    s.new_models({"f1": UNetConfig(base=4, depth=2), "f2": UNetConfig(base=8, depth=2)}, seed=5)
    list(s.compute_maps(samples=2))
    props = s.propose(3, "routing")
    assert len(props) == 3 and all(p.sampler == "routing" for p in props)
    scores = [p.score for p in props]
    assert scores == sorted(scores, reverse=True)
