import pytest
import torch

from learners.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from learners.errors import CheckpointError
from learners.unet import UNetConfig, build_unet


def _model():
    torch.manual_seed(0)
    return build_unet(UNetConfig(base=4, depth=2, n_classes=4))


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _model().eval()
    meta = {"class_names": ["a", "b", "c", "d"], "normalisation": {"lo": 1.0, "hi": 2.0}, "fingerprint": "abc"}
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    ckpt = load_checkpoint(path)
    x = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model(x))
    assert ckpt.meta == meta and ckpt.config == model.config
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic write left no temp file


def _evil():  # a callable pickled into a checkpoint must never be loaded
    return "executed"


def test_pickled_callable_is_refused(tmp_path):
    model = _model()
    payload = {"format": FORMAT, "version": 1, "config": model.config.to_dict(),
               "state_dict": model.state_dict(), "meta": {"hook": _evil}}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")


def test_corrupt_foreign_and_missing_files(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _model())
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a napari-paser"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")


def test_mismatched_weights_are_reported(tmp_path):
    model = _model()
    payload = {"format": FORMAT, "version": 1, "config": {**model.config.to_dict(), "base": 8},
               "state_dict": model.state_dict(), "meta": {}}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "bad.pt")
