"""Annotation converters: one function per dataset format, each yielding *records* (or :class:`Skip`).

A record is a dict of shard-row fields (see :mod:`meltr_ray.data.schema`) without the video bytes, plus
``video`` (path relative to ``--videos``) for video datasets or ``features`` (an (F, D) array) for feature
datasets. :func:`meltr_ray.data.ingest.ingest` probes the videos and writes the shards.

**Generic JSONL** (``--format jsonl``), one JSON object per line::

    {"video": "a/b.mp4", "text": ["a caption", ...] | "a caption", "id": "b", "split": "train",
     "label": 3, "score": 0.5, "start": 1.0, "end": 4.5,
     "question": "...", "options": ["...", ...], "answer": 2, "answer_text": "...",
     "qa": [{"question": ..., "options": [...], "answer": 0, "answer_text": ...}, ...]}

Only ``video`` and ``text`` (or a question) are needed. ``id`` defaults to the video path without its
extension; lines with the same id are **merged** into one row (their captions and questions appended), so a
"one caption per line" file gives one row per video. A question with ``options`` and an integer ``answer`` is
multiple choice; ``answer_text`` (or a string ``answer``) is the open-ended answer. A line that is not valid JSON,
lacks ``video`` or has fields of the wrong type is skipped and reported with its line number.
**CSV** (``--format csv``) takes the same fields as columns (one caption in ``text``).
"""
from __future__ import annotations

import csv
import json
import os
import pickle
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif", ".m4v")


@dataclass
class Skip:
    """An annotation item that could not be turned into a record."""
    id: str
    video: str
    reason: str


def new_record(row_id: str, video: str | None, split: str = "train") -> dict:
    return {"id": row_id, "video_id": row_id, "video": video, "split": split, "captions": [], "questions": [],
            "options": [], "answers": [], "answer_texts": [], "label": -1}


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    raise ValueError("'text' must be a string or a list of strings")


def _qa_items(line: dict) -> list[dict]:
    items = [q for q in line.get("qa") or []]
    if line.get("question") is not None:
        items.insert(0, {k: line.get(k) for k in ("question", "options", "answer", "answer_text")})
    return items


def add_question(rec: dict, item: dict) -> None:
    """Append one question (multiple choice and/or open ended) to a record's parallel lists."""
    if not isinstance(item.get("question"), str):
        raise ValueError("'question' must be a string")
    options, answer, text = item.get("options") or [], item.get("answer"), item.get("answer_text")
    if isinstance(answer, str):
        answer, text = None, answer
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ValueError("'options' must be a list of strings")
    if options and (not isinstance(answer, int) or not 0 <= answer < len(options)):
        raise ValueError(f"'answer' must index 'options' (got {answer!r} for {len(options)} options)")
    rec["questions"].append(item["question"])
    rec["options"].append(list(options))
    rec["answers"].append(int(answer) if options else -1)
    rec["answer_texts"].append(str(text) if text is not None else "")


def record_from_line(line: dict) -> dict:
    """One generic annotation object → a record (raises ``ValueError`` with the reason)."""
    if not isinstance(line, dict):
        raise ValueError("annotation is not a JSON object")
    video = line.get("video")
    if not isinstance(video, str) or not video:
        raise ValueError("missing 'video'")
    row_id = str(line.get("id") or os.path.splitext(video)[0])
    rec = new_record(row_id, video, str(line.get("split") or "train"))
    rec["captions"] = _texts(line.get("text"))
    for item in _qa_items(line):
        add_question(rec, item)
    if line.get("label") is not None:
        rec["label"] = int(line["label"])
    if line.get("score") is not None:
        rec["score"] = float(line["score"])
    if line.get("start") is not None and line.get("end") is not None:
        rec["clip_start"], rec["clip_end"] = float(line["start"]), float(line["end"])
    if not rec["captions"] and not rec["questions"] and rec["label"] < 0 and "score" not in rec:
        raise ValueError("no text, question, label or score")
    return rec


def merge_records(items: Iterable[dict | Skip]) -> Iterator[dict | Skip]:
    """Merge records with the same id (captions and questions appended; video/split/label must agree)."""
    merged: dict[str, dict] = {}
    for item in items:
        if isinstance(item, Skip):
            yield item
            continue
        first = merged.get(item["id"])
        if first is None:
            merged[item["id"]] = item
        elif any(first.get(k) != item.get(k) for k in ("video", "split", "label")):
            yield Skip(item["id"], item.get("video") or "", "conflicts with an earlier line of the same id "
                                                            "(video, split or label differ)")
        else:
            for key in ("captions", "questions", "options", "answers", "answer_texts"):
                first[key] = first[key] + item[key]
    yield from merged.values()


def read_jsonl(annotations: str, **_) -> Iterator[dict | Skip]:
    """Generic JSONL (module docstring)."""
    def items():
        with open(annotations, encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                if not text.strip():
                    continue
                yield _parse_line(text, n, json.loads)
    return merge_records(items())


def _parse_line(text, n: int, parse) -> dict | Skip:
    line = None
    try:
        line = parse(text)
        return record_from_line(line)
    except (ValueError, TypeError, KeyError) as exc:
        video = str(line.get("video") or "") if isinstance(line, dict) else ""
        row_id = str(line.get("id") or os.path.splitext(video)[0] or f"line {n}") if isinstance(line, dict) \
            else f"line {n}"
        return Skip(row_id, video, f"unparsable annotation (line {n}): {exc}")


def read_csv(annotations: str, **_) -> Iterator[dict | Skip]:
    """Generic CSV with the JSONL field names as columns (``options`` as a JSON list)."""
    def parse(row: dict) -> dict:
        line = {k: v for k, v in row.items() if v not in (None, "")}
        for key in ("label", "answer"):
            if key in line and str(line[key]).lstrip("-").isdigit():
                line[key] = int(line[key])
        if "options" in line:
            line["options"] = json.loads(line["options"])
        return line

    def items():
        with open(annotations, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                yield _parse_line(row, n, parse)
    return merge_records(items())


def load_pickle(path: str, allow_pickle: bool, encoding: str = "ASCII") -> Any:
    """Read a legacy pickle, only when the user passed ``--allow-pickle`` (pickles can run arbitrary code).

    ``encoding`` is pickle's for Python 2 strings (``"latin1"`` for Python 2 pickles of numpy arrays)."""
    if not allow_pickle:
        raise PermissionError(f"{path} is a pickle; reading pickles runs arbitrary code, pass --allow-pickle "
                              "(allow_pickle=True) if you trust the file")
    with open(path, "rb") as f:
        return pickle.load(f, encoding=encoding)


def resolve_video(videos: str, name: str) -> str:
    """``name`` relative to ``videos``, trying the usual extensions when ``name`` has none that exists."""
    if os.path.exists(os.path.join(videos, name)):
        return name
    for ext in VIDEO_EXTENSIONS:
        if os.path.exists(os.path.join(videos, name + ext)):
            return name + ext
    return name + ".mp4" if not os.path.splitext(name)[1] else name


def feature_array(value: Any) -> np.ndarray:
    """A 2-D float32 (F, D) feature array (raises ``ValueError`` otherwise)."""
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        raise ValueError(f"features must be a finite non-empty (F, D) array, got shape {arr.shape}")
    return arr
