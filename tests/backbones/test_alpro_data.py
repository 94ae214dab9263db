"""MSVD-QA for ALPRO: the original release (``--format msvd-qa-original``) and ALPRO's jsonl files
(``--format msvd-qa-alpro``), on hand-made files, then `meltr-ray ingest` on real clips and the samples."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from meltr_ray.backbones import get_spec
from meltr_ray.cli import main
from meltr_ray.data.ingest import load_records
from meltr_ray.data.samples import SampleBuilder


def rows_by_id(records):
    return {r["id"]: r for r in records}


@pytest.fixture()
def original(tmp_path):
    qa = {"train": [{"video_id": 1, "id": 0, "question": "what is a man doing?", "answer": "play"},
                    {"video_id": 1, "id": 1, "question": "who plays?", "answer": "man"},
                    {"video_id": 2, "id": 2, "question": "what runs?", "answer": "dog"}],
          "val": [{"video_id": 3, "id": 3, "question": "what is cut?", "answer": "onion"}],
          "test": [{"video_id": 2, "id": 4, "question": "what barks?", "answer": "dog"},
                   {"video_id": 4, "id": 5, "question": 7, "answer": "bad"}]}
    for split, items in qa.items():
        json.dump(items, open(tmp_path / f"{split}_qa.json", "w"))
    (tmp_path / "youtube_mapping.txt").write_text("-4wsuPCjDBc_5_15 vid1\nabc_1_2 vid2\nxyz_3_9 vid3\n")
    return str(tmp_path / "train_qa.json")


def test_the_original_release_gives_one_row_per_video_and_split(original):
    records, skipped, vocab = load_records("msvd-qa-original", original, "/clips", False)
    rows = rows_by_id(records)
    assert set(rows) == {"train/-4wsuPCjDBc_5_15", "train/abc_1_2", "val/xyz_3_9", "test/abc_1_2"}
    first = rows["train/-4wsuPCjDBc_5_15"]
    assert first["questions"] == ["what is a man doing?", "who plays?"] and first["answer_texts"] == ["play", "man"]
    assert first["video"] == "-4wsuPCjDBc_5_15.mp4" and first["video_id"] == "-4wsuPCjDBc_5_15"
    assert vocab is None                                          # ingest builds the top-K train answers
    assert len(skipped) == 1 and skipped[0]["id"] == "test[1]" and "strings" in skipped[0]["reason"]


def test_without_the_mapping_the_video_is_vid_n(original, tmp_path):
    os.remove(tmp_path / "youtube_mapping.txt")
    records, _, _ = load_records("msvd-qa-original", original, "/clips", False)
    assert "train/vid1" in rows_by_id(records)


def write_alpro_files(root, ids) -> str:
    answers = ["red", "green", "blue", "red"]
    lines = {"train": [{"video_id": vid, "question": f"what colour is {vid}?", "answer": answers[n % 4],
                        "answer_type": "what"} for n, vid in enumerate(ids[:-1])],
             "test": [{"video_id": ids[-1], "question": "what colour?", "answer": "purple", "answer_type": "what"}]}
    for split, items in lines.items():
        with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
    json.dump({"red": 0, "blue": 2, "green": 1}, open(os.path.join(root, "train_ans2label.json"), "w"))
    return os.path.join(root, "train.jsonl")


def test_alpro_jsonl_with_its_answer_labels(tmp_path):
    path = write_alpro_files(str(tmp_path), ["a", "b", "c"])
    records, skipped, vocab = load_records("msvd-qa-alpro", path, "/clips", False,
                                           ans2label=str(tmp_path / "train_ans2label.json"))
    assert not skipped and vocab == ["red", "green", "blue"]                  # ordered by label
    rows = rows_by_id(records)
    assert set(rows) == {"train/a", "train/b", "test/c"} and rows["test/c"]["answer_texts"] == ["purple"]


def test_ingest_and_samples_count_an_unknown_test_answer_as_minus_one(tmp_path):
    from meltr_ray.data.synthetic import make_synthetic_dataset
    make_synthetic_dataset(str(tmp_path), num_videos=3, num_frames=8, size=32)
    ann = write_alpro_files(str(tmp_path), [f"clip{i:04d}" for i in range(3)])
    out = tmp_path / "shards"
    code = main(["ingest", "--format", "msvd-qa-alpro", "--annotations", ann, "--videos", str(tmp_path / "videos"),
                 "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 0
    meta = json.loads((out / "dataset.json").read_text())
    vocab = json.loads((out / "answer_vocab.json").read_text())
    assert meta["items"]["train"]["qa_oe"] == 2 and meta["items"]["test"]["qa_oe"] == 1
    assert vocab == ["green", "red"]                              # top-K train answers (frequency, then name)
    data = get_spec("alpro_tiny").tasks["qa_oe"].data
    builder = SampleBuilder(items=data.items, num_frames=data.num_frames, image_size=data.image_size,
                            max_text_len=data.text_len, resize_mode=data.resize_mode, answer_vocab=vocab,
                            decode_timeout_s=None)
    table = pq.read_table(out / meta["splits"]["test"][0]).to_pydict()
    samples = builder({k: np.array(v, dtype=object) for k, v in table.items()})
    assert samples["frames"].shape == (1, 4, 32, 32, 3)
    assert samples["answer"].tolist() == [-1]                     # "purple" is outside: wrong, never dropped
