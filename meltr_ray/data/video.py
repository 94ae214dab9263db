"""Decode frames from encoded video bytes: a small decoder interface, frame sampling, resize modes.

Pure functions and plain classes; no Ray. Facts that shape this file (reference video_data_notes.md):

* only accurate access is used (decord ``get_batch``), never ``seek()`` for sampling — it lands up to a GOP off;
* one reader per call, created and deleted inside the call (readers are not thread safe, and after random access
  decord's background decode-ahead keeps filling memory until the reader is gone);
* decoding is sequential inside a GOP, so the cost of a clip barely depends on how many frames are sampled:
  parallelise across clips (actors), never inside one.

Sampling (``T`` = frames asked, ``n`` = frames in the clip window):

* ``uniform``: centre of each of T equal segments, ``⌊(i + ½)·n/T⌋`` (deterministic; evaluation);
* ``random``: a uniformly random frame inside each segment (All-in-one training; "segment-random").

With ``n < T`` both repeat frames, in order (``[0, 0, 1, 1, 2]``); a clip is rejected only below ``min_frames``.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("stretch", "pad", "crop")


class DecodeError(RuntimeError):
    """A clip that cannot be used; ``reason`` is the short text that goes into the bad-row report."""


@dataclass
class VideoInfo:
    """What a probe learns about a file."""
    n_frames: int
    fps: float
    width: int
    height: int
    codec: str = ""

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


# ---- sampling -------------------------------------------------------------------------------------------------
def uniform_indices(n: int, k: int) -> np.ndarray:
    """Centres of ``k`` equal segments of ``range(n)``; repeats frames when ``n < k``."""
    if n <= 0 or k <= 0:
        raise ValueError(f"cannot sample {k} frames from {n}")
    idx = np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64)
    return np.clip(idx, 0, n - 1)


def random_segment_indices(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random frame inside each of ``k`` equal segments (segment-random sampling)."""
    if n <= 0 or k <= 0:
        raise ValueError(f"cannot sample {k} frames from {n}")
    lo = np.floor(np.arange(k) * n / k).astype(np.int64)
    hi = np.maximum(np.floor(np.arange(1, k + 1) * n / k).astype(np.int64), lo + 1)
    return np.clip(rng.integers(lo, hi), 0, n - 1)


def window_frames(n_frames: int, fps: float, start: float, end: float) -> tuple[int, int]:
    """Frame range ``[lo, hi)`` of a clip window in seconds (NaN = whole video), clipped to the file."""
    if math.isnan(start) or math.isnan(end) or fps <= 0:
        return 0, n_frames
    lo = min(max(int(math.floor(start * fps)), 0), max(n_frames - 1, 0))
    hi = min(max(int(math.ceil(end * fps)), lo + 1), n_frames)
    return lo, hi


def make_sampler(sampling: str, num_frames: int, rng: np.random.Generator | None = None,
                 window: tuple[float, float] = (math.nan, math.nan), fps: float = 0.0,
                 min_frames: int = 1) -> Callable[[int], np.ndarray]:
    """Return ``choose(n_frames) -> indices`` for ``sampling`` in {'uniform', 'random'} inside ``window``.

    Raises :class:`DecodeError` when the window holds fewer than ``min_frames`` frames.
    """
    if sampling not in ("uniform", "random"):
        raise ValueError(f"sampling must be 'uniform' or 'random', got {sampling!r}")
    rng = rng if rng is not None else np.random.default_rng()

    def choose(n_frames: int) -> np.ndarray:
        lo, hi = window_frames(n_frames, fps, *window)
        if hi - lo < max(min_frames, 1):
            raise DecodeError(f"too short: {hi - lo} frames < min_frames {max(min_frames, 1)}")
        local = (uniform_indices(hi - lo, num_frames) if sampling == "uniform"
                 else random_segment_indices(hi - lo, num_frames, rng))
        return local + lo
    return choose


# ---- geometry -------------------------------------------------------------------------------------------------
def decode_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """(h, w) to ask the decoder for, so that :func:`finish_frames` gives ``size × size`` in ``mode``.

    ``stretch`` resizes straight to the square (aspect not kept); ``pad`` scales the long side to ``size`` (then
    zero-pads centred: Violet's pad-to-square-then-resize); ``crop`` scales the short side to ``size`` (then
    centre-crops).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if mode == "stretch" or width <= 0 or height <= 0 or width == height:
        return size, size
    scale = size / (max(width, height) if mode == "pad" else min(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def finish_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-pad with zeros or centre-crop (T, h, w, 3) frames to (T, size, size, 3)."""
    t, h, w, c = frames.shape
    if h == size and w == size:
        return frames
    out = np.zeros((t, size, size, c), dtype=frames.dtype)
    sy, sx = max((h - size) // 2, 0), max((w - size) // 2, 0)          # crop offsets in the source
    dy, dx = max((size - h) // 2, 0), max((size - w) // 2, 0)          # pad offsets in the output
    ch, cw = min(h, size), min(w, size)
    out[:, dy:dy + ch, dx:dx + cw] = frames[:, sy:sy + ch, sx:sx + cw]
    return out


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of uint8 (T, h, w, 3) frames with Pillow (fallback when a decoder cannot resize)."""
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def normalize(frames, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """uint8 (..., 3) frames → float (x/255 − mean)/std; works on numpy arrays and torch tensors alike."""
    x = frames / 255.0
    return (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)


# ---- decoders -------------------------------------------------------------------------------------------------
class Decoder(Protocol):
    """Decode sampled frames from encoded bytes. Implementations must be safe to call from one thread at a time
    per call (one reader per call) and raise :class:`DecodeError` (or any exception) on a bad clip."""
    name: str

    def info(self, data: bytes) -> VideoInfo: ...

    def read(self, data: bytes, choose: Callable[[int], np.ndarray],
             size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, int]:
        """Return (frames uint8 (T, h, w, 3) RGB, indices int64 (T,), n_frames of the file)."""
        ...


class DecordDecoder:
    """decord 0.6 (default): accurate ``get_batch`` with resize on decode."""
    name = "decord"

    def __init__(self, num_threads: int = 1):
        import decord
        decord.logging.set_level(decord.logging.QUIET)     # FFmpeg prints per-packet noise otherwise
        self._decord = decord
        self.num_threads = num_threads
        self._bad_sizes: set[tuple[int, int]] = set()

    def _open(self, data: bytes, size: tuple[int, int] | None):
        if not data:
            raise DecodeError("empty video bytes")
        h, w = size if size else (-1, -1)
        return self._decord.VideoReader(io.BytesIO(data), width=w, height=h, num_threads=self.num_threads)

    def info(self, data: bytes) -> VideoInfo:
        vr = self._open(data, None)
        try:
            n = len(vr)
            h, w = vr[0].shape[:2] if n else (0, 0)
            return VideoInfo(n_frames=n, fps=float(vr.get_avg_fps()), width=int(w), height=int(h))
        finally:
            del vr

    def read(self, data, choose, size):
        if size is not None and size in self._bad_sizes:
            frames, idx, n = self.read(data, choose, None)
            return resize_frames(frames, *size), idx, n
        vr = self._open(data, size)
        try:
            n = len(vr)
            idx = np.asarray(choose(n), dtype=np.int64)
            frames = vr.get_batch(idx.tolist()).asnumpy()
        except self._decord.DECORDError as e:
            if size is None or "from_size == to_size" not in str(e):
                raise
            # decord 0.6 cannot resize-on-decode to some widths (e.g. 16, 24, 48): decode natively, resize here
            self._bad_sizes.add(size)
            return self.read(data, choose, size)
        finally:
            del vr                                          # stops decode-ahead (notes §2.3)
        return frames, idx, n


class PyAVDecoder:
    """PyAV (FFmpeg 8): decode sequentially to the last sampled index, convert only the sampled frames."""
    name = "pyav"

    def __init__(self, num_threads: int = 1):
        import av
        self._av = av
        self.num_threads = num_threads

    def _stream(self, container):
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_count = self.num_threads
        return stream

    def count_frames(self, data: bytes) -> int:
        """Frames in the file, by demuxing packets (no decoding)."""
        with self._av.open(io.BytesIO(data)) as container:
            stream = self._stream(container)
            return sum(1 for p in container.demux(stream) if p.size)

    def info(self, data: bytes) -> VideoInfo:
        with self._av.open(io.BytesIO(data)) as container:
            stream = self._stream(container)
            rate = float(stream.average_rate or 0)
            codec, w, h = stream.codec_context.name, stream.codec_context.width, stream.codec_context.height
        return VideoInfo(n_frames=self.count_frames(data), fps=rate, width=w, height=h, codec=codec)

    def read(self, data, choose, size):
        if not data:
            raise DecodeError("empty video bytes")
        n = self.count_frames(data)
        idx = np.asarray(choose(n), dtype=np.int64)
        wanted = {int(i) for i in idx}
        got: dict[int, np.ndarray] = {}
        with self._av.open(io.BytesIO(data)) as container:
            for i, frame in enumerate(container.decode(self._stream(container))):
                if i in wanted:
                    kw = {"height": size[0], "width": size[1]} if size else {}
                    got[i] = frame.to_ndarray(format="rgb24", **kw)
                if i >= idx.max():
                    break
        missing = wanted - set(got)
        if missing:
            raise DecodeError(f"decoder stopped before frame {min(missing)} of {n}")
        return np.stack([got[int(i)] for i in idx]), idx, n


DECODERS: dict[str, type] = {"decord": DecordDecoder, "pyav": PyAVDecoder}


def get_decoder(decoder: "str | Decoder") -> "Decoder":
    """A decoder instance from a registered name (``decord``, ``pyav``) or an instance passed through."""
    if not isinstance(decoder, str):
        return decoder
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; known: {sorted(DECODERS)}")
    return DECODERS[decoder]()


def sample_clip(decoder: Decoder, data: bytes, *, num_frames: int, image_size: int, sampling: str = "uniform",
                resize_mode: str = "stretch", width: int = 0, height: int = 0, fps: float = 0.0,
                window: tuple[float, float] = (math.nan, math.nan), min_frames: int = 1,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``num_frames`` frames of one clip as uint8 (T, S, S, 3) RGB plus their source indices (T,).

    ``width``/``height``/``fps`` are the file's (from the shard row); they pick the decode size for the
    ``pad``/``crop`` modes and map the clip ``window`` (seconds) to frames.
    """
    choose = make_sampler(sampling, num_frames, rng=rng, window=window, fps=fps, min_frames=min_frames)
    frames, idx, _ = decoder.read(data, choose, decode_size(width, height, image_size, resize_mode))
    if frames.ndim != 4 or frames.shape[0] != num_frames:
        raise DecodeError(f"decoder returned frames of shape {tuple(frames.shape)}")
    return finish_frames(frames, image_size), idx


def describe_error(exc: BaseException) -> str:
    """A short, stable reason for the bad-row report from a decoder exception (decord messages are noisy)."""
    msg = str(exc).strip()
    if isinstance(exc, DecodeError):
        return msg
    if "cannot find video stream" in msg or "st_nb >= 0" in msg:
        return "no video stream"
    if "Error reading" in msg or "Invalid data" in msg or "InvalidData" in type(exc).__name__:
        return "not a readable video (invalid data)"
    first = msg.splitlines()[0] if msg else ""
    if first.startswith("[") and "] " in first:                      # decord: "[hh:mm:ss] /path/file.cc:123: ..."
        first = first.split("] ", 1)[1].split(": ", 1)[-1]
    return f"{type(exc).__name__}: {first[:160]}"
