"""``ingest`` / ``meltr-ray ingest``: real mp4s → shards; every bad input skipped, counted and reported."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from meltr_ray.cli import main
from meltr_ray.data.ingest import REPORT_NAME, ingest
from meltr_ray.data.schema import check_schema
from meltr_ray.data.synthetic import make_synthetic_dataset, write_bad_videos

from probe_hooks import hanging_probe

SECRET = b"SECRET-BYTES-0451"          # in a file whose decoder output echoes it: must not reach --out

BAD_REASONS = {"truncated": "not a readable video", "zero_length": "zero-length file",
               "not_a_video": "not a readable video", "audio_only": "no video stream",
               "too_short": "too short: 2 frames < min_frames 4", "missing": "missing file",
               "hang": "probe timed out after 3 s", "crash": "probe process crashed (exit code -11)",
               "png_as_mp4": "not a readable video (invalid data)", "directory": "not a regular file",
               "noisy_crash": "probe process crashed (exit code -11; decoder said: invalid data)",
               "unparsable_json": "unparsable annotation (line",
               "unparsable_no_video": "unparsable annotation", "unparsable_answer": "unparsable annotation"}


def read_ids(out: str) -> list[str]:
    meta = json.load(open(os.path.join(out, "dataset.json")))
    return [i for files in meta["splits"].values() for f in files
            for i in pq.read_table(os.path.join(out, f), columns=["id"]).column("id").to_pylist()]


@pytest.fixture(scope="module")
def bad_ingest(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    ann = make_synthetic_dataset(str(root), num_videos=6, num_frames=10, size=64)
    videos = str(root / "videos")
    files = write_bad_videos(videos, os.path.join(videos, "clip0000.mp4"), short_frames=2)
    shutil.copy(os.path.join(videos, "clip0001.mp4"), os.path.join(videos, "clip_hang.mp4"))
    files["hang"] = "clip_hang.mp4"
    shutil.copy(os.path.join(videos, "clip0002.mp4"), os.path.join(videos, "clip_crash.mp4"))
    files["crash"] = "clip_crash.mp4"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(os.path.join(videos, "picture.png"))
    os.rename(os.path.join(videos, "picture.png"), os.path.join(videos, "picture.mp4"))
    files["png_as_mp4"] = "picture.mp4"
    os.mkdir(os.path.join(videos, "folder.mp4"))
    files["directory"] = "folder.mp4"
    with open(os.path.join(videos, "clip_noisy_crash.mp4"), "wb") as f:
        f.write(SECRET * 8)
    files["noisy_crash"] = "clip_noisy_crash.mp4"
    with open(ann, "a") as f:
        for kind, name in files.items():
            f.write(json.dumps({"id": f"bad_{kind}", "video": name, "text": "a bad clip"}) + "\n")
        f.write('{"id": "bad_unparsable_json", "video": "clip0002.mp4", "text": \n')
        f.write(json.dumps({"id": "bad_unparsable_no_video", "text": "no video"}) + "\n")
        f.write(json.dumps({"id": "bad_unparsable_answer", "video": "clip0003.mp4", "question": "q?",
                            "options": ["a", "b"], "answer": 7}) + "\n")
    out = str(root / "shards")
    report = ingest("jsonl", videos=videos, annotations=ann, out=out, workers=2, min_frames=4,
                    probe_timeout_s=3, probe_fn=hanging_probe, progress=False, vq=str(root / "vq.npz"))
    return report, out


def test_good_rows_all_written_once(bad_ingest):
    report, out = bad_ingest
    assert report.rows_written == 6
    assert sorted(read_ids(out)) == [f"clip{i:04d}" for i in range(6)]
    saved = json.load(open(os.path.join(out, REPORT_NAME)))
    assert saved["rows_written"] == 6 and saved["skipped_count"] == len(BAD_REASONS)


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
def test_each_bad_kind_is_skipped_with_id_and_reason(bad_ingest, kind):
    report, out = bad_ingest
    saved = {s["id"]: s for s in json.load(open(os.path.join(out, REPORT_NAME)))["skipped"]}
    entry = saved[f"bad_{kind}"] if kind != "unparsable_json" else next(
        s for s in saved.values() if s["reason"].startswith("unparsable annotation (line"))
    assert entry["reason"].startswith(BAD_REASONS[kind]), entry
    assert set(entry) == {"id", "video", "reason"}
    if kind in ("truncated", "missing", "hang", "crash", "audio_only"):
        assert entry["video"].endswith(".mp4")


def test_decoder_output_never_reaches_the_output_folder(bad_ingest):
    """decord echoes a bad file's bytes on stderr; only a fixed phrase from it may reach the report."""
    _, out = bad_ingest
    for folder, _, names in os.walk(out):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                assert SECRET not in f.read(), name
    assert not os.path.exists(os.path.join(out, "probe_stderr.log"))


def test_shards_hold_the_schema_and_probe_metadata(bad_ingest):
    _, out = bad_ingest
    meta = json.load(open(os.path.join(out, "dataset.json")))
    table = pq.read_table(os.path.join(out, meta["splits"]["train"][0]))
    check_schema(table.schema)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["codec"] == "h264" and row["width"] == row["height"] == 64 and row["fps"] == 16.0
    assert len(row["vq_ids"]) == row["n_frames"] * 4 and row["vq_h"] == 2 and meta["vq_grid"] == [2, 2]
    assert row["video_bytes"][4:8] == b"ftyp" and len(row["questions"]) == 2


@pytest.fixture()
def small(tmp_path):
    ann = make_synthetic_dataset(str(tmp_path), num_videos=5, num_frames=8, size=32)
    return tmp_path, ann


def test_rerun_reuses_shards_and_never_duplicates(small):
    root, ann = small
    out = str(root / "out")
    kw = dict(videos=str(root / "videos"), annotations=ann, out=out, workers=1, progress=False)
    first = ingest("jsonl", **kw)
    again = ingest("jsonl", **kw)
    assert again.shards_reused == len(first.shards) and again.rows_written == first.rows_written == 5
    lines = open(ann).read().splitlines()
    extra = json.loads(lines[0])
    extra.update(id="clip_extra", split="train")
    open(ann, "a").write(json.dumps(extra) + "\n")
    third = ingest("jsonl", **kw)
    assert third.rows_written == 6 and sorted(read_ids(out)) == sorted([f"clip{i:04d}" for i in range(5)] +
                                                                       ["clip_extra"])
    assert third.shards_reused == len(first.shards) - 1          # only the train shard was rewritten


def test_cli_ingest(small, capsys):
    root, ann = small
    out = str(root / "cli")
    rc = main(["ingest", "--format", "jsonl", "--videos", str(root / "videos"), "--annotations", ann, "--out", out,
               "--workers", "1", "--meta-fraction", "0.5", "--vocab-size", "100"])
    assert rc == 0
    assert json.load(open(os.path.join(out, REPORT_NAME)))["rows_written"] == 5
    assert "rows written" in capsys.readouterr().err
    assert "meta" in json.load(open(os.path.join(out, "dataset.json")))["splits"]
    assert open(os.path.join(out, "vocab.txt")).read().split("\n")[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert main(["ingest", "--annotations", str(root / "none.jsonl"), "--out", out, "--no-progress"]) == 2
