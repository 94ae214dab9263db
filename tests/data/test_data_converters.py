"""Dataset converters (MSRVTT, Violet QA files, YouCook2, CMU-MOSI, CSV) on tiny hand-made files."""
from __future__ import annotations

import csv
import json

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from meltr_ray.data import datasets
from meltr_ray.data.ingest import ingest, load_records
from meltr_ray.data.samples import SampleBuilder


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture()
def msrvtt(tmp_path):
    data = {"videos": [{"video_id": f"video{i}"} for i in range(4)],
            "sentences": [{"video_id": f"video{i}", "caption": f"caption {k} of {i}"} for i in range(4)
                          for k in range(3)]}
    json.dump(data, open(tmp_path / "MSRVTT_data.json", "w"))
    train = write_csv(tmp_path / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"]])
    test = write_csv(tmp_path / "test.csv", ["key", "vid_key", "video_id", "sentence"],
                     [["k", "v", "video3", "the 1k-A caption"]])
    return str(tmp_path / "MSRVTT_data.json"), train, test


def test_msrvtt_9k_retrieval(msrvtt):
    ann, train, test = msrvtt
    recs, skipped, _ = load_records("msrvtt", ann, "/videos", False, train_list=train, test_list=test)
    by_id = {r["id"]: r for r in recs}
    assert sorted(by_id) == ["video0", "video1", "video3"] and not skipped
    assert len(by_id["video0"]["captions"]) == 3 and by_id["video0"]["split"] == "train"
    assert by_id["video3"]["captions"] == ["the 1k-A caption"] and by_id["video3"]["video"] == "video3.mp4"


def test_msrvtt_full_captioning_keeps_all_references(msrvtt, monkeypatch):
    monkeypatch.setattr(datasets, "MSRVTT_TRAIN_7K", 2)
    recs, _, _ = load_records("msrvtt", msrvtt[0], "/videos", False, split_mode="full")
    assert [(r["id"], r["split"], len(r["captions"])) for r in recs] == [
        ("video0", "train", 3), ("video1", "train", 3), ("video2", "test", 3), ("video3", "test", 3)]


def test_violet_qa_mc_and_oe(tmp_path):
    items = {"train": [{"video": "v1", "question": "what?", **{f"option_{k}": f"o{k}" for k in range(5)},
                        "answer": 3},
                       {"video": "v1", "question": "who?", "answer": 4},
                       {"video": "v2", "question": "broken", "option_0": "x", "answer": 9}],
             "test": [{"video": "v2", "question": "how?", "answer": 1}]}
    json.dump(items, open(tmp_path / "txt_msvd-qa.json", "w"))
    recs, skipped, vocab = load_records("msvd-qa", str(tmp_path / "txt_msvd-qa.json"), str(tmp_path), False)
    by_id = {r["id"]: r for r in recs}
    v1 = by_id["train/v1"]
    assert v1["questions"] == ["what?", "who?"] and v1["answers"] == [3, -1] and v1["answer_texts"] == ["", "4"]
    assert vocab == [str(i) for i in range(5)] and by_id["test/v2"]["answer_texts"] == ["1"]
    assert len(skipped) == 1 and skipped[0]["reason"].startswith("unparsable annotation (train item 2)")


def youcook_files(tmp_path):
    transcript = {"yc1": {"start": np.array([0, 3]), "end": np.array([2, 5]), "text": np.array(["cut", "fry"]),
                          "transcript": np.array(["", ""])}}
    feats = {"yc1.npy": np.arange(8 * 4, dtype=np.float32).reshape(8, 4)}
    pickle.dump(transcript, open(tmp_path / "t.pickle", "wb"))
    pickle.dump(feats, open(tmp_path / "f.pickle", "wb"))
    train = write_csv(tmp_path / "train.csv", ["video_id", "feature_file"], [["yc1", "yc1.npy"], ["yc9", "x"]])
    return str(tmp_path / "t.pickle"), dict(features=str(tmp_path / "f.pickle"), train_csv=train)


def test_pickles_need_the_explicit_flag(tmp_path):
    ann, opts = youcook_files(tmp_path)
    with pytest.raises(PermissionError, match="--allow-pickle"):
        load_records("youcook2", ann, None, False, **opts)


def test_youcook2_clip_features_end_to_end(tmp_path):
    ann, opts = youcook_files(tmp_path)
    report = ingest("youcook2", annotations=ann, out=str(tmp_path / "out"), allow_pickle=True, progress=False,
                    **opts)
    assert report.rows_written == 2 and [s["reason"] for s in report.skipped] == [
        "missing file: no annotation for video"]
    meta = json.load(open(tmp_path / "out" / "dataset.json"))
    assert meta["modality"] == "features" and meta["feature_dim"] == 4
    table = pq.read_table(tmp_path / "out" / meta["splits"]["train"][0])
    batch = {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}
    out = SampleBuilder(items="captions", modality="features", feature_dim=4, max_feature_frames=5)(batch)
    assert out["feature_mask"].sum(1).tolist() == [3, 3]
    assert out["features"][1, 0].tolist() == [12.0, 13.0, 14.0, 15.0]      # clip 2 starts at second 3


def test_cmu_mosi_npz(tmp_path):
    arrays = {"train/vision": np.ones((3, 5, 2)), "train/audio": np.zeros((3, 5, 1)),
              "train/labels": np.array([[[0.5]], [[-1.0]], [[2.0]]]), "valid/vision": np.ones((1, 5, 2)),
              "valid/audio": np.zeros((1, 5, 1)), "valid/labels": np.array([[[1.0]]])}
    np.savez(tmp_path / "mosi.npz", **arrays)
    recs, skipped, _ = load_records("cmu-mosi", str(tmp_path / "mosi.npz"), None, False)
    assert [r["score"] for r in recs] == [0.5, -1.0, 2.0, 1.0] and recs[-1]["split"] == "val"
    assert recs[0]["features"].shape == (5, 3) and not skipped


def test_generic_csv_merges_lines_of_one_video(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["video", "text", "split", "label"],
                     [["a.mp4", "first", "train", "1"], ["a.mp4", "second", "train", "1"],
                      ["b.mp4", "third", "val", "x"]])
    recs, skipped, _ = load_records("csv", path, str(tmp_path), False)
    assert [(r["id"], r["captions"]) for r in recs] == [("a", ["first", "second"])]
    assert skipped[0]["id"] == "b" and "unparsable" in skipped[0]["reason"]


def test_violet_frames_pickle_and_retrieval_files(tmp_path):
    import base64
    import io

    from PIL import Image

    from meltr_ray.data.video import get_decoder, make_sampler

    def b64_jpeg(value):
        buf = io.BytesIO()
        Image.fromarray(np.full((48, 64, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
        return str(base64.b64encode(buf.getvalue()))[2:-1]              # the official string form

    frames = {"video1": [b64_jpeg(v) for v in (20, 120, 220)], "video2": [b64_jpeg(v) for v in (60, 90, 30)]}
    pickle.dump(frames, open(tmp_path / "img_msrvtt.pkl", "wb"))
    json.dump({"sentences": [{"video_id": "video1", "caption": "a"}, {"video_id": "video1", "caption": "b"}]},
              open(tmp_path / "train_9k.json", "w"))
    json.dump({"sentences": [{"video_id": "video2", "caption": "c"}, {"caption": 3}]}, open(tmp_path / "t.json", "w"))
    kw = dict(annotations=str(tmp_path / "train_9k.json"), out=str(tmp_path / "out"), progress=False, workers=1,
              legacy_frames=str(tmp_path / "img_msrvtt.pkl"), test=str(tmp_path / "t.json"))
    with pytest.raises(PermissionError):
        ingest("violet-retrieval", **kw)
    report = ingest("violet-retrieval", allow_pickle=True, **kw)
    assert report.rows_written == 2 and [s["reason"] for s in report.skipped] == [
        "unparsable annotation (test sentence 1)"]
    meta = json.load(open(tmp_path / "out" / "dataset.json"))
    row = pq.read_table(tmp_path / "out" / meta["splits"]["train"][0]).to_pylist()[0]
    assert row["captions"] == ["a", "b"] and row["n_frames"] == 3
    got, idx, _ = get_decoder("decord").read(row["video_bytes"], make_sampler("uniform", 3), None)
    assert idx.tolist() == [0, 1, 2] and [abs(int(f.mean()) - v) < 8 for f, v in zip(got, (20, 120, 220))] == [True] * 3
