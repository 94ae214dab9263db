"""Loading All-in-one's official checkpoints (reference ``checkpoints/allinone_msrvtt_retrieval.json``).

The released files (``all-in-one-plus-224.ckpt``, MELTR fine-tuned checkpoints) are PyTorch-Lightning
checkpoints: the weights sit under ``ckpt["state_dict"]`` with the LightningModule's own attribute paths
(``text_embeddings.*``, ``token_type_embeddings``, ``transformer.*`` in timm's ViT names, ``pooler``,
``mlm_score``, ``txt_proj``, ``vid_proj``); ``epoch``, ``optimizer_states`` … are not weights. The filter:

* strips a stray ``module.`` prefix;
* drops ``aux_model.*`` (the official MELTR network: meltr_ray builds its own) and the heads of other
  All-in-one tasks (``itm_score``, ``rank_output``, ``vqa_classifier`` …), each reported as skipped;
* checks and drops the legacy ``text_embeddings.position_ids`` buffer (persistent in transformers 4.2);
* ``transformer.temporal_embed`` [1, F, d] with F ≠ the model's frames: only with the explicit
  ``resize_temporal`` override — ``crop_or_zero`` (the official ``_inflate_positional_embeds``: keep the first
  rows or zero-pad) or ``nearest`` — else ``ValueError`` naming the key and both shapes;
* any other shape mismatch (a checkpoint of another ViT size, another image size, text length) and any key the
  model does not have raise ``ValueError`` naming the key and shapes — the official loader skipped them silently;
* heads the checkpoint lacks (``txt_proj``/``vid_proj``/``mlm_score``/``pooler`` in a pretraining file) start
  fresh, reported as initialised. The result loads with ``strict=True``.
"""
from __future__ import annotations

import pickle

import torch
import torch.nn.functional as F

from .._loading import LoadReport, check_legacy_ids, check_shapes, load_filtered, read_state_dict, strip_prefix

LEGACY_POSITION_IDS = "text_embeddings.position_ids"
TEMPORAL_KEY = "transformer.temporal_embed"
MELTR_PREFIX = "aux_model."
OTHER_TASK_HEADS = ("itm_score.", "rank_output.", "mpp_score.", "vqa_classifier.", "mc_vqa_classifier.",
                    "nlvr2_classifier.", "vcop_classifier.")
FRESH_HEADS = ("txt_proj.", "vid_proj.", "mlm_score.", "pooler.")
SHAPE_HINTS = {"transformer.pos_embed": "image_size / patch_size",
               "text_embeddings.position_embeddings": "max_text_len",
               "text_embeddings.word_embeddings": "vocab_size / hidden_size",
               "mlm_score.decoder": "vocab_size / hidden_size", "txt_proj": "embed_dim / hidden_size",
               "vid_proj": "embed_dim / hidden_size"}


def resize_temporal(value: torch.Tensor, rows: int, mode: str | None, key: str) -> torch.Tensor:
    """[1, F, d] → [1, rows, d]: ``crop_or_zero`` keeps the first rows or zero-pads; ``nearest`` interpolates
    (TimeSformer's rule); ``None`` raises ``ValueError`` naming ``key`` and both shapes."""
    if mode is None:
        raise ValueError(f"{key}: the checkpoint has shape {tuple(value.shape)} but the model has "
                         f"{(1, rows, value.shape[-1])} ({rows} frames); set the resize_temporal override "
                         f"('crop_or_zero' = the official All-in-one rule, 'nearest') to resize it, or build the "
                         f"model with num_frames={value.shape[1]}")
    if mode == "nearest":
        return F.interpolate(value.transpose(1, 2), size=rows, mode="nearest").transpose(1, 2)
    if value.shape[1] >= rows:
        return value[:, :rows].clone()
    return torch.cat([value, value.new_zeros(1, rows - value.shape[1], value.shape[-1])], dim=1)


def _skip(state: dict, report: LoadReport) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith(MELTR_PREFIX):
            report.skipped[key] = "the official MELTR network (aux_model): meltr_ray builds its own combiner"
        elif key.startswith(OTHER_TASK_HEADS):
            report.skipped[key] = "head of another All-in-one task: unused by retrieval"
        else:
            out[key] = value
    return out


def check_coverage(state: dict, model_state: dict, fresh: tuple, report: LoadReport) -> None:
    """No unknown checkpoint key, no missing backbone key; missing ``fresh`` heads start from their init."""
    unknown = sorted(k for k in state if k not in model_state)
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint key(s) match nothing in the model, e.g. {unknown[:5]}")
    missing = [k for k in model_state if k not in state]
    required = [k for k in missing if not k.startswith(fresh)]
    if required:
        raise ValueError(f"{len(required)} backbone key(s) missing from the checkpoint, e.g. {required[:5]}")
    for key in missing:
        report.initialised[key] = "not in the checkpoint: starts fresh"


def filter_allinone_state_dict(state: dict, model, source: str = "<state dict>") -> tuple[dict, LoadReport]:
    """Map an official All-in-one state dict onto ``model``: (full state dict for a strict load, report)."""
    report = LoadReport(source)
    state = _skip(strip_prefix(dict(state), "module.", report), report)
    check_legacy_ids(state, LEGACY_POSITION_IDS, report)
    return fit_to_model(state, model, TEMPORAL_KEY, SHAPE_HINTS, FRESH_HEADS, report)


def fit_to_model(state: dict, model, temporal_key: str, hints: dict, fresh: tuple,
                 report: LoadReport) -> tuple[dict, LoadReport]:
    """The last steps of the All-in-one and ALPRO filters: the temporal embedding resized to the model's frames
    (only as ``model.cfg.resize_temporal`` says), shapes and coverage checked; (full state dict, report)."""
    model_state = model.state_dict()
    rows = model_state[temporal_key].shape[1]
    if temporal_key in state and state[temporal_key].shape[1] != rows:
        before = tuple(state[temporal_key].shape)
        state[temporal_key] = resize_temporal(state[temporal_key], rows, model.cfg.resize_temporal, temporal_key)
        report.notes.append(f"resized {temporal_key} {before} -> {tuple(state[temporal_key].shape)} "
                            f"({model.cfg.resize_temporal})")
    check_shapes(state, model_state, hints)
    check_coverage(state, model_state, fresh, report)
    report.loaded = [k for k in model_state if k in state]
    return {**model_state, **state}, report


def read_checkpoint(path: str) -> dict:
    """The state dict of a file, safely (``weights_only``); a Lightning file that pickles other objects gets a
    ``ValueError`` saying how to extract its weights."""
    try:
        return read_state_dict(path)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: torch.load(weights_only=True) refused it ({str(err).splitlines()[0]}). A "
                         f"Lightning checkpoint may pickle its hyper-parameters; if you trust the file, extract the "
                         f"weights once: python -c \"import torch; torch.save(torch.load('{path}', "
                         f"weights_only=False)['state_dict'], 'weights.pt')\" and pass weights.pt") from None


def load_allinone_checkpoint(model, path: str, verbose: bool = True) -> LoadReport:
    """Read ``path`` safely, filter it onto ``model``, load strictly, print and return the report."""
    return load_filtered(model, path, filter_allinone_state_dict, read_checkpoint, verbose)
