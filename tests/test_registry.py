"""One sampler registry for the session and the AL simulation; one f0 state per slice; eval_mode."""

import numpy as np
import pytest
import torch

import napari_paser.session.proposals as proposals
import napari_paser.session.maps as maps
import sampling.registry as registry
from learners.modes import eval_mode
from learners.routing.policy import PolicyConfig, PolicyNet
from learners.routing.router import f0_state
from learners.uncertainty import uncertainty_maps
from learners.unet import UNet, UNetConfig
from napari_paser.bench.al_sim import Learner, SimConfig, Split, sim_sampler
from napari_paser.session import Session
from sampling.base import SamplingError
from sampling.regions import RegionEmbedder, RegionPool
from sampling.taudis import TaudisSampler

TINY = UNetConfig(base=4, depth=2)


def _image():
    return (np.random.default_rng(0).random((2, 64, 64)) * 1000).astype(np.uint16)


def test_registry_names_construction_and_needs():
    assert registry.SAMPLERS == ("random", "entropy", "bald", "taudis", "effort", "routing", "dqn")
    assert registry.needs_of("random") == frozenset() and not registry.reads_maps("random")
    assert registry.needs_of("bald") == {"bald"}
    taudis = registry.make_sampler("taudis", measure="entropy", alpha=2.0)
    assert isinstance(taudis, TaudisSampler) and registry.needs_of(taudis) == {"entropy", "embeddings"}
    assert registry.needs_of("dqn") == {"prediction", "entropy", "bald", "labels", "state_ids"}
    with pytest.raises(SamplingError, match="unknown sampler 'coreset'"):
        registry.make_sampler("coreset")
    with pytest.raises(SamplingError, match="does not take alpha; it takes no options"):
        registry.make_sampler("entropy", alpha=2.0)
    assert registry.make_sampler("dqn").name == "dqn"  # the shipped agent, no file needed
    # a caller's context reaches only the samplers that declare it
    assert registry.make_sampler("bald", context={"dqn_checkpoint": "x.pt", "pool_size": 3}).name == "bald"


def test_gather_needs_calls_only_the_sources_a_sampler_reads():
    pool = RegionPool((1, 16, 16), 8)
    called = []

    def source(name, value):
        return lambda: called.append(name) or value

    maps = {"prediction": 1, "entropy": 2, "bald": 3}
    needs = registry.gather_needs(registry.needs_of("entropy"), pool, maps=source("maps", maps),
                                  embeddings=source("embeddings", None))
    assert needs == {"pool": pool, "entropy": 2} and called == ["maps"]
    with pytest.raises(SamplingError, match="embeddings"):
        registry.gather_needs(registry.needs_of("taudis"), pool, maps=lambda: maps)


def test_session_and_simulation_build_samplers_through_the_registry(tmp_path, monkeypatch):
    built = []
    real = registry.make_sampler

    def spy(name, context=None, **options):
        built.append(name)
        return real(name, context, **options)

    monkeypatch.setattr(proposals, "make_sampler", spy)
    monkeypatch.setattr("napari_paser.bench.al_sim.registry_sampler", spy)
    s = Session.create(tmp_path / "s", _image(), region_size=32)
    s.propose(2, "random")
    sim_sampler("bald", SimConfig())
    assert built == ["random", "bald"]


def test_region_embeddings_are_the_same_for_session_and_simulation(tmp_path):
    torch.manual_seed(0)
    model = UNet(TINY)
    images = np.random.default_rng(1).random((2, 64, 64)).astype(np.float32)
    pool = RegionPool(images.shape, 32)
    every = registry.region_embeddings(model, pool, images.__getitem__)
    one = registry.region_embeddings(model, pool, images.__getitem__, [1])
    assert every.shape == (8, TINY.base) and np.allclose(one[4:], every[4:]) and not one[:4].any()
    learner = Learner(Split(images, np.zeros((2, 64, 64), np.uint8)), 3, SimConfig(region=32))
    learner.model = model
    lazy = learner.needs(frozenset({"embeddings"}))["embeddings"]  # the on-demand embedder both use
    assert isinstance(lazy, RegionEmbedder)
    ids = np.array([5, 0, 7, 2])
    np.testing.assert_allclose(lazy(ids), every[ids], atol=1e-5)
    assert lazy.calls == len(ids)  # only the regions asked for were embedded


def test_one_f0_state_whoever_asks():
    """Routing's f0 state of image z of a stack is the session's maps of slice z (seed z)."""
    torch.manual_seed(0)
    f0 = UNet(TINY)
    images = np.random.default_rng(2).random((3, 32, 32)).astype(np.float32)
    state = f0_state(f0, images, samples=2, seed=0, keep_probs=True)
    for z in range(3):
        m = uncertainty_maps(f0, images[z], samples=2, seed=z)
        np.testing.assert_array_equal(state.prediction[z].numpy(), m.prediction)
        np.testing.assert_allclose(state.entropy[z].numpy(), m.entropy, atol=1e-6)
        np.testing.assert_allclose(state.mean_probs[z].numpy(), m.mean_probs, atol=1e-6)


def _routable(tmp_path) -> Session:
    s = Session.create(tmp_path / "s", _image(), region_size=32)
    s.new_models({"f0": TINY, "f1": UNetConfig(base=6, depth=2)})
    s.install_models({"policy": PolicyNet(PolicyConfig(n_models=2, grid=(2, 2), width=4))}, source="test")
    return s


def test_route_reuses_the_stored_maps_of_the_current_model(tmp_path, monkeypatch):
    s = _routable(tmp_path)
    events = list(s.compute_maps(1, samples=2))
    assert events and s.fresh_slices() == [1] and s.has_state(1)

    def no_second_pass(*args, **kw):
        raise AssertionError("f0 ran again although the slice's maps are current")

    monkeypatch.setattr(maps, "iter_tile_maps", no_second_pass)  # the session's one f0 pass per slice
    routed = s.route(1, samples=2)
    assert routed.segmentation.shape == (64, 64)
    np.testing.assert_array_equal(routed.segmentation, s.slice_maps(1)["prediction"])  # untrained policy: all f0


def test_route_without_maps_stores_them_for_proposals(tmp_path):
    s = _routable(tmp_path)
    assert s.fresh_slices() == [] and not s.has_state(0)
    s.route(0, samples=2)
    assert s.fresh_slices() == [0]  # the routing pass is the slice's maps: proposals read them
    expected = uncertainty_maps(s.models["f0"], s.image_slice(0), samples=2, seed=0)
    np.testing.assert_allclose(s.slice_maps(0)["entropy"], expected.entropy, atol=1e-6)
    assert {p.region_id for p in s.propose(2, "entropy")} <= set(s.pool.slice_ids(0).tolist())


def test_eval_mode_restores_the_mode_even_on_error():
    net = torch.nn.Sequential(torch.nn.Dropout(0.5))
    net.train()
    with eval_mode(net):
        assert not net.training and not net[0].training
    assert net.training and net[0].training
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError
    assert net.training
