"""Headless tests of every Session action: create/open, models, maps, propose, accept, autosave,
resume after a simulated crash mid-write, retrain (and its cancel), bad inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from learners.generators import collect
from learners.checkpoint import save_checkpoint
from learners.training import TrainConfig
from learners.unet import UNet, UNetConfig
from napari_paser.errors import InputError, PaserInputError
from napari_paser.session.core import PartialRegionError, Session
from napari_paser.session.training import Progress

TINY = UNetConfig(base=4, depth=2)
FAST = TrainConfig(epochs=1, batch_size=2, lr=1e-3, augment=False)


def image(z: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((z, size, size)) * 1000).astype(np.uint16)


def full(session: Session, region_id: int, value: int = 1) -> np.ndarray:
    r = session.region(region_id)
    return np.full((r.h, r.w), value, np.uint8)


@pytest.fixture
def session(tmp_path) -> Session:
    return Session.create(tmp_path / "s", image(), region_size=32)


@pytest.fixture
def ready(session) -> Session:
    """A session with an untrained tiny f0 and maps of every slice."""
    session.new_models({"f0": TINY})
    collect(session.compute_maps(samples=2))
    return session


def state_json(session: Session) -> dict:
    return json.loads((session.folder / "session.json").read_text())


# ----------------------------------------------------------------------------- create / open


def test_create_writes_the_folder_and_open_restores_it(session):
    assert {p.name for p in session.folder.iterdir()} >= {"session.json", "image.zarr", "labels.zarr", "maps.zarr"}
    assert session.classes.names == ("pore", "binder", "active")
    assert len(session.classes.colors) == 3
    assert session.shape == (2, 64, 64) and len(session.pool) == 8
    again = Session.open(session.folder)
    np.testing.assert_array_equal(np.asarray(again.image), image())
    assert again.labels.dtype == np.uint8 and again.labels.shape == (2, 64, 64)
    assert again.classes == session.classes
    assert again.classes.layer_colors()[1] == session.classes.colors[0]


def test_custom_classes_and_2d_image(tmp_path):
    s = Session.create(tmp_path / "s", image()[0], classes=["pore", "nickel"], colors=["#000000", "#FFFFFF"],
                       region_size=32)
    assert s.shape == (64, 64) and s.n_slices == 1 and s.labels.shape == (64, 64)
    (p,) = s.propose(1, "random")
    rec = s.accept(p.region_id, full(s, p.region_id, 2))
    assert rec.z == 0 and rec.fractions == {"unlabeled": 0.0, "pore": 0.0, "nickel": 1.0}
    assert Session.open(s.folder).classes.colors == ("#000000", "#ffffff")


def test_create_from_dask_and_zarr(tmp_path):
    da = pytest.importorskip("dask.array")
    import zarr

    img = image(3)
    s = Session.create(tmp_path / "d", da.from_array(img, chunks=(1, 32, 32)))
    np.testing.assert_array_equal(np.asarray(s.image), img)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, chunks=(1, 64, 64), dtype=img.dtype)
    z[:] = img
    s2 = Session.create(tmp_path / "z", z)
    np.testing.assert_array_equal(np.asarray(s2.image), img)
    assert s2.state.image["lo"] == s.state.image["lo"]


@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 3, 32, 32)), "dimensions"),
    (np.zeros((32, 32, 3)), "RGB"),
    (np.zeros((2, 32, 32, 4)), "RGB"),
    (np.ones((32, 32), bool), "dtype"),
    (np.ones((8, 8)), "too small"),
    (np.full((32, 32), 7.0), "constant"),
    (np.where(np.eye(32) > 0, np.nan, np.arange(32.0)), "NaN"),
])
def test_bad_images_are_refused_with_a_fix(tmp_path, bad, words):
    with pytest.raises(PaserInputError, match=words):
        Session.create(tmp_path / "s", bad)
    assert not (tmp_path / "s" / "session.json").exists()


def test_bad_classes_and_folders(tmp_path, session):
    with pytest.raises(PaserInputError, match="2 to 254"):
        Session.create(tmp_path / "a", image(), classes=["only"])
    with pytest.raises(PaserInputError, match="hex"):
        Session.create(tmp_path / "b", image(), colors=["red", "green", "blue"])
    with pytest.raises(PaserInputError, match="already holds a session"):
        Session.create(session.folder, image())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(PaserInputError, match="not empty"):
        Session.create(tmp_path / "busy", image())
    with pytest.raises(PaserInputError, match="not a labeling session"):
        Session.open(tmp_path / "busy")


# ----------------------------------------------------------------------------- models


def test_no_models_yet(session):
    for call in (lambda: session.compute_maps(), lambda: session.propose(2, "entropy"),
                 lambda: session.retrain(FAST)):
        with pytest.raises(PaserInputError, match="no model"):
            call()


def test_load_models_from_run_folder_and_class_mismatch(tmp_path, session):
    run = tmp_path / "run"
    save_checkpoint(run / "f0.pt", UNet(TINY))
    save_checkpoint(run / "f1.pt", UNet(UNetConfig(base=4, depth=3)))
    assert session.load_models(run) == ["f0", "f1"]
    again = Session.open(session.folder)
    assert set(again.models) == {"f0", "f1"} and again.models["f1"].config.depth == 3
    for k, v in session.models["f0"].state_dict().items():
        torch.testing.assert_close(again.models["f0"].state_dict()[k], v)
    other = tmp_path / "other"
    save_checkpoint(other / "f0.pt", UNet(UNetConfig(base=4, depth=2, n_classes=2)))
    with pytest.raises(PaserInputError, match="trained for 2 classes but this session has 3"):
        session.load_models(other)
    with pytest.raises(PaserInputError, match="no f0.pt"):
        session.load_models(tmp_path / "empty")
    with pytest.raises(PaserInputError, match="unknown model size"):
        session.new_models({"f0": "huge"})


# ----------------------------------------------------------------------------- maps


def test_compute_maps_yields_progress_and_can_be_cancelled(session):
    session.new_models({"f0": TINY})
    calls = iter([False, True])
    events, done = collect(session.compute_maps(samples=1, should_stop=lambda: next(calls)))
    assert done == 1 and [e.stage for e in events] == ["maps", "cancelled"]
    assert events[0].z == 0 and events[0].total == 2
    assert session.fresh_slices() == [0]
    maps = session.slice_maps(0)
    assert maps["prediction"].max() < 3 and maps["entropy"].max() > 0 and maps["bald"].shape == (64, 64)
    assert Session.open(session.folder).fresh_slices() == [0]
    with pytest.raises(PaserInputError, match="out of range"):
        session.compute_maps(z=5)


# ----------------------------------------------------------------------------- propose


def test_propose_ranks_regions_of_computed_slices(session):
    session.new_models({"f0": TINY})
    collect(session.compute_maps(z=1, samples=2))
    props = session.propose(3, "entropy", seed=1)
    assert [p.rank for p in props] == [1, 2, 3]
    assert all(p.z == 1 for p in props)  # only slice 1 has maps
    assert props[0].score >= props[1].score >= props[2].score
    assert state_json(session)["proposal_request"] == {"k": 3, "sampler": "entropy", "seed": 1}
    with pytest.raises(PaserInputError, match="only 4 candidates"):
        session.propose(5, "bald")
    with pytest.raises(PaserInputError, match="unknown sampler"):
        session.propose(2, "magic")


@pytest.mark.parametrize("sampler", ["random", "bald", "taudis"])
def test_each_sampler_proposes_unlabeled_regions(ready, sampler):
    ready.accept(0, full(ready, 0))
    props = ready.propose(3, sampler, seed=0)
    ids = [p.region_id for p in props]
    assert len(set(ids)) == 3 and 0 not in ids and all(p.sampler == sampler for p in props)


def test_entropy_proposals_need_current_maps(session):
    session.new_models({"f0": TINY})
    with pytest.raises(PaserInputError, match="compute maps"):
        session.propose(2, "entropy")
    assert len(session.propose(2, "random")) == 2


# ----------------------------------------------------------------------------- accept


def test_accept_from_patch_records_proposal_and_autosaves(ready):
    p = ready.propose(2, "entropy")[0]
    patch = full(ready, p.region_id, 3)
    patch[:4] = 1
    rec = ready.accept(p.region_id, patch)
    assert (rec.sampler, rec.rank, rec.split) == ("entropy", 1, "train")
    assert rec.fractions["pore"] == pytest.approx(4 / 32) and rec.fractions["unlabeled"] == 0
    r = ready.region(p.region_id)
    np.testing.assert_array_equal(ready.labels[r.slices], patch)  # written into the canvas
    np.testing.assert_array_equal(ready.accepted_labels(p.region_id), patch)
    assert [a["region_id"] for a in state_json(ready)["accepted"]] == [p.region_id]
    assert [q.region_id for q in ready.pending_proposals] == [ready.proposals[1].region_id]
    assert ready.next_proposal().rank == 2


def test_accept_reads_the_canvas_and_asks_before_a_partial_region(session):
    session.labels[0, 0:32, 0:32] = 2
    session.labels[0, 0:10, 0:5] = 0
    with pytest.raises(PartialRegionError, match="unpainted") as err:
        session.accept(0)
    assert err.value.region_ids == [0] and err.value.unpainted == [50]
    assert not session.is_accepted(0)
    rec = session.accept(0, confirm_partial=True)
    assert rec.sampler == "manual" and rec.rank is None
    assert rec.fractions["unlabeled"] == pytest.approx(50 / 1024)
    with pytest.raises(PaserInputError, match="no painted pixels"):
        session.accept(1)


def test_accept_refuses_bad_patches(session):
    with pytest.raises(PaserInputError, match="shape"):
        session.accept(0, np.ones((16, 32), np.uint8))
    with pytest.raises(PaserInputError, match="only 3 classes"):
        session.accept(0, np.full((32, 32), 4, np.uint8))
    with pytest.raises(PaserInputError, match="integers"):
        session.accept(0, np.ones((32, 32), np.float32))
    with pytest.raises(PaserInputError, match="no region 99"):
        session.accept(99, np.ones((32, 32), np.uint8))


def test_accept_painted_outside_proposals(session):
    session.labels[1, 0:32, 32:64] = 1
    session.labels[1, 40:50, 0:10] = 3  # a partial stroke in another region
    assert session.painted_regions().tolist() == [5, 6]
    with pytest.raises(PartialRegionError):
        session.accept_painted()
    assert session.accepted == []
    recs = session.accept_painted(z=1, confirm_partial=True)
    assert [r.region_id for r in recs] == [5, 6] and all(r.sampler == "manual" for r in recs)
    assert session.painted_regions().size == 0
    with pytest.raises(PaserInputError, match="no painted labels"):
        session.accept_painted()


def test_reaccept_replaces_labels_and_val_split(tmp_path):
    s = Session.create(tmp_path / "s", image(), region_size=32, val_every=2)
    s.accept(0, full(s, 0, 1))
    s.accept(1, full(s, 1, 2))
    assert [a.split for a in s.accepted] == ["train", "val"]
    s.accept(0, full(s, 0, 3))
    assert len(s.accepted) == 2 and s.accepted[-1].region_id == 0 and s.accepted[-1].split == "train"
    assert Session.open(s.folder).accepted_labels(0).max() == 3
    assert sorted(p.name for p in (s.folder / "regions").iterdir()) == ["0-2.npy", "1-1.npy"]


def test_sync_labels_checks_shape(session):
    with pytest.raises(PaserInputError, match="shape"):
        session.sync_labels(np.zeros((2, 32, 32), np.uint8))
    layer = np.zeros((2, 64, 64), np.uint8)
    layer[1, :32, :32] = 2
    session.sync_labels(layer)
    assert session.painted_regions().tolist() == [4]


# ----------------------------------------------------------------------------- autosave / crash


def test_reopen_resumes_exactly(ready):
    props = ready.propose(3, "entropy")
    ready.accept(props[0].region_id, full(ready, props[0].region_id))
    again = Session.open(ready.folder)
    assert again.accepted == ready.accepted and again.proposals == ready.proposals
    assert props[0].region_id not in again.pool.candidates()
    assert again.fresh_slices() == [0, 1]
    new = again.propose(7, "entropy")  # every remaining region, never an accepted one
    assert props[0].region_id not in [p.region_id for p in new]


def _fail_replace_of(name: str, monkeypatch):
    real = os.replace

    def replace(src, dst, *a, **k):
        if os.path.basename(os.fspath(dst)) == name:
            assert os.path.getsize(src) > 0  # the temporary file was written in full
            raise OSError("simulated crash during rename")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_while_saving_keeps_the_previous_state(ready, monkeypatch):
    first = ready.propose(2, "entropy")[0].region_id
    ready.accept(first, full(ready, first))
    before = (ready.folder / "session.json").read_text()
    second = ready.proposals[1].region_id
    _fail_replace_of("session.json", monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        ready.accept(second, full(ready, second, 2))
    monkeypatch.undo()
    assert (ready.folder / "session.json").read_text() == before
    assert not ready.is_accepted(second) and len(ready.accepted) == 1  # memory unchanged too
    assert not [p for p in ready.folder.iterdir() if p.name.endswith(".tmp")]
    again = Session.open(ready.folder)
    assert [a.region_id for a in again.accepted] == [first]
    assert second in again.pool.candidates()
    np.testing.assert_array_equal(again.accepted_labels(first), full(ready, first))
    again.accept(second, full(ready, second, 2))  # and work goes on
    assert len(Session.open(ready.folder).accepted) == 2


def test_crash_while_saving_a_model_keeps_the_previous_weights(ready, monkeypatch):
    ready.accept(0, full(ready, 0))
    old = {k: v.clone() for k, v in ready.models["f0"].state_dict().items()}
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        collect(ready.retrain(FAST, refresh=False))
    monkeypatch.undo()
    again = Session.open(ready.folder)
    assert again.state.model_version == 1
    for k, v in again.models["f0"].state_dict().items():
        torch.testing.assert_close(v, old[k])


# ----------------------------------------------------------------------------- retrain


def test_retrain_trains_commits_and_refreshes(ready):
    props = ready.propose(2, "entropy")
    ready.accept(props[0].region_id, full(ready, props[0].region_id, 2))
    old = {k: v.clone() for k, v in ready.models["f0"].state_dict().items()}
    events, result = collect(ready.retrain(TrainConfig(epochs=2, batch_size=1, augment=False), samples=1))
    stages = [e.stage for e in events]
    first = stages.index("train")  # the forest assist scores and refits first (session.forest)
    assert set(stages[:first]) == {"forest"} and stages[first:first + 2] == ["train", "train"]
    assert "save" in stages and "maps" in stages and stages[-1] == "done"
    assert all(isinstance(e, Progress) and e.done <= e.total for e in events)
    assert not result.cancelled and result.curve_point.n_labeled == 1 and result.curve_point.val_miou is None
    assert ready.state.model_version == 2 and ready.fresh_slices() == [0, 1]
    assert any(not torch.equal(v, old[k]) for k, v in ready.models["f0"].state_dict().items())
    assert len(ready.proposals) == 2 and props[0].region_id not in [p.region_id for p in ready.proposals]
    again = Session.open(ready.folder)
    assert again.curve == ready.curve
    for k, v in again.models["f0"].state_dict().items():
        torch.testing.assert_close(v, ready.models["f0"].state_dict()[k])
    assert sorted(p.name for p in (ready.folder / "models").iterdir()) == ["f0-0002.pt"]


def test_retrain_learning_curve_uses_held_out_regions(tmp_path):
    s = Session.create(tmp_path / "s", image(), region_size=32, val_every=2)
    s.new_models({"f0": TINY})
    s.accept(0, full(s, 0, 1))
    s.accept(1, full(s, 1, 2))
    data = s.training_data()
    x, vx = data.images, data.val_images
    assert len(x) == 1 and x[0].shape == (64, 64) and vx.shape == (1, 32, 32) and x[0].dtype == np.float32
    assert x[0].max() <= 1 and data.n_train_pixels == 32 * 32 and data.n_val_pixels == 32 * 32
    _, result = collect(s.retrain(FAST, refresh=False))
    point = s.curve[-1]
    assert (point.n_labeled, point.n_train, point.n_val) == (2, 1, 1)
    assert point.val_miou is not None and 0 <= point.val_miou <= 1


def test_partial_border_regions_train_with_unlabeled_padding(tmp_path):
    s = Session.create(tmp_path / "s", image(1, 48), region_size=32)
    s.new_models({"f0": TINY})
    border = s.region(3)
    assert (border.h, border.w) == (16, 16)
    patch = full(s, 3, 2)
    patch[0, 0] = 0
    s.accept(3, patch, confirm_partial=True)
    data = s.training_data()  # the piece grows to 64x64 around the labels, within the 48x48 slice
    y = data.labels[0]
    assert len(data.labels) == 1 and y.shape == (48, 48) and (y[:32] == 255).all() and (y[:, :32] == 255).all()
    assert y[32, 32] == 255 and y[33, 33] == 1 and data.n_train_pixels == 16 * 16 - 1
    collect(s.retrain(FAST, refresh=False))


def test_retrain_cancel_keeps_the_last_good_weights(ready):
    ready.accept(0, full(ready, 0))
    ready.accept(1, full(ready, 1, 2))
    old = {k: v.clone() for k, v in ready.models["f0"].state_dict().items()}
    steps = iter(range(100))
    events, result = collect(ready.retrain(TrainConfig(epochs=3, batch_size=1), should_stop=lambda: next(steps) >= 2))
    assert result.cancelled and events[-1].stage == "cancelled"
    assert ready.state.model_version == 1 and ready.curve == []
    for k, v in ready.models["f0"].state_dict().items():
        torch.testing.assert_close(v, old[k])
    gen = ready.retrain(TrainConfig(epochs=3, batch_size=1))  # closing the generator (worker.quit()) too
    next(gen), next(gen)
    gen.close()
    assert ready.state.model_version == 1
    for k, v in Session.open(ready.folder).models["f0"].state_dict().items():
        torch.testing.assert_close(v, old[k])


def test_retrain_with_the_lr_agent_saves_its_q_table(ready):
    ready.accept(0, full(ready, 0))
    collect(ready.retrain(TrainConfig(epochs=2, batch_size=2, scheduler="agent"), refresh=False))
    assert "q_table" in Session.open(ready.folder).state.lr_agents["f0"]
    collect(ready.retrain(TrainConfig(epochs=1, batch_size=2, scheduler="agent"), refresh=False))
    assert ready.state.model_version == 3


def test_retrain_needs_accepted_regions(ready):
    with pytest.raises(PaserInputError, match="accept at least one region"):
        ready.retrain(FAST)
    with pytest.raises(PaserInputError, match="no model f1"):
        ready.retrain(FAST, roles=("f0", "f1"))


def test_errors_share_one_base_type():
    assert issubclass(PartialRegionError, PaserInputError) and issubclass(PaserInputError, InputError)


def test_dqn_sampler_from_a_saved_agent(ready, tmp_path):
    from sampling.dqn import DQNAgent, FeatureSpec

    spec = FeatureSpec(grid=2, bins=4, state_regions=2)
    path = DQNAgent(spec.net_config(width=8)).save(tmp_path / "dqn.pt", meta={"features": spec.to_dict()})
    ready.accept(0, full(ready, 0, 2))
    props = ready.propose(2, "dqn", seed=0, dqn_checkpoint=path, pool_size=2)
    assert len(props) == 2 and all(p.sampler == "dqn" and p.region_id != 0 for p in props)
    assert ready.state.proposal_request["dqn_checkpoint"] == str(path)


def test_routing_needs_a_policy_and_reports_cost(session, tmp_path):
    from learners.routing.policy import PolicyConfig, PolicyNet, save_policy

    run = tmp_path / "run"
    save_checkpoint(run / "f0.pt", UNet(TINY))
    save_checkpoint(run / "f1.pt", UNet(UNetConfig(base=6, depth=2)))
    session.load_models(run)
    with pytest.raises(PaserInputError, match="no routing policy"):
        session.route(0)
    three = tmp_path / "three.pt"
    save_policy(three, PolicyNet(PolicyConfig(n_models=3, grid=(2, 2), width=4)))
    with pytest.raises(PaserInputError, match="f2 are not loaded"):
        session.load_policy(three)
    save_policy(run / "policy.pt", PolicyNet(PolicyConfig(n_models=2, grid=(2, 2), width=4)))
    assert session.load_models(run) == ["f0", "f1", "policy"]
    session = Session.open(session.folder)  # the reopened session holds the policy (and routing commits maps)
    routed = session.route(1, samples=1)
    assert routed.routing.shape == (2, 2) and routed.segmentation.shape == (64, 64)
    assert routed.names == ("f0", "f1") and set(routed.params) == {"f0", "f1"}
    assert routed.shares["f0"] == 1.0  # an untrained policy is uniform; its argmax is f0
    assert 0 < routed.gflops and 0 < routed.gflops_largest
    assert routed.pixel_map().shape == (64, 64)
    save_checkpoint(tmp_path / "solo" / "f0.pt", UNet(TINY))
    session.load_models(tmp_path / "solo")  # a run without f1 / policy.pt replaces the whole set
    assert set(session.models) == {"f0"} and not session.has_policy
    assert sorted(p.name for p in (session.folder / "models").iterdir()) == ["f0-0003.pt"]


def test_policy_bank_gives_a_live_lambda_control(session, tmp_path):
    from learners.routing.policy import PolicyConfig, PolicyNet
    from learners.routing.bank import PolicyBank, save_bank

    run = tmp_path / "run"
    save_checkpoint(run / "f0.pt", UNet(TINY))
    save_checkpoint(run / "f1.pt", UNet(UNetConfig(base=6, depth=2)))
    policies = {}
    for lam, favourite in ((0.0, 1), (1.0, 0)):  # head biases that force f1 (lambda 0) or f0 (lambda 1)
        p = PolicyNet(PolicyConfig(n_models=2, grid=(2, 2), width=4))
        p.head.bias.data[:] = torch.tensor([5.0, 0.0] if favourite == 0 else [0.0, 5.0])
        policies[lam] = p
    save_bank(run, PolicyBank(policies))
    assert session.load_models(run) == ["f0", "f1", "policy@0.000", "policy@1.000"]
    assert session.has_policy and session.policy_lambdas == [0.0, 1.0]
    assert not session.has_state(1, samples=2)
    up = session.route(1, samples=2, lam=0.2)  # nearest: 0.0
    assert session.has_state(1, samples=2)
    assert up.lam == 0.0 and up.shares == {"f0": 0.0, "f1": 1.0} and up.segmentation.shape == (64, 64)
    preview = session.route(1, samples=2, lam=0.2, execute=False)  # the cached state: no model runs
    assert preview.segmentation is None and preview.gflops == pytest.approx(up.gflops)
    down = session.route(1, samples=2, lam=0.9, execute=False)
    assert down.lam == 1.0 and down.shares["f0"] == 1.0 and down.gflops < up.gflops
    assert (down.pixel_map() == 0).all() and (up.pixel_map() == 1).all()
    assert session.route(1, samples=2).lam == 1.0  # no policy.pt: the bank member at index len // 2
    reopened = Session.open(session.folder)
    assert reopened.policy_lambdas == [0.0, 1.0]
    assert reopened.route(1, samples=2, lam=1.0, execute=False).shares["f0"] == 1.0
    session.new_models({"f0": "tiny"})  # new f0 weights: the cached state is stale
    assert not session.has_state(1, samples=2)
    save_checkpoint(tmp_path / "solo" / "f0.pt", UNet(TINY))
    session.load_models(tmp_path / "solo")
    assert session.policy_lambdas == [] and not session.has_policy


KILL_CHILD = """
import sys, numpy as np
from napari_paser.session.core import Session
s = Session.open(sys.argv[1])
for rid in range(len(s.pool)):
    r = s.region(rid)
    s.accept(rid, np.full((r.h, r.w), rid % 3 + 1, np.uint8))
    print(rid, flush=True)
"""


def test_kill_at_any_moment_leaves_a_complete_state(tmp_path):
    import signal
    import subprocess
    import sys

    s = Session.create(tmp_path / "s", image(8), region_size=16)  # 128 regions to accept
    s.close()  # one process writes a session at a time: the child takes the folder
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(s.folder)], stdout=subprocess.PIPE, text=True)
    for _ in range(5):  # let it accept a few regions, then kill it mid-stream
        assert child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    again = Session.open(s.folder)
    assert len(again.accepted) >= 5
    for rec in again.accepted:  # every committed region has its complete crop
        np.testing.assert_array_equal(again.accepted_labels(rec.region_id), full(again, rec.region_id, rec.region_id % 3 + 1))
    assert again.pool.candidates().size == len(again.pool) - len(again.accepted)
    again.accept(again.pool.candidates()[0], full(again, again.pool.candidates()[0]))


def test_retrain_in_a_worker_thread_while_the_person_keeps_labeling(ready):
    """What a napari thread_worker does: drain the generator in a thread; the GUI thread
    accepts more regions meanwhile; a cancel flag set later stops it within a second."""
    import threading
    import time

    ready.accept(0, full(ready, 0))
    stop, started, events, finished = threading.Event(), threading.Event(), [], {}

    def worker():
        for event in ready.retrain(TrainConfig(epochs=10_000, batch_size=1), should_stop=stop.is_set):
            events.append(event)
            started.set()
        finished["at"] = time.perf_counter()

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(30)
    ready.accept(1, full(ready, 1, 2))  # the GUI thread commits while training runs
    ready.accept(2, full(ready, 2, 3))
    asked = time.perf_counter()
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and finished["at"] - asked < 1.0
    assert events[-1].stage == "cancelled" and ready.state.model_version == 1
    assert [a.region_id for a in Session.open(ready.folder).accepted] == [0, 1, 2]
