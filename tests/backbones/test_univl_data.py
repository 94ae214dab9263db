"""UniVL on ingested feature shards: the synthetic YouCook2-like and CMU-MOSI-like datasets, the readers'
UniVL options, and the data layer's samples going through univl_tiny (no Ray)."""
from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from meltr_ray.backbones import create_backbone
from meltr_ray.data.datasets import read_msrvtt, read_youcook2
from meltr_ray.data.samples import SampleBuilder
from meltr_ray.data.synthetic_features import ingest_synthetic_features, make_youcook2_like
from meltr_ray.metrics import captioning


@pytest.fixture(scope="module")
def youcook2(tmp_path_factory):
    return ingest_synthetic_features("youcook2", str(tmp_path_factory.mktemp("yc") / "shards"))


@pytest.fixture(scope="module")
def mosi(tmp_path_factory):
    return ingest_synthetic_features("cmu-mosi", str(tmp_path_factory.mktemp("mosi") / "shards"))


def samples(shards: str, split: str, items: str, **options) -> dict:
    meta = json.load(open(f"{shards}/dataset.json"))
    rows = pq.read_table([f"{shards}/{f}" for f in meta["splits"][split]][0]).to_pydict()
    builder = SampleBuilder(items=items, modality="features", feature_dim=meta["feature_dim"], max_text_len=16,
                            vocab_path=f"{shards}/vocab.txt", max_feature_frames=12, **options)
    out = builder({k: np.asarray(v, dtype=object) if k in ("features", "captions") else np.asarray(v)
                   for k, v in rows.items()})
    return {k: list(v) if v.dtype == object else torch.as_tensor(v) for k, v in out.items()}, builder


def test_youcook2_like_shards_train_and_evaluate_univl_tiny(youcook2, monkeypatch):
    monkeypatch.setattr(captioning, "java_available", lambda: False)       # no METEOR JVM in the default suite
    meta = json.load(open(f"{youcook2}/dataset.json"))
    assert meta["modality"] == "features" and meta["feature_dim"] == 16 and set(meta["splits"]) == {"train", "val",
                                                                                                    "test"}
    train, _ = samples(youcook2, "train", "captions")
    val, _ = samples(youcook2, "val", "captions")
    assert train["features"].shape[1:] == (12, 16) and train["text_ids"].shape[1] == 16
    for task in ("retrieval", "captioning"):
        torch.manual_seed(0)
        model = create_backbone("univl_tiny", task=task, vocab_path=f"{youcook2}/vocab.txt")
        assert model.cfg.cls_token_id == 2 and model.cfg.vocab_size == len(open(f"{youcook2}/vocab.txt").read().split())
        losses = model({k: v[:4] for k, v in train.items()})
        assert list(losses) == model.task_names and all(torch.isfinite(v) for v in losses.values())
    with pytest.warns(RuntimeWarning, match="METEOR is unavailable"):
        metrics = model.evaluate([val])
    assert metrics["word_level"] == 1.0 and np.isfinite(metrics["cider"])


def test_youcook2_clips_of_one_video_stay_apart(youcook2):
    train, _ = samples(youcook2, "train", "captions")
    clips = {s.rsplit("#", 1)[0] for s in train["sample_id"]}
    assert len(clips) == len(train["sample_id"]) > len(set(train["video_id"]))


def test_mosi_like_shards_carry_scores_and_sentences(mosi):
    train, _ = samples(mosi, "train", "scores")
    assert train["score"].shape == (24,) and float(train["score"].abs().max()) <= 3.0
    assert (train["text_mask"].sum(1) > 2).all()                       # the raw sentence, not an empty text
    torch.manual_seed(0)
    model = create_backbone("univl_tiny", task="sentiment", vocab_path=f"{mosi}/vocab.txt")
    assert set(model.evaluate([samples(mosi, "val", "scores")[0]])) == {"acc2", "f1", "mae", "corr", "acc7"}


def test_a_feature_row_of_the_wrong_width_is_dropped_with_its_reason(youcook2):
    meta = json.load(open(f"{youcook2}/dataset.json"))
    rows = pq.read_table(f"{youcook2}/{meta['splits']['val'][0]}").to_pydict()
    rows["feature_dim"][0] = 8
    builder = SampleBuilder(items="captions", modality="features", feature_dim=16, max_text_len=16,
                            vocab_path=f"{youcook2}/vocab.txt")
    out = builder({k: np.asarray(v, dtype=object) for k, v in rows.items()})
    assert len(out["sample_id"]) == len(rows["id"]) - 1
    assert builder.bad_rows[0]["id"] == rows["id"][0] and "feature_dim 8" in builder.bad_rows[0]["reason"]


def test_youcook2_test_csv_is_its_own_split(tmp_path):
    paths = make_youcook2_like(str(tmp_path), num_videos=6)
    records = list(read_youcook2(allow_pickle=True, **paths))
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert all(r["features"].shape[1] == 16 for r in records)


def test_msrvtt_features_and_a_validation_list(tmp_path):
    data = {"videos": [{"video_id": f"video{i}"} for i in range(4)],
            "sentences": [{"video_id": f"video{i}", "caption": f"caption {i} {k}"} for i in range(4) for k in range(2)]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id"], ["video0"], ["video1"], ["video2"]])
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id", "sentence"], ["video3", "caption 3 0"]])
    (tmp_path / "val.txt").write_text("video2\n")
    feats = {f"video{i}": np.ones((5 + i, 16), np.float32) for i in range(3)}
    (tmp_path / "feats.pickle").write_bytes(pickle.dumps(feats))
    out = list(read_msrvtt(str(tmp_path / "data.json"), train_list=str(tmp_path / "train.csv"),
                           test_list=str(tmp_path / "test.csv"), val_list=str(tmp_path / "val.txt"),
                           features=str(tmp_path / "feats.pickle"), allow_pickle=True, max_frames=6))
    rows = {r.id if hasattr(r, "reason") else r["id"]: r for r in out}
    assert rows["video2"]["split"] == "val" and rows["video0"]["split"] == "train"
    assert rows["video1"]["features"].shape == (6, 16) and rows["video0"]["video"] is None
    assert "no features" in rows["video3"].reason                     # a missing feature file is reported
