"""The synthetic dataset: real mp4 clips whose annotations truly describe them."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from meltr_ray.data.synthetic import COLOURS, DIRECTIONS, PALETTE, make_synthetic_dataset, read_frame_code
from meltr_ray.data.video import get_decoder, make_sampler


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn"))
    ann = make_synthetic_dataset(root, num_videos=8, num_frames=12, size=64, seed=3)
    return root, [json.loads(line) for line in open(ann)]


def test_files_and_fields(synthetic):
    root, lines = synthetic
    assert len(lines) == 8 and {x["split"] for x in lines} <= {"train", "val", "test"}
    for x in lines:
        assert os.path.getsize(os.path.join(root, "videos", x["video"])) > 500
        assert 1 <= len(x["text"]) <= 3 and x["label"] == DIRECTIONS.index(x["direction"])
        assert x["options"][x["answer"]] == x["answer_text"] == x["colour"]
        assert x["qa"][0]["options"][x["qa"][0]["answer"]] == x["direction"]
        assert all(x["colour"] in t and x["shape"] in t for t in x["text"])


def _centroid(frame: np.ndarray, colour: str) -> np.ndarray:
    diff = np.abs(frame[16:].astype(int) - np.array(COLOURS[colour])).sum(-1)
    ys, xs = np.nonzero(diff < 90)
    return np.array([ys.mean(), xs.mean()])


def test_every_frame_carries_its_index_and_the_shape_moves_as_captioned(synthetic):
    root, lines = synthetic
    vq = np.load(os.path.join(root, "vq.npz"))
    dec = get_decoder("decord")
    for n, x in enumerate(lines):
        data = open(os.path.join(root, "videos", x["video"]), "rb").read()
        frames, idx, total = dec.read(data, lambda k: np.arange(k), None)
        assert total == 12 + n % 3 and vq[x["id"]].shape == (total, 2, 2)
        assert [read_frame_code(f) for f in frames] == [(i, n) for i in range(total)]
        dy, dx = _centroid(frames[-1], x["colour"]) - _centroid(frames[0], x["colour"])
        moved = {"left": -dx, "right": dx, "up": -dy, "down": dy}[x["direction"]]
        assert moved > 10


def test_vq_ids_are_palette_ids(synthetic):
    root, lines = synthetic
    vq = np.load(os.path.join(root, "vq.npz"))
    assert all(0 <= vq[x["id"]].min() and vq[x["id"]].max() < len(PALETTE) for x in lines)


def test_generation_is_fast_and_deterministic(tmp_path):
    a = make_synthetic_dataset(str(tmp_path / "a"), num_videos=3, num_frames=8, seed=5)
    b = make_synthetic_dataset(str(tmp_path / "b"), num_videos=3, num_frames=8, seed=5)
    assert open(a).read() == open(b).read()
    assert make_sampler("uniform", 2)(8).tolist() == [2, 6]
