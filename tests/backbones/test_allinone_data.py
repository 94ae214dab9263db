"""All-in-one's MSRVTT annotation format (``--format allinone-msrvtt``): hand-made files, then `meltr-ray ingest`
on real mp4 clips and the samples the data layer makes for allinone_tiny."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from meltr_ray.backbones import get_spec
from meltr_ray.cli import main
from meltr_ray.data.ingest import load_records
from meltr_ray.data.samples import SampleBuilder


def write_allinone_files(root, ids, captions_per_video: int = 3, test_index: dict | None = None) -> str:
    annotations = [{"image_id": vid, "caption": f"caption {k} of {vid}", "id": n * 10 + k}
                   for n, vid in enumerate(ids) for k in range(captions_per_video)]
    with open(os.path.join(root, "MSR_VTT.json"), "w") as f:
        json.dump({"annotations": annotations, "info": {}}, f)
    lists = {"train_list_9k.txt": ids[:-1], "train_list_7k.txt": ids[:1], "val_list_jsfusion.txt": ids[-1:]}
    for name, listed in lists.items():
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(listed) + "\n")
    with open(os.path.join(root, "jsfusion_val_caption_idx.pkl"), "wb") as f:
        pickle.dump(test_index if test_index is not None else {ids[-1]: 2}, f)
    return os.path.join(root, "MSR_VTT.json")


@pytest.fixture()
def msrvtt(tmp_path):
    return write_allinone_files(str(tmp_path), [f"video{i}" for i in range(4)])


def by_split(records):
    out = {}
    for rec in records:
        out.setdefault(rec["split"], {})[rec["video_id"]] = rec["captions"]
    return out


def test_9k_train_has_every_caption_and_the_1k_a_test_one(msrvtt):
    records, skipped, _ = load_records("allinone-msrvtt", msrvtt, "/videos", True)
    splits = by_split(records)
    assert not skipped
    assert splits["train"] == {f"video{i}": [f"caption {k} of video{i}" for k in range(3)] for i in range(3)}
    assert splits["test"] == {"video3": ["caption 2 of video3"]}                 # the pickled caption index
    assert records[0]["video"] == "video0.mp4"


def test_7k_uses_the_7k_list(msrvtt):
    records, _, _ = load_records("allinone-msrvtt", msrvtt, "/videos", True, split_mode="7k")
    assert list(by_split(records)["train"]) == ["video0"]                       # not hard-coded (B-A2)


def test_the_caption_index_pickle_needs_allow_pickle_or_all_captions(msrvtt, tmp_path):
    with pytest.raises(PermissionError, match="allow-pickle"):
        load_records("allinone-msrvtt", msrvtt, "/videos", False)
    records, _, _ = load_records("allinone-msrvtt", msrvtt, "/videos", False, test_captions="all")
    assert len(by_split(records)["test"]["video3"]) == 3
    os.remove(tmp_path / "jsfusion_val_caption_idx.pkl")
    with pytest.raises(ValueError, match="jsfusion_val_caption_idx.pkl"):
        load_records("allinone-msrvtt", msrvtt, "/videos", True)
    with pytest.raises(ValueError, match="split_mode"):
        load_records("allinone-msrvtt", msrvtt, "/videos", True, split_mode="8k")


def test_a_bad_test_caption_index_is_skipped_with_its_reason(tmp_path):
    path = write_allinone_files(str(tmp_path), ["a", "b"], test_index={"b": 7})
    records, skipped, _ = load_records("allinone-msrvtt", path, "/videos", True)
    assert [r["video_id"] for r in records] == ["a"]
    assert skipped[0]["id"] == "b" and "test caption index 7" in skipped[0]["reason"]


def test_meltr_ray_ingest_writes_shards_the_allinone_samples_come_from(tmp_path):
    from meltr_ray.data.synthetic import make_synthetic_dataset
    make_synthetic_dataset(str(tmp_path), num_videos=4, num_frames=8, size=32)
    ids = [f"clip{i:04d}" for i in range(4)]
    ann = write_allinone_files(str(tmp_path), ids)
    out = tmp_path / "shards"
    code = main(["ingest", "--format", "allinone-msrvtt", "--annotations", ann, "--videos",
                 str(tmp_path / "videos"), "--out", str(out), "--allow-pickle", "--workers", "1", "--no-progress"])
    assert code == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["items"]["train"]["captions"] == 9 and meta["items"]["test"]["captions"] == 1
    data = get_spec("allinone_tiny").tasks["retrieval"].data
    builder = SampleBuilder(items=data.items, num_frames=data.num_frames, image_size=data.image_size,
                            max_text_len=data.text_len, vocab_path=None, resize_mode=data.resize_mode,
                            decode_timeout_s=None)
    import pyarrow.parquet as pq
    table = pq.read_table(out / meta["splits"]["test"][0]).to_pydict()
    samples = builder({k: np.array(v, dtype=object) for k, v in table.items()})
    assert samples["frames"].shape == (1, 3, 32, 32, 3) and list(samples["video_id"]) == ["clip0003"]
