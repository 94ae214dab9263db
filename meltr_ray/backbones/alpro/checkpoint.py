"""Loading ALPRO checkpoints: the key layout targeted, and the filter that maps it onto :class:`Alpro`.

**Not verified against a released file.** The layout below is read from ALPRO's public code (salesforce/ALPRO,
``src/modeling/alpro_models.py``, ``timesformer/vit.py``, ``utils/load_save.py``): parameter names of
``AlproForPretrain`` and ``AlproForSequenceClassification``. No released ``.pt`` was opened; a file whose keys
differ fails loudly here (unknown or missing keys are errors naming them), never silently.

Plain ``torch.save(model.state_dict())`` files (``alpro_pretrained_ckpt.pt``, fine-tuned ``model_step_*.pt``):

=====================================================  ===========================================================
keys                                                   what
=====================================================  ===========================================================
``visual_encoder.model.{cls_token, pos_embed,           TimeSformer ViT-B/16, divided space-time attention;
time_embed}``, ``…patch_embed.proj.{weight,bias}``,     ``pos_embed`` [1, 1 + (224/16)², 768], ``time_embed``
``…blocks.N.{norm1, attn.qkv, attn.proj,                [1, frames, 768]
temporal_norm1, temporal_attn.qkv, temporal_attn.proj,
temporal_fc, norm2, mlp.fc1, mlp.fc2}``, ``…norm``
``visual_encoder.model.head.*``                         TimeSformer's Kinetics-400 classifier: unused, skipped
``text_encoder.bert.embeddings.*``,                     BERT-base (pretraining layout, ``BertForMaskedLM``);
``text_encoder.bert.encoder.layer.{0..11}.*``           layers ≥ ``fusion_layer`` (6) are the multimodal encoder
``text_encoder.cls.predictions.*``                      MLM head (decoder weight tied to the word embeddings)
``text_encoder.embeddings.*``,                          the same BERT in the QA layout (``BertModel``): renamed
``text_encoder.encoder.layer.*``                        to ``text_encoder.bert.*`` (ALPRO's own loader strips
                                                        ``bert.`` the other way)
``vision_proj``, ``text_proj`` (768 → 256), ``temp``    VTC projections and temperature
``itm_head`` (768 → 2)                                  VTM head
``mpm_head.{0,2}`` (768 → 1536 → entities)              PEM head (skipped by task ``qa_oe``)
``classifier.{0,2}`` (768 → 1536 → answers)             QA head (fine-tuned files only; else starts fresh)
``prompter.*``                                          the prompter network: skipped (its scores come in the batch)
``text_encoder.bert.embeddings.position_ids``           legacy buffer: checked == arange, dropped
=====================================================  ===========================================================

``time_embed`` rows ≠ the model's frames (ALPRO pretrains on fewer frames than its 16-frame QA runs): resized
only with the ``resize_temporal`` override (``nearest`` = ALPRO's rule), else ``ValueError`` naming the key and
shapes; any other shape mismatch is an error naming the key and shapes. The result loads with ``strict=True``.
"""
from __future__ import annotations

import torch

from .._loading import LoadReport, check_legacy_ids, load_filtered, strip_prefix
from ..allinone.checkpoint import fit_to_model, read_checkpoint

TEMPORAL_KEY = "visual_encoder.model.time_embed"
LEGACY_POSITION_IDS = "text_encoder.bert.embeddings.position_ids"
QA_LAYOUT = ("text_encoder.embeddings.", "text_encoder.encoder.")
TIED = {"text_encoder.cls.predictions.decoder.weight": "text_encoder.bert.embeddings.word_embeddings.weight",
        "text_encoder.cls.predictions.decoder.bias": "text_encoder.cls.predictions.bias"}
FRESH_HEADS = ("classifier.", "mpm_head.", "itm_head.", "vision_proj.", "text_proj.", "temp",
               "text_encoder.cls.")
SHAPE_HINTS = {"visual_encoder.model.pos_embed": "image_size / patch_size", "classifier.2": "num_answers",
               "mpm_head.2": "num_entities", "text_encoder.bert.embeddings.position_embeddings": "max_text_len",
               "text_encoder.bert.embeddings.word_embeddings": "vocab_size / hidden_size"}


def _rename_qa_layout(state: dict, report: LoadReport) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith(QA_LAYOUT):
            new = "text_encoder.bert." + key[len("text_encoder."):]
            report.renamed[key] = new
            out[new] = value
        else:
            out[key] = value
    return out


def _skip(state: dict, model, report: LoadReport) -> dict:
    has_pem = hasattr(model, "mpm_head")
    out = {}
    for key, value in state.items():
        if key.startswith("prompter."):
            report.skipped[key] = "ALPRO's prompter: its entity scores come in the batch (entity_scores)"
        elif key.startswith("visual_encoder.model.head."):
            report.skipped[key] = "TimeSformer's Kinetics classifier: unused by ALPRO"
        elif key.startswith("mpm_head.") and not has_pem:
            report.skipped[key] = f"PEM head: task {model.task!r} has no PEM loss (use task 'qa_oe_pem')"
        else:
            out[key] = value
    return out


def _tie(state: dict, report: LoadReport) -> None:
    """Tied pairs are one Parameter: equal in the file, or the missing name filled from the present one."""
    for key, source in TIED.items():
        if key in state and source in state and not torch.equal(state[key], state[source]):
            raise ValueError(f"{key} and {source} are one tied Parameter but differ in the checkpoint")
        if key not in state and source in state:
            state[key] = state[source]
            report.notes.append(f"re-tied {key} to {source} (one Parameter in the model)")


def filter_alpro_state_dict(state: dict, model, source: str = "<state dict>") -> tuple[dict, LoadReport]:
    """Map an ALPRO state dict onto ``model``: (full state dict for a strict load, report)."""
    report = LoadReport(source)
    state = _rename_qa_layout(strip_prefix(dict(state), "module.", report), report)
    state = _skip(state, model, report)
    check_legacy_ids(state, LEGACY_POSITION_IDS, report)
    _tie(state, report)
    return fit_to_model(state, model, TEMPORAL_KEY, SHAPE_HINTS, FRESH_HEADS, report)


def load_alpro_checkpoint(model, path: str, verbose: bool = True) -> LoadReport:
    """Read ``path`` safely, filter it onto ``model``, load strictly, print and return the report."""
    return load_filtered(model, path, filter_alpro_state_dict, read_checkpoint, verbose)
