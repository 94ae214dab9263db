"""Loading the official UniVL layout (tests/fixtures/checkpoints/univl.json, copied from the reference): every
manifest key explained, legacy gamma/beta names renamed, tied weights re-tied, bad files named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meltr_ray.backbones import create_backbone, get_spec
from meltr_ray.backbones.univl.checkpoint import TIED, filter_univl_state_dict

MANIFEST = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "univl.json").read_text())
POOLERS = ("bert.pooler.", "visual.pooler.")
# univl_tiny's widths with the official layer counts, so every manifest key has a counterpart
MANIFEST_LAYERS = dict(text_layers=12, visual_layers=6, cross_layers=2, decoder_layers=3)


def legacy(key: str) -> str:
    """The TF-style spelling of a LayerNorm key (as the verified round trip of the manifest used)."""
    if ".LayerNorm." in key or key.startswith("normalize_video"):
        return key.replace(".weight", ".gamma").replace(".bias", ".beta")
    return key


def synthetic_checkpoint(model, full_size: bool = False, seed: int = 0) -> dict:
    """A state dict with exactly the manifest's keys, LayerNorm keys spelled the legacy way, tied keys sharing
    one tensor; shapes from the manifest (full size) or from ``model`` (reduced size)."""
    g, d = torch.Generator().manual_seed(seed), model.cfg.hidden_size
    own = model.state_dict()
    tensors, state = {}, {}
    for key, info in MANIFEST["tensors"].items():
        shape = tuple(info["shape"]) if full_size else tuple(own[key].shape) if key in own else \
            ((d, d) if key.endswith("weight") else (d,))
        group = next((grp for grp in TIED if key in grp), None)
        anchor = group[0] if group else key
        if anchor not in tensors:
            tensors[anchor] = torch.randn(shape, generator=g)
        state[legacy(key)] = tensors[anchor]
    return state


@pytest.fixture(scope="module")
def manifest_model():
    torch.manual_seed(0)
    return create_backbone("univl_tiny", task="retrieval", **MANIFEST_LAYERS)


def test_the_model_names_every_manifest_key_but_the_unused_poolers(manifest_model):
    expected = {k for k in MANIFEST["tensors"] if not k.startswith(POOLERS)}
    assert set(manifest_model.state_dict()) == expected
    assert sum(k.startswith(POOLERS) for k in MANIFEST["tensors"]) == 4


def test_a_synthetic_official_checkpoint_loads_strictly_with_a_full_report(manifest_model, tmp_path):
    state = synthetic_checkpoint(manifest_model)
    assert sum(k.endswith((".gamma", ".beta")) for k in state) == 114          # the manifest's verification
    path = tmp_path / "univl.pretrained.bin"
    torch.save(state, path)
    torch.manual_seed(1)
    model = create_backbone("univl_tiny", task="retrieval", pretrained=str(path), verbose=False, **MANIFEST_LAYERS)
    report = model.load_report
    assert set(report.loaded) == set(model.state_dict()) and not report.initialised
    assert len(report.renamed) == 114 and all(v.endswith((".weight", ".bias")) for v in report.renamed.values())
    assert sorted(report.skipped) == sorted(k for k in MANIFEST["tensors"] if k.startswith(POOLERS))
    loaded = model.state_dict()
    for key, value in state.items():
        modern = report.renamed.get(key, key)
        if not modern.startswith(POOLERS):
            assert torch.equal(loaded[modern], value), modern
    # tied weights are one Parameter after the load
    assert model.decoder.classifier.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls_visual.predictions.weight is model.visual.embeddings.word_embeddings.weight
    assert "loaded" in str(report)


def test_a_missing_tied_alias_is_re_tied_and_reported(manifest_model):
    state = synthetic_checkpoint(manifest_model)
    del state["cls.predictions.decoder.weight"], state["decoder.embeddings.position_embeddings.weight"]
    full, report = filter_univl_state_dict(state, manifest_model)
    assert torch.equal(full["cls.predictions.decoder.weight"], state["bert.embeddings.word_embeddings.weight"])
    assert sum("re-tied" in note for note in report.notes) == 2


def test_tied_copies_that_differ_are_an_error(manifest_model):
    state = synthetic_checkpoint(manifest_model)
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="one tied Parameter but differ"):
        filter_univl_state_dict(state, manifest_model)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__("visual.embeddings.word_embeddings.weight", torch.zeros(32, 1024)), "feature_dim"),
    (lambda s: s.__setitem__("bert.encoder.layer.12.output.dense.bias", torch.zeros(32)), "match nothing"),
    (lambda s: s.pop("cross.encoder.layer.1.output.dense.weight"), "encoder key\\(s\\) missing"),
    (lambda s: s.__setitem__("bert.embeddings.LayerNorm.weight", torch.ones(32)), "both"),
])
def test_bad_checkpoints_name_the_key(manifest_model, change, message):
    state = synthetic_checkpoint(manifest_model)
    change(state)
    with pytest.raises(ValueError, match=message):
        filter_univl_state_dict(state, manifest_model)


def test_heads_a_model_does_not_build_are_skipped_and_new_heads_start_fresh():
    torch.manual_seed(0)
    subset = create_backbone("univl_tiny", task="captioning", losses=["joint", "align", "decoder"], **MANIFEST_LAYERS)
    state = synthetic_checkpoint(create_backbone("univl_tiny", task="retrieval", **MANIFEST_LAYERS))
    full, report = filter_univl_state_dict(state, subset)
    subset.load_state_dict(full, strict=True)
    assert "cls_visual.predictions.bias" in report.skipped and "cls.predictions.bias" in report.skipped
    sentiment = create_backbone("univl_tiny", task="sentiment", **MANIFEST_LAYERS)
    _, report = filter_univl_state_dict(state, sentiment)
    assert sorted(report.initialised) == ["sentiment_head.1.bias", "sentiment_head.1.weight"]


def test_the_spec_filter_maps_a_data_parallel_copy_of_its_own_weights():
    spec = get_spec("univl_tiny")
    torch.manual_seed(0)
    source = create_backbone("univl_tiny", task="captioning")
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    torch.manual_seed(1)
    target = create_backbone("univl_tiny", task="captioning")
    full, report = spec.checkpoint_filter(state, target, "own")
    target.load_state_dict(full, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    assert any("module." in note for note in report.notes)


@pytest.mark.slow
def test_the_full_size_manifest_loads_into_univl_base(tmp_path):
    """univl_base at the official sizes takes a checkpoint with the manifest's exact shapes (~200M params)."""
    torch.manual_seed(0)
    model = create_backbone("univl_base", task="retrieval")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {
        k: v["shape"] for k, v in MANIFEST["tensors"].items() if not k.startswith(POOLERS)}
    unique = sum(p.numel() for p in model.parameters())
    pooler_params = 2 * (768 * 768 + 768)
    assert unique == MANIFEST["param_count"] - pooler_params
    state = synthetic_checkpoint(model, full_size=True)
    full, report = filter_univl_state_dict(state, model)
    model.load_state_dict(full, strict=True)
    assert set(report.loaded) == set(model.state_dict()) and len(report.renamed) == 114
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, state["bert.embeddings.word_embeddings.weight"])
