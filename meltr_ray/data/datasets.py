"""Converters for the datasets of the paper (formats: reference meltr_official.md §3.5, §4.5, §5.5).

Every converter takes the annotation path (``--annotations``), ``videos`` (the video folder, for resolving
file names) and its own keyword options (CLI ``--opt key=value``), and yields records or :class:`Skip`.

==================  ===========================================================================================
format              inputs
==================  ===========================================================================================
``msrvtt``          ``MSRVTT_data.json`` (``videos``, ``sentences``). ``split_mode=9k``: ``train_list`` =
                    ``MSRVTT_train.9k.csv`` (or a .txt of ids), all captions of those videos; ``7k``: the first
                    7,010 videos of the json; test = ``test_list`` = ``MSRVTT_JSFUSION_test.csv`` (1k-A, one
                    caption each). ``split_mode=full`` (captioning): train = first 7,010 videos, test = the last
                    2,990 with **all 20 references** (the official B-U3 typo used one). ``val_list=``: ids
                    moved from train to ``val``; ``features=`` (UniVL's S3D pickle): feature rows.
``violet-retrieval`` Violet's ``{"sentences": [{"video_id", "caption"}]}`` files: train file as annotations,
                    ``test=`` / ``val=`` options; with ``--legacy-frames img_*.pkl`` Violet's frames are used.
``msvd-qa``,        Violet's ``txt_{task}.json`` = ``{"train": [...], "test": [...]}``: multiple choice items
``tgif-action``,    ``{"video", "question", "option_0".."option_4", "answer": int}``; open-ended items
``tgif-transition`` ``{"video", "question", "answer": int | str}``. Integer open-ended answers index the top-K
``tgif-frame``      answer list: pass it as ``answer_vocab`` (a json list) or the ids are kept as is.
``allinone-msrvtt``  All-in-one's ``MSR_VTT.json`` (``annotations: [{image_id, caption}]``) + ``train_list_9k.txt`` /
                    ``train_list_7k.txt`` (``split_mode=9k|7k``, the official code always used 7k: B-A2) +
                    ``val_list_jsfusion.txt`` + ``jsfusion_val_caption_idx.pkl`` (video → index of its one test
                    caption; needs ``allow_pickle``; ``test_captions=all`` keeps every caption instead). Files
                    default to the annotation file's folder; train rows hold every caption of a video.
``msvd-qa-original`` the MSVD-QA release (Xu et al. 2017): ``train_qa.json`` as annotations, ``val=val_qa.json``,
                    ``test=test_qa.json`` (default: beside it), items ``{"video_id": N, "question", "answer"}``;
                    ``mapping=youtube_mapping.txt`` (``<clip name> vid<N>`` lines) names the files in
                    ``YouTubeClips/``; without it the video of N is ``vid<N>``.
``msvd-qa-alpro``   ALPRO's ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (``{"video_id", "question", "answer",
                    "answer_type"}``, ``val=`` / ``test=`` options, default beside the train file);
                    ``ans2label=train_ans2label.json`` fixes the answer vocabulary (by label); without it ingest
                    keeps the top ``--answer-vocab-size`` (1,000) train answers.
``youcook2``        ``youcookii_data.transcript.pickle`` (annotations) + ``features`` = the S3D feature pickle +
                    ``train_csv`` / ``val_csv`` / ``test_csv``; one row per (video, clip), features
                    ``[int(start), int(end)+1)`` at 1 fps. Pickles need ``allow_pickle``.
``cmu-mosi``        a pickle or ``.npz`` of splits ``{train|valid|test: {"vision"/"audio"/"text" or "features":
                    (N, F, D), "labels": (N, ...), "id"?: (N,), "raw_text"?: (N,) str}}``; modalities are
                    concatenated along D; ``raw_text`` (the spoken sentence, as in MMSA's pickles) becomes the
                    row's caption, the text UniVL reads.
==================  ===========================================================================================
"""
from __future__ import annotations

import csv
import json
import os
from typing import Iterator

import numpy as np

from .converters import Skip, add_question, feature_array, load_pickle, new_record, resolve_video

MSRVTT_TRAIN_7K = 7010


def _read_id_list(path: str) -> list[str]:
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            return [row["video_id"] for row in csv.DictReader(f)]
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def read_msrvtt(annotations: str, videos: str | None = None, split_mode: str = "9k",
                train_list: str | None = None, test_list: str | None = None, val_list: str | None = None,
                features: str | None = None, allow_pickle: bool = False, max_frames: int = 48,
                **_) -> Iterator[dict | Skip]:
    """MSRVTT retrieval (9k / 7k train + 1k-A test) or full captioning split (see the module table).

    ``val_list`` (ids, one per line, or a CSV with ``video_id``) moves those training videos to ``val``, so
    model selection need not use the test split (B-U4). ``features`` (UniVL: ``msrvtt_videos_features.pickle``
    = ``{video_id: (seconds, D)}``, needs ``allow_pickle``) makes feature rows (first ``max_frames`` seconds)
    instead of video rows.
    """
    val_ids = set(_read_id_list(val_list)) if val_list else set()
    feats = load_pickle(features, allow_pickle) if features else None
    for rec in _msrvtt_records(annotations, videos, split_mode, train_list, test_list):
        yield from _msrvtt_finish(rec, val_ids, feats, int(max_frames))


def _msrvtt_finish(rec, val_ids: set, feats, max_frames: int) -> Iterator[dict | Skip]:
    if isinstance(rec, Skip):
        yield rec
        return
    if rec["split"] == "train" and rec["id"] in val_ids:
        rec["split"] = "val"
    if feats is not None:
        if rec["video_id"] not in feats:
            yield Skip(rec["id"], "", "missing file: no features for video")
            return
        try:
            rec["features"], rec["video"] = feature_array(np.asarray(feats[rec["video_id"]])[:max_frames]), None
        except ValueError as exc:
            yield Skip(rec["id"], "", f"bad features: {exc}")
            return
    yield rec


def _msrvtt_records(annotations, videos, split_mode, train_list, test_list) -> Iterator[dict | Skip]:
    with open(annotations) as f:
        data = json.load(f)
    order = [v["video_id"] for v in data["videos"]]
    captions: dict[str, list[str]] = {}
    for s in data["sentences"]:
        captions.setdefault(s["video_id"], []).append(s["caption"])
    if split_mode == "full":
        splits = {"train": order[:MSRVTT_TRAIN_7K], "test": order[MSRVTT_TRAIN_7K:]}
        test_caps = None
    else:
        train = _read_id_list(train_list) if split_mode == "9k" else order[:MSRVTT_TRAIN_7K]
        test_caps = _jsfusion(test_list) if test_list else {}
        splits = {"train": train, "test": list(test_caps)}
    for split, ids in splits.items():
        for vid in ids:
            rec = new_record(vid, resolve_video(videos or "", vid), split)
            rec["captions"] = test_caps[vid] if split == "test" and test_caps is not None else captions.get(vid, [])
            if not rec["captions"]:
                yield Skip(vid, rec["video"], "unparsable annotation: video has no captions")
            else:
                yield rec


def _jsfusion(path: str) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        return {row["video_id"]: [row["sentence"]] for row in csv.DictReader(f)}


def read_violet_qa(annotations: str, videos: str | None = None, answer_vocab: str | None = None,
                   **_) -> Iterator[dict | Skip]:
    """Violet ``txt_{task}.json`` (MSVD-QA, TGIF-Action/Transition/Frame); one row per video, all its questions."""
    with open(annotations) as f:
        data = json.load(f)
    vocab = json.load(open(answer_vocab)) if answer_vocab else None
    rows: dict[str, dict] = {}
    max_answer = -1
    for split, items in data.items():
        split = {"valid": "val", "validation": "val"}.get(split, split)
        for n, item in enumerate(items):
            try:
                vid = str(item["video"])
                rec = rows.setdefault(f"{split}/{vid}", new_record(vid, resolve_video(videos or "", vid), split))
                options = [item[k] for k in sorted(k for k in item if k.startswith("option_"))]
                answer = item["answer"]
                if options:
                    add_question(rec, {"question": item["question"], "options": options, "answer": int(answer)})
                else:
                    max_answer = max(max_answer, answer) if isinstance(answer, int) else max_answer
                    text = vocab[answer] if vocab and isinstance(answer, int) else str(answer)
                    add_question(rec, {"question": item["question"], "answer_text": text})
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                yield Skip(str(item.get("video", f"{split}[{n}]")) if isinstance(item, dict) else f"{split}[{n}]",
                           "", f"unparsable annotation ({split} item {n}): {exc!r}")
    for key, rec in rows.items():
        rec["id"] = key                                  # a video may be in several splits
        yield rec
    if vocab is not None:
        yield {"answer_vocab": list(vocab)}
    elif max_answer >= 0:                                # integer answers without a vocabulary: keep ids
        yield {"answer_vocab": [str(i) for i in range(max_answer + 1)]}


def read_violet_retrieval(annotations: str, videos: str | None = None, val: str | None = None,
                          test: str | None = None, **_) -> Iterator[dict | Skip]:
    """Violet retrieval files ``{"sentences": [{"video_id", "caption"}]}``: ``annotations`` is the train file
    (``train_9k.json`` / ``train_7k.json``), ``--opt test=test.json`` (1k-A) and ``--opt val=...``."""
    for split, path in (("train", annotations), ("val", val), ("test", test)):
        if not path:
            continue
        with open(path) as f:
            sentences = json.load(f)["sentences"]
        captions: dict[str, list[str]] = {}
        for n, item in enumerate(sentences):
            if not isinstance(item, dict) or not isinstance(item.get("caption"), str) or "video_id" not in item:
                yield Skip(f"{split}[{n}]", "", f"unparsable annotation ({split} sentence {n})")
                continue
            captions.setdefault(str(item["video_id"]), []).append(item["caption"])
        for vid, caps in captions.items():
            rec = new_record(vid, resolve_video(videos or "", vid), split)
            rec["captions"] = caps
            yield rec


def read_youcook2(annotations: str, videos: str | None = None, features: str | None = None,
                  train_csv: str | None = None, val_csv: str | None = None, test_csv: str | None = None,
                  allow_pickle: bool = False, max_frames: int = 48, **_) -> Iterator[dict | Skip]:
    """YouCook2 (UniVL): S3D features per video, one row per annotated clip with its caption.

    ``val_csv`` / ``test_csv`` become the ``val`` / ``test`` splits. The official ``youcookii_val.csv`` is the
    split every paper reports on: pass it as ``test_csv`` and hold out training videos as ``val_csv`` so model
    selection never sees the test split (the official code selected on it, B-U4).
    """
    if not features:
        raise ValueError("youcook2 needs features=<youcookii_videos_features.pickle>")
    max_frames = int(max_frames)                         # CLI options arrive as strings
    transcript = load_pickle(annotations, allow_pickle)
    feats = load_pickle(features, allow_pickle)
    for split, path in (("train", train_csv), ("val", val_csv), ("test", test_csv)):
        if not path:
            continue
        with open(path, newline="") as f:
            listed = [(r["video_id"], r.get("feature_file") or r["video_id"]) for r in csv.DictReader(f)]
        for vid, feature_file in listed:
            yield from _youcook_clips(vid, split, transcript.get(vid), feats.get(feature_file), max_frames)


def _youcook_clips(vid: str, split: str, ann, feat, max_frames: int) -> Iterator[dict | Skip]:
    if ann is None or feat is None:
        yield Skip(vid, "", "missing file: no " + ("annotation" if ann is None else "features") + " for video")
        return
    for k, (start, end, text) in enumerate(zip(ann["start"], ann["end"], ann["text"])):
        rec = new_record(f"{vid}#{k}", None, split)
        rec["video_id"] = vid
        try:
            rec["features"] = feature_array(np.asarray(feat)[int(start):int(end) + 1][:max_frames])
        except ValueError as exc:
            yield Skip(rec["id"], "", f"bad features: {exc}")
            continue
        rec["captions"], rec["clip_start"], rec["clip_end"] = [str(text)], float(start), float(end)
        yield rec


def read_cmu_mosi(annotations: str, videos: str | None = None, allow_pickle: bool = False,
                  **_) -> Iterator[dict | Skip]:
    """CMU-MOSI aligned features + sentiment scores (see the module table)."""
    data = dict(np.load(annotations, allow_pickle=False)) if annotations.endswith(".npz") \
        else load_pickle(annotations, allow_pickle)
    if annotations.endswith(".npz"):                      # flat npz: "{split}/{key}" arrays
        nested: dict = {}
        for key, arr in data.items():
            split, name = key.split("/", 1)
            nested.setdefault(split, {})[name] = arr
        data = nested
    for split, part in data.items():
        out_split = {"valid": "val", "validation": "val"}.get(split, split)
        mods = [np.asarray(part[m], np.float32) for m in ("features", "vision", "audio", "text") if m in part]
        feats = np.concatenate(mods, axis=-1)
        labels = np.asarray(part["labels"], np.float32).reshape(len(feats), -1)[:, 0]
        ids = [str(i) for i in part.get("id", [f"{out_split}{n:05d}" for n in range(len(feats))])]
        texts = [str(t) for t in part["raw_text"]] if "raw_text" in part else [""] * len(feats)
        for n, (rid, f, score, text) in enumerate(zip(ids, feats, labels, texts)):
            rec = new_record(f"{out_split}/{rid}/{n}", None, out_split)
            try:
                rec["features"], rec["score"] = feature_array(f), float(score)
            except ValueError as exc:
                yield Skip(rec["id"], "", f"bad features: {exc}")
                continue
            rec["captions"] = [text] if text else []         # the spoken sentence: UniVL's text input
            yield rec


# ---- All-in-one MSRVTT and MSVD-QA (original release, ALPRO's json) ------------------------------------------
def _beside(annotations: str, path: str | None, name: str) -> str | None:
    """``path`` as given, else ``name`` next to the annotation file when it exists there."""
    if path:
        return path
    candidate = os.path.join(os.path.dirname(os.path.abspath(annotations)), name)
    return candidate if os.path.exists(candidate) else None


def _test_caption_index(path: str | None, allow_pickle: bool) -> dict | None:
    if path is None:
        return None
    index = load_pickle(path, allow_pickle)
    if not isinstance(index, dict):
        raise ValueError(f"{path} must hold a dict video id -> caption index, got {type(index).__name__}")
    return {str(k): int(v) for k, v in index.items()}


def read_allinone_msrvtt(annotations: str, videos: str | None = None, split_mode: str = "9k",
                         train_list: str | None = None, test_list: str | None = None,
                         caption_index: str | None = None, test_captions: str = "one", allow_pickle: bool = False,
                         **_) -> Iterator[dict | Skip]:
    """All-in-one's MSRVTT files (see the module table): train 9k or 7k, test = the 1k-A (JSFusion) list."""
    if split_mode not in ("9k", "7k"):
        raise ValueError(f"allinone-msrvtt: split_mode must be '9k' or '7k', got {split_mode!r}")
    if test_captions not in ("one", "all"):
        raise ValueError(f"allinone-msrvtt: test_captions must be 'one' or 'all', got {test_captions!r}")
    with open(annotations) as f:
        items = json.load(f)["annotations"]
    captions: dict[str, list[str]] = {}
    for item in items:
        captions.setdefault(str(item["image_id"]), []).append(str(item["caption"]))
    lists = {"train": _beside(annotations, train_list, f"train_list_{split_mode}.txt"),
             "test": _beside(annotations, test_list, "val_list_jsfusion.txt")}
    index = None
    if test_captions == "one":
        path = _beside(annotations, caption_index, "jsfusion_val_caption_idx.pkl")
        if lists["test"] and path is None:
            raise ValueError("allinone-msrvtt: the 1k-A test needs jsfusion_val_caption_idx.pkl (--opt "
                             "caption_index=PATH, with --allow-pickle), or --opt test_captions=all")
        index = _test_caption_index(path, allow_pickle)
    for split, path in lists.items():
        if path:
            yield from _allinone_split(split, _read_id_list(path), captions, index, videos)


def _allinone_split(split: str, ids: list[str], captions: dict, index: dict | None,
                    videos: str | None) -> Iterator[dict | Skip]:
    for vid in ids:
        rec = new_record(vid, resolve_video(videos or "", vid), split)
        caps = captions.get(vid, [])
        if split == "test" and index is not None and caps:
            k = index.get(vid)
            if k is None or not 0 <= k < len(caps):
                yield Skip(vid, rec["video"], f"unparsable annotation: no test caption index {k!r} for the video "
                                              f"({len(caps)} captions)")
                continue
            caps = [caps[k]]
        rec["captions"] = caps
        if not caps:
            yield Skip(vid, rec["video"], "unparsable annotation: video has no captions")
        else:
            yield rec


def _qa_rows(items, split: str, videos: str | None, video_name, rows: dict) -> Iterator[Skip]:
    """Add open-ended questions to one row per (split, video); yields a Skip per bad item."""
    for n, item in enumerate(items):
        try:
            vid = video_name(item["video_id"])
            answer = item["answer"]
            if not isinstance(answer, str) or not isinstance(item["question"], str):
                raise ValueError("question and answer must be strings")
            rec = rows.setdefault(f"{split}/{vid}", new_record(vid, resolve_video(videos or "", vid), split))
            add_question(rec, {"question": item["question"], "answer_text": answer})
        except (KeyError, ValueError, TypeError) as exc:
            yield Skip(f"{split}[{n}]", "", f"unparsable annotation ({split} item {n}): {exc!r}")


def _finish_rows(rows: dict) -> Iterator[dict]:
    for key, rec in rows.items():
        rec["id"] = key                                  # a video may be in several splits
        yield rec


def _youtube_names(path: str | None) -> dict[str, str]:
    """``youtube_mapping.txt``: ``<clip name> vid<N>`` per line → {"vid<N>": clip name}."""
    if path is None:
        return {}
    names = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                names[parts[1]] = parts[0]
    return names


def read_msvd_qa_original(annotations: str, videos: str | None = None, val: str | None = None,
                          test: str | None = None, mapping: str | None = None, **_) -> Iterator[dict | Skip]:
    """The MSVD-QA release's ``{train,val,test}_qa.json`` (see the module table); one row per video and split."""
    names = _youtube_names(_beside(annotations, mapping, "youtube_mapping.txt"))

    def video_name(number) -> str:
        key = f"vid{int(number)}"
        return names.get(key, key)
    rows: dict[str, dict] = {}
    for split, path in (("train", annotations), ("val", _beside(annotations, val, "val_qa.json")),
                        ("test", _beside(annotations, test, "test_qa.json"))):
        if path:
            with open(path) as f:
                yield from _qa_rows(json.load(f), split, videos, video_name, rows)
    yield from _finish_rows(rows)


def _jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_msvd_qa_alpro(annotations: str, videos: str | None = None, val: str | None = None,
                       test: str | None = None, ans2label: str | None = None, **_) -> Iterator[dict | Skip]:
    """ALPRO's MSVD-QA jsonl files (see the module table); one row per video and split."""
    rows: dict[str, dict] = {}
    for split, path in (("train", annotations), ("val", _beside(annotations, val, "val.jsonl")),
                        ("test", _beside(annotations, test, "test.jsonl"))):
        if path:
            yield from _qa_rows(_jsonl(path), split, videos, str, rows)
    yield from _finish_rows(rows)
    if ans2label:
        with open(ans2label) as f:
            labels = json.load(f)
        yield {"answer_vocab": [a for a, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]}


FORMATS = {"msrvtt": read_msrvtt, "violet-retrieval": read_violet_retrieval, "msvd-qa": read_violet_qa,
           "tgif-action": read_violet_qa, "tgif-transition": read_violet_qa, "tgif-frame": read_violet_qa,
           "youcook2": read_youcook2, "cmu-mosi": read_cmu_mosi,
           "allinone-msrvtt": read_allinone_msrvtt, "msvd-qa-original": read_msvd_qa_original,
           "msvd-qa-alpro": read_msvd_qa_alpro}
