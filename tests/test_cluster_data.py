"""Ray Data pipeline on a real local cluster: right frames, bad rows reported, every sample once per epoch."""
from __future__ import annotations

import json
import os
import sys
import time

import pyarrow.parquet as pq
import pytest

from meltr_ray.data.ingest import ingest
from meltr_ray.data.schema import rows_to_table, write_shard
from meltr_ray.data.synthetic import make_synthetic_dataset, read_frame_code, write_bad_videos
from meltr_ray.data.tokenize import build_vocab
from meltr_ray.data.video import DecordDecoder

pytestmark = pytest.mark.ray
NUM_FRAMES, SIZE = 4, 32


class SlowDecoder(DecordDecoder):
    """decord, except that data starting with HANG blocks (stand-in for a native decoder hang); with
    ``record_dir`` each decoding process writes down whether it has imported torch."""

    def __init__(self, record_dir: str | None = None):
        super().__init__()
        self.record_dir = record_dir

    def read(self, data, choose, size):
        if self.record_dir:
            with open(os.path.join(self.record_dir, f"{os.getpid()}.json"), "w") as f:
                json.dump({"torch": "torch" in sys.modules}, f)
        if bytes(data[:4]) == b"HANG":
            time.sleep(15)
        return super().read(data, choose, size)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 synthetic clips → shards (small row groups → several read blocks) + a WordPiece vocab."""
    root = tmp_path_factory.mktemp("cluster_data")
    ann = make_synthetic_dataset(str(root / "raw"), num_videos=24, num_frames=16, size=64)
    lines = [json.loads(x) for x in open(ann)]
    report = ingest("jsonl", videos=str(root / "raw" / "videos"), annotations=ann, out=str(root / "shards"),
                    vq=str(root / "raw" / "vq.npz"), workers=2, progress=False, row_group_rows=3)
    assert report.rows_written == 24 and not report.skipped
    vocab = build_vocab([c for x in lines for c in x["text"]], str(root / "vocab.txt"), vocab_size=200)
    return {"root": root, "dir": str(root / "shards"), "vocab": vocab, "lines": lines}


def expected_samples(lines, split="train"):
    return {f"{x['id']}#{k}" for x in lines if x["split"] == split for k in range(len(x["text"]))}


def check_frames(batch) -> int:
    """Number of wrong frames: the code in each frame must equal the asked index and the clip number."""
    wrong = 0
    for vid, frames, idx in zip(batch["video_id"], batch["frames"].numpy(), batch["frame_indices"].numpy()):
        for frame, i in zip(frames, idx):
            wrong += read_frame_code(frame) != (int(i), int(vid[4:]) % 256)
    return wrong


def bad_shard_dir(shards, tmp_path) -> tuple[str, dict]:
    """A shard dir holding the good train rows plus one row per bad-input kind (written without probing)."""
    good = pq.read_table(os.path.join(shards["dir"], "train-00000.parquet")).to_pylist()
    raw = os.path.join(shards["root"], "raw", "videos")
    files = write_bad_videos(raw, os.path.join(raw, "clip0000.mp4"), short_frames=2)
    blob = lambda k: open(os.path.join(raw, files[k]), "rb").read()          # noqa: E731
    bad = {"truncated": blob("truncated"), "zero_length": b"", "not_a_video": blob("not_a_video"),
           "audio_only": blob("audio_only"), "too_short": blob("too_short"), "missing": None,
           "hang": b"HANG" + blob("truncated")}
    rows = [r for r in good] + [{"id": f"bad_{k}", "video_id": f"bad_{k}", "video_bytes": v, "width": 64,
                                 "height": 64, "fps": 16.0, "captions": ["a bad clip"]} for k, v in bad.items()]
    out = tmp_path / "bad_shards"
    out.mkdir()
    write_shard(rows_to_table(rows), str(out / "train-00000.parquet"), row_group_rows=4)
    json.dump({"schema_version": 1, "complete": True, "modality": "video",
               "splits": {"train": ["train-00000.parquet"]}, "vq_grid": [2, 2], "feature_dim": 0},
              open(out / "dataset.json", "w"))
    return str(out), bad


@pytest.mark.parametrize("pool", ["actors", "tasks"])
def test_stream_delivers_right_frames_and_reports_every_bad_kind(ray_cluster, shards, tmp_path, pool):
    """Both decode pools: right frames, every good sample once, every bad kind reported (tasks: the decoder
    cached per worker process survives an abandoned, hung decode)."""
    import ray.cloudpickle
    from meltr_ray.cluster.data import CollateSamples, bad_rows, build_datasets

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    shard_dir, bad = bad_shard_dir(shards, tmp_path)
    record = tmp_path / "imports"
    record.mkdir()
    ds = build_datasets(shard_dir, splits=("train",), num_frames=NUM_FRAMES, image_size=SIZE, max_text_len=12,
                        vocab_path=shards["vocab"], items="captions", sampling="random", decode_actors=2,
                        min_frames=3, decoder=SlowDecoder(str(record)), decode_timeout_s=2.0,
                        log_name=f"bad_rows_test1_{pool}", decode_pool=pool)
    seen, wrong = [], 0
    for batch in ds["train"].iter_torch_batches(batch_size=5, collate_fn=CollateSamples()):
        assert batch["frames"].dtype.is_floating_point is False and batch["frames"].shape[1:] == (4, 32, 32, 3)
        assert batch["text_ids"].shape[1:] == (12,) and batch["vq_ids"].shape[1:] == (4, 2, 2)
        wrong += check_frames(batch)
        seen += batch["sample_id"]
    assert wrong == 0
    assert sorted(seen) == sorted(expected_samples(shards["lines"]))        # every good sample exactly once
    reasons = {r["id"]: r["reason"] for r in bad_rows(f"bad_rows_test1_{pool}")}
    assert set(reasons) == {f"bad_{k}" for k in bad}
    assert reasons["bad_hang"].startswith("decode timed out")
    assert reasons["bad_too_short"].startswith("too short")
    assert reasons["bad_missing"] == "no video bytes" and reasons["bad_zero_length"] == "empty video bytes"
    assert reasons["bad_audio_only"] == "no video stream"
    decoders = [json.load(open(f)) for f in record.iterdir()]
    assert decoders
    if pool == "actors":            # fresh processes; task workers may have run other tests' torch tasks before
        assert not any(d["torch"] for d in decoders)              # decode actors stay numpy-only


def epoch_orders(ds, epochs: int) -> list[list[str]]:
    from meltr_ray.cluster.data import CollateSamples
    return [[sid for b in ds.iter_torch_batches(batch_size=4, collate_fn=CollateSamples()) for sid in b["sample_id"]]
            for _ in range(epochs)]


def test_training_blocks_change_order_every_epoch_and_eval_splits_keep_theirs(ray_cluster, shards):
    """One shard file per split: the train split's blocks come in a new order each epoch (also with a seed,
    then the same orders again for the same seed); val keeps the shard's order, epoch after epoch."""
    from meltr_ray.cluster.data import build_datasets

    def build(seed):
        return build_datasets(shards["dir"], splits=("train", "val"), num_frames=2, image_size=16, max_text_len=8,
                              vocab_path=shards["vocab"], decode_actors=1, decode_batch_rows=1, seed=seed,
                              log_name=None)

    meta = json.load(open(os.path.join(shards["dir"], "dataset.json")))
    assert len(meta["splits"]["train"]) == 1 and len(meta["splits"]["val"]) == 1
    for seed in (None, 11):
        ds = build(seed)
        train = epoch_orders(ds["train"], 3)
        assert all(sorted(order) == sorted(expected_samples(shards["lines"])) for order in train)
        assert len({tuple(order) for order in train}) == 3, train      # 3 different orders of the same samples
        val = epoch_orders(ds["val"], 2)
        shard_order = [f"{r['id']}#{k}" for r in pq.read_table(os.path.join(shards["dir"], meta["splits"]["val"][0]))
                       .to_pylist() for k in range(len(r["captions"]))]
        assert val == [shard_order, shard_order]
    assert epoch_orders(build(11)["train"], 3) == epoch_orders(build(11)["train"], 3)   # seeded: reproducible


def test_build_datasets_refuses_an_unfinished_ingest(shards, tmp_path):
    """A dataset.json without "complete": true (the ingest stopped) is refused, naming the folder, before any
    Ray work; the same check as the train/tune preflight (dataset_dir.read_complete_meta)."""
    import shutil
    from meltr_ray.cluster.data import build_datasets
    from meltr_ray.data.dataset_dir import check_dataset

    folder = tmp_path / "half"
    shutil.copytree(shards["dir"], folder)
    meta = json.load(open(folder / "dataset.json"))
    assert meta.pop("complete") is True
    for variant in (meta, dict(meta, complete=False)):
        (folder / "dataset.json").write_text(json.dumps(variant))
        for call in (lambda: build_datasets(str(folder), splits=("train",), log_name=None),
                     lambda: check_dataset(str(folder), ["train"])):
            with pytest.raises(ValueError, match="re-run the ingest") as err:
                call()
            assert str(folder) in str(err.value) and "complete" in str(err.value)


def train_loop(config):
    """Each worker records, per epoch, the sample ids it saw and how many frames were wrong."""
    import ray.train
    from meltr_ray.cluster.data import iter_split

    ctx = ray.train.get_context()
    log = {"rank": ctx.get_world_rank(), "epochs": []}
    for _ in range(config["epochs"]):
        ids, wrong = [], 0
        for batch in iter_split("train", batch_size=4, local_shuffle_buffer_size=8):
            wrong += check_frames(batch)
            ids += batch["sample_id"]
        log["epochs"].append({"ids": ids, "wrong": wrong})
    with open(os.path.join(config["out"], f"rank{log['rank']}.json"), "w") as f:
        json.dump(log, f)


def test_torch_trainer_two_workers_get_each_sample_once_per_epoch(ray_cluster, shards, tmp_path):
    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchTrainer
    from meltr_ray.cluster.data import build_datasets

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ds = build_datasets(shards["dir"], splits=("train",), num_frames=NUM_FRAMES, image_size=SIZE,
                        max_text_len=12, vocab_path=shards["vocab"], items="captions", sampling="random",
                        decode_actors=1, log_name="bad_rows_trainer")
    trainer = TorchTrainer(train_loop, train_loop_config={"epochs": 2, "out": str(tmp_path)}, datasets=ds,
                           scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.25}),
                           run_config=ray.train.RunConfig(
                               name="data_exactly_once", storage_path=str(tmp_path / "results"),
                               failure_config=ray.train.FailureConfig(controller_failure_limit=0)))
    trainer.fit()
    logs = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    expected = expected_samples(shards["lines"])
    for epoch in range(2):
        per_worker = [log["epochs"][epoch]["ids"] for log in logs]
        assert all(per_worker), "both workers must receive samples"
        merged = per_worker[0] + per_worker[1]
        assert len(merged) == len(set(merged)) == len(expected) and set(merged) == expected
        assert sum(log["epochs"][epoch]["wrong"] for log in logs) == 0


def test_dataset_meta_from_a_path_or_a_uri(shards):
    from meltr_ray.cluster.data import read_dataset_meta

    assert read_dataset_meta(shards["dir"]) == read_dataset_meta("file://" + shards["dir"])
    assert read_dataset_meta(shards["dir"])["vq_grid"] == [2, 2]
    with pytest.raises(ValueError, match="no dataset.json"):
        read_dataset_meta(str(shards["root"]))


UDF_WITHOUT_TORCH = """
import json, sys
import numpy as np
import pyarrow.parquet as pq
from meltr_ray.cluster.data import DecodeSamples, _columns, read_dataset_meta
from meltr_ray.data.tokenize import read_vocab

shard_dir, vocab = sys.argv[1], sys.argv[2]
meta = read_dataset_meta(shard_dir)
table = pq.read_table(f"{shard_dir}/{meta['splits']['train'][0]}", columns=_columns(meta))
batch = {}
for name in table.column_names:                       # the numpy batch Ray Data hands the UDF
    values = table.column(name).to_pylist()
    column = np.empty(len(values), dtype=object)
    column[:] = values
    batch[name] = column
udf = DecodeSamples(split="train", items="captions", num_frames=4, image_size=32, max_text_len=12,
                    vocab_path=read_vocab(vocab), vq_grid=tuple(meta["vq_grid"]), log=None)
out = udf(batch)
print(json.dumps({"torch": "torch" in sys.modules, "samples": len(out["sample_id"]),
                  "frames": list(out["frames"].shape)}))
"""


def test_the_decode_udf_never_imports_torch(shards, tmp_path):
    """Constructing and calling the decode UDF (as a decode actor does) imports numpy, decord and tokenizers,
    never torch: an actor's start-up stays at Ray's own cost."""
    import subprocess
    script = tmp_path / "udf.py"
    script.write_text(UDF_WITHOUT_TORCH)
    proc = subprocess.run([sys.executable, str(script), shards["dir"], shards["vocab"]], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["samples"] > 0 and result["frames"][1:] == [NUM_FRAMES, SIZE, SIZE, 3]
    assert result["torch"] is False


def test_read_plan_sizes_start_up_from_the_split(tmp_path, monkeypatch):
    import ray.data
    from meltr_ray.cluster.data import BIN_ENV, FOOTER_ENV, V2_ENV, ReadPlan

    for name in (BIN_ENV, FOOTER_ENV, V2_ENV):
        monkeypatch.delenv(name, raising=False)
    small = tmp_path / "small.parquet"
    small.write_bytes(b"x" * (100 << 10))                 # 100 KiB: bins of 64 KiB → 2 blocks
    plan = ReadPlan.for_files([str(small)], decode_actors=4)
    assert (plan.bin_bytes, plan.footer_actors, plan.decode_actors, plan.datasource) == (64 << 10, 1, 2, "v1")
    assert (plan.decode_pool, plan.shuffle_blocks) == ("tasks", True)       # small: warm Ray workers, no barrier cost
    big = [str(tmp_path / f"s{i}.parquet") for i in range(130)]
    for f in big:
        with open(f, "wb") as out:
            out.truncate(8 << 20)                          # 130 × 8 MiB (sparse): above the small-split size
    plan = ReadPlan.for_files(big, decode_actors=4)
    assert (plan.bin_bytes, plan.footer_actors, plan.decode_actors, plan.datasource) == (16 << 20, 3, 4, "v2")
    assert (plan.decode_pool, plan.shuffle_blocks) == ("actors", False)
    remote = ReadPlan.for_files(["s3://bucket/a.parquet"], decode_actors=3)
    assert (remote.bin_bytes, remote.footer_actors, remote.decode_actors, remote.datasource) == (None, 1, 3, "v2")
    assert (remote.decode_pool, remote.shuffle_blocks) == ("actors", False)
    assert ReadPlan.for_files(big, decode_actors=4, decode_pool="tasks").decode_pool == "tasks"     # override
    with pytest.raises(ValueError, match="decode_pool"):
        ReadPlan.for_files(big, decode_actors=4, decode_pool="threads")
    context = ray.data.DataContext.get_current()
    before = context.use_datasource_v2
    with ReadPlan.for_files([str(small)], 2).applied():
        assert context.use_datasource_v2 is False
    with plan.applied():
        assert os.environ[BIN_ENV] == str(16 << 20) and os.environ[FOOTER_ENV] == "3"
        assert context.use_datasource_v2 is True
    assert BIN_ENV not in os.environ and FOOTER_ENV not in os.environ and context.use_datasource_v2 == before
    monkeypatch.setenv(FOOTER_ENV, "7")                   # what the user exported wins, and stays
    monkeypatch.setenv(V2_ENV, "1")
    with ReadPlan.for_files([str(small)], 1).applied():
        assert os.environ[FOOTER_ENV] == "7" and context.use_datasource_v2 == before
    assert os.environ[FOOTER_ENV] == "7"
    tasks = ReadPlan.for_files([str(small)], 2).compute()
    assert isinstance(tasks, ray.data.TaskPoolStrategy) and tasks.size == 2
    single = ReadPlan.for_files([str(small)], 1, decode_pool="actors").compute()
    assert (single.min_size, single.max_size) == (1, 1)
    pool = plan.compute()
    assert (pool.min_size, pool.max_size) == (1, 4)


def test_collate_copies_read_only_arrays_only():
    import numpy as np
    from meltr_ray.cluster.data import CollateSamples

    frozen = np.arange(12, dtype=np.uint8).reshape(3, 4)
    frozen.flags.writeable = False
    free = np.arange(3, dtype=np.int64)
    out = CollateSamples()({"frames": frozen, "ids": free, "video_id": np.array(["a", "b", "c"], dtype=object)})
    out["frames"][0, 0] = 99                                 # in place: must not reach the read-only buffer
    assert frozen[0, 0] == 0 and out["frames"][0, 0] == 99
    assert out["ids"].data_ptr() == free.ctypes.data         # writable: wrapped, not copied
    assert out["video_id"] == ["a", "b", "c"]


def test_decode_tasks_build_one_decoder_per_process_and_split(monkeypatch):
    """decode_in_task: the decoder for one put of constructor kwargs is built once per worker process and
    reused for every later batch (and epoch); another split's kwargs get their own; the oldest are dropped."""
    import meltr_ray.cluster.data as data

    built = []

    class Counting:
        def __init__(self, **kwargs):
            built.append(kwargs["split"])
            self.split = kwargs["split"]

        def __call__(self, batch):
            return {"split": self.split, **batch}

    class Ref:
        def __init__(self, key):
            self.key = key

        def hex(self):
            return self.key

    store = {f"ref{i}": {"split": f"split{i}"} for i in range(data.CACHED_DECODERS + 1)}
    monkeypatch.setattr(data, "DecodeSamples", Counting)
    monkeypatch.setattr(data.ray, "get", lambda ref: store[ref.key])
    monkeypatch.setattr(data, "_DECODERS", type(data._DECODERS)())
    for _ in range(3):                                            # three batches (or epochs) of one split
        assert data.decode_in_task({"x": 1}, kwargs_ref=[Ref("ref0")]) == {"split": "split0", "x": 1}
    assert built == ["split0"]
    for i in range(1, data.CACHED_DECODERS + 1):
        data.decode_in_task({}, kwargs_ref=[Ref(f"ref{i}")])
    assert built == [f"split{i}" for i in range(data.CACHED_DECODERS + 1)]
    assert list(data._DECODERS) == [f"ref{i}" for i in range(1, data.CACHED_DECODERS + 1)]   # ref0 dropped
    data.decode_in_task({}, kwargs_ref=[Ref("ref0")])
    assert built[-1] == "split0" and len(data._DECODERS) == data.CACHED_DECODERS
