"""What one shard row yields as samples: the *item kinds* a backbone's :class:`DataSpec` names.

A row holds all text items of its clip. A task's spec says which of them become samples (``items``):

===========  =========================================================  =========================
kind         one sample per                                             target key in the batch
===========  =========================================================  =========================
captions     caption (retrieval, captioning, pretraining)               —
qa_mc        multiple-choice question with options and a correct index  ``answer`` (option index)
qa_oe        open-ended question with an answer text                    ``answer`` (vocab index)
labels       row with a class label ≥ 0 (text: its first caption)       ``label``
scores       row with a finite score (text: its first caption)          ``score``
rows         row (image classification: no text)                        ``label``
===========  =========================================================  =========================

The same names key the per-split counts ``meltr-ray ingest`` writes to ``dataset.json["items"]``.
"""
from __future__ import annotations

import math

ITEM_KINDS = ("captions", "qa_mc", "qa_oe", "labels", "scores", "rows")
TARGET_KEYS = {"qa_mc": "answer", "qa_oe": "answer", "labels": "label", "scores": "score", "rows": "label"}


def _list(row: dict, key: str) -> list:
    """A list column of a row as a Python list (rows from Arrow/numpy hold arrays or None)."""
    value = row.get(key)
    return [] if value is None else list(value)


def check_kind(kind: str) -> str:
    if kind not in ITEM_KINDS:
        raise ValueError(f"unknown item kind {kind!r} (a backbone spec's data.items); known: {ITEM_KINDS}")
    return kind


def text_items(row: dict, kind: str) -> list[dict]:
    """The items of one row of ``kind``: each a dict with ``text`` and, per kind, answer/label/score."""
    check_kind(kind)
    if kind == "captions":
        return [{"text": str(c)} for c in _list(row, "captions")]
    if kind in ("qa_mc", "qa_oe"):
        qs = zip(_list(row, "questions"), _list(row, "options"), _list(row, "answers"), _list(row, "answer_texts"))
        if kind == "qa_mc":
            return [{"text": str(q), "options": [str(x) for x in o], "answer": int(a)}
                    for q, o, a, _ in qs if o is not None and len(o) and a >= 0]
        return [{"text": str(q), "answer_text": str(t)} for q, _, _, t in qs if t]
    first = str((_list(row, "captions") or [""])[0])
    label = row.get("label")
    if kind == "rows":
        return [{"text": first, "label": int(label) if label is not None else -1}]
    if kind == "labels":
        return [{"text": first, "label": int(label)}] if label is not None and label >= 0 else []
    score = row.get("score", math.nan)
    return [] if score is None or math.isnan(score) else [{"text": first, "score": float(score)}]
