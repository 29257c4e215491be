"""Training loop: schedule numbers, bias-corrected EMA, update skipping, budgets, log rows."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tiny_models import TinyConfig, TinyConvModel, realish_images

from harness import atomic
from harness.engine.checkpoint import read_checkpoint
from harness.errors import UserError
from harness.engine.schedule import EMA, lr_at_update
from harness.engine.config import TrainConfig
from harness.engine.train import epoch_permutation, train

TRAIN_ROW_KEYS = {"type", "step", "epoch", "images_seen", "loss_bits_per_dim", "lr", "grad_norm",
                  "skipped_updates_total", "images_per_s", "wall_s"}


def _config(**overrides) -> TrainConfig:
    fields = dict(batch_size=8, lr=1e-2, warmup_steps=2, ema_rate=0.9, max_steps=6,
                  checkpoint_every_steps=0, log_every_steps=1, seed=0, device="cpu",
                  progress="off", grad_clip=None, skip_threshold=None)
    fields.update(overrides)
    return TrainConfig(**fields)


def _model(**fields) -> TinyConvModel:
    torch.manual_seed(0)
    return TinyConvModel(TinyConfig(**fields))


def test_warmup_and_decay_exact_values():
    lr = lambda u, **kw: lr_at_update(u, base_lr=1e-3, warmup_steps=100, **kw)  # noqa: E731
    assert [lr(u) for u in (1, 50, 99, 100, 101, 5000)] == pytest.approx(
        [1e-5, 5e-4, 9.9e-4, 1e-3, 1e-3, 1e-3], rel=1e-12)
    assert lr(150, schedule="cosine", total_steps=200) == pytest.approx(5e-4, rel=1e-12)
    assert lr(200, schedule="cosine", total_steps=200) == pytest.approx(0.0, abs=1e-18)
    assert lr(200, schedule="cosine", total_steps=200, final_fraction=0.1) == pytest.approx(1e-4)
    assert lr(125, schedule="linear", total_steps=200) == pytest.approx(7.5e-4, rel=1e-12)
    assert lr_at_update(1, base_lr=2e-4, warmup_steps=0) == 2e-4


def test_logged_lr_follows_warmup(tmp_path):
    train(_model(), realish_images(32), _config(warmup_steps=4, max_steps=6), tmp_path)
    rows = [r for r in atomic.read_jsonl(tmp_path / "train_log.jsonl") if r["type"] == "train"]
    assert [r["lr"] for r in rows] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])
    assert set(rows[0]) == TRAIN_ROW_KEYS
    assert [r["images_seen"] for r in rows] == [8, 16, 24, 32, 40, 48]
    assert [r["epoch"] for r in rows] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


@pytest.mark.parametrize("bias_correction", [True, False])
def test_ema_equals_hand_computation(bias_correction):
    model = torch.nn.Linear(2, 1)
    initial = [p.detach().clone() for p in model.parameters()]
    rate, history = 0.9, []
    ema = EMA(model, rate, bias_correction=bias_correction)
    for i in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.full_like(p, float(i * i)) + 0.1 * i)
        history.append([p.detach().clone() for p in model.parameters()])
        ema.update()
    n = len(history)
    for j, averaged in enumerate(ema.module().parameters()):
        weighted = sum((1 - rate) * rate ** (n - 1 - i) * history[i][j] for i in range(n))
        if bias_correction:
            expected = weighted / (1 - rate ** n)
        else:
            expected = rate ** n * initial[j] + weighted
        torch.testing.assert_close(averaged, expected, rtol=1e-6, atol=1e-6)
    # Bias-corrected: a constant parameter has a constant average from the first update on.
    constant = torch.nn.Linear(2, 1)
    ema = EMA(constant, 0.999)
    ema.update()
    for a, b in zip(ema.module().parameters(), constant.parameters()):
        torch.testing.assert_close(a, b)


def _checkpoint_parts(path):
    state = read_checkpoint(path)
    return state["model"], state["optimizer"]["state"], state["ema"]


@pytest.mark.parametrize("kind", ["nan", "huge"])
def test_forced_bad_step_skips_exactly_one_update(tmp_path, kind):
    model = _model()
    model.poison = {3: kind}  # the 4th loss call = step 4
    config = _config(checkpoint_every_steps=1, keep_checkpoints=10, grad_clip=100.0,
                     skip_threshold=1e3)
    result = train(model, realish_images(32), config, tmp_path)
    assert (result.skipped_updates, result.applied_updates, result.steps) == (1, 5, 6)
    before = _checkpoint_parts(tmp_path / "checkpoints" / "step-3.pt")
    after = _checkpoint_parts(tmp_path / "checkpoints" / "step-4.pt")
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), key
    for index, slot in before[1].items():
        for name, value in slot.items():
            assert torch.equal(value, after[1][index][name]), (index, name)
    assert before[2]["updates"] == after[2]["updates"] == 3
    assert all(torch.equal(a, b) for a, b in zip(before[2]["shadow"], after[2]["shadow"]))
    later = _checkpoint_parts(tmp_path / "checkpoints" / "step-5.pt")
    assert not torch.equal(later[0]["conv_in.weight"], after[0]["conv_in.weight"])
    rows = atomic.read_jsonl(tmp_path / "train_log.jsonl")
    skips = [r for r in rows if r["type"] == "skip"]
    assert [(r["step"], r["reason"]) for r in skips] == \
        [(4, "nonfinite" if kind == "nan" else "grad_norm")]
    totals = [r["skipped_updates_total"] for r in rows if r["type"] == "train"]
    assert totals == [0, 0, 0, 1, 1, 1]


def test_persistent_skipping_stops_with_clear_message(tmp_path):
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    config = _config(skip_threshold=1e-9, grad_clip=None, max_consecutive_skips=5, max_steps=50)
    with pytest.raises(UserError) as caught:
        train(model, realish_images(32), config, tmp_path)
    message = str(caught.value)
    assert "last 5 updates were all skipped" in message
    assert "train.skip_threshold" in message and "step-5.pt" in message
    assert "\n" not in message
    saved = read_checkpoint(tmp_path / "checkpoints" / "step-5.pt")
    assert saved["loop"]["applied_updates"] == 0
    assert all(torch.equal(saved["model"][k], initial[k]) for k in initial)


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    images = realish_images(16, seed=5)
    config = _config(batch_size=16, lr=3e-2, warmup_steps=5, max_steps=30, grad_clip=200.0)
    train(_model(noise_std=0.0), images, config, tmp_path)
    rows = [r for r in atomic.read_jsonl(tmp_path / "train_log.jsonl") if r["type"] == "train"]
    assert rows[-1]["loss_bits_per_dim"] < rows[0]["loss_bits_per_dim"] - 0.3


def test_budgets_steps_epochs_wall(tmp_path):
    images = realish_images(20)  # batch 8 -> 2 steps per epoch, 4 images left out per epoch
    result = train(_model(), images, _config(max_steps=None, max_epochs=3), tmp_path / "e")
    assert (result.stopped_because, result.steps, result.epochs) == ("max_epochs", 6, 3.0)
    result = train(_model(), images, _config(max_steps=5), tmp_path / "s")
    assert (result.stopped_because, result.steps, result.images_seen) == ("max_steps", 5, 40)
    result = train(_model(step_delay_s=0.05), images,
                   _config(max_steps=10_000, max_wall_s=0.3), tmp_path / "w")
    assert result.stopped_because == "max_wall_s" and 2 <= result.steps < 100
    assert result.wall_s >= 0.3 and result.train_images_per_s > 0
    # Re-running a finished run resumes from its last checkpoint and trains nothing more.
    again = train(_model(), images, _config(max_steps=5), tmp_path / "s")
    assert (again.steps, again.resumed_from_step, again.stopped_because) == (5, 5, "max_steps")


def test_data_order_is_a_seeded_permutation_per_epoch():
    first = epoch_permutation(7, 0, 100)
    assert torch.equal(first, epoch_permutation(7, 0, 100))
    assert torch.equal(first.sort().values, torch.arange(100))
    assert not torch.equal(first, epoch_permutation(7, 1, 100))
    assert not torch.equal(first, epoch_permutation(8, 0, 100))


def test_result_fields_and_ema_module(tmp_path):
    result = train(_model(), realish_images(32), _config(), tmp_path)
    assert result.model is not result.ema_model
    assert not result.ema_model.training and not result.model.training
    assert result.peak_memory_bytes > 0 and math.isfinite(result.final_loss_bits_per_dim)
    names = {row["metric"] for row in result.metric_rows()}
    assert {"train_images_per_s", "peak_memory_bytes", "skipped_updates"} <= names
    assert result.checkpoint_path.name == "step-6.pt" and result.checkpoint_path.exists()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"train\.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"train\.lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match=r"train\.lr_schedule.*max_steps"):
        TrainConfig(lr_schedule="cosine", max_steps=None, max_epochs=1)
    with pytest.raises(ValueError, match=r"train\.ema_rate"):
        TrainConfig(ema_rate=1.0)
    with pytest.raises(ValueError, match=r"train\.max_steps"):
        TrainConfig(max_steps=None)
    with pytest.raises(ValueError, match=r"train\.betas"):
        TrainConfig(betas=(0.9,))
    with pytest.raises(ValueError, match=r"train\.device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match=r"train\.bf16_autocast"):
        TrainConfig(bf16_autocast="yes")
    config = TrainConfig(lr="1e-3", betas=[0.9, 0.99], max_steps=10.0)  # as YAML delivers them
    assert (config.lr, config.betas, config.max_steps) == (1e-3, (0.9, 0.99), 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainConfig(grad_clip=400.0, skip_threshold=200.0)
    assert any("skip_threshold" in str(w.message) for w in caught)


def test_batch_larger_than_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train.batch_size"):
        train(_model(), realish_images(4), _config(batch_size=8), tmp_path)


def test_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    train(_model(), realish_images(32), _config(progress="auto", log_every_steps=3), tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and "bits/dim" in lines[0] and "images/s" in lines[0]
    assert "eta" in lines[-1]
