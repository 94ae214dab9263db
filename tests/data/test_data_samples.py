"""SampleBuilder (the body of the Ray decode UDF): one decode per clip, one sample per text item, bad rows
dropped and reported at stream time — without Ray."""
from __future__ import annotations

import json
import os


import numpy as np
import pytest

from meltr_ray.data.schema import rows_to_table
from meltr_ray.data.samples import SampleBuilder
from meltr_ray.data.synthetic import make_synthetic_dataset, read_frame_code, write_bad_videos
from meltr_ray.data.tokenize import build_vocab
from meltr_ray.data.video import DecordDecoder

from probe_hooks import HangingDecoder


class CountingDecoder(DecordDecoder):
    calls = 0

    def read(self, data, choose, size):
        CountingDecoder.calls += 1
        return super().read(data, choose, size)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("samples"))
    ann = make_synthetic_dataset(root, num_videos=6, num_frames=10, size=64)
    lines = [json.loads(x) for x in open(ann)]
    vq = np.load(os.path.join(root, "vq.npz"))
    rows = [{"id": x["id"], "video_id": x["id"], "video_bytes": open(os.path.join(root, "videos", x["video"]), "rb")
             .read(), "width": 64, "height": 64, "fps": 16.0, "n_frames": len(vq[x["id"]]), "captions": x["text"],
             "questions": [x["question"], x["qa"][0]["question"]], "options": [x["options"], x["qa"][0]["options"]],
             "answers": [x["answer"], x["qa"][0]["answer"]], "answer_texts": [x["answer_text"], x["qa"][0][
                 "answer_text"]], "label": x["label"], "vq_ids": vq[x["id"]].reshape(-1).tolist(), "vq_h": 2,
             "vq_w": 2} for x in lines]
    texts = [t for x in lines for t in x["text"] + [x["question"], *x["options"]]]
    vocab = build_vocab(texts, os.path.join(root, "vocab.txt"), vocab_size=150)
    files = write_bad_videos(os.path.join(root, "videos"), os.path.join(root, "videos", lines[0]["video"]),
                             short_frames=2)
    bad = {k: open(os.path.join(root, "videos", f), "rb").read() for k, f in files.items() if k != "missing"}
    return {"rows": rows, "lines": lines, "vocab": vocab, "bad": bad}


def to_batch(rows):
    table = rows_to_table(rows)
    return {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}


def builder(data, **kw):
    kw = {"items": "captions", "num_frames": 4, "image_size": 32, "max_text_len": 16, "vocab_path": data["vocab"],
          "vq_grid": (2, 2), **kw}
    return SampleBuilder(**kw)


def test_each_caption_once_and_each_clip_decoded_once(data):
    CountingDecoder.calls = 0
    out = builder(data, decoder=CountingDecoder(), sampling="random")(to_batch(data["rows"]))
    expected = [f"{x['id']}#{k}" for x in data["lines"] for k in range(len(x["text"]))]
    assert list(out["sample_id"]) == expected and CountingDecoder.calls == len(data["rows"])
    assert out["frames"].shape == (len(expected), 4, 32, 32, 3) and out["text_ids"].shape == (len(expected), 16)
    for vid, frames, idx, vq in zip(out["video_id"], out["frames"], out["frame_indices"], out["vq_ids"]):
        n = int(vid[4:])
        assert [read_frame_code(f) for f in frames] == [(int(i), n) for i in idx]
        codes = np.asarray(data["rows"][n]["vq_ids"]).reshape(-1, 2, 2)
        assert (vq == codes[idx]).all()


def test_qa_mc_one_sample_per_question_with_padded_options(data):
    out = builder(data, items="qa_mc", num_options=5)(to_batch(data["rows"]))
    assert out["text_ids"].shape == (12, 5, 16) and out["option_mask"][1].tolist() == [1, 1, 1, 1, 0]
    assert out["answer"].tolist() == [a for r in data["rows"] for a in r["answers"]]


def test_qa_oe_answers_index_the_answer_vocabulary(data):
    vocab = ["red", "left", "green", "blue", "yellow", "magenta", "right", "up", "down"]
    out = builder(data, items="qa_oe", answer_vocab=vocab[:-1])(to_batch(data["rows"]))
    want = [vocab.index(t) if t != "down" else -1 for r in data["rows"] for t in r["answer_texts"]]
    assert out["answer"].tolist() == want


def test_classification_and_random_text_mode(data):
    out = builder(data, items="labels")(to_batch(data["rows"]))
    assert out["label"].tolist() == [x["label"] for x in data["lines"]]
    out = builder(data, text_mode="random")(to_batch(data["rows"]))
    assert len(out["sample_id"]) == len(data["rows"])


def test_features_modality():
    rows = [{"id": f"f{i}", "video_id": "v", "features": np.ones((3 + i, 4)).reshape(-1).tolist(),
             "feature_dim": 4, "score": 0.5 * i, "captions": ["x"]} for i in range(2)]
    out = SampleBuilder(items="scores", modality="features", feature_dim=4, max_feature_frames=4)(to_batch(rows))
    assert out["features"].shape == (2, 4, 4) and out["feature_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert out["score"].tolist() == [0.0, 0.5] and "frames" not in out


BAD_KINDS = {"truncated": "not a readable video", "zero_length": "empty video bytes", "not_a_video":
             "not a readable video", "audio_only": "no video stream", "too_short": "too short: 2 frames",
             "missing": "no video bytes", "hang": "decode timed out after 0.5 s"}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_row_is_dropped_reported_and_the_rest_delivered(data, kind):
    payload = {"missing": None, "hang": b"HANG" + data["rows"][0]["video_bytes"]}.get(kind, data["bad"].get(kind))
    bad = {"id": f"bad_{kind}", "video_id": f"bad_{kind}", "video_bytes": payload, "width": 64, "height": 64,
           "fps": 16.0, "captions": ["a bad clip"]}
    rows = data["rows"][:2] + [bad] + data["rows"][2:4]
    reported = []
    b = builder(data, decoder=HangingDecoder(seconds=3.0), decode_timeout_s=0.5, min_frames=3,
                on_bad_row=lambda *r: reported.append(r))
    out = b(to_batch(rows))
    assert {s.split("#")[0] for s in out["sample_id"]} == {r["id"] for r in rows if r is not bad}
    assert len(reported) == 1 and reported[0][:2] == (f"bad_{kind}", f"bad_{kind}")
    assert reported[0][2].startswith(BAD_KINDS[kind]) and b.bad_rows[0]["reason"] == reported[0][2]


def test_all_bad_batch_gives_an_empty_batch_of_the_right_shapes(data):
    rows = [{"id": "b", "video_id": "b", "video_bytes": b"", "captions": ["x"]}]
    out = builder(data)(to_batch(rows))
    assert out["frames"].shape == (0, 4, 32, 32, 3) and out["vq_ids"].shape == (0, 4, 2, 2)
