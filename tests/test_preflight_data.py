"""Preflight reads the dataset before any Ray work: a finished ingest, this schema version, every listed shard
there, one footer in the schema, the splits the job needs non-empty — else a ValueError naming the folder."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from meltr_ray import api
from meltr_ray.cluster import preflight
from meltr_ray.config import JobConfig
from meltr_ray.data.ingest import ingest
from meltr_ray.data.synthetic import make_synthetic_dataset
from tests.cluster._common import toy_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = {"train": "data.train_split"}
ingest_module = importlib.import_module("meltr_ray.data.ingest")     # the package re-exports the function
RERUN = "re-run the ingest command"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """8 clips ingested: 6 train, 1 val, 1 test."""
    root = tmp_path_factory.mktemp("preflight")
    ann = make_synthetic_dataset(str(root), num_videos=8, num_frames=8, size=32)
    out = root / "shards"
    ingest("jsonl", videos=str(root / "videos"), annotations=ann, out=str(out), workers=1, progress=False)
    return out


@pytest.fixture()
def copy(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "shards")


def _meta(folder) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def test_a_finished_dataset_passes(finished):
    preflight.check_data_path(str(finished), TRAIN, {"val": "data.val_split"})
    preflight.check_data_path(str(finished))                  # old call, e.g. with a custom data factory


def test_job_splits_follow_the_config():
    cfg = JobConfig().with_overrides({"meta.source": "split", "data.meta_split": "meta"})
    assert preflight.job_splits(cfg) == ({"train": "data.train_split", "meta": "data.meta_split"},
                                         {"val": "data.val_split"})


def test_a_needed_split_without_rows(finished):
    with pytest.raises(ValueError, match=r"has no rows for split 'meta' \(data.meta_split\); splits with rows: "
                                         r"\['test', 'train', 'val'\]"):
        preflight.check_data_path(str(finished), {**TRAIN, "meta": "data.meta_split"})
    with pytest.warns(UserWarning, match=r"no rows for split 'holdout' \(data.val_split\)"):
        preflight.check_data_path(str(finished), TRAIN, {"holdout": "data.val_split"})


def test_dataset_json_of_another_schema_version(copy):
    meta = _meta(copy)
    meta["schema_version"] = 2
    (copy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"data path '{copy}' \(data.path\) was written with shard schema "
                                         rf"version 2; this meltr_ray reads version 1: {RERUN}"):
        preflight.check_data_path(str(copy), TRAIN)


def test_a_shard_footer_of_another_schema_version(copy):
    shard = copy / _meta(copy)["splits"]["train"][0]
    table = pq.read_table(shard)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"meltr_ray.schema_version": b"2"}),
                   shard)
    with pytest.raises(ValueError, match=r"shard train-00000.parquet: shard schema version 2 != supported 1"):
        preflight.check_data_path(str(copy), TRAIN)


def test_a_listed_shard_that_is_gone(copy):
    (copy / "test-00000.parquet").unlink()
    with pytest.raises(ValueError, match=rf"lists 1 shard\(s\) that are not there \(test-00000.parquet\); {RERUN}"):
        preflight.check_data_path(str(copy), TRAIN)


def test_a_failed_ingest_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """An ingest that stops after its first shard leaves no dataset.json; train() refuses the folder."""
    import ray
    ann = make_synthetic_dataset(str(tmp_path / "raw"), num_videos=8, num_frames=8, size=32)
    real_write, calls = ingest_module.write_planned_shard, []

    def write_then_fail(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "write_planned_shard", write_then_fail)
    out = tmp_path / "shards"
    with pytest.raises(OSError, match="disk full"):
        ingest("jsonl", videos=str(tmp_path / "raw" / "videos"), annotations=ann, out=str(out), workers=1,
               progress=False)
    kwargs = {**toy_kwargs(tmp_path), "data_factory": None, "data": str(out)}
    with pytest.raises(ValueError, match=rf"data path '{out}' \(data.path\) holds an unfinished ingest .*{RERUN}"):
        api.train(**kwargs)
    assert not ray.is_initialized()


def _annotations_v2(root) -> str:
    """The same clips under new ids (the annotations changed), plus one clip whose probe hangs."""
    lines = [json.loads(line) for line in open(root / "annotations.jsonl")]
    shutil.copy(root / "videos" / "clip0000.mp4", root / "videos" / "clip_hang.mp4")
    lines.append({"id": "hang_row", "video": "clip_hang.mp4", "text": "hangs", "split": "test"})
    path = root / "annotations_v2.jsonl"
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps({**line, "id": "v2_" + line.get("id", line["video"])}) + "\n")
    return str(path)


INGEST_V2 = """
import sys
sys.path.insert(0, {tests_data!r})
from probe_hooks import hanging_probe
from meltr_ray.data.ingest import ingest
ingest("jsonl", videos={videos!r}, annotations={ann!r}, out={out!r}, workers=2, probe_fn=hanging_probe,
       probe_timeout_s=600, progress=False)
"""


def _wait_for_new_train_shard(out, old_plan: str, proc, timeout_s: float = 240.0) -> None:
    side = out / "train-00000.parquet.done.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(side.read_text())
            if done.get("state") == "done" and done["plan"] != old_plan:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the re-ingest wrote no new train shard (exit code {proc.poll()})")


def test_an_interrupted_reingest_with_changed_annotations_is_refused(tmp_path):
    """Killed (SIGKILL) after rewriting the train shard while a probe hangs: the folder must not pass as the old
    complete dataset (the stale dataset.json listed gone shards and rows twice)."""
    root = tmp_path / "raw"
    ann = make_synthetic_dataset(str(root), num_videos=8, num_frames=8, size=32)
    out = tmp_path / "shards"
    ingest("jsonl", videos=str(root / "videos"), annotations=ann, out=str(out), workers=1, progress=False)
    old_plan = json.loads((out / "train-00000.parquet.done.json").read_text())["plan"]
    ann2 = _annotations_v2(root)
    script = INGEST_V2.format(tests_data=os.path.join(REPO, "tests", "data"), videos=str(root / "videos"),
                              ann=ann2, out=str(out))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        _wait_for_new_train_shard(out, old_plan, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)                   # the ingest and its probe workers
        proc.wait()
    assert not (out / "dataset.json").exists()
    with pytest.raises(ValueError, match=rf"holds an unfinished ingest .*{RERUN}"):
        preflight.check_data_path(str(out), TRAIN)
    ingest("jsonl", videos=str(root / "videos"), annotations=ann2, out=str(out), workers=1, progress=False)
    meta = preflight.check_dataset(str(out), TRAIN)
    ids = [i for files in meta["splits"].values() for f in files
           for i in pq.read_table(out / f, columns=["id"]).column("id").to_pylist()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == sum(meta["rows"].values()) == 9
    assert all(i.startswith("v2_") for i in ids)
