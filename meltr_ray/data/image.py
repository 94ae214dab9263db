"""Images: encode once at ingest, decode and augment at stream time (the ``image`` modality).

A shard row of an image dataset holds one image as encoded PNG or JPEG bytes (in the ``video_bytes`` column,
``codec`` = ``png`` | ``jpeg``, ``width``/``height`` its size, ``n_frames`` = 1), so a row is stored once and
every epoch draws new augmentations from it. At stream time :func:`decode_image` turns the bytes into uint8
(H, W, 3) RGB, :func:`resize_image` stretches it to the run's ``data.image_size`` when it differs, and training
splits get the backbone's augmentation (its ``DataSpec.augment``, one of :data:`AUGMENTATIONS`): by default the
CIFAR one (He et al. 2016 §4.2), a random crop of the image zero-padded by ``image_size / 8`` pixels on every
side (4 at 32 px) and a horizontal flip with probability ½ (:func:`random_crop_flip`); ``crop`` without the
flip (text, digits: a mirrored glyph is another glyph), ``none``. Validation and test images are used as they
are.

Each sample also gets ``aug_seed``, a random int64 the model turns into its own per-batch draws (mixup pairing
and λ, rotations): drawn here with the sample, so a batch replayed later re-forwards identically.
"""
from __future__ import annotations

import io

import numpy as np

IMAGE_CODECS = {"PNG": "png", "JPEG": "jpeg"}
AUGMENTATIONS = ("crop_flip", "crop", "none")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SEED_HIGH = 2**62


class ImageError(ValueError):
    """An image that cannot be read (reported and skipped, like a bad video)."""


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes → uint8 (H, W, 3) RGB; :class:`ImageError` on anything unreadable."""
    from PIL import Image
    if not data:
        raise ImageError("empty image bytes")
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:          # PIL's UnidentifiedImageError is an OSError
        raise ImageError(f"unreadable image: {exc}") from exc


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, 3) → PNG bytes (lossless)."""
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def resize_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """Stretch uint8 (H, W, 3) to (size, size, 3) with bilinear filtering; a no-op at that size already."""
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    from PIL import Image
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def crop_padding(size: int) -> int:
    """The random crop's zero padding: ``size / 8`` (the CIFAR recipe's 4 pixels at 32 px), at least 1."""
    return max(1, round(size / 8))


def check_augment(augment: str) -> str:
    if augment not in AUGMENTATIONS:
        raise ValueError(f"image augmentation (DataSpec.augment) must be one of {AUGMENTATIONS}, got {augment!r}")
    return augment


def random_crop_flip(pixels: np.ndarray, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """Zero-pad by :func:`crop_padding` and crop back to the original size at a random offset; flip with p = ½
    (when ``flip``; the coin is tossed either way, so both modes draw the same crops)."""
    h, w = pixels.shape[:2]
    pad = crop_padding(min(h, w))
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)))
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    out = padded[top:top + h, left:left + w]
    return np.ascontiguousarray(out[:, ::-1] if rng.random() < 0.5 and flip else out)


def image_sample(data: bytes, image_size: int, augment: str, rng: np.random.Generator) -> dict:
    """One row's sample: ``images`` uint8 (S, S, 3) (augmented as ``augment`` says) and its ``aug_seed``."""
    pixels = resize_image(decode_image(data), image_size)
    if augment != "none":
        pixels = random_crop_flip(pixels, rng, flip=augment == "crop_flip")
    return {"images": pixels, "aug_seed": np.int64(rng.integers(0, SEED_HIGH))}


def empty_image_batch(image_size: int) -> dict:
    """The image keys of a zero-sample batch (same dtypes and trailing shapes as a full one)."""
    return {"images": np.zeros((0, image_size, image_size, 3), np.uint8), "aug_seed": np.zeros((0,), np.int64)}
