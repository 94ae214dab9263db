"""A small *real* video dataset: H.264 mp4 clips (PyAV) of one moving coloured shape, with annotations that
describe them and frame content that can be verified after decoding.

Each frame (``size × size``, default 64) is drawn from a palette-index map:

* block-row 0 (the top ``size/8`` pixels): the frame index as 8 black/white blocks, bit 0 on the left;
* block-row 1: the clip number (``index % 256``) the same way;
* below: a dark background and one shape (square, circle or diamond) in one of five colours, moving left,
  right, up or down across the clip.

:func:`read_frame_code` recovers ``(frame_index, clip_number)`` from a decoded frame at any resize down to
8×8 px blocks of 2 px, so tests check that the frame a pipeline delivers is the frame it says it sampled.

The annotation file is the generic JSONL ingest format (see :mod:`meltr_ray.data.converters`): ``id``,
``video``, ``split``, ``text`` (1–3 captions), ``label`` (motion direction), an MC question with ``options``
and ``answer`` (the shape's colour) plus its open-ended ``answer_text``, and a second question in ``qa``
(direction). ``vq.npz`` holds per-frame visual-token ids (the dominant palette id of each 32×32 patch), the
format ``ingest(vq=...)`` reads.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230), "yellow": (230, 220, 30),
           "magenta": (220, 40, 220)}
SHAPES = ("square", "circle", "diamond")
DIRECTIONS = ("left", "right", "up", "down")
# palette ids: 0 background, 1 code black, 2 code white, 3.. shape colours (in COLOURS order)
PALETTE = np.array([(40, 40, 40), (0, 0, 0), (255, 255, 255), *COLOURS.values()], dtype=np.uint8)
VQ_PATCH = 32


def _code_bands(index_map: np.ndarray, frame_index: int, clip_number: int) -> None:
    size = index_map.shape[1]
    block = size // 8
    for row, value in enumerate((frame_index, clip_number)):
        for bit in range(8):
            on = (value >> bit) & 1
            index_map[row * block:(row + 1) * block, bit * block:(bit + 1) * block] = 2 if on else 1


def _shape_mask(size: int, shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    if shape == "square":
        return (dy <= r) & (dx <= r)
    if shape == "circle":
        return dy ** 2 + dx ** 2 <= r ** 2
    return dy + dx <= r * 1.3                                     # diamond


def shape_position(t: float, direction: str, size: int, shift: float = 0.0) -> tuple[float, float]:
    """Centre (y, x) of the shape at clip fraction ``t`` ∈ [0, 1]; motion stays below the code bands.

    ``shift`` ∈ [-1, 1] moves the path sideways (across the motion) by up to a quarter of the free range, so
    clips of one (shape, colour, direction) differ."""
    top, r = size // 4, size / 8
    lo_y, hi_y, lo_x, hi_x = top + r, size - 1 - r, r, size - 1 - r
    mid_y = (lo_y + hi_y) / 2 + shift * (hi_y - lo_y) / 4
    mid_x = (lo_x + hi_x) / 2 + shift * (hi_x - lo_x) / 4
    return {"left": (mid_y, hi_x - t * (hi_x - lo_x)), "right": (mid_y, lo_x + t * (hi_x - lo_x)),
            "up": (hi_y - t * (hi_y - lo_y), mid_x), "down": (lo_y + t * (hi_y - lo_y), mid_x)}[direction]


def draw_index_map(frame_index: int, n_frames: int, clip_number: int, shape: str, colour: str, direction: str,
                   size: int = 64, shift: float = 0.0, code_bands: bool = True) -> np.ndarray:
    """Palette-index map (size, size) uint8 of one frame (``shift``: see :func:`shape_position`; without
    ``code_bands`` the top rows stay background: nothing on screen but the shape)."""
    index_map = np.zeros((size, size), dtype=np.uint8)
    cy, cx = shape_position(frame_index / max(n_frames - 1, 1), direction, size, shift)
    index_map[_shape_mask(size, shape, cy, cx, size / 8)] = 3 + list(COLOURS).index(colour)
    if code_bands:
        _code_bands(index_map, frame_index, clip_number)
    return index_map


def read_frame_code(frame: np.ndarray) -> tuple[int, int]:
    """``(frame_index, clip_number)`` from a decoded RGB frame (H, W, 3) of a synthetic clip, at any resize."""
    h, w = frame.shape[:2]
    luma = np.asarray(frame, dtype=np.float32).mean(axis=-1)
    values = []
    for row in range(2):
        y0, y1 = int((row + 0.25) * h / 8), int(np.ceil((row + 0.75) * h / 8))
        bits = [luma[y0:y1, int((b + 0.25) * w / 8):int(np.ceil((b + 0.75) * w / 8))].mean() > 127
                for b in range(8)]
        values.append(sum(int(on) << b for b, on in enumerate(bits)))
    return values[0], values[1]


def vq_codes(index_map: np.ndarray, patch: int = VQ_PATCH) -> np.ndarray:
    """Dominant palette id of each ``patch × patch`` block: int16 (size/patch, size/patch)."""
    g = max(index_map.shape[0] // patch, 1)
    p = index_map.shape[0] // g
    blocks = index_map[:g * p, :g * p].reshape(g, p, g, p).transpose(0, 2, 1, 3).reshape(g, g, -1)
    counts = np.stack([(blocks == k).sum(-1) for k in range(len(PALETTE))], axis=-1)
    return counts.argmax(-1).astype(np.int16)


def encode_mp4(frames: Sequence[np.ndarray], path: str, fps: int = 16, crf: int = 18) -> None:
    """Write RGB uint8 frames as an H.264 (yuv420p) mp4 with PyAV."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(path, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(stream.encode())


def write_audio_only_mp4(path: str, seconds: float = 1.0, rate: int = 16000) -> None:
    """An mp4 with one AAC audio stream and no video stream (a bad-input fixture)."""
    import av

    with av.open(path, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        tone = np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds))).astype(np.float32)
        for start in range(0, len(tone) - 1024 + 1, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def describe(shape: str, colour: str, direction: str, n_captions: int) -> list[str]:
    """Captions that truly describe a clip."""
    where = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}[direction]
    captions = [f"a {colour} {shape} moves {direction}", f"the {colour} {shape} is moving {where}",
                f"a {shape} coloured {colour} slides {direction} across the screen"]
    return captions[:n_captions]


def clip_annotation(i: int, shape: str, colour: str, direction: str, rng: np.random.Generator) -> dict:
    """One JSONL line of the generic ingest format for clip ``i``."""
    colours = list(COLOURS)
    options = [colours[k] for k in rng.permutation(len(colours))]
    split = {6: "val", 7: "test"}.get(i % 8, "train")
    return {"id": f"clip{i:04d}", "video": f"clip{i:04d}.mp4", "split": split,
            "text": describe(shape, colour, direction, 1 + i % 3), "label": DIRECTIONS.index(direction),
            "question": f"what colour is the {shape}?", "options": options, "answer": options.index(colour),
            "answer_text": colour,
            "qa": [{"question": f"which way does the {colour} {shape} move?", "options": list(DIRECTIONS),
                    "answer": DIRECTIONS.index(direction), "answer_text": direction}],
            "shape": shape, "colour": colour, "direction": direction}


def make_clip(i: int, n_frames: int, shape: str, colour: str, direction: str, size: int, shift: float = 0.0,
              code_bands: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """RGB frames and the (n_frames, g, g) visual-token ids of clip ``i``."""
    maps = [draw_index_map(f, n_frames, i % 256, shape, colour, direction, size, shift, code_bands)
            for f in range(n_frames)]
    return [PALETTE[m] for m in maps], np.stack([vq_codes(m) for m in maps])


def make_synthetic_dataset(out_dir: str, num_videos: int = 32, num_frames: int = 24, size: int = 64,
                           fps: int = 16, seed: int = 0, tasks: Sequence[str] = ("captions", "qa", "label"),
                           vary_length: bool = True) -> str:
    """Write ``out_dir/videos/*.mp4``, ``out_dir/annotations.jsonl`` and ``out_dir/vq.npz``.

    Clip ``i`` has ``num_frames + i % 3`` frames when ``vary_length`` (so lengths differ), a random shape,
    colour and direction from ``seed``. ``tasks`` picks which annotation fields are written (``captions``,
    ``qa``, ``label``). Returns the path of the annotation file.
    """
    if size % 8 or size < 16:
        raise ValueError("size must be a multiple of 8 and at least 16")
    rng = np.random.default_rng(seed)
    video_dir = os.path.join(out_dir, "videos")
    os.makedirs(video_dir, exist_ok=True)
    lines, vq = [], {}
    for i in range(num_videos):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
        n = num_frames + (i % 3 if vary_length else 0)
        frames, codes = make_clip(i, n, shape, colour, direction, size)
        ann = clip_annotation(i, shape, colour, direction, rng)
        encode_mp4(frames, os.path.join(video_dir, ann["video"]), fps=fps)
        vq[ann["id"]] = codes
        lines.append(_select_fields(ann, tasks))
    path = os.path.join(out_dir, "annotations.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    np.savez(os.path.join(out_dir, "vq.npz"), **vq)
    return path


def _select_fields(ann: dict, tasks: Sequence[str]) -> dict:
    drop = set()
    if "captions" not in tasks:
        drop |= {"text"}
    if "qa" not in tasks:
        drop |= {"question", "options", "answer", "answer_text", "qa"}
    if "label" not in tasks:
        drop |= {"label"}
    return {k: v for k, v in ann.items() if k not in drop}


def write_bad_videos(video_dir: str, good_path: str, short_frames: int = 3, size: int = 64) -> dict[str, str]:
    """Write one file per bad-input kind next to good clips; returns ``{kind: file name}``.

    Kinds: ``truncated`` (first half of a good mp4), ``zero_length``, ``not_a_video`` (text), ``audio_only``,
    ``too_short`` (a valid clip of ``short_frames`` frames). ``missing`` names a file that is not written.
    """
    with open(good_path, "rb") as f:
        good = f.read()
    files = {"truncated": "bad_truncated.mp4", "zero_length": "bad_zero.mp4", "not_a_video": "bad_text.mp4",
             "audio_only": "bad_audio.mp4", "too_short": "bad_short.mp4", "missing": "bad_missing.mp4"}
    path = lambda kind: os.path.join(video_dir, files[kind])               # noqa: E731
    with open(path("truncated"), "wb") as f:
        f.write(good[:len(good) // 2])
    open(path("zero_length"), "wb").close()
    with open(path("not_a_video"), "w") as f:
        f.write("this is a text file, not a video\n" * 20)
    write_audio_only_mp4(path("audio_only"))
    frames, _ = make_clip(255, short_frames, "square", "red", "left", size)
    encode_mp4(frames, path("too_short"))
    return files


# ---- the demo dataset: every (shape, colour, direction) in val once, learnable captions ------------------------
def combinations() -> list[tuple[str, str, str]]:
    """All 3 × 5 × 4 = 60 (shape, colour, direction) a clip can show."""
    return [(s, c, d) for s in SHAPES for c in COLOURS for d in DIRECTIONS]


def val_combinations() -> list[tuple[str, str, str]]:
    """The 40 val clips' contents: every (colour, direction) twice, with two different shapes, so that no two
    val clips look alike and every val caption has exactly one right clip."""
    return [(SHAPES[(c + d + k) % len(SHAPES)], colour, direction)
            for c, colour in enumerate(COLOURS) for d, direction in enumerate(DIRECTIONS) for k in range(2)]


def demo_plan(train_per_combination: int = 4, seed: int = 0) -> list[dict]:
    """The clips of the demo dataset, in a seeded random order, each with a sideways ``shift`` of its path:
    ``train_per_combination`` train clips of each of the 60 combinations (1–3 captions each), and the 40 val
    clips of :func:`val_combinations` with all 3 captions each.

    So the val split has 120 queries (text→video R@1 moves in steps of 0.83 points) over 40 clips: chance is
    R@1 = 2.5 %; knowing the colour alone gives about 12.5 %, colour and direction 50 %, all three 100 %.
    """
    rng = np.random.default_rng(seed)
    clips = [{"split": "val", "combination": c, "captions": 3} for c in val_combinations()]
    clips += [{"split": "train", "combination": c, "captions": 1 + int(rng.integers(3))}
              for c in combinations() for _ in range(train_per_combination)]
    order = rng.permutation(len(clips))
    return [{**clips[k], "shift": float(rng.uniform(-1, 1)), "template": int(rng.integers(3))} for k in order]


def demo_annotation(i: int, clip: dict) -> dict:
    """The JSONL line of demo clip ``i``: captions from :func:`describe` (rotated by the clip's ``template``)."""
    shape, colour, direction = clip["combination"]
    every = describe(shape, colour, direction, 3)
    texts = [every[(clip["template"] + k) % 3] for k in range(clip["captions"])]
    return {"id": f"clip{i:04d}", "video": f"clip{i:04d}.mp4", "split": clip["split"], "text": texts,
            "label": DIRECTIONS.index(direction), "shape": shape, "colour": colour, "direction": direction}


def make_demo_dataset(out_dir: str, train_per_combination: int = 4, num_frames: int = 16, size: int = 64,
                      fps: int = 16, seed: int = 0, on_clip: Callable[[int, int], None] | None = None) -> str:
    """Write the demo dataset (:func:`demo_plan`) as ``out_dir/videos/*.mp4``, ``annotations.jsonl`` and
    ``vq.npz``; ``on_clip(done, total)`` is called after every clip (a progress bar). Returns the annotation path.

    The clips carry no frame-code bands: a model sees nothing but the shape, so what it can learn is what the
    captions say."""
    plan = demo_plan(train_per_combination, seed)
    video_dir = os.path.join(out_dir, "videos")
    os.makedirs(video_dir, exist_ok=True)
    lines, vq = [], {}
    for i, clip in enumerate(plan):
        ann = demo_annotation(i, clip)
        frames, codes = make_clip(i, num_frames, *clip["combination"], size, clip["shift"], code_bands=False)
        encode_mp4(frames, os.path.join(video_dir, ann["video"]), fps=fps)
        vq[ann["id"]] = codes
        lines.append(ann)
        if on_clip is not None:
            on_clip(i + 1, len(plan))
    np.savez(os.path.join(out_dir, "vq.npz"), **vq)
    path = os.path.join(out_dir, "annotations.jsonl")
    with open(path, "w", encoding="utf-8") as f:       # written last: its presence means the clips are complete
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return path
