"""ALPRO's checkpoint layout (``meltr_ray/backbones/alpro/checkpoint.py``) loads strictly, with a report.

The key names are written out here from the layout documented in that module (ALPRO's public code; no released
file was available), independently of the model: the test fails if the model's names drift from the layout.
Shapes are alpro_tiny's. The synthetic "pretraining" file also holds what ALPRO's files hold besides the
backbone: TimeSformer's Kinetics ``head``, the ``prompter``, the legacy ``position_ids`` buffer, and a
``time_embed`` of fewer frames than the fine-tuning runs use.
"""
from __future__ import annotations

import pytest
import torch

from meltr_ray.backbones import create_backbone
from meltr_ray.backbones.alpro.checkpoint import filter_alpro_state_dict

TIME = "visual_encoder.model.time_embed"
VIT_BLOCK = ["norm1", "attn.qkv", "attn.proj", "temporal_norm1", "temporal_attn.qkv", "temporal_attn.proj",
             "temporal_fc", "norm2", "mlp.fc1", "mlp.fc2"]
BERT_LAYER = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"]
MLM = ["transform.dense", "transform.LayerNorm"]


def layout(vision_layers: int, text_layers: int, pem: bool, qa: bool) -> list[str]:
    """ALPRO's key names (pretraining layout ``text_encoder.bert.*``), as documented in checkpoint.py."""
    wb = (".weight", ".bias")
    keys = [f"visual_encoder.model.{k}" for k in ("cls_token", "pos_embed", "time_embed")]
    keys += [f"visual_encoder.model.patch_embed.proj{s}" for s in wb]
    keys += [f"visual_encoder.model.blocks.{i}.{m}{s}" for i in range(vision_layers) for m in VIT_BLOCK for s in wb]
    keys += [f"visual_encoder.model.norm{s}" for s in wb]
    emb = "text_encoder.bert.embeddings."
    keys += [emb + k for k in ("word_embeddings.weight", "position_embeddings.weight",
                                "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias")]
    keys += [f"text_encoder.bert.encoder.layer.{i}.{m}{s}" for i in range(text_layers) for m in BERT_LAYER
             for s in wb]
    keys += ["text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.decoder.weight",
             "text_encoder.cls.predictions.decoder.bias"]
    keys += [f"text_encoder.cls.predictions.{m}{s}" for m in MLM for s in wb]
    keys += ["temp"] + [f"{m}{s}" for m in ("vision_proj", "text_proj", "itm_head") for s in wb]
    heads = (["mpm_head"] if pem else []) + (["classifier"] if qa else [])
    keys += [f"{h}.{i}{s}" for h in heads for i in (0, 2) for s in wb]
    return keys


def tiny(task: str = "qa_oe_pem", **overrides):
    torch.manual_seed(0)
    return create_backbone("alpro_tiny", task=task, **overrides)


def pretraining_file(seed: int = 0) -> dict:
    """ALPRO-pretraining-like state dict at tiny shapes: no classifier, PEM head, prompter, 2-frame time_embed."""
    shapes = {k: v.shape for k, v in tiny().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shapes[k], generator=g) for k in layout(2, 4, pem=True, qa=False)}
    state["text_encoder.cls.predictions.decoder.weight"] = state["text_encoder.bert.embeddings.word_embeddings.weight"]
    state["text_encoder.cls.predictions.decoder.bias"] = state["text_encoder.cls.predictions.bias"]
    state[TIME] = torch.randn(1, 2, 32, generator=g)
    state["text_encoder.bert.embeddings.position_ids"] = torch.arange(16).unsqueeze(0)
    state["visual_encoder.model.head.weight"], state["visual_encoder.model.head.bias"] = torch.randn(400, 32), \
        torch.randn(400)
    state["prompter.visual_encoder.model.cls_token"] = torch.randn(1, 1, 32)
    state["prompter.video_prompt_feat"] = torch.randn(12, 16)
    return state


def test_the_documented_layout_is_the_models_names():
    assert set(layout(2, 4, pem=True, qa=True)) == set(tiny().state_dict())
    assert set(layout(2, 4, pem=False, qa=True)) == set(tiny("qa_oe").state_dict())


def test_a_pretraining_file_loads_strictly_once_time_embed_may_be_resized(tmp_path):
    state = pretraining_file()
    torch.save(state, tmp_path / "alpro_pretrained_ckpt.pt")
    with pytest.raises(ValueError, match=r"visual_encoder\.model\.time_embed.*\(1, 2, 32\).*\(1, 4, 32\)"):
        create_backbone("alpro_tiny", task="qa_oe_pem", pretrained=str(tmp_path / "alpro_pretrained_ckpt.pt"))
    torch.manual_seed(0)
    model = create_backbone("alpro_tiny", task="qa_oe_pem", resize_temporal="nearest",
                            pretrained=str(tmp_path / "alpro_pretrained_ckpt.pt"))
    loaded = model.state_dict()
    for key, value in state.items():
        if key in loaded and key != TIME:
            assert torch.equal(loaded[key], value), key
    assert torch.equal(model.visual_encoder.model.time_embed, state[TIME][:, [0, 0, 1, 1]])
    report = model.load_report
    assert set(report.initialised) == {"classifier.0.weight", "classifier.0.bias", "classifier.2.weight",
                                       "classifier.2.bias"}
    for key in ("visual_encoder.model.head.weight", "prompter.video_prompt_feat",
                "text_encoder.bert.embeddings.position_ids"):
        assert key in report.skipped


def test_the_qa_layout_is_renamed_and_the_mlm_head_re_tied():
    source = tiny("qa_oe")
    state = {k.replace("text_encoder.bert.", "text_encoder."): v.clone() for k, v in source.state_dict().items()
             if not k.startswith("text_encoder.cls.")}                    # AlproForSequenceClassification
    torch.manual_seed(1)
    model = create_backbone("alpro_tiny", task="qa_oe")
    full, report = filter_alpro_state_dict(state, model)
    model.load_state_dict(full, strict=True)
    word = model.text_encoder.bert.embeddings.word_embeddings.weight
    assert torch.equal(word, source.text_encoder.bert.embeddings.word_embeddings.weight)
    assert model.text_encoder.cls.predictions.decoder.weight is word
    assert report.renamed["text_encoder.embeddings.word_embeddings.weight"] == \
        "text_encoder.bert.embeddings.word_embeddings.weight"
    assert {k for k in report.initialised} == {"text_encoder.cls.predictions.bias",
                                               "text_encoder.cls.predictions.decoder.bias",
                                               "text_encoder.cls.predictions.transform.dense.weight",
                                               "text_encoder.cls.predictions.transform.dense.bias",
                                               "text_encoder.cls.predictions.transform.LayerNorm.weight",
                                               "text_encoder.cls.predictions.transform.LayerNorm.bias"}


def test_the_pem_head_is_skipped_by_the_task_without_pem():
    model = tiny("qa_oe", resize_temporal="nearest")
    full, report = filter_alpro_state_dict(pretraining_file(), model)
    model.load_state_dict(full, strict=True)
    assert "task 'qa_oe' has no PEM loss" in report.skipped["mpm_head.0.weight"]


def test_another_size_and_unknown_keys_are_errors_naming_the_key():
    torch.manual_seed(0)
    wide = create_backbone("alpro_tiny", task="qa_oe_pem", hidden_size=48, intermediate_size=96).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch for .*checkpoint \(.*48.*\) vs model \(.*32.*\)"):
        filter_alpro_state_dict(wide, tiny())
    answers = dict(tiny().state_dict(), **{"classifier.2.weight": torch.zeros(1000, 64),
                                           "classifier.2.bias": torch.zeros(1000)})
    with pytest.raises(ValueError, match="classifier.2.weight.*num_answers"):
        filter_alpro_state_dict(answers, tiny())
    with pytest.raises(ValueError, match="match nothing in the model.*cross_attention"):
        filter_alpro_state_dict(dict(tiny().state_dict(), cross_attention=torch.zeros(1)), tiny())
    untied = dict(tiny().state_dict())
    untied["text_encoder.cls.predictions.decoder.weight"] = untied["text_encoder.cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="tied"):
        filter_alpro_state_dict(untied, tiny())
