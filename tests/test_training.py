import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from learners.inference import predict_classes, predict_logits
from learners.metrics import mean_iou
from learners.pretrain import pretrain_segmenters
from learners.training import EpochReport, TrainConfig, class_weights, iter_training, train
from learners.unet import UNetConfig, build_unet


def _toy(n=8, size=48, seed=0):
    """Three phases from a smooth field, grey levels per phase plus noise: learnable but not trivial."""
    rng = np.random.default_rng(seed)
    fields = np.stack([gaussian_filter(rng.normal(size=(size, size)), 3) for _ in range(n)])
    q = np.quantile(fields, [0.5, 0.7])
    labels = np.digitize(fields, q).astype(np.uint8)  # majority class 0 at ~50%
    images = (np.array([0.2, 0.5, 0.8], np.float32)[labels] + rng.normal(0, 0.12, labels.shape)).astype(np.float32)
    return images, labels


def test_tiny_unet_beats_majority_baseline():
    x, y = _toy()
    torch.manual_seed(0)
    model = build_unet(UNetConfig(base=8, depth=2))
    cfg = TrainConfig(epochs=12, batch_size=2, lr=1e-2, patience=12, seed=0)
    result = train(model, x[:6], y[:6], x[6:], y[6:], cfg, progress=False)
    majority = mean_iou(np.zeros_like(y[6:]), y[6:], 3)  # about 0.5 / 3
    trained = mean_iou(predict_classes(model, x[6:]), y[6:], 3)
    assert trained > majority + 0.35
    assert result.best_val_miou == pytest.approx(trained, abs=1e-6)


def test_training_is_deterministic_with_a_seed():
    x, y = _toy(n=4, size=32)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_unet(UNetConfig(base=4, depth=2))
        train(model, x, y, None, None, TrainConfig(epochs=2, batch_size=2, seed=5), progress=False)
        outs.append(predict_logits(model, x))
    assert torch.equal(outs[0], outs[1])


def test_patchwise_training_and_validation():
    x, y = _toy(n=6, size=48)
    model = build_unet(UNetConfig(base=4, depth=2))
    result = train(model, x[:4], y[:4], x[4:], y[4:], TrainConfig(epochs=2, batch_size=16), grid=(4, 4), progress=False)
    assert len(result.history) == 2 and all(0 <= h.val_miou <= 1 for h in result.history)


def test_early_stopping_restores_best_weights():
    x, y = _toy(n=4, size=32)
    model = build_unet(UNetConfig(base=4, depth=2))
    cfg = TrainConfig(epochs=10, batch_size=2, lr=1e-9, patience=2, augment=False)
    result = train(model, x[:2], y[:2], x[2:], y[2:], cfg, progress=False)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 0


def test_cancel_keeps_last_good_weights():
    x, y = _toy(n=4, size=32)
    model = build_unet(UNetConfig(base=4, depth=2))
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3  # two steps per epoch: cancel inside the second epoch

    gen = iter_training(model, x[:2], y[:2], x[2:], y[2:], TrainConfig(epochs=5, batch_size=1), should_stop=stop)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as done:
        result = done.value
    epochs = [e for e in events if isinstance(e, EpochReport)]
    assert result.cancelled and len(epochs) == 1 and result.best_epoch == 0
    assert not model.training


def test_class_weights_favour_rare_classes():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = class_weights(labels, 4).numpy()
    assert w[2] > w[1] > w[0] and w[3] == w.max()


def test_distillation_pulls_student_towards_teacher():
    x, y = _toy(n=4, size=32)
    xt = torch.from_numpy(x)[:, None]
    teacher = torch.cat([4 * xt - 2, 2 - 4 * xt, torch.zeros_like(xt)], 1)  # a smooth, learnable target
    gaps = []
    for beta in (0.0, 5.0):
        torch.manual_seed(0)
        model = build_unet(UNetConfig(base=4, depth=2, dropout=0.0))
        cfg = TrainConfig(epochs=8, batch_size=2, lr=5e-3, kd_beta=beta, augment=False, class_weighted=False)
        train(model, x, y, None, None, cfg, teacher_logits=teacher, progress=False)
        gaps.append(float(((predict_logits(model, x) - teacher) ** 2).mean()))
    assert gaps[1] < 0.8 * gaps[0]


def test_pretrain_segmenters_trains_all_models_in_order():
    x, y = _toy(n=6, size=32)
    configs = [UNetConfig(base=4, depth=2), UNetConfig(base=8, depth=2)]
    done = []
    res = pretrain_segmenters(configs, x[:4], y[:4], x[4:], y[4:], [TrainConfig(epochs=1, batch_size=4)] * 2,
                              progress=False, on_model_done=lambda i, m, r: done.append(i))
    assert done == [1, 0] and [m.config for m in res.models] == configs


def test_pretrain_starts_from_init_models_without_changing_them():
    x, y = _toy(n=6, size=32)
    configs = [UNetConfig(base=4, depth=2), UNetConfig(base=8, depth=2)]
    torch.manual_seed(42)
    starts = [build_unet(c) for c in configs]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in starts]
    still = [TrainConfig(epochs=1, batch_size=4, lr=1e-12, augment=False)] * 2  # a step that moves nothing
    res = pretrain_segmenters(configs, x[:4], y[:4], x[4:], y[4:], still, progress=False, init=starts)
    for model, start, saved in zip(res.models, starts, before):
        assert model is not start
        for k, v in model.state_dict().items():
            if v.is_floating_point() and "running" not in k:
                assert torch.allclose(v, saved[k], atol=1e-6), k
        assert all(torch.equal(v, saved[k]) for k, v in start.state_dict().items())
    fresh = pretrain_segmenters(configs, x[:4], y[:4], x[4:], y[4:], still, progress=False)
    assert not torch.allclose(fresh.models[1].head.weight, starts[1].head.weight)
    with pytest.raises(ValueError, match="init"):
        pretrain_segmenters(configs, x[:4], y[:4], x[4:], y[4:], still, progress=False, init=starts[::-1])


def test_unlabeled_pixels_are_ignored():
    from learners.training import IGNORE_INDEX

    x, y = _toy()
    partial = y.copy()
    partial[:, :, 24:] = IGNORE_INDEX  # only the left half of every slice is labeled
    assert class_weights(partial, 3).numpy() == pytest.approx(class_weights(y[:, :, :24], 3).numpy())
    torch.manual_seed(0)
    model = build_unet(UNetConfig(base=8, depth=2))
    cfg = TrainConfig(epochs=12, batch_size=2, lr=1e-2, patience=12, seed=0)
    train(model, x[:6], partial[:6], x[6:], y[6:], cfg, progress=False)
    majority = mean_iou(np.zeros_like(y[6:]), y[6:], 3)
    assert mean_iou(predict_classes(model, x[6:]), y[6:], 3) > majority + 0.3
