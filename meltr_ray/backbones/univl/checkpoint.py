"""Loading UniVL checkpoints (``univl.pretrained.bin``, the official fine-tuned ``pytorch_model.bin.*``, or a
meltr_ray training checkpoint) strictly, with a report of every key (reference ``checkpoints/univl.json``).

The official loader renamed ``gamma``/``beta`` to ``weight``/``bias`` and then loaded non-strictly, logging
and skipping anything that did not fit. This filter does the same renaming, then explains every key or
raises ``ValueError`` naming it:

* a stray ``module.`` prefix (DDP) is stripped; legacy ``….gamma`` / ``….beta`` LayerNorm names are renamed;
* ``bert.pooler.*`` and ``visual.pooler.*`` are skipped (no UniVL loss reads them; the model does not build
  them), as are the heads of losses this model does not compute (e.g. ``cls_visual.*`` without CMFM);
* the three tied groups (BERT word embeddings = decoder word embeddings = both MLM classifiers; BERT positions
  = decoder positions; visual projection = MFM output weight) must agree in the checkpoint; an alias the file
  lacks is filled from the others (one Parameter in the model), reported as re-tied;
* shapes must match (the error names the size field to change); the encoders (``bert``, ``visual``,
  ``cross``, ``normalize_video``) must be complete; heads the checkpoint lacks (``sentiment_head`` always,
  the decoder or MLM/MFM heads of a checkpoint trained without them) start fresh, reported as initialised.
"""
from __future__ import annotations

import torch

from .._loading import LoadReport, check_shapes, load_filtered, strip_prefix

TIED = (("bert.embeddings.word_embeddings.weight", "decoder.embeddings.word_embeddings.weight",
         "decoder.classifier.cls.predictions.decoder.weight", "cls.predictions.decoder.weight"),
        ("bert.embeddings.position_embeddings.weight", "decoder.embeddings.position_embeddings.weight"),
        ("visual.embeddings.word_embeddings.weight", "cls_visual.predictions.weight"))
UNUSED = {"bert.pooler.": "the text pooler is unused by UniVL's losses (not built)",
          "visual.pooler.": "the visual pooler is unused by UniVL's losses (not built)"}
REQUIRED = ("bert.", "visual.", "cross.", "normalize_video.")
PARTS = ("decoder.", "cls.", "cls_visual.", "similarity_dense.", "sentiment_head.")
SHAPE_HINTS = {"bert.embeddings.word_embeddings": "vocab_size", "bert.embeddings.position_embeddings":
               "text_positions", "visual.embeddings.position_embeddings": "visual_positions",
               "cross.embeddings.position_embeddings": "cross_positions", "visual.embeddings.word_embeddings":
               "feature_dim", "normalize_video": "feature_dim", "cls_visual.predictions": "feature_dim",
               "cls.predictions.bias": "vocab_size", "decoder.classifier": "vocab_size"}


def rename_legacy(state: dict, report: LoadReport) -> dict:
    """``….gamma`` → ``….weight`` and ``….beta`` → ``….bias`` (TF-style LayerNorm names)."""
    out = {}
    for key, value in state.items():
        new = key
        for old, modern in ((".gamma", ".weight"), (".beta", ".bias")):
            if key.endswith(old):
                new = key[:-len(old)] + modern
        if new in out or (new != key and new in state):
            raise ValueError(f"checkpoint has both {key} and {new} (legacy and modern spelling of one tensor)")
        if new != key:
            report.renamed[key] = new
        out[new] = value
    return out


def drop_unbuilt(state: dict, model_state: dict, report: LoadReport) -> dict:
    """Skip the poolers and the parts this model does not build; unknown keys raise ``ValueError``."""
    out, unknown = {}, []
    for key, value in state.items():
        reason = next((r for p, r in UNUSED.items() if key.startswith(p)), None)
        part = next((p for p in PARTS if key.startswith(p)), None)
        if key in model_state:
            out[key] = value
        elif reason:
            report.skipped[key] = reason
        elif part and not any(k.startswith(part) for k in model_state):
            report.skipped[key] = f"this model computes no loss that uses {part[:-1]}"
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint key(s) match nothing in the UniVL model, e.g. {unknown[:5]} "
                         f"(check the layer counts: text_layers, visual_layers, cross_layers, decoder_layers)")
    return out


def retie(state: dict, model_state: dict, report: LoadReport) -> None:
    """Each tied group: the checkpoint's copies must agree; aliases it lacks are filled from the others."""
    for group in TIED:
        keys = [k for k in group if k in model_state]
        present = [k for k in keys if k in state]
        if not present:
            continue
        first = state[present[0]]
        for key in present[1:]:
            if state[key].shape != first.shape or not torch.equal(state[key], first):
                raise ValueError(f"{key} and {present[0]} are one tied Parameter but differ in the checkpoint")
        for key in keys:
            if key not in state:
                state[key] = first
                report.notes.append(f"re-tied {key} to {present[0]} (one Parameter in the model)")


def check_coverage(state: dict, model_state: dict, report: LoadReport) -> None:
    missing = [k for k in model_state if k not in state]
    required = [k for k in missing if k.startswith(REQUIRED)]
    if required:
        raise ValueError(f"{len(required)} encoder key(s) missing from the checkpoint, e.g. {required[:5]}")
    for key in missing:
        report.initialised[key] = "not in the checkpoint: starts fresh"


def filter_univl_state_dict(state: dict, model, source: str = "<state dict>") -> tuple[dict, LoadReport]:
    """Map a UniVL state dict onto ``model``; returns (full state dict for a strict load, report)."""
    report = LoadReport(source)
    model_state = model.state_dict()
    state = strip_prefix(dict(state), "module.", report)
    state = drop_unbuilt(rename_legacy(state, report), model_state, report)
    check_shapes(state, model_state, SHAPE_HINTS)
    retie(state, model_state, report)
    check_coverage(state, model_state, report)
    report.loaded = [k for k in model_state if k in state]
    return {**model_state, **state}, report


def load_univl_checkpoint(model, path: str, verbose: bool = True) -> LoadReport:
    """Read ``path`` safely, filter it onto ``model``, load strictly, print and return the report."""
    return load_filtered(model, path, filter_univl_state_dict, verbose=verbose)
