"""All-in-one's official Lightning checkpoint layout loads strictly, with a report of every key.

The synthetic checkpoints are built from the manifest in ``tests/fixtures/checkpoints`` (copied from the
reference): its key names — the official ``AllinoneTransformerSS`` state dict — with the shapes of the tiny
variant built with the manifest's 12 blocks for the default suite, and with the manifest's own shapes
(ViT-B/16) in the slow test. Each is wrapped like a Lightning file (``{"epoch", "global_step", "state_dict",
...}``) and carries the legacy ``text_embeddings.position_ids`` buffer and an ``itm_score`` head of another
task, as released files may.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meltr_ray.backbones import create_backbone, get_spec
from meltr_ray.backbones.allinone.checkpoint import filter_allinone_state_dict

MANIFEST = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "allinone_msrvtt_retrieval.json"
TEMPORAL = "transformer.temporal_embed"


def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


DEPTH = 12          # the manifest's ViT-B/16 has 12 blocks: the tiny width with all of its key names


def tiny(**overrides):
    torch.manual_seed(0)
    return create_backbone("allinone_tiny", num_layers=DEPTH, **overrides)


def synthetic_state(shapes: dict, text_positions: int, seed: int = 0) -> dict:
    """Random tensors under every manifest key (``shapes`` gives the shape of a key, default: the manifest's),
    plus the legacy position_ids and an unused itm_score head."""
    g = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shapes.get(key, spec["shape"]), generator=g)
             for key, spec in manifest()["tensors"].items()}
    state["text_embeddings.position_ids"] = torch.arange(text_positions).unsqueeze(0)
    state["itm_score.fc.weight"], state["itm_score.fc.bias"] = torch.randn(2, 4), torch.randn(2)
    return state


def tiny_state(seed: int = 0, **changes) -> dict:
    """The manifest's key names with allinone_tiny's shapes."""
    shapes = {k: tuple(v.shape) for k, v in tiny().state_dict().items()}
    state = synthetic_state(shapes, text_positions=16, seed=seed)
    state.update(changes)
    return state


def lightning_file(path: Path, state: dict) -> str:
    torch.save({"epoch": 3, "global_step": 1200, "state_dict": state, "optimizer_states": [],
                "lr_schedulers": [], "callbacks": {}}, path)
    return str(path)


def assert_filled(model, state: dict) -> None:
    model_state = model.state_dict()
    for key, value in state.items():
        if key in model_state and key != TEMPORAL:
            assert torch.equal(model_state[key], value), key


def test_the_manifest_names_are_the_models_names():
    names = set(manifest()["tensors"])
    meltr = {k for k in names if k.startswith("aux_model.")}
    assert len(meltr) == 18
    assert names - meltr == set(tiny().state_dict())


def test_a_lightning_checkpoint_from_the_manifest_loads_strictly_with_a_report(tmp_path):
    state = tiny_state()
    model = create_backbone("allinone_tiny", num_layers=DEPTH,
                            pretrained=lightning_file(tmp_path / "last.ckpt", state))
    assert_filled(model, state)
    assert torch.equal(model.transformer.temporal_embed, state[TEMPORAL])
    report = model.load_report
    assert set(report.loaded) == set(model.state_dict()) and not report.initialised
    assert {k for k in report.skipped if k.startswith("aux_model.")} == \
        {k for k in manifest()["tensors"] if k.startswith("aux_model.")}
    assert "text_embeddings.position_ids" in report.skipped and "itm_score.fc.weight" in report.skipped
    text = report.to_text()
    assert "aux_model" in text and "itm_score" in text and "legacy" in text


def test_a_checkpoint_with_more_frames_needs_the_resize_option():
    eight = torch.randn(1, 8, 32)
    with pytest.raises(ValueError, match=r"transformer\.temporal_embed.*\(1, 8, 32\).*\(1, 3, 32\).*resize_temporal"):
        filter_allinone_state_dict(tiny_state(**{TEMPORAL: eight}), tiny())
    model = tiny(resize_temporal="crop_or_zero")
    full, report = filter_allinone_state_dict(tiny_state(**{TEMPORAL: eight}), model)
    model.load_state_dict(full, strict=True)
    assert torch.equal(model.transformer.temporal_embed, eight[:, :3])              # the first rows (official)
    assert any("resized transformer.temporal_embed (1, 8, 32) -> (1, 3, 32)" in n for n in report.notes)


def test_a_checkpoint_with_fewer_frames_is_zero_padded_or_interpolated():
    two = torch.randn(1, 2, 32)
    model = tiny(resize_temporal="crop_or_zero")
    model.load_state_dict(filter_allinone_state_dict(tiny_state(**{TEMPORAL: two}), model)[0], strict=True)
    assert torch.equal(model.transformer.temporal_embed[:, :2], two)
    assert torch.equal(model.transformer.temporal_embed[0, 2], torch.zeros(32))
    model = tiny(resize_temporal="nearest")
    model.load_state_dict(filter_allinone_state_dict(tiny_state(**{TEMPORAL: two}), model)[0], strict=True)
    assert torch.equal(model.transformer.temporal_embed, two[:, [0, 0, 1]])


def test_a_checkpoint_of_another_vit_size_names_the_key_and_shapes():
    torch.manual_seed(0)
    wider = create_backbone("allinone_tiny", num_layers=DEPTH, hidden_size=48).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch for .*checkpoint \(.*48.*\) vs model \(.*32.*\)"):
        filter_allinone_state_dict(dict(wider), tiny())


def test_other_image_sizes_and_text_lengths_are_errors_naming_the_key():
    with pytest.raises(ValueError, match=r"transformer\.pos_embed: checkpoint \(1, 5, 32\) vs model \(1, 17, 32\)"):
        filter_allinone_state_dict(tiny_state(**{"transformer.pos_embed": torch.randn(1, 5, 32)}), tiny())
    state = tiny_state(**{"text_embeddings.position_embeddings.weight": torch.randn(40, 32)})
    state["text_embeddings.position_ids"] = torch.arange(40).unsqueeze(0)
    with pytest.raises(ValueError, match="position_embeddings.weight.*max_text_len"):
        filter_allinone_state_dict(state, tiny())


def test_a_pretraining_file_without_retrieval_heads_starts_them_fresh():
    state = {k: v for k, v in tiny_state().items() if not k.startswith(("txt_proj", "vid_proj", "pooler"))}
    model = tiny()
    full, report = filter_allinone_state_dict(state, model)
    model.load_state_dict(full, strict=True)
    assert set(report.initialised) == {"txt_proj.weight", "txt_proj.bias", "vid_proj.weight", "vid_proj.bias",
                                       "pooler.dense.weight", "pooler.dense.bias"}
    assert_filled(model, state)


def test_unknown_missing_and_bad_legacy_keys_are_errors():
    with pytest.raises(ValueError, match="match nothing in the model.*transformer.extra"):
        filter_allinone_state_dict(tiny_state(**{"transformer.extra": torch.zeros(1)}), tiny())
    state = tiny_state()
    del state["transformer.blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match="missing from the checkpoint.*blocks.1.attn.qkv.weight"):
        filter_allinone_state_dict(state, tiny())
    with pytest.raises(ValueError, match="text_embeddings.position_ids"):
        filter_allinone_state_dict(tiny_state(**{"text_embeddings.position_ids": torch.zeros(1, 16).long()}),
                                   tiny())


def test_a_data_parallel_prefix_is_stripped_and_reported():
    state = {f"module.{k}": v for k, v in tiny_state().items()}
    model = tiny()
    full, report = filter_allinone_state_dict(state, model)
    model.load_state_dict(full, strict=True)
    assert any("module." in note for note in report.notes)


class _Hyperparameters(dict):
    """Stands in for Lightning's AttributeDict: a pickled class that weights_only loading refuses."""


def test_a_lightning_file_with_pickled_objects_says_how_to_extract_the_weights(tmp_path):
    path = tmp_path / "pl.ckpt"
    torch.save({"state_dict": tiny_state(), "hyper_parameters": _Hyperparameters(lr=3e-4)}, path)
    with pytest.raises(ValueError, match=r"weights_only=True.*extract the weights"):
        create_backbone("allinone_tiny", num_layers=DEPTH, pretrained=str(path))


@pytest.mark.slow
def test_the_full_size_manifest_loads_into_allinone_base(tmp_path):
    torch.manual_seed(0)
    state = synthetic_state({}, text_positions=40)
    state[TEMPORAL] = torch.randn(1, 8, 768)                     # the pretrained file's frames differ
    path = lightning_file(tmp_path / "all-in-one-plus-224.ckpt", state)
    with pytest.raises(ValueError, match=r"temporal_embed.*\(1, 8, 768\).*\(1, 3, 768\)"):
        create_backbone("allinone_base", pretrained=path)
    model = create_backbone("allinone_base", pretrained=path, resize_temporal="crop_or_zero")
    assert_filled(model, state)
    assert torch.equal(model.transformer.temporal_embed, state[TEMPORAL][:, :3])
    assert set(model.load_report.loaded) == set(model.state_dict())
    assert get_spec("allinone_base").tasks["retrieval"].data.max_frames == 3
