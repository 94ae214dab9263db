"""Image dataset formats for ``meltr-ray ingest``: ``image-folder`` and ``cifar100``.

Both yield records that carry their encoded image inline (``video_bytes`` = PNG/JPEG bytes, ``codec``,
``width``, ``height``, ``n_frames`` = 1) — one row per image, ``label`` its class index and ``captions`` its
class name — so ingest writes them without probing a file (:func:`meltr_ray.data.ingest.ingest`); the
modality is ``image`` in ``dataset.json``, which also lists the class names.

``image-folder`` (``--annotations ROOT``), one folder per class::

    ROOT/<class>/<image>                     every image in split "train"
    ROOT/{train,val,test,meta}/<class>/...   one folder per split, each with class folders

Class indices are the sorted class names across all splits. Every image is decoded at ingest: an unreadable
one is skipped and reported (reason ``unreadable image: …``); PNG and JPEG bytes are stored as they are, other
formats re-encoded as PNG. All images must have one size (the first readable image's), else ingest stops
with an error naming the file — unless ``--opt resize=N``, which stretches every image to N×N (re-encoded
as PNG). A folder without class folders is an error naming it.

``cifar100`` (``--annotations cifar-100-python/``): the standard python version of CIFAR-100 — the pickles
``train``, ``test`` (``data`` (N, 3072) uint8 rows of R, G, B planes, ``fine_labels``, ``filenames``) and
``meta`` (``fine_label_names``). Pickles run code when read, so this format needs ``--allow-pickle``;
nothing is ever downloaded.
"""
from __future__ import annotations

import os
import zlib
from typing import Iterator

import numpy as np

from .converters import Skip, load_pickle, new_record
from .image import IMAGE_CODECS, IMAGE_EXTENSIONS, ImageError, encode_png, resize_image

SPLIT_FOLDERS = ("train", "val", "test", "meta")
CIFAR100_SPLITS = ("train", "test")


def _subfolders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_folder_layout(root: str) -> dict[str, str]:
    """``{split: folder holding that split's class folders}`` (see the module docstring)."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} is not a directory (--annotations of --format image-folder)")
    subfolders = _subfolders(root)
    if subfolders and all(name in SPLIT_FOLDERS for name in subfolders):
        layout = {name: os.path.join(root, name) for name in subfolders}
    else:
        layout = {"train": root}
    for folder in layout.values():
        if not _subfolders(folder):
            raise ValueError(f"image folder {folder!r} has no class folders: put each class's images in a "
                             f"folder of its own ({folder}/<class name>/<image>)")
    return layout


def _images_under(folder: str) -> list[str]:
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(parent, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _read_image(path: str) -> tuple[bytes, np.ndarray, str]:
    """(file bytes, uint8 (H, W, 3) pixels, PIL format name) of one image; :class:`ImageError` if unreadable."""
    from PIL import Image
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ImageError("zero-length file")
    try:
        import io
        with Image.open(io.BytesIO(data)) as image:
            return data, np.asarray(image.convert("RGB"), dtype=np.uint8), image.format or ""
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"unreadable image: {exc}") from exc


class _SizeCheck:
    """Remembers the first image's size; a different one is an error unless the images are resized."""

    def __init__(self, resize: int | None):
        self.resize, self.first = resize, None

    def encoded(self, path: str, data: bytes, pixels: np.ndarray, fmt: str) -> tuple[bytes, np.ndarray]:
        if self.resize:
            if pixels.shape[:2] != (self.resize, self.resize):
                pixels = resize_image(pixels, self.resize)
                return encode_png(pixels), pixels
        elif self.first is None:
            self.first = (path, pixels.shape[:2])
        elif pixels.shape[:2] != self.first[1]:
            (h, w), (fh, fw) = pixels.shape[:2], self.first[1]
            raise ValueError(f"{path}: image is {w}×{h} but {self.first[0]} is {fw}×{fh}; images of mixed "
                             f"sizes need a resize (pass --opt resize=N to stretch every image to N×N)")
        return (data if fmt in IMAGE_CODECS else encode_png(pixels)), pixels


def image_record(row_id: str, split: str, source: str, data: bytes, pixels: np.ndarray, label: int,
                 class_name: str) -> dict:
    """A record with the encoded image inline (what ingest writes as one shard row)."""
    rec = new_record(row_id, source, split)
    codec = "jpeg" if data[:2] == b"\xff\xd8" else "png"
    rec.update(video_bytes=data, codec=codec, height=int(pixels.shape[0]), width=int(pixels.shape[1]),
               n_frames=1, label=int(label), captions=[class_name], shard_order=shard_order(row_id))
    return rec


def shard_order(row_id: str) -> str:
    """Where the row goes in its split's shards: a hash of its id first. Image ids start with their class
    (``cat/img0``, CIFAR's ``apple_s_000022``), and rows written in id order would stream as one-class row
    groups — one-class batches, which BatchNorm and the loss both suffer from; the hash mixes the classes."""
    return f"{zlib.crc32(row_id.encode()):08x}/{row_id}"


def read_image_folder(annotations: str, resize: int | str | None = None, **_) -> Iterator[dict | Skip]:
    """``--format image-folder``: one record per readable image (see the module docstring)."""
    layout = image_folder_layout(annotations)
    classes = sorted({name for folder in layout.values() for name in _subfolders(folder)})
    sizes = _SizeCheck(int(resize) if resize else None)
    for split, folder in layout.items():
        for label, name in ((classes.index(c), c) for c in _subfolders(folder)):
            for path in _images_under(os.path.join(folder, name)):
                relative = os.path.relpath(path, annotations)
                row_id = os.path.splitext(relative)[0].replace(os.sep, "/")
                try:
                    data, pixels, fmt = _read_image(path)
                except ImageError as exc:
                    yield Skip(row_id, relative, str(exc) if str(exc).startswith("unreadable") else
                               f"unreadable image: {exc}")
                    continue
                data, pixels = sizes.encoded(path, data, pixels, fmt)
                yield image_record(row_id, split, relative, data, pixels, label, name)


def _cifar_file(root: str, name: str, allow_pickle: bool) -> dict:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: --annotations must be the cifar-100-python folder (with train, "
                         f"test and meta)")
    content = load_pickle(path, allow_pickle, encoding="latin1")      # Python 2 pickles of numpy arrays
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in content.items()}


def read_cifar100(annotations: str, allow_pickle: bool = False, **_) -> Iterator[dict | Skip]:
    """``--format cifar100``: the python-version pickles → one PNG record per image (fine labels)."""
    names = [str(n.decode() if isinstance(n, bytes) else n)
             for n in _cifar_file(annotations, "meta", allow_pickle)["fine_label_names"]]
    for split in CIFAR100_SPLITS:
        part = _cifar_file(annotations, split, allow_pickle)
        rows = np.asarray(part["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for n, (pixels, label, filename) in enumerate(zip(rows, part["fine_labels"], part["filenames"])):
            filename = filename.decode() if isinstance(filename, bytes) else str(filename)
            row_id = f"{split}/{os.path.splitext(filename)[0] or n}"
            if not 0 <= int(label) < len(names):
                yield Skip(row_id, filename, f"unparsable annotation: label {label} outside the "
                                              f"{len(names)} fine classes")
                continue
            yield image_record(row_id, split, f"{split}/{filename}", encode_png(pixels), pixels, int(label),
                               names[int(label)])


def image_meta(records: list[dict]) -> dict:
    """``dataset.json`` fields of an image dataset: modality, image size (h, w) and class names by index."""
    images = [r for r in records if r.get("video_bytes") is not None]
    if not images:
        return {}
    classes: dict[int, str] = {}
    for rec in images:
        classes.setdefault(int(rec["label"]), (rec["captions"] or [""])[0])
    sizes = {(r["height"], r["width"]) for r in images}
    return {"modality": "image", "image_size": list(sizes.pop()) if len(sizes) == 1 else None,
            "classes": [classes.get(i, "") for i in range(max(classes) + 1)] if classes else []}


FORMATS = {"image-folder": read_image_folder, "cifar100": read_cifar100}
