import copy

import pytest
import torch
from torch import nn

from rayexp import training
from rayexp.errors import RayexpError

CPU = torch.device("cpu")


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # learnable: the sign of channel 0's mean
    return x, y


def _batches(x, y, bs, epoch=0):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    return [(x[order[i : i + bs]], y[order[i : i + bs]]) for i in range(0, len(x), bs)]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_train_one_epoch_learns():
    x, y = _data()
    model = _model()
    cfg = training.TrainConfig(lr=1e-2)
    opt = training.make_optimizer(model, cfg)
    scaler = training.make_scaler(CPU, "fp32")
    first = training.train_one_epoch(model, _batches(x, y, 16), opt, scaler, CPU, "fp32")
    for epoch in range(1, 15):
        last = training.train_one_epoch(model, _batches(x, y, 16, epoch), opt, scaler, CPU, "fp32")
    assert last["train_loss"] < first["train_loss"]
    assert first["train_images"] == 96 and 0 <= last["data_wait_fraction"] < 1


def test_evaluate_is_global_top1_not_mean_of_batches():
    class Fixed(nn.Module):
        def forward(self, images):
            return torch.stack([torch.zeros(len(images)), images[:, 0, 0, 0]], 1)  # predicts 1 where pixel > 0

    images = torch.tensor([1.0, 1.0, 1.0, -1.0]).view(4, 1, 1, 1).expand(4, 3, 1, 1)
    labels = torch.tensor([1, 1, 1, 1])
    # batch 1: 3/3 right, batch 2: 0/1 right -> mean of batches 0.5, global 0.75
    batches = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    result = training.evaluate(Fixed(), batches, CPU, "fp32", num_classes=2)
    assert result["acc"] == pytest.approx(0.75)
    assert result["n"] == 4 and result["confusion"] == [[0, 0], [1, 3]]


def test_early_stopping_after_exactly_patience_epochs():
    progress = training.Progress()
    cfg = training.TrainConfig(max_epochs=100, patience=3)
    for acc in [0.1, 0.5, 0.4, 0.5]:  # an equal accuracy is no improvement
        progress.update(acc)
        assert not progress.finished(cfg)
    progress.update(0.3)
    assert progress.finished(cfg) and progress.stopped_early
    assert progress.best_acc == 0.5 and progress.best_epoch == 2 and progress.epoch == 5


def test_max_epochs_caps_the_run():
    cfg = training.TrainConfig(max_epochs=2, patience=10)
    progress = training.Progress()
    progress.update(0.1)
    progress.update(0.2)
    assert progress.finished(cfg) and not progress.stopped_early


def _fit(model, cfg, x, y, checkpoint=None, stop_after=None):
    seen = []

    class Stop(Exception):
        pass

    saved = {}

    def on_epoch(metrics, make_checkpoint):
        seen.append(metrics)
        saved["ckpt"] = copy.deepcopy(make_checkpoint())
        if stop_after is not None and metrics["epoch"] == stop_after:
            raise Stop

    def train_batches(epoch):
        return _batches(x, y, 16, epoch + 100 * cfg.seed)

    try:
        final = training.fit(model, train_batches, lambda: _batches(x[:48], y[:48], 16), cfg, CPU, 2, on_epoch, checkpoint)
    except Stop:
        return seen, None, saved["ckpt"]
    return seen, final, saved["ckpt"]


def test_fit_resumes_exactly_from_a_checkpoint():
    x, y = _data()
    cfg = training.TrainConfig(max_epochs=6, patience=10, lr=1e-2, seed=1)
    full, final, _ = _fit(_model(), cfg, x, y)
    first, _, ckpt = _fit(_model(), cfg, x, y, stop_after=3)
    rest, resumed_final, _ = _fit(_model(seed=99), cfg, x, y, checkpoint=ckpt)
    keys = ["epoch", "train_loss", "train_acc", "test_acc", "best_acc", "epochs_without_improvement"]
    assert [{k: m[k] for k in keys} for m in first + rest] == [{k: m[k] for k in keys} for m in full]
    assert resumed_final["best_test_acc"] == final["best_test_acc"] and resumed_final["epochs_run"] == 6


def test_fit_ends_with_the_best_weights():
    x, y = _data()
    cfg = training.TrainConfig(max_epochs=5, patience=10, lr=5e-2)
    model = _model()
    history, final, ckpt = _fit(model, cfg, x, y)
    best = training.evaluate(model, _batches(x[:48], y[:48], 16), CPU, "fp32", 2)
    assert best["acc"] == pytest.approx(final["best_test_acc"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["best_model"].items())


def test_bf16_autocast_on_cpu_runs_the_forward_in_bf16():
    model = _model()
    with training.autocast(CPU, "bf16"):
        logits = model(torch.randn(2, 3, 8, 8))
    assert logits.dtype == torch.bfloat16
    assert training.resolve_precision("auto", CPU) == "fp32"


def test_bad_precision_is_refused():
    with pytest.raises(RayexpError, match="precision 'fp8'"):
        training.TrainConfig(precision="fp8")
