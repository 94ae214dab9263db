"""Official checkpoint layouts load strictly into violet_base; bad checkpoints raise naming the key.

Each synthetic checkpoint is built from a manifest in ``tests/fixtures/checkpoints`` only: random float
tensors with exactly its names and shapes, plus the legacy ``enc_txt.emb_txt.position_ids`` key the released
files carry. The int64 Swin ``relative_position_index`` buffers are deterministic functions of the window, so
the synthetic file holds their true values (as the released files do). Each violet_base is built once.
"""
from __future__ import annotations

import functools
import json

import pytest
import torch
from _violet_common import MANIFESTS, one_torch_thread, tiny  # noqa: F401 (autouse fixture)

from meltr_ray.backbones import create_backbone
from meltr_ray.backbones.violet.checkpoint import filter_violet_state_dict, load_violet_checkpoint
from meltr_ray.backbones.violet.video_swin import relative_position_index

def manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.json").read_text())["tensors"]


def synthetic_checkpoint(name: str, prefix: str = "", legacy: bool = True) -> dict:
    """A fresh dict (the tensors are shared between calls: tests replace entries, never edit them)."""
    state = {prefix + k: v for k, v in _synthetic_tensors(name).items()}
    if legacy:
        state[prefix + "enc_txt.emb_txt.position_ids"] = torch.arange(512).unsqueeze(0)
    return state


@functools.lru_cache(maxsize=None)
def _synthetic_tensors(name: str) -> dict:
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, spec in manifest(name).items():
        if key.endswith("relative_position_index"):
            value = relative_position_index((8, 7, 7), (8, 7, 7))
        else:
            value = torch.randn(spec["shape"], generator=g)
        assert list(value.shape) == spec["shape"]
        state[key] = value
    state["fc_mtm.predictions.decoder.bias"] = state["fc_mtm.predictions.bias"]      # one tied Parameter
    return state


def assert_filled(model, state: dict, renamed: dict | None = None) -> None:
    renamed = renamed or {}
    model_state = model.state_dict()
    for key, value in state.items():
        target = renamed.get(key, key)
        if target in model_state:
            assert torch.equal(model_state[target], value), target


@pytest.fixture(scope="module")
def base_models():
    """One violet_base per QA/retrieval task, built once for the module."""
    return {}


def base(base_models, task: str, **overrides):
    if task not in base_models:
        base_models[task] = create_backbone("violet_base", task=task, **overrides)
    return base_models[task]


@pytest.mark.parametrize("name,task", [("violet_retrieval", "retrieval"), ("violet_qaoe", "qa_oe"),
                                       ("violet_qamc", "qa_mc")])
def test_official_layout_loads_strictly(base_models, tmp_path, name, task, capsys):
    model = base(base_models, task)
    assert sorted(model.state_dict()) == sorted(manifest(name))          # same names ...
    assert all(list(v.shape) == manifest(name)[k]["shape"] for k, v in model.state_dict().items())  # shapes
    if task == "retrieval":       # through a file (torch.load weights_only), saved from a DataParallel wrapper
        state = synthetic_checkpoint(name, prefix="module.")
        torch.save(state, tmp_path / "ckpt.pt")
        report = load_violet_checkpoint(model, str(tmp_path / "ckpt.pt"))
        assert f"loaded {len(manifest(name))} keys" in capsys.readouterr().out
        assert any("'module.'" in note for note in report.notes)
    else:                         # the same filter and strict load, without writing 800 MB again
        state = synthetic_checkpoint(name)
        full, report = filter_violet_state_dict(dict(state), model)
        model.load_state_dict(full, strict=True)
    assert report.initialised == {} and len(report.loaded) == len(manifest(name))
    assert "enc_txt.emb_txt.position_ids" in report.skipped
    assert_filled(model, {k.removeprefix("module."): v for k, v in state.items()})
    assert model.fc_mtm.predictions.decoder.bias is model.fc_mtm.predictions.bias


@pytest.mark.parametrize("task,head", [("qa_oe", "fc_oe"), ("qa_mc", "fc_mc")])
def test_pretrain_layout_into_qa_reuses_vtm_and_reports_fresh_heads(base_models, task, head):
    model = base(base_models, task)
    state = synthetic_checkpoint("violet_retrieval")                    # = the pretrain checkpoint's layout
    full, report = filter_violet_state_dict(dict(state), model)
    model.load_state_dict(full, strict=True)
    assert sorted(report.initialised) == sorted(f"{head}.{i}.{p}" for i in (1, 3) for p in ("weight", "bias"))
    assert report.renamed == {f"fc.{i}.{p}": f"fc_vtm.{i}.{p}" for i in (1, 3) for p in ("weight", "bias")}
    assert_filled(model, state, report.renamed)


def test_official_fresh_vtm_switch(base_models):
    model = base(base_models, "qa_oe")
    model.cfg.reuse_pretrained_vtm = False
    try:
        _, report = filter_violet_state_dict(synthetic_checkpoint("violet_retrieval"), model)
    finally:
        model.cfg.reuse_pretrained_vtm = True
    assert "fc_vtm.1.weight" in report.initialised and "fc.1.weight" in report.skipped


def test_qa_checkpoint_into_retrieval_skips_the_answer_head(base_models):
    model = base(base_models, "retrieval")
    _, report = filter_violet_state_dict(synthetic_checkpoint("violet_qaoe"), model)
    assert report.skipped["fc_oe.3.weight"].startswith("no oe head")
    assert report.renamed["fc_vtm.1.weight"] == "fc.1.weight" and report.initialised == {}


def test_answer_vocabulary_mismatch_names_key_and_shapes(base_models):
    model = base(base_models, "qa_oe")                                   # size_vocab 1000 (MSVD-QA)
    state = synthetic_checkpoint("violet_qaoe")
    state["fc_oe.3.weight"] = torch.zeros(1540, 1536)                     # a TGIF-Frame checkpoint
    with pytest.raises(ValueError, match=r"fc_oe\.3\.weight.*\(1540, 1536\).*\(1000, 1536\).*size_vocab"):
        filter_violet_state_dict(state, model)


def test_bad_legacy_position_ids_and_unknown_keys(base_models):
    model = base(base_models, "retrieval")
    state = synthetic_checkpoint("violet_retrieval")
    state["enc_txt.emb_txt.position_ids"] = torch.zeros(1, 512, dtype=torch.long)
    with pytest.raises(ValueError, match="position_ids"):
        filter_violet_state_dict(dict(state), model)
    state = synthetic_checkpoint("violet_retrieval", legacy=False)
    state["enc_img.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="enc_img.extra.weight"):
        filter_violet_state_dict(state, model)


def test_missing_backbone_key_is_an_error(base_models):
    model = base(base_models, "retrieval")
    state = synthetic_checkpoint("violet_retrieval")
    del state["trsfr.layer.3.output.dense.weight"]
    with pytest.raises(ValueError, match=r"trsfr\.layer\.3\.output\.dense\.weight"):
        filter_violet_state_dict(state, model)


def test_base_checkpoint_into_tiny_is_a_shape_error(tmp_path):
    """Cheap case of the shape check: a base-sized file cannot load into violet_tiny."""
    base_state = synthetic_checkpoint("violet_retrieval")
    torch.save({k: base_state[k] for k in list(base_state)[:8]}, tmp_path / "base.pt")    # base-sized keys
    with pytest.raises(ValueError, match=r"shape mismatch for enc_img\.emb_cls: checkpoint \(1, 1, 1, 768\)"):
        create_backbone("violet_tiny", task="retrieval", pretrained=str(tmp_path / "base.pt"))


def test_tiny_round_trip_through_the_filter(tmp_path):
    source = tiny("qa_oe")
    torch.save(source.state_dict(), tmp_path / "tiny.pt")
    target = tiny("qa_oe", pretrained=None)
    report = load_violet_checkpoint(target, str(tmp_path / "tiny.pt"), verbose=False)
    assert report.initialised == {} and report.skipped == {}
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.slow
def test_pretrain_layout_into_action(tmp_path):
    model = create_backbone("violet_base", task="action")
    _, report = filter_violet_state_dict(synthetic_checkpoint("violet_retrieval"), model)
    assert sorted(report.initialised) == sorted(f"fc_cls.{i}.{p}" for i in (1, 3) for p in ("weight", "bias"))
    assert all(k.startswith(("fc.", "fc_mtm.", "enc_txt.emb_txt.position_ids")) for k in report.skipped)


def test_meltr_ray_training_checkpoint_directory_loads(tmp_path):
    """A checkpoint written by meltr_ray.core.checkpoint (weights under "backbone" in dir/state.pt) can be resumed from."""
    from meltr_ray.core.checkpoint import save_checkpoint
    source = tiny("action")
    save_checkpoint({"backbone": source.state_dict(), "epoch": 3, "combiner": {}}, tmp_path / "epoch_003")
    target = tiny("action", pretrained=str(tmp_path / "epoch_003"), verbose=False)
    assert target.load_report.initialised == {}
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
