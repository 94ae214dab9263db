"""The image modality: real PNGs (written here) → ``meltr-ray ingest`` → shards → decoded, augmented samples."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from meltr_ray.cli import main
from meltr_ray.data.image import crop_padding, decode_image, random_crop_flip
from meltr_ray.data.ingest import ingest
from meltr_ray.data.samples import SampleBuilder


def write_png(path, pixels) -> np.ndarray:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def pixels_for(seed: int, size=(8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def image_tree(root, splits=None, size=(8, 8)) -> dict:
    """``root/[split/]class/img.png`` for classes cat/dog, three images each; returns {relative id: pixels}."""
    written = {}
    for split in splits or [None]:
        for c, name in enumerate(("cat", "dog")):
            for i in range(3):
                parts = [p for p in (split, name, f"img{i}") if p]
                written["/".join(parts)] = write_png(os.path.join(root, *parts) + ".png",
                                                     pixels_for(100 * c + i + (7 if split == "val" else 0), size))
    return written


def shard_rows(out: str) -> dict:
    meta = json.load(open(os.path.join(out, "dataset.json")))
    rows = {}
    for split, files in meta["splits"].items():
        for f in files:
            for row in pq.read_table(os.path.join(out, f)).to_pylist():
                rows[row["id"]] = {**row, "split": split}
    return rows


def test_image_folder_ingest_stores_each_image_once_with_its_class(tmp_path):
    root = tmp_path / "images"
    written = image_tree(str(root))
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = str(tmp_path / "shards")
    report = ingest("image-folder", annotations=str(root), out=out, progress=False)
    rows = shard_rows(out)
    assert report.rows_written == 6 and sorted(rows) == sorted(written)
    assert [(s["id"], s["reason"].split(":")[0]) for s in report.skipped] == [("dog/broken", "unreadable image")]
    for row_id, pixels in written.items():
        row = rows[row_id]
        assert np.array_equal(decode_image(row["video_bytes"]), pixels)          # PNG bytes, lossless
        assert row["label"] == (0 if row_id.startswith("cat") else 1)
        assert row["captions"] == [row_id.split("/")[0]] and row["codec"] == "png"
        assert (row["width"], row["height"], row["n_frames"]) == (8, 8, 1)
    meta = json.load(open(os.path.join(out, "dataset.json")))
    assert meta["modality"] == "image" and meta["classes"] == ["cat", "dog"] and meta["image_size"] == [8, 8]
    assert meta["rows"] == {"train": 6}


def test_image_folder_with_split_folders(tmp_path):
    written = image_tree(str(tmp_path / "images"), splits=["train", "val"])
    out = str(tmp_path / "shards")
    ingest("image-folder", annotations=str(tmp_path / "images"), out=out, progress=False)
    rows = shard_rows(out)
    assert sorted(rows) == sorted(written)
    assert {row_id: row["split"] for row_id, row in rows.items()} == {k: k.split("/")[0] for k in written}


def test_image_folder_without_class_folders_names_the_folder(tmp_path):
    write_png(str(tmp_path / "flat" / "a.png"), pixels_for(0))
    with pytest.raises(ValueError, match=r"image folder .*flat.* has no class folders"):
        ingest("image-folder", annotations=str(tmp_path / "flat"), out=str(tmp_path / "o"), progress=False)
    assert main(["ingest", "--format", "image-folder", "--annotations", str(tmp_path / "flat"), "--out",
                 str(tmp_path / "o2"), "--no-progress"]) == 2


def test_mixed_sizes_need_a_resize_and_resize_stretches_every_image(tmp_path):
    root = tmp_path / "images"
    image_tree(str(root))
    write_png(str(root / "dog" / "big.png"), pixels_for(5, size=(12, 10)))
    with pytest.raises(ValueError, match=r"big\.png: image is 10×12 .* --opt resize=N"):
        ingest("image-folder", annotations=str(root), out=str(tmp_path / "o"), progress=False)
    out = str(tmp_path / "resized")
    assert main(["ingest", "--format", "image-folder", "--annotations", str(root), "--out", out,
                 "--opt", "resize=16", "--no-progress"]) == 0
    rows = shard_rows(out)
    assert len(rows) == 7
    assert {decode_image(r["video_bytes"]).shape for r in rows.values()} == {(16, 16, 3)}


def fake_cifar100(root, per_split: int = 4) -> dict:
    """The python-version layout (bytes keys, like the originals): train, test, meta."""
    os.makedirs(root, exist_ok=True)
    names = [f"class{i}".encode() for i in range(100)]
    with open(os.path.join(root, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": []}, f, protocol=2)
    content = {}
    for s, split in enumerate(("train", "test")):
        images = pixels_for(s, size=(per_split, 32 * 32 * 3))[..., 0]        # (N, 3072) uint8
        labels = [(7 * i + s) % 100 for i in range(per_split)]
        files = [f"{split}_img_{i}.png".encode() for i in range(per_split)]
        with open(os.path.join(root, split), "wb") as f:
            pickle.dump({b"data": images, b"fine_labels": labels, b"filenames": files}, f, protocol=2)
        content[split] = (images, labels)
    return content


def test_cifar100_needs_the_pickle_flag_and_keeps_pixels_and_labels(tmp_path):
    content = fake_cifar100(str(tmp_path / "cifar-100-python"))
    out = str(tmp_path / "shards")
    with pytest.raises(PermissionError, match="--allow-pickle"):
        ingest("cifar100", annotations=str(tmp_path / "cifar-100-python"), out=out, progress=False)
    assert main(["ingest", "--format", "cifar100", "--annotations", str(tmp_path / "cifar-100-python"), "--out",
                 out, "--no-progress"]) == 2
    report = ingest("cifar100", annotations=str(tmp_path / "cifar-100-python"), out=out, progress=False,
                    allow_pickle=True)
    assert report.rows_written == 8
    rows = shard_rows(out)
    for split, (images, labels) in content.items():
        for i, (flat, label) in enumerate(zip(images, labels)):
            row = rows[f"{split}/{split}_img_{i}"]
            expected = flat.reshape(3, 32, 32).transpose(1, 2, 0)                # R, G, B planes → HWC
            assert np.array_equal(decode_image(row["video_bytes"]), expected)
            assert row["label"] == label and row["captions"] == [f"class{label}"] and row["split"] == split


# ---- stream time --------------------------------------------------------------------------------------------
def image_rows(written: dict) -> dict:
    ids = sorted(written)
    with_bytes = []
    for row_id in ids:
        import io
        out = io.BytesIO()
        Image.fromarray(written[row_id]).save(out, format="PNG")
        with_bytes.append(out.getvalue())
    return {"id": np.array(ids, dtype=object), "video_id": np.array(ids, dtype=object),
            "video_bytes": np.array(with_bytes, dtype=object),
            "label": np.array([0 if i.startswith("cat") else 1 for i in ids]),
            "captions": np.array([[i.split("/")[0]] for i in ids], dtype=object)}


def test_val_samples_are_the_images_and_train_samples_a_crop_and_flip_of_them(tmp_path):
    written = image_tree(str(tmp_path / "images"))
    batch = image_rows(written)
    val = SampleBuilder(items="rows", modality="image", image_size=8, seed=0)(batch)
    train = SampleBuilder(items="rows", modality="image", image_size=8, seed=0, augment="crop_flip")(batch)
    originals = np.stack([written[i] for i in sorted(written)])
    assert np.array_equal(val["images"], originals) and list(val["label"]) == [0, 0, 0, 1, 1, 1]
    assert val["aug_seed"].dtype == np.int64 and len(set(val["aug_seed"].tolist())) == 6
    pad = crop_padding(8)
    for got, image in zip(train["images"], originals):                    # each one shift (+ maybe flip) of its image
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        views = [v for t in range(2 * pad + 1) for l in range(2 * pad + 1)
                 for v in (padded[t:t + 8, l:l + 8], padded[t:t + 8, l:l + 8][:, ::-1])]
        assert any(np.array_equal(got, v) for v in views)
    assert not np.array_equal(train["images"], originals)                 # some crop or flip happened


def test_images_are_resized_to_the_run_size_and_bad_bytes_are_reported(tmp_path):
    batch = image_rows(image_tree(str(tmp_path / "images")))
    batch["video_bytes"][1] = b"garbage"
    builder = SampleBuilder(items="rows", modality="image", image_size=32, seed=0)
    out = builder(batch)
    assert out["images"].shape == (5, 32, 32, 3)
    assert [r["id"] for r in builder.bad_rows] == ["cat/img1"] and "unreadable image" in builder.bad_rows[0]["reason"]
    empty = builder({k: v[1:2] for k, v in batch.items()})
    assert empty["images"].shape == (0, 32, 32, 3) and empty["aug_seed"].shape == (0,)


def test_crop_without_flip_never_mirrors_and_an_unknown_mode_is_an_error(tmp_path):
    written = image_tree(str(tmp_path / "images"))
    batch = image_rows(written)
    crops = SampleBuilder(items="rows", modality="image", image_size=8, seed=0, augment="crop")(batch)
    pad = crop_padding(8)
    for got, row_id in zip(crops["images"], sorted(written)):
        padded = np.pad(written[row_id], ((pad, pad), (pad, pad), (0, 0)))
        shifts = [padded[t:t + 8, l:l + 8] for t in range(2 * pad + 1) for l in range(2 * pad + 1)]
        assert any(np.array_equal(got, v) for v in shifts)
    with pytest.raises(ValueError, match="augment"):
        SampleBuilder(items="rows", modality="image", augment="mixup")


def test_random_crop_flip_uses_the_generator_only():
    image = pixels_for(3, size=(32, 32))
    first = random_crop_flip(image, np.random.default_rng(5))
    assert np.array_equal(first, random_crop_flip(image, np.random.default_rng(5)))
    assert crop_padding(32) == 4 and crop_padding(8) == 1


def test_samples_feed_the_resnet(tmp_path):
    from meltr_ray.backbones import create_backbone
    batch = image_rows(image_tree(str(tmp_path / "images"), size=(16, 16)))
    samples = SampleBuilder(items="rows", modality="image", image_size=16, seed=0, augment="crop_flip")(batch)
    model = create_backbone("resnet_tiny")
    losses = model({k: torch.from_numpy(v) for k, v in samples.items() if v.dtype != object})
    assert list(losses) == ["ce", "mixup", "rotation"] and all(torch.isfinite(v) for v in losses.values())


def test_image_rows_are_written_in_a_class_mixing_order(tmp_path):
    root = tmp_path / "images"
    for c in range(4):
        for i in range(16):
            write_png(str(root / f"class{c}" / f"img{i:02d}.png"), pixels_for(16 * c + i))
    out = str(tmp_path / "shards")
    ingest("image-folder", annotations=str(root), out=out, progress=False)
    meta = json.load(open(os.path.join(out, "dataset.json")))
    labels = [lab for f in meta["splits"]["train"]
              for lab in pq.read_table(os.path.join(out, f), columns=["label"]).column("label").to_pylist()]
    assert sorted(labels) == sorted([c for c in range(4) for _ in range(16)])
    first_quarter = labels[:16]
    assert len(set(first_quarter)) >= 3               # in id order these would all be class 0
