"""The bilevel step: inner/meta alternation, replay buffer, meta split, regulariser, non-finite handling."""
import math

import pytest
import torch

from meltr_ray.core.bilevel import NonFiniteError, ReplayBuffer, regulariser
from meltr_ray.config import JobConfig
from meltr_ray.core.loop import build_trainer, fit
from meltr_ray.core.meltr import build_combiner

from toy_models import ToyMultiTask, toy_batches

SMALL_MELTR = {"meltr.preset": "meltr_tiny"}


def make(overrides=None, seed=0):
    cfg = JobConfig().with_overrides({**SMALL_MELTR, "optim.backbone_lr": 1e-2, "optim.meltr_lr": 1e-3,
                                      "meta.scope": "all", "optim.schedule": "constant", "train.log_every": 1,
                                      **(overrides or {})}).validate()
    torch.manual_seed(seed)
    model = ToyMultiTask()
    return cfg, model, build_combiner(cfg.meltr, len(model.task_names))


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def test_inner_step_trains_the_backbone_and_discards_meltr_gradients():
    cfg, model, meltr = make({"meta.meta_every": 100})
    trainer = build_trainer(model, meltr, cfg)
    before_w, before_phi = snapshot(model), snapshot(meltr)
    metrics = trainer.step(toy_batches(1)[0])
    assert any(not torch.equal(a, b) for a, b in zip(before_w, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_phi, meltr.parameters()))
    assert all(p.grad is None for p in meltr.parameters())
    assert set(metrics) >= {"train_loss", "loss_primary", "weight_harmful"}


def test_meta_step_runs_every_meta_every_steps_and_updates_meltr():
    cfg, model, meltr = make({"meta.meta_every": 3})
    trainer = build_trainer(model, meltr, cfg)
    before_phi = snapshot(meltr)
    for i, batch in enumerate(toy_batches(7)):
        metrics = trainer.step(batch)
        assert ("meta_grad_norm" in metrics) == ((i + 1) % 3 == 0)
    assert trainer.counters.meta_steps == 2
    assert any(not torch.equal(a, b) for a, b in zip(before_phi, meltr.parameters()))
    assert len(trainer.buffer) == 7


def test_meta_gradient_is_clipped():
    cfg, model, meltr = make({"meta.meta_every": 1, "meta.clip_norm": 1e-3, "optim.optimizer": "adam",
                              "optim.meltr_weight_decay": 0.0})
    trainer = build_trainer(model, meltr, cfg)
    captured = []
    original = trainer.meltr_optimizer.step

    def spy(*args, **kwargs):
        captured.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in trainer.meta_params)))
        return original(*args, **kwargs)
    trainer.meltr_optimizer.step = spy
    metrics = trainer.step(toy_batches(1)[0])
    assert metrics["meta_grad_norm"] > 1e-3
    assert captured[0] == pytest.approx(1e-3, rel=1e-3)


def test_held_out_meta_split_is_used_for_the_outer_loss():
    cfg, model, meltr = make({"meta.meta_every": 1, "meta.source": "split", "data.meta_split": "meta",
                              "meta.reg_weight": 0.0})
    trainer = build_trainer(model, meltr, cfg)
    meta_batch = toy_batches(1, seed=42)[0]
    train_batch = toy_batches(1, seed=1)[0]
    metrics = trainer.step(train_batch, lambda: meta_batch)
    with torch.no_grad():
        expected = model(meta_batch, tasks=["primary"])["primary"].item()
    # The outer loss is computed after the inner update: re-evaluate at the same (post-inner, pre-meta) w.
    assert metrics["meta_outer_loss"] == pytest.approx(metrics["meta_primary_loss"])
    assert metrics["meta_primary_loss"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="meta.source='split' needs meta batches"):
        trainer.step(train_batch)


def test_mtl_baseline_has_no_meta_step():
    cfg, model, meltr = make({"meltr.combiner": "mtl", "meta.meta_every": 1})
    trainer = build_trainer(model, meltr, cfg)
    assert trainer.meltr_optimizer is None
    metrics = trainer.step(toy_batches(1)[0])
    assert "meta_grad_norm" not in metrics and trainer.counters.meta_steps == 0
    assert metrics["weight_primary"] == pytest.approx(1.0)


def test_regulariser_forms():
    losses, combined = torch.tensor([1.0, 2.0]), torch.tensor(1.0)
    assert regulariser(losses, combined, "abs").item() == pytest.approx(2.0)
    assert regulariser(losses, combined, "square").item() == pytest.approx(4.0)
    assert regulariser(losses, torch.tensor(5.0), "abs").item() == pytest.approx(2.0)


def test_replay_buffer_fifo_and_weighted_eviction():
    fifo = ReplayBuffer(3, "fifo")
    for i in range(5):
        fifo.append({"i": torch.tensor(i)})
    assert [int(b["i"]) for b in fifo.items] == [2, 3, 4]

    counts = torch.zeros(4)
    for trial in range(2000):
        buf = ReplayBuffer(3, "weighted", seed=trial)
        for i in range(4):
            buf.append({"i": torch.tensor(i)})
        kept = {int(b["i"]) for b in buf.items}
        assert 3 in kept                          # the batch just added is never evicted
        counts[list({0, 1, 2, 3} - kept)[0]] += 1
    # official weights (i+1)/size: index 2 is evicted ~3x as often as index 0
    assert counts[3] == 0
    assert 2.3 < (counts[2] / counts[0]).item() < 3.8


def test_replay_buffer_state_round_trip():
    buf = ReplayBuffer(4, "random", seed=3)
    for i in range(6):
        buf.append({"i": torch.tensor(i)})
    copy = ReplayBuffer(4, "random")
    copy.load_state_dict(buf.state_dict())
    assert [int(copy.sample()["i"]) for _ in range(5)] == [int(buf.sample()["i"]) for _ in range(5)]


def _nan_batch(task="harmful"):
    batch = toy_batches(1)[0]
    batch[f"y_{task}"] = batch[f"y_{task}"] * float("nan")
    return batch


def test_non_finite_losses_are_skipped_and_counted():
    cfg, model, meltr = make({"meta.meta_every": 100, "meta.max_nonfinite": 3})
    trainer = build_trainer(model, meltr, cfg)
    before = snapshot(model)
    assert trainer.step(_nan_batch()) == {"skipped_inner": 1.0}
    assert trainer.counters.skipped_inner == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    trainer.step(toy_batches(1)[0])                 # a good step resets the run of failures
    assert trainer.counters.inner_fail_run == 0


def test_too_many_non_finite_steps_in_a_row_stop_training_with_a_clear_error():
    cfg, model, meltr = make({"meta.meta_every": 100, "meta.max_nonfinite": 3})
    with pytest.raises(NonFiniteError, match=r"3 non-finite inner .* steps in a row \(meta.max_nonfinite=3\)"):
        fit(model, meltr, cfg, lambda epoch: [_nan_batch()] * 5)


def test_non_finite_hypergradient_is_skipped():
    cfg, model, meltr = make({"meta.meta_every": 1})
    trainer = build_trainer(model, meltr, cfg)
    before = snapshot(meltr)
    metrics = trainer.meta_step(_nan_batch("primary"), toy_batches(1)[0])
    assert metrics == {"skipped_meta": 1.0}
    assert all(torch.equal(a, b) for a, b in zip(before, meltr.parameters()))


def test_fit_reports_every_epoch_with_evaluation():
    cfg, model, meltr = make({"train.epochs": 2, "meta.meta_every": 2})
    reports = []
    data = toy_batches(4)
    out = fit(model, meltr, cfg, lambda epoch: data, evaluate=lambda m: m.evaluate(data),
              report=lambda metrics, handle: reports.append(metrics))
    assert [r["epoch"] for r in reports] == [1, 2]
    assert reports[-1] == out and "val_primary_mse" in out and out["meta_steps"] == 4


def test_fit_finite_difference_method_and_max_steps():
    cfg, model, meltr = make({"train.epochs": 3, "meta.meta_every": 1, "meta.products": "finite_difference",
                              "train.max_steps": 5})
    out = fit(model, meltr, cfg, lambda epoch: toy_batches(3, seed=epoch))
    assert out["step"] == 5 and out["meta_steps"] == 5 and out["epoch"] == 2


@pytest.mark.parametrize("source", ["replay", "current"])
def test_shared_forward_hypergradient_equals_the_meta_step_on_the_current_batch(source):
    """meta.share_forward reuses the inner forward: same hypergradient as a separate meta step with
    A = B = the current batch at the pre-update w (float64, deterministic MELTR). With source='replay' and an
    empty buffer A is the current batch; with source='current' it is whatever the buffer holds."""
    import copy
    overrides = {"meta.meta_every": 1, "meltr.eval_mode": True, "meta.clip_norm": None, "meta.neumann_steps": 3,
                 "meta.reg_weight": 0.3, "meta.source": source}
    cfg, model, meltr = make(overrides)
    model, meltr = model.double(), meltr.double()
    batch = {k: v.double() for k, v in toy_batches(1, seed=3)[0].items()}
    reference = build_trainer(copy.deepcopy(model), copy.deepcopy(meltr), cfg)
    expected = []
    reference._update_meltr = lambda grads, outer, primary: expected.extend(grads) or {}
    reference.meta_step(batch, batch)

    shared = build_trainer(model, meltr, cfg.with_overrides({"meta.share_forward": True}))
    if source == "current":
        shared.buffer.append({k: v.double() for k, v in toy_batches(1, seed=11)[0].items()})
    captured, update = [], shared._update_meltr
    shared._update_meltr = lambda grads, outer, primary: captured.append(grads) or update(grads, outer, primary)
    metrics = shared.step(batch)
    assert "meta_grad_norm" in metrics and "train_loss" in metrics
    for got, want in zip(captured[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # and the backbone still took its inner step
    assert any(not torch.equal(a, b) for a, b in zip(reference.model.parameters(), model.parameters()))


def test_shared_forward_trains_and_validates():
    cfg, model, meltr = make({"meta.meta_every": 2, "meta.share_forward": True, "train.epochs": 2})
    out = fit(model, meltr, cfg, lambda epoch: toy_batches(4, seed=epoch))
    assert out["meta_steps"] == 4 and out["skipped_meta"] == 0
    with pytest.raises(ValueError, match="meta.share_forward works with meta.products='exact'"):
        JobConfig().with_overrides({"meta.share_forward": True, "meta.global_hypergrad": True}).validate()


def test_skipped_batches_do_not_enter_the_replay_buffer():
    cfg, model, meltr = make({"meta.meta_every": 100})
    trainer = build_trainer(model, meltr, cfg)
    trainer.step(_nan_batch())
    assert len(trainer.buffer) == 0


class _NaNGradient(torch.nn.Module):
    """A toy whose primary loss is finite while its gradient is not (√w at w = 0) when ``batch["bad"]``."""

    def __init__(self):
        super().__init__()
        self.inner = ToyMultiTask()
        self.task_names = self.inner.task_names
        self.default_meta_scope = self.inner.default_meta_scope
        self.root = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch, tasks=None):
        losses = self.inner(batch, tasks)
        if batch.get("bad") is not None and "primary" in losses:
            losses["primary"] = losses["primary"] + self.root.abs().sqrt()     # value 0, gradient inf/nan
        return losses


def test_a_finite_loss_with_a_nan_gradient_is_skipped_and_never_applied():
    cfg, _, meltr = make({"meta.meta_every": 100, "meta.max_nonfinite": 3})
    model = _NaNGradient()
    trainer = build_trainer(model, meltr, cfg)
    before = snapshot(model)
    bad = {**toy_batches(1)[0], "bad": torch.ones(())}
    assert trainer.step(bad) == {"skipped_inner": 1.0}
    assert trainer.counters.skipped_inner == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))     # no NaN weight
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(NonFiniteError, match="non-finite inner"):
        fit(model, meltr, cfg, lambda epoch: [bad] * 5)


class _NaNOnlyInMetaSteps(ToyMultiTask):
    """Finite losses in the inner step; the primary alone (what the meta step asks for) is NaN."""

    def forward(self, batch, tasks=None):
        losses = super().forward(batch, tasks)
        if tasks is not None:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


def test_nan_only_in_meta_steps_stops_the_run_even_while_inner_steps_succeed():
    cfg, _, meltr = make({"meta.meta_every": 1, "meta.max_nonfinite": 3, "train.epochs": 2})
    torch.manual_seed(0)
    model = _NaNOnlyInMetaSteps()
    with pytest.raises(NonFiniteError, match=r"3 non-finite meta .* steps in a row"):
        fit(model, meltr, cfg, lambda epoch: toy_batches(5, seed=epoch))


def test_task_weights_are_computed_only_on_logged_steps():
    cfg, model, meltr = make({"meta.meta_every": 100, "train.log_every": 3})
    trainer = build_trainer(model, meltr, cfg)
    calls = []
    weights = meltr.task_weights
    meltr.task_weights = lambda losses: calls.append(1) or weights(losses)
    logged = [("weight_primary" in trainer.step(b)) for b in toy_batches(6)]
    assert logged == [False, False, True, False, False, True] and len(calls) == 2


def test_a_linear_schedule_without_a_known_length_is_an_error():
    cfg, model, meltr = make({"optim.schedule": "linear"})
    with pytest.raises(ValueError, match="optim.schedule='linear' needs the run's length"):
        build_trainer(model, meltr, cfg)
    trainer = build_trainer(model, meltr, cfg, steps_per_epoch=4)      # known length: decays to 0 over 4 steps
    for batch in toy_batches(4):
        trainer.step(batch)
    assert trainer.backbone_optimizer.param_groups[0]["lr"] == 0.0
    out = fit(model, meltr, cfg, lambda epoch: toy_batches(4))           # a list has a len(): derived
    assert out["step"] == 4
