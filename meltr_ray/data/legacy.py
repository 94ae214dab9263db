"""Legacy inputs of the official code, read only behind ``--allow-pickle``.

Violet ships its frames as ``img_{dataset}.pkl``: ``{video_id: [base64 JPEG, ...]}`` with T frames already
sampled (reference §4.5). :func:`encode_legacy_frames` turns each video's frames into a small H.264 mp4 (one
frame per second, even-sized, crf 18) in a cache folder and points the records at it, so everything downstream
(probe, shards, decode, uniform sampling) is unchanged: sampling T of T frames returns them in order. The JPEG →
H.264 step is lossy once more; the cache is re-used by later runs.
"""
from __future__ import annotations

import base64
import io
import os
import re

import numpy as np

from .converters import load_pickle


def decode_jpeg_b64(text: str | bytes) -> np.ndarray:
    """One base64 JPEG (the official ``str(base64.b64encode(b))[2:-1]`` strings) → RGB uint8 (H, W, 3)."""
    from PIL import Image

    raw = base64.b64decode(text)
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def frames_to_mp4(frames_b64: list, path: str) -> None:
    """Encode base64 JPEG frames as an mp4 at 1 fps (cropped to even sizes, as yuv420p needs)."""
    from .synthetic import encode_mp4

    frames = [decode_jpeg_b64(f) for f in frames_b64]
    h = min(f.shape[0] for f in frames) // 2 * 2
    w = min(f.shape[1] for f in frames) // 2 * 2
    tmp = path + ".tmp.mp4"
    encode_mp4([f[:h, :w] for f in frames], tmp, fps=1)
    os.replace(tmp, path)


def encode_legacy_frames(records: list[dict], frames_pickle: str, cache_dir: str, allow_pickle: bool
                         ) -> list[dict]:
    """Point every record whose ``video_id`` is in the pickle at an mp4 made from its frames.

    Returns skipped rows (``{"id", "video", "reason"}``) for videos whose frames cannot be decoded.
    """
    data = load_pickle(frames_pickle, allow_pickle)
    os.makedirs(cache_dir, exist_ok=True)
    skipped, keep = [], []
    for rec in records:
        frames = data.get(rec["video_id"])
        if frames is None:
            keep.append(rec)
            continue
        path = os.path.join(cache_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", str(rec["video_id"])) + ".mp4")
        try:
            if not os.path.exists(path):
                frames_to_mp4(list(frames), path)
        except Exception as exc:                      # a bad JPEG drops this video only
            skipped.append({"id": rec["id"], "video": frames_pickle, "reason": f"bad legacy frames: {exc!r}"})
            continue
        rec["video"] = os.path.abspath(path)
        keep.append(rec)
    records[:] = keep
    return skipped
