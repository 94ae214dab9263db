"""A run stopped and resumed from a checkpoint ends bit-identical to an uninterrupted run (CPU); a damaged
checkpoint (truncated, bit-flipped, missing file or rank part) is refused with the file named."""
import json
import logging

import pytest
import torch

from meltr_ray.core.checkpoint import (DamagedCheckpointError, load_checkpoint, save_checkpoint,
                                       verify_checkpoint)
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
    fit(model, meltr, cfg, batches, save=local_saver(tmp_path / "full"),
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
    save_checkpoint({"x": torch.ones(2)}, tmp_path)
    assert torch.equal(load_checkpoint(tmp_path)["x"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def two_rank_checkpoint(directory, epoch=3):
    """What two Ray workers leave in one merged checkpoint directory."""
    state = {"backbone": {"w": torch.arange(64.0)}, "buffer": {"items": [0]}, "rng": {"r": 0}, "epoch": epoch}
    save_checkpoint(state, directory, rank=0, world_size=2)
    save_checkpoint({**state, "buffer": {"items": [1]}, "rng": {"r": 1}}, directory, rank=1, world_size=2)
    return directory


def test_per_rank_parts_round_trip(tmp_path):
    """Distributed saves: rank 0 writes state.pt, every rank its own buffer and RNG, and every writer its own
    manifest; loading with a rank merges that rank's parts in."""
    two_rank_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "manifest_rank_1.json", "rank_0.pt", "rank_1.pt", "state.pt"]
    assert load_checkpoint(tmp_path, rank=1, world_size=2)["buffer"] == {"items": [1]}
    assert load_checkpoint(tmp_path, rank=1, world_size=2)["rng"] == {"r": 1}
    assert load_checkpoint(tmp_path)["buffer"] == {"items": [0]}


def test_each_writer_lists_its_files_with_sizes_and_digests(tmp_path):
    import hashlib
    two_rank_checkpoint(tmp_path)
    main = json.loads((tmp_path / "manifest.json").read_text())
    part = json.loads((tmp_path / "manifest_rank_1.json").read_text())
    assert main["world_size"] == part["world_size"] == 2 and main["epoch"] == part["epoch"] == 3
    assert set(main["files"]) == {"state.pt", "rank_0.pt"} and set(part["files"]) == {"rank_1.pt"}
    for name, entry in {**main["files"], **part["files"]}.items():
        data = (tmp_path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert not list(tmp_path.glob("*.tmp"))


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit flip":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(data)
    else:
        path.unlink()


@pytest.mark.parametrize("how, expected", [("truncate", r"bytes, manifest.json says \d+ \(truncated"),
                                           ("bit flip", r"sha256 differs from manifest.json's \(the content changed"),
                                           ("delete", r"missing \(listed in manifest.json\)")])
def test_damaged_state_file_is_refused_with_the_file_named(tmp_path, how, expected):
    two_rank_checkpoint(tmp_path)
    _damage(tmp_path / "state.pt", how)
    for load in (lambda: load_checkpoint(tmp_path), lambda: load_checkpoint(tmp_path, rank=1, world_size=2)):
        with pytest.raises(DamagedCheckpointError, match=expected) as error:
            load()
        assert str(tmp_path / "state.pt") in str(error.value)


@pytest.mark.parametrize("missing", ["rank_1.pt", "manifest_rank_1.json"])
def test_missing_rank_part_is_an_error_when_the_world_size_is_unchanged(tmp_path, missing):
    two_rank_checkpoint(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DamagedCheckpointError, match="missing") as error:
        load_checkpoint(tmp_path, rank=1, world_size=2)
    assert str(tmp_path / missing) in str(error.value)
    with pytest.raises(DamagedCheckpointError, match=missing):
        verify_checkpoint(tmp_path)                       # the whole checkpoint, as a resume checks it


def test_bit_flip_in_a_rank_part_is_refused(tmp_path):
    two_rank_checkpoint(tmp_path)
    _damage(tmp_path / "rank_1.pt", "bit flip")
    load_checkpoint(tmp_path, rank=0, world_size=2)       # rank 0 reads only its own files
    with pytest.raises(DamagedCheckpointError, match="rank_1.pt: sha256"):
        load_checkpoint(tmp_path, rank=1, world_size=2)


def test_world_size_change_warns_and_continues_from_rank_0(tmp_path, caplog):
    two_rank_checkpoint(tmp_path)
    with caplog.at_level(logging.WARNING, logger="meltr_ray.core.checkpoint"):
        grown = load_checkpoint(tmp_path, rank=2, world_size=3)
    assert grown["buffer"] == {"items": [0]} and grown["rng"] == {"r": 0}
    assert "written by 2 workers and this run has 3: rank 2 resumes from rank 0's" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meltr_ray.core.checkpoint"):
        shrunk = load_checkpoint(tmp_path, rank=1, world_size=1)
    assert shrunk["buffer"] == {"items": [1]} and "rank 1 resumes from its own" in caplog.text
    single = tmp_path / "single"
    save_checkpoint({"buffer": {"items": [7]}, "rng": {"r": 7}, "epoch": 0}, single)
    assert load_checkpoint(single, rank=1, world_size=2)["buffer"] == {"items": [7]}


def test_incomplete_or_mixed_checkpoints_are_refused(tmp_path):
    two_rank_checkpoint(tmp_path)
    (tmp_path / "manifest.json").unlink()                 # the writer stopped before its manifest
    with pytest.raises(DamagedCheckpointError, match="manifest.json: missing — the checkpoint is incomplete"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path, verify=False)["epoch"] == 3      # explicitly unchecked
    mixed = two_rank_checkpoint(tmp_path / "mixed")
    save_checkpoint({"buffer": {}, "rng": {}, "epoch": 4}, mixed, rank=1, world_size=2)   # another epoch's part
    with pytest.raises(DamagedCheckpointError, match="epoch 4, manifest.json says 3"):
        verify_checkpoint(mixed)
    hostile = two_rank_checkpoint(tmp_path / "hostile")
    manifest = json.loads((hostile / "manifest.json").read_text())
    manifest["files"]["../outside"] = manifest["files"]["state.pt"]
    (hostile / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedCheckpointError, match="not a file name inside the checkpoint"):
        verify_checkpoint(hostile)
    (hostile / "manifest_rank_1.json").write_text(json.dumps({**manifest, "world_size": "2"}))
    with pytest.raises(DamagedCheckpointError, match="manifest_rank_1.json: not a .* manifest of rank 1"):
        verify_checkpoint(hostile)


def test_unreadable_file_is_named_even_unverified(tmp_path):
    save_checkpoint({"x": torch.ones(1000)}, tmp_path)
    _damage(tmp_path / "state.pt", "truncate")
    with pytest.raises(DamagedCheckpointError, match="state.pt: unreadable checkpoint file"):
        load_checkpoint(tmp_path, verify=False)


def test_save_with_a_rank_needs_the_world_size(tmp_path):
    with pytest.raises(ValueError, match="world_size"):
        save_checkpoint({"buffer": {}, "rng": {}}, tmp_path, rank=1)
