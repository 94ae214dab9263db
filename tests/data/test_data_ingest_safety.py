"""Ingest reads only what the user gave, writes only inside ``--out``, deletes only its own files, writes
durably, and never re-runs the user's script in its probe workers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from meltr_ray.cli import main
from meltr_ray.data.dataset_dir import check_dataset
from meltr_ray.data.ingest import ingest
from meltr_ray.data.probe import ProbePool, ProbePoolError
from meltr_ray.data.synthetic import make_synthetic_dataset

from probe_hooks import always_crashing_probe, hanging_probe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "SECRET-OUTSIDE-0451"


def _line(row_id: str, video: str, split: str = "train") -> str:
    return json.dumps({"id": row_id, "video": video, "text": "a clip", "split": split}) + "\n"


@pytest.fixture()
def hostile(tmp_path):
    """Good clips under videos/, plus an annotation file that points outside it in every way there is."""
    root = tmp_path / "data"
    ann = make_synthetic_dataset(str(root), num_videos=4, num_frames=8, size=32)
    videos = root / "videos"
    shutil.copy(videos / "clip0000.mp4", tmp_path / "outside.mp4")           # a real video, but outside
    (tmp_path / "secret.txt").write_text(f"{SECRET}\n" * 50)
    os.symlink(tmp_path / "outside.mp4", videos / "link_out.mp4")
    os.symlink(videos / "clip0001.mp4", videos / "link_in.mp4")              # a link that stays inside
    depth = len(os.path.realpath(videos).split(os.sep))
    with open(ann, "a") as f:
        f.write(_line("dotdot", "../../outside.mp4"))
        f.write(_line("absolute", str(tmp_path / "outside.mp4")))
        f.write(_line("symlink_out", "link_out.mp4"))
        f.write(_line("secret", "../" * depth + str(tmp_path / "secret.txt").lstrip("/")))
        f.write(_line("symlink_in", "link_in.mp4"))
        f.write(_line("escape_split", "clip0002.mp4", "../../ESCAPED"))
        f.write(_line("slash_split", "clip0003.mp4", "sub/dir"))
        f.write(_line("typo_split", "clip0001.mp4", "trian"))
        f.write(_line("declared_split", "clip0002.mp4", "holdout"))
    return tmp_path, str(videos), ann


def test_hostile_annotations_read_nothing_outside_and_write_nothing_outside(hostile):
    tmp_path, videos, ann = hostile
    out = tmp_path / "work" / "out"
    report = ingest("jsonl", videos=videos, annotations=ann, out=str(out), workers=1, progress=False,
                    extra_splits=["holdout"])
    reasons = {s["id"]: s["reason"] for s in report.skipped}
    for row in ("dotdot", "absolute", "symlink_out", "secret"):
        assert reasons[row] == "outside --videos", row
    for row in ("escape_split", "slash_split", "typo_split"):
        assert reasons[row].startswith("unknown split"), row
    assert report.skipped_by_reason == {"outside --videos": 4, "unknown split": 3}
    meta = check_dataset(str(out), {"train": "data.train_split", "holdout": ""})
    assert meta["rows"]["holdout"] == 1 and report.rows_written == 4 + 1 + 1      # + symlink_in + holdout
    written = {p.name for p in tmp_path.rglob("*.parquet")}
    assert all(p.parent == out for p in tmp_path.rglob("*.parquet")), written
    assert not any("ESCAPED" in name or "dir-" in name for name in written)
    for path in out.rglob("*"):
        assert path.is_dir() or SECRET.encode() not in path.read_bytes(), path


def test_undeclared_split_names_are_refused_up_front(hostile):
    tmp_path, videos, ann = hostile
    with pytest.raises(ValueError, match=r"extra split '\.\./x' \(--extra-split\)"):
        ingest("jsonl", videos=videos, annotations=ann, out=str(tmp_path / "o"), extra_splits=["../x"],
               progress=False)
    rc = main(["ingest", "--videos", videos, "--annotations", ann, "--out", str(tmp_path / "cli"), "--workers",
               "1", "--no-progress", "--extra-split", "holdout", "--extra-split", "trian"])
    assert rc == 0
    saved = json.load(open(tmp_path / "cli" / "dataset.json"))
    assert saved["rows"]["trian"] == 1 and saved["rows"]["holdout"] == 1
    assert saved["complete"] is True


@pytest.fixture()
def small(tmp_path):
    ann = make_synthetic_dataset(str(tmp_path), num_videos=6, num_frames=8, size=32)
    return tmp_path, str(tmp_path / "videos"), ann


def test_user_files_in_out_survive_and_are_reported(small):
    tmp_path, videos, ann = small
    out = tmp_path / "out"
    out.mkdir()
    theirs = {"notes.txt": b"my notes", "mine.parquet": b"PAR1 mine", "train-00099.parquet": b"PAR1 shard-like",
              "x.parquet.tmp": b"tmp", "val-00007.parquet.done.json": b"{not ours"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    kw = dict(videos=videos, annotations=ann, out=str(out), workers=1, progress=False, max_rows_per_shard=1)
    first = ingest("jsonl", **kw)
    ours_before = {s["file"] for s in first.shards}
    lines = open(ann).read().splitlines()
    with open(ann, "w") as f:                                  # fewer train rows: one own shard goes stale
        f.write("\n".join(line for line in lines if '"clip0000"' not in line) + "\n")
    second = ingest("jsonl", **kw)
    for name, data in theirs.items():
        assert (out / name).read_bytes() == data, name
    assert sorted(second.left_alone) == sorted(theirs)
    stale = ours_before - {s["file"] for s in second.shards}
    assert stale and not any((out / name).exists() or (out / (name + ".done.json")).exists() for name in stale)


def test_a_user_file_at_a_planned_shard_name_stops_the_run(small):
    tmp_path, videos, ann = small
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000.parquet").write_bytes(b"someone else's data")
    with pytest.raises(ValueError, match=r"train-00000\.parquet was not written by meltr-ray ingest"):
        ingest("jsonl", videos=videos, annotations=ann, out=str(out), workers=1, progress=False)
    assert (out / "train-00000.parquet").read_bytes() == b"someone else's data"


def test_every_file_is_fsynced_before_it_is_renamed_into_place(small, monkeypatch):
    tmp_path, videos, ann = small
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):
        renamed.append((str(src), str(dst), set(synced)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    ingest("jsonl", videos=videos, annotations=ann, out=str(out), workers=1, progress=False)
    into_out = {os.path.basename(dst): src in before for src, dst, before in renamed
                if os.path.dirname(dst) == str(out)}
    expected = {p.name for p in out.iterdir()}
    assert set(into_out) == expected and all(into_out.values()), into_out
    assert str(out) in synced                                  # the folder itself, after the renames


GUARDLESS = """
import sys
from meltr_ray.data import ingest
report = ingest("jsonl", videos="videos", annotations="annotations.jsonl", out="shards", workers=2,
                progress=False)
print("ROWS", report.rows_written, "SKIPPED", len(report.skipped))
"""


def test_a_script_without_a_main_guard_ingests_every_row(small):
    tmp_path, _, _ = small
    (tmp_path / "script.py").write_text(textwrap.dedent(GUARDLESS))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("ROWS") == 1                      # the script ran once, not once per worker
    assert "ROWS 6 SKIPPED 0" in done.stdout, done.stdout + done.stderr[-2000:]


def test_a_pool_that_fails_every_file_is_an_error_not_skips(small):
    tmp_path, videos, ann = small
    out = tmp_path / "out"
    with pytest.raises(ProbePoolError, match=r"the first 5 probed files all failed the way a broken probe pool "
                                             r"fails \(5× probe process crashed \(exit code -11\)\)"):
        ingest("jsonl", videos=videos, annotations=ann, out=str(out), workers=2, progress=False,
               probe_fn=always_crashing_probe)
    assert not list(out.glob("*.parquet")) and not (out / "dataset.json").exists()
    few = [(name, os.path.join(videos, name)) for name in ("clip0000.mp4", "clip0001.mp4")]
    with ProbePool(2, 30.0, always_crashing_probe) as pool, pytest.raises(ProbePoolError, match=r"^all 2 probed"):
        list(pool.run(few))


def test_workers_that_cannot_start_are_an_error_naming_the_cause(small, monkeypatch):
    tmp_path, videos, _ = small
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no_python_here"))     # only the children see it
    with ProbePool(2, 30.0) as pool, pytest.raises(ProbePoolError, match=r"died before they were ready \(exit "
                                                                          r"code 1: .*encodings"):
        list(pool.run([("a", os.path.join(videos, "clip0000.mp4"))]))


def test_probe_functions_must_be_importable_by_name():
    with pytest.raises(ValueError, match="module-level function"):
        ProbePool(1, 5.0, lambda path, **kw: {"ok": True})


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"                     # a zombie has exited
    except FileNotFoundError:
        return True


def test_closing_the_pool_kills_a_worker_stuck_in_a_decoder(small):
    tmp_path, videos, _ = small
    shutil.copy(os.path.join(videos, "clip0000.mp4"), os.path.join(videos, "clip_hang.mp4"))
    tasks = [(name, os.path.join(videos, name)) for name in ("clip_hang.mp4", "clip0001.mp4")]
    with ProbePool(2, 600.0, hanging_probe) as pool:
        results = pool.run(tasks)
        key, result = next(results)
        pids = [w.proc.pid for w in pool._workers]
    assert key == "clip0001.mp4" and result["ok"]
    assert all(_gone(pid) for pid in pids)


KILLED_PARENT = """
import os, sys, threading, time
sys.path.insert(0, {tests_data!r})
from probe_hooks import hanging_probe
from meltr_ray.data.probe import ProbePool
pool = ProbePool(1, 600.0, hanging_probe)
threading.Thread(target=lambda: list(pool.run([("k", {path!r})])), daemon=True).start()
while not os.path.exists({path!r} + ".hanging"):
    time.sleep(0.05)
print(pool._workers[0].proc.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_ingest_takes_its_hung_workers_with_it(small):
    """SIGKILL of the ingest process (no cleanup code runs) must not leave a decoder hanging for an hour."""
    tmp_path, videos, _ = small
    hang = os.path.join(videos, "clip_hang.mp4")
    shutil.copy(os.path.join(videos, "clip0000.mp4"), hang)
    script = KILLED_PARENT.format(tests_data=os.path.dirname(os.path.abspath(__file__)), path=hang)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        worker = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        for _ in range(300):
            if _gone(worker):
                break
            time.sleep(0.1)
        assert _gone(worker)
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)             # this test's process group (parent + workers)
        except ProcessLookupError:
            pass
