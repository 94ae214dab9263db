"""Loading official checkpoints: read safely, map names, check shapes, load strictly, report every key.

A *filter* turns a checkpoint's state dict into one the model accepts with ``load_state_dict(strict=True)``
and records what it did in a :class:`LoadReport` (loaded / renamed / skipped / initialised, each with the
reason). Anything it cannot explain — an unknown key, a missing backbone key, a shape mismatch — raises
``ValueError`` naming the key, instead of the official loaders' silent skip.

Violet (reference ``checkpoints/violet_*.json``): plain state dicts saved from ``model.module``; this filter
also strips a stray ``module.`` prefix, checks and drops the legacy ``enc_txt.emb_txt.position_ids`` buffer
(persistent before transformers 4.31), re-ties ``fc_mtm.predictions.bias`` / ``.decoder.bias`` (one
Parameter), maps heads by role (the pretrained VTM head ``fc`` → the QA models' ``fc_vtm`` unless
``reuse_pretrained_vtm=False``, which keeps the official fresh start) and lets task heads the checkpoint lacks
(QA-OE ``fc_oe``, QA-MC ``fc_mc``, action ``fc_cls``) start fresh — reported as initialised.
"""
from __future__ import annotations

import torch

from .._loading import LoadReport, check_legacy_ids, check_shapes, load_filtered, strip_prefix

# checkpoint head module -> loss role (the official names across the pretrain/retrieval/QA models)
VIOLET_HEAD_ROLES = {"fc": "vtm", "fc_vtm": "vtm", "fc_mtm": "mtm", "fc_mvm": "mvm", "fc_oe": "oe",
                     "fc_mc": "mc", "fc_cls": "cls"}
LEGACY_POSITION_IDS = "enc_txt.emb_txt.position_ids"
TIED_BIAS = ("fc_mtm.predictions.bias", "fc_mtm.predictions.decoder.bias")
SHAPE_HINTS = {"enc_img.emb_len": "max_frames", "enc_img.emb_pos": "max_grid",
               "enc_txt.emb_txt.word_embeddings.weight": "vocab_size",
               "enc_txt.emb_txt.position_embeddings.weight": "max_text_len",
               "fc_oe.3": "size_vocab", "fc_cls.3": "num_classes", "fc_mvm.3": "mvm_vocab"}


def _retie_mtm_bias(state: dict, report: LoadReport) -> None:
    bias, decoder_bias = TIED_BIAS
    if bias in state and decoder_bias in state:
        if not torch.equal(state[bias], state[decoder_bias]):
            raise ValueError(f"{bias} and {decoder_bias} are one tied Parameter but differ in the checkpoint")
    elif bias in state or decoder_bias in state:
        present, absent = (bias, decoder_bias) if bias in state else (decoder_bias, bias)
        state[absent] = state[present]
        report.notes.append(f"re-tied {absent} to {present} (one Parameter in the model)")


def _map_heads(state: dict, head_names: dict, task: str, reuse_vtm: bool, report: LoadReport) -> dict:
    """Rename head keys by role to this model's head names; skip heads this task has no use for."""
    own = set(head_names.values())
    out = {}
    for key, value in state.items():
        module, _, rest = key.partition(".")
        role = VIOLET_HEAD_ROLES.get(module)
        if role is None or module in own:
            out[key] = value
            continue
        target = head_names.get(role)
        if target is None:
            report.skipped[key] = f"no {role} head in a Violet {task!r} model"
        elif any(k.startswith(target + ".") for k in state):
            report.skipped[key] = f"the checkpoint also has {target}.*, which is used instead"
        elif role == "vtm" and not reuse_vtm:
            report.skipped[key] = "reuse_pretrained_vtm=False: fc_vtm starts fresh, as in the official QA code"
        else:
            out[f"{target}.{rest}"] = value
            report.renamed[key] = f"{target}.{rest}"
    return out


def _check_shapes_and_swin_index(state: dict, model_state: dict) -> None:
    """Every checkpoint tensor the model also has must match its shape (and the Swin index its values)."""
    check_shapes(state, model_state, SHAPE_HINTS)
    for key, value in state.items():
        if key not in model_state:
            continue
        if key.endswith("relative_position_index") and not torch.equal(value.long(), model_state[key]):
            raise ValueError(f"{key} differs from the index of the model's window: the checkpoint was built "
                             f"with another Swin window size")


def _check_coverage(state: dict, model_state: dict, head_names: dict, report: LoadReport) -> None:
    """No unknown checkpoint key, no missing backbone key; heads the checkpoint lacks start fresh."""
    unknown = sorted(k for k in state if k not in model_state)
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint key(s) match nothing in the model, e.g. {unknown[:5]}")
    heads = tuple(name + "." for name in head_names.values())
    missing = [k for k in model_state if k not in state]
    required = [k for k in missing if not k.startswith(heads) and not k.endswith("relative_position_index")]
    if required:
        raise ValueError(f"{len(required)} backbone key(s) missing from the checkpoint, e.g. {required[:5]}")
    recomputed = [k for k in missing if k.endswith("relative_position_index")]
    if recomputed:
        report.notes.append(f"{len(recomputed)} Swin relative_position_index buffers not in the checkpoint: "
                            f"recomputed from the window size")
    for key in missing:
        if key not in recomputed:
            report.initialised[key] = "not in the checkpoint: starts fresh"


def filter_violet_state_dict(state: dict, model, source: str = "<state dict>") -> tuple[dict, LoadReport]:
    """Map an official Violet state dict onto ``model``; returns (full state dict for a strict load, report)."""
    report = LoadReport(source)
    state = strip_prefix(state, "module.", report)
    check_legacy_ids(state, LEGACY_POSITION_IDS, report)
    _retie_mtm_bias(state, report)
    state = _map_heads(state, model.head_names, model.task, model.cfg.reuse_pretrained_vtm, report)
    model_state = model.state_dict()
    _check_shapes_and_swin_index(state, model_state)
    _check_coverage(state, model_state, model.head_names, report)
    report.loaded = [k for k in model_state if k in state]
    return {**model_state, **state}, report


def load_violet_checkpoint(model, path: str, verbose: bool = True) -> LoadReport:
    """Read ``path`` safely, filter it onto ``model``, load strictly, print and return the report."""
    return load_filtered(model, path, filter_violet_state_dict, verbose=verbose)
