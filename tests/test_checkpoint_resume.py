"""A run stopped and resumed from a checkpoint ends bit-identical to an uninterrupted run (CPU)."""
import torch

from meltr_ray.core.checkpoint import load_checkpoint, save_checkpoint
from meltr_ray.config import JobConfig
from meltr_ray.core.loop import fit, local_saver
from meltr_ray.core.meltr import build_combiner

from toy_models import ToyMultiTask, toy_batches

EPOCHS = 4


def config():
    return JobConfig().with_overrides({
        "meltr.d_model": 16, "meltr.d_ffn": 16, "meltr.d_scale": 8, "meltr.dropout": 0.2,   # dropout: RNG
        "meta.meta_every": 2, "meta.buffer_size": 3, "meta.eviction": "weighted", "meta.scope": "all",
        "meta.neumann_steps": 2, "optim.backbone_lr": 1e-2, "optim.meltr_lr": 1e-3, "optim.warmup_ratio": 0.2,
        "train.epochs": EPOCHS, "train.seed": 7})


def batches(epoch):
    data = toy_batches(5, seed=100)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
    return [data[i] for i in order]


def fresh(seed):
    torch.manual_seed(seed)          # different initial weights: the checkpoint must restore everything
    cfg = config()
    model = ToyMultiTask()
    return cfg, model, build_combiner(cfg.meltr, 3)


def full_state(model, meltr):
    return {**{f"w.{k}": v for k, v in model.state_dict().items()},
            **{f"phi.{k}": v for k, v in meltr.state_dict().items()}}


def test_resume_is_bit_identical(tmp_path):
    cfg, model, meltr = fresh(0)
    reports = []
    fit(model, meltr, cfg, batches, save=local_saver(tmp_path / "full", keep=0),       # every epoch kept
        report=lambda m, h: reports.append(m))
    reference = full_state(model, meltr)
    reference_opt = load_checkpoint(tmp_path / "full" / f"epoch_{EPOCHS - 1:03d}")

    # "Crash" after epoch 2: a new process would start from fresh objects and the saved state.
    cfg, model, meltr = fresh(123)
    resumed_reports = []
    state = load_checkpoint(tmp_path / "full" / "epoch_001")
    fit(model, meltr, cfg, batches, resume=state, save=local_saver(tmp_path / "resumed"),
        report=lambda m, h: resumed_reports.append(m))
    resumed = full_state(model, meltr)

    assert reports[2:] == resumed_reports
    assert set(resumed) == set(reference)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key
    final = load_checkpoint(tmp_path / "resumed" / f"epoch_{EPOCHS - 1:03d}")
    for name in ("backbone_optimizer", "meltr_optimizer"):
        for (k, a), (_, b) in zip(sorted(reference_opt[name]["state"].items()),
                                  sorted(final[name]["state"].items())):
            for field in a:
                assert torch.equal(torch.as_tensor(a[field]), torch.as_tensor(b[field])), (name, k, field)
    assert final["counters"] == reference_opt["counters"]
    assert final["backbone_scheduler"] == reference_opt["backbone_scheduler"]


def test_checkpoint_holds_the_full_state(tmp_path):
    cfg, model, meltr = fresh(0)
    cfg = cfg.with_overrides({"train.epochs": 1})
    fit(model, meltr, cfg, batches, save=local_saver(tmp_path))
    state = load_checkpoint(tmp_path / "epoch_000")
    assert set(state) >= {"backbone", "combiner", "backbone_optimizer", "meltr_optimizer", "backbone_scheduler",
                          "meltr_scheduler", "buffer", "counters", "rng", "epoch", "config"}
    assert len(state["buffer"]["items"]) == 3
    assert JobConfig.from_dict(state["config"]) == cfg


def test_load_checkpoint_is_weights_only_and_reports_missing(tmp_path):
    import pytest
    save_checkpoint({"x": torch.ones(2)}, tmp_path)
    assert torch.equal(load_checkpoint(tmp_path)["x"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def test_per_rank_parts_round_trip(tmp_path):
    """Distributed saves: rank 0 writes state.pt, every rank its own buffer and RNG; loading with a rank
    merges that rank's parts in."""
    state = {"backbone": {"w": torch.ones(1)}, "buffer": {"items": [0]}, "rng": {"r": 0}}
    save_checkpoint(state, tmp_path, rank=0)
    save_checkpoint({**state, "buffer": {"items": [1]}, "rng": {"r": 1}}, tmp_path, rank=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank_0.pt", "rank_1.pt", "state.pt"]
    assert load_checkpoint(tmp_path, rank=1)["buffer"] == {"items": [1]}
    assert load_checkpoint(tmp_path, rank=1)["rng"] == {"r": 1}
    assert load_checkpoint(tmp_path)["buffer"] == {"items": [0]}
    assert load_checkpoint(tmp_path, rank=5)["buffer"] == {"items": [0]}     # world size changed: rank 0's
