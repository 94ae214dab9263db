"""The embedded demo's dataset: a val split large enough to rank trials, and captions that say what the clip
shows (its shape, colour and direction), checked against the pixels of the written mp4s."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from meltr_ray import demo

from meltr_ray.data.synthetic import COLOURS, DIRECTIONS, PALETTE, SHAPES, demo_plan, make_demo_dataset

WHERE = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}


@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_raw")
    calls = []
    path = make_demo_dataset(str(root), train_per_combination=1, num_frames=8, size=64,
                             on_clip=lambda done, total: calls.append((done, total)))
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    return root, lines, calls


def test_val_split_has_at_least_50_queries_each_with_one_right_clip(demo_raw):
    _, lines, _ = demo_raw
    val = [line for line in lines if line["split"] == "val"]
    assert sum(len(line["text"]) for line in val) >= 50           # R@1 moves in steps of ≤ 2 points
    # no two val clips share shape, colour and direction: a caption's right clip is the only one that fits it
    assert len({(line["shape"], line["colour"], line["direction"]) for line in val}) == len(val)


def test_train_split_covers_every_shape_colour_and_direction(demo_raw):
    _, lines, _ = demo_raw
    train = {(line["shape"], line["colour"], line["direction"]) for line in lines if line["split"] == "train"}
    assert train == {(s, c, d) for s in SHAPES for c in COLOURS for d in DIRECTIONS}


def test_every_caption_names_the_clips_shape_colour_and_direction(demo_raw):
    _, lines, _ = demo_raw
    for line in lines:
        for caption in line["text"]:
            words = caption.split()
            assert line["shape"] in words and line["colour"] in words, caption
            assert line["direction"] in words or WHERE[line["direction"]] in caption, caption
            others = set(COLOURS) - {line["colour"]}
            assert not others & set(words), caption                 # no other colour is named


def _shape_centre(frame: np.ndarray, colour: str) -> np.ndarray:
    """Mean (y, x) of the pixels close to ``colour`` in a decoded RGB frame."""
    target = PALETTE[3 + list(COLOURS).index(colour)].astype(np.int32)
    close = np.abs(frame.astype(np.int32) - target).sum(-1) < 90
    assert close.sum() > 20, f"no {colour} shape in the frame"
    return np.argwhere(close).mean(0)


def test_the_video_shows_what_the_captions_say(demo_raw):
    import av
    root, lines, _ = demo_raw
    step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    for line in lines[:12]:
        with av.open(os.path.join(root, "videos", line["video"])) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        start, end = _shape_centre(frames[0], line["colour"]), _shape_centre(frames[-1], line["colour"])
        assert np.dot(end - start, step[line["direction"]]) > 20, (line["id"], start, end)


def test_progress_is_reported_for_every_clip(demo_raw):
    _, lines, calls = demo_raw
    assert calls[-1] == (len(lines), len(lines)) and len(calls) == len(lines)


def test_the_plan_is_seeded_and_sized():
    assert demo_plan(4, seed=1) == demo_plan(4, seed=1)
    assert demo_plan(4, seed=1) != demo_plan(4, seed=2)
    plan = demo_plan(4, seed=0)
    assert sum(c["split"] == "train" for c in plan) == 4 * len(SHAPES) * len(COLOURS) * len(DIRECTIONS)


class _ScriptedVTM(torch.nn.Module):
    """A stand-in backbone whose VTM loss follows a script (one value per step), with a parameter to step."""

    def __init__(self, losses):
        super().__init__()
        self.w, self.losses, self.calls = torch.nn.Parameter(torch.zeros(())), list(losses), 0

    def forward(self, batch, tasks):
        value = self.losses[min(self.calls, len(self.losses) - 1)]
        self.calls += 1
        return {"vtm": self.w * 0 + value}


def _samples(n=16):
    return {"frames": np.zeros((n, 1), np.uint8), "text_ids": np.zeros((n, 2), np.int64),
            "text_mask": np.ones((n, 2), np.int64)}


def test_the_warm_up_runs_until_vtm_leaves_its_plateau_then_a_fixed_number_of_steps():
    plateau = math.log(8)
    model = _ScriptedVTM([plateau] * 60 + [1.0] * 2000)       # leaves the plateau at step 61
    left_at, steps = demo._warm_up_steps(model, _samples(), 8, 1e-3, lambda step: None)
    # the mean of the last 20 losses drops below 0.85·ln 8 = 1.77 once 6 of them are 1.0: (14·2.08 + 6)/20 = 1.76
    assert left_at == 66
    assert steps == left_at + demo.WARMUP_AFTER_ESCAPE == model.calls


def test_a_warm_up_that_never_leaves_the_plateau_stops_at_the_cap():
    model = _ScriptedVTM([math.log(8)])
    assert demo._warm_up_steps(model, _samples(), 8, 1e-3, lambda step: None) == (None, demo.WARMUP_MAX_STEPS)
