"""Shard rows → training samples: decode each row once, emit one sample per item of the spec's kind.

This is the body of the Ray Data decode UDF (``meltr_ray.cluster.data``), kept here free of Ray so it is
tested and benchmarked on its own.

**One row per clip, one sample per text item.** A shard row holds all text items of its clip. For a batch of
rows :class:`SampleBuilder` decodes every row's video once (``T`` sampled frames) and emits one sample per
text item of the task — every caption (retrieval, captioning), every multiple-choice or open-ended question —
repeating the decoded frames for each. So each text item is seen exactly once per epoch and no video is
decoded twice in an epoch. ``text_mode='random'`` instead emits one random item per clip (All-in-one's
training behaviour). ``sample_id`` = ``"{row id}#{item index}"`` identifies a sample.

Output (numpy, one entry per sample; the collate turns numbers into tensors and keeps strings as lists):
``video_id``, ``sample_id`` (str); ``frames`` uint8 (T, S, S, 3); ``frame_indices`` int64 (T,); ``text_ids`` /
``text_mask`` int64 (L,) or (O, L) for ``qa_mc`` (+ ``option_mask`` (O,)); ``answer`` / ``label`` int64;
``score`` float32; ``vq_ids`` int64 (T, h, w) when ``vq_grid`` is set (-1 where a row has no codes);
``features`` float32 (F, D) and ``feature_mask`` int64 (F,) for feature datasets; ``images`` uint8 (S, S, 3) and
``aug_seed`` int64 for image datasets (one sample per row; :mod:`meltr_ray.data.image` decodes, resizes and, with
``augment`` = ``crop_flip`` | ``crop``, crops and flips).
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
from typing import Callable

import numpy as np

from .image import check_augment, empty_image_batch, image_sample
from .items import TARGET_KEYS, check_kind, text_items
from .tokenize import encode_mc_prompts, encode_texts, load_tokenizer
from .video import DecodeError, describe_error, get_decoder, sample_clip

log = logging.getLogger(__name__)

# shard columns the builder reads (the pipeline selects only these)
VIDEO_COLUMNS = ["id", "video_id", "video_bytes", "n_frames", "fps", "width", "height", "clip_start", "clip_end"]
TEXT_COLUMNS = ["captions", "questions", "options", "answers", "answer_texts", "label", "score"]
FEATURE_COLUMNS = ["id", "video_id", "features", "feature_dim"]
VQ_COLUMNS = ["vq_ids", "vq_h", "vq_w"]

BadRowHook = Callable[[str, str, str], None]          # (row id, video id, reason)


def rows_of(batch: dict) -> list[dict]:
    """Columnar numpy batch → list of row dicts."""
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


class SampleBuilder:
    """Callable ``batch of shard rows → batch of samples`` (see the module docstring).

    ``on_bad_row(row_id, video_id, reason)`` is called for every row that cannot be decoded (and the row is
    dropped); ``bad_rows`` keeps the same list locally. ``decode_timeout_s`` runs each decode in a helper thread
    and gives up on it after that many seconds (a native decoder hang cannot be interrupted, only abandoned).
    """

    def __init__(self, *, items: str = "captions", num_frames: int = 4, image_size: int = 32,
                 max_text_len: int = 16, vocab_path: "str | dict | None" = None, sampling: str = "uniform",
                 resize_mode: str = "stretch", min_frames: int = 1, decoder="decord", modality: str = "video",
                 vq_grid: tuple[int, int] | None = None, feature_dim: int = 0, num_options: int = 5,
                 answer_vocab: list[str] | None = None, text_mode: str = "all", max_feature_frames: int = 48,
                 decode_timeout_s: float | None = 60.0, augment: str = "none",
                 seed: "int | list[int] | None" = None, on_bad_row: BadRowHook | None = None):
        check_kind(items)
        if text_mode not in ("all", "random"):
            raise ValueError("text_mode must be 'all' or 'random'")
        self.items, self.num_frames, self.image_size, self.max_text_len = items, num_frames, image_size, max_text_len
        self.sampling, self.resize_mode, self.min_frames = sampling, resize_mode, min_frames
        self.modality, self.vq_grid, self.num_options, self.text_mode = modality, vq_grid, num_options, text_mode
        self.max_feature_frames, self.decode_timeout_s = max_feature_frames, decode_timeout_s
        self.feature_dim = feature_dim
        self.augment = check_augment(augment)    # image modality: crop_flip | crop | none (training splits)
        self.answer_index = {a: i for i, a in enumerate(answer_vocab or [])}
        self.tokenizer = load_tokenizer(vocab_path) if vocab_path else None
        self.decoder = get_decoder(decoder) if modality == "video" else None
        self.rng = np.random.default_rng(seed)
        self.on_bad_row = on_bad_row
        self.bad_rows: list[dict] = []
        self._pool = None

    # ---- per row ------------------------------------------------------------------------------------------
    def _report(self, row: dict, reason: str) -> None:
        row_id, video_id = str(row.get("id", "")), str(row.get("video_id", ""))
        self.bad_rows.append({"id": row_id, "video_id": video_id, "reason": reason})
        log.warning("bad row %s (video %s): %s", row_id, video_id, reason)
        if self.on_bad_row is not None:
            self.on_bad_row(row_id, video_id, reason)

    def _decode(self, row: dict):
        data = row.get("video_bytes")
        if data is None or len(data) == 0:
            raise DecodeError("no video bytes" if data is None else "empty video bytes")
        return sample_clip(self.decoder, bytes(data), num_frames=self.num_frames, image_size=self.image_size,
                           sampling=self.sampling, resize_mode=self.resize_mode, width=int(row.get("width", 0)),
                           height=int(row.get("height", 0)), fps=float(row.get("fps", 0.0)),
                           window=(float(row.get("clip_start", math.nan)), float(row.get("clip_end", math.nan))),
                           min_frames=self.min_frames, rng=self.rng)

    def _decode_with_timeout(self, row: dict):
        if not self.decode_timeout_s:
            return self._decode(row)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        future = self._pool.submit(self._decode, row)
        try:
            return future.result(timeout=self.decode_timeout_s)
        except concurrent.futures.TimeoutError:
            self._pool.shutdown(wait=False)      # abandon the hung thread; the next row gets a fresh one
            self._pool = None
            raise DecodeError(f"decode timed out after {self.decode_timeout_s:g} s") from None

    def _visual(self, row: dict) -> dict | None:
        """Decoded frames (+ vq codes) or features of one row; None (and a report) if it is bad."""
        try:
            if self.modality == "features":
                return self._features(row)
            if self.modality == "image":
                return self._image(row)
            frames, idx = self._decode_with_timeout(row)
        except Exception as exc:                               # any decoder failure drops only this row
            self._report(row, describe_error(exc))
            return None
        out = {"frames": frames, "frame_indices": idx}
        if self.vq_grid:
            out["vq_ids"] = self._vq(row, idx)
        return out

    def _image(self, row: dict) -> dict:
        """One image (``video_bytes`` holds its PNG/JPEG): decoded, resized, augmented when training."""
        data = row.get("video_bytes")
        if data is None or len(data) == 0:
            raise DecodeError("no image bytes" if data is None else "empty image bytes")
        return image_sample(bytes(data), self.image_size, self.augment, self.rng)

    def _vq(self, row: dict, idx: np.ndarray) -> np.ndarray:
        h, w = self.vq_grid
        codes = row.get("vq_ids")
        if codes is None or (int(row.get("vq_h") or 0), int(row.get("vq_w") or 0)) != (h, w) or len(codes) < h * w:
            return np.full((len(idx), h, w), -1, dtype=np.int64)           # -1 = ignored by the MVM loss
        grid = np.asarray(codes, dtype=np.int64).reshape(-1, h, w)
        return grid[np.clip(idx, 0, len(grid) - 1)]

    def _features(self, row: dict) -> dict:
        d = int(row.get("feature_dim") or 0)
        if row.get("features") is None or d <= 0:
            raise DecodeError("no features")
        if self.feature_dim and d != self.feature_dim:
            raise DecodeError(f"feature_dim {d} != dataset feature_dim {self.feature_dim}")
        feats = np.asarray(row["features"], dtype=np.float32).reshape(-1, d)[:self.max_feature_frames]
        out = np.zeros((self.max_feature_frames, d), dtype=np.float32)
        out[:len(feats)] = feats
        mask = (np.arange(self.max_feature_frames) < len(feats)).astype(np.int64)
        return {"features": out, "feature_mask": mask}

    # ---- text ----------------------------------------------------------------------------------------------
    def _encode_item(self, item: dict) -> dict:
        out: dict = {}
        if self.tokenizer is not None:
            if self.items == "qa_mc":
                ids, mask = encode_mc_prompts(self.tokenizer, item["text"], item["options"][:self.num_options],
                                              self.max_text_len)
                o = np.zeros((self.num_options, self.max_text_len), dtype=np.int64)
                out["text_ids"], out["text_mask"] = o.copy(), o.copy()
                out["text_ids"][:len(ids)], out["text_mask"][:len(ids)] = ids, mask
                out["option_mask"] = (np.arange(self.num_options) < len(ids)).astype(np.int64)
            else:
                ids, mask = encode_texts(self.tokenizer, [item["text"]], self.max_text_len)
                out["text_ids"], out["text_mask"] = ids[0], mask[0]
        if "answer" in item:
            out["answer"] = np.int64(item["answer"])
        if "answer_text" in item:
            out["answer"] = np.int64(self.answer_index.get(item["answer_text"], -1))
        if "label" in item:
            out["label"] = np.int64(item["label"])
        if "score" in item:
            out["score"] = np.float32(item["score"])
        return out

    def _items(self, row: dict) -> list[tuple[int, dict]]:
        items = list(enumerate(text_items(row, self.items)))
        if self.text_mode == "random" and items:
            items = [items[self.rng.integers(len(items))]]
        return items

    # ---- batch ---------------------------------------------------------------------------------------------
    def __call__(self, batch: dict) -> dict:
        samples = []
        for row in rows_of(batch):
            items = self._items(row)
            if not items:
                continue                                        # no text item for this task: nothing to emit
            visual = self._visual(row)
            if visual is None:
                continue
            for k, item in items:
                samples.append({"video_id": str(row["video_id"]), "sample_id": f"{row['id']}#{k}",
                                **visual, **self._encode_item(item)})
        return self._stack(samples)

    def _stack(self, samples: list[dict]) -> dict:
        if not samples:
            return {k: v for k, v in self.empty_batch().items()}
        out = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            out[key] = np.array(values, dtype=object) if isinstance(values[0], str) else np.stack(values)
        return out

    def empty_batch(self) -> dict:
        """A zero-sample batch with the same keys, dtypes and trailing shapes as a full one."""
        t, s, L, o = self.num_frames, self.image_size, self.max_text_len, self.num_options
        out = {"video_id": np.array([], dtype=object), "sample_id": np.array([], dtype=object)}
        if self.modality == "features":
            out["features"] = np.zeros((0, self.max_feature_frames, self.feature_dim), np.float32)
            out["feature_mask"] = np.zeros((0, self.max_feature_frames), np.int64)
        elif self.modality == "image":
            out.update(empty_image_batch(s))
        else:
            out["frames"] = np.zeros((0, t, s, s, 3), np.uint8)
            out["frame_indices"] = np.zeros((0, t), np.int64)
            if self.vq_grid:
                out["vq_ids"] = np.zeros((0, t, *self.vq_grid), np.int64)
        if self.tokenizer is not None:
            shape = (0, o, L) if self.items == "qa_mc" else (0, L)
            out["text_ids"], out["text_mask"] = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
            if self.items == "qa_mc":
                out["option_mask"] = np.zeros((0, o), np.int64)
        key = TARGET_KEYS.get(self.items)
        if key:
            out[key] = np.zeros((0,), np.float32 if key == "score" else np.int64)
        return out
