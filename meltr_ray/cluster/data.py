"""Ray Data pipeline: Parquet shards → decoded frames + token ids → Ray Train workers.

    read_parquet(shards of one split) → select_columns [→ randomize_block_order: small training splits]
    → map_batches(decode_in_task, TaskPoolStrategy(n))        small local splits
      | map_batches(DecodeSamples, ActorPoolStrategy(1…n))    large or remote splits
    → TorchTrainer(datasets={...})
    → ray.train.get_dataset_shard(split).iter_torch_batches(collate_fn=CollateSamples())

* ``DecodeSamples`` is the decode UDF (one decoder and tokenizer per actor, or per Ray worker process for
  :func:`decode_in_task`) around :class:`meltr_ray.data.samples.SampleBuilder`: it decodes each clip once and
  emits one sample per text item, so batches are pure tensors plus ``video_id`` / ``sample_id`` strings
  (tokenised inside the UDF).
* A row that cannot be decoded is dropped, logged (``logger.warning``), reported to the named
  :class:`BadRowLog` actor (deduplicated by row id: Ray may retry tasks and every epoch re-decodes; it lives as
  long as the process that called :func:`build_datasets`, so concurrent trials should pass their own
  ``log_name``) and passed
  to the optional ``on_bad_row(row_id, video_id, reason)`` hook, which runs *inside the decoding processes* (e.g. a
  ``ray.util.metrics`` counter from ``cluster/monitor.py``). :func:`bad_rows` reads the log from anywhere.
* Only the ``train`` and ``meta`` splits use ``sampling`` ('random' = segment-random); ``val``/``test`` always
  sample uniformly (the official All-in-one sampled randomly at evaluation, bug B-A4).
* Start-up is sized to each split (:class:`ReadPlan`): a small local split is read by Parquet datasource v1
  (footers read once, on the driver), larger or remote ones by v2 with one footer-reader actor per 64 files and
  read bins that give every decode actor work (Ray's 128 MiB default makes a small dataset one block,
  reference video_data_notes §4); decode tasks or actors are no more than the read blocks, and actors start
  one first. Small splits decode in tasks on Ray's warm worker processes, so a later epoch or trial starts no
  process; training splits get a new block order every epoch.
* On small machines: Ray 2.60's Parquet v2 reader runs a ``ListFiles`` task that needs a whole CPU, so keep
  ``decode_actors × decode_cpus`` + Train workers ≤ CPUs − 1 (or oversubscribe ``num_cpus`` in tests).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import ray
from ray.data.collate_fn import NumpyBatchCollateFn

from ..data.dataset_dir import read_complete_meta, read_json
from ..data.samples import FEATURE_COLUMNS, TEXT_COLUMNS, VIDEO_COLUMNS, VQ_COLUMNS, SampleBuilder
from ..data.tokenize import read_vocab

log = logging.getLogger(__name__)
BAD_ROW_LOG = "meltr_ray_bad_rows"
TRAIN_SPLITS = ("train", "meta")


@ray.remote(num_cpus=0, max_restarts=0)
class BadRowLog:
    """Named actor collecting ``(row id, video id, reason)`` of rows the pipeline dropped (deduplicated)."""

    def __init__(self):
        self._rows: dict[str, dict] = {}
        self.events = 0

    def report(self, row_id: str, video_id: str, reason: str, split: str = "") -> None:
        self.events += 1
        self._rows.setdefault(row_id, {"id": row_id, "video_id": video_id, "reason": reason, "split": split})

    def rows(self) -> list[dict]:
        return list(self._rows.values())

    def summary(self) -> dict:
        by_reason: dict[str, int] = {}
        for r in self._rows.values():
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        return {"count": len(self._rows), "events": self.events, "by_reason": by_reason}


_LOGS: dict = {}        # handles keep the (non-detached) named actors alive in the process that created them


def bad_row_log(name: str = BAD_ROW_LOG):
    """The named :class:`BadRowLog` actor (created on first use; lives as long as this process holds it)."""
    if name not in _LOGS:
        _LOGS[name] = BadRowLog.options(name=name, get_if_exists=True).remote()
    return _LOGS[name]


def bad_rows(name: str = BAD_ROW_LOG) -> list[dict]:
    """Rows dropped so far by pipelines reporting to the log ``name`` (empty if it does not exist)."""
    try:
        handle = _LOGS.get(name) or ray.get_actor(name)
    except ValueError:
        return []
    return ray.get(handle.rows.remote())


def bad_row_summary(name: str = BAD_ROW_LOG) -> dict:
    """``{"count", "events", "by_reason"}`` of the log ``name`` (for a metric or an end-of-epoch line)."""
    try:
        handle = _LOGS.get(name) or ray.get_actor(name)
    except ValueError:
        return {"count": 0, "events": 0, "by_reason": {}}
    return ray.get(handle.summary.remote())


class DecodeSamples:
    """Ray Data class UDF: a batch of shard rows → a batch of samples (see the module docstring)."""

    def __init__(self, *, split: str, log=None, on_bad_row: Callable | None = None, seed: int | None = None,
                 **builder_kwargs):
        self.split, self.hook, self.log = split, on_bad_row, log
        # Ray re-creates decode actors every epoch, and several actors or task worker processes decode a split:
        # a fixed seed alone would repeat the same "random" frames each epoch (actors) and in every process, so
        # it is mixed with the process and the clock (no run-level reproducibility)
        mixed = None if seed is None else [seed, os.getpid(), time.time_ns()]
        self.builder = SampleBuilder(on_bad_row=self._report, seed=mixed, **builder_kwargs)

    def _report(self, row_id: str, video_id: str, reason: str) -> None:
        if self.log is not None:
            try:                        # fire and forget; a log owned by a finished trial must not stop decoding
                self.log.report.remote(row_id, video_id, reason, self.split)
            except Exception as exc:    # noqa: BLE001
                log.warning("bad-row log unavailable (%s); row %s: %s", exc, row_id, reason)
        if self.hook is not None:
            self.hook(row_id, video_id, reason)

    def __call__(self, batch: dict) -> dict:
        return self.builder(batch)


_DECODERS: "OrderedDict[str, DecodeSamples]" = OrderedDict()   # this worker process's, by constructor kwargs
CACHED_DECODERS = 4          # splits of recent trials; older ones are dropped (their datasets are gone)


def decode_in_task(batch: dict, *, kwargs_ref: list) -> dict:
    """Ray Data function UDF (task pool): ``batch`` decoded by this worker process's :class:`DecodeSamples`
    for the constructor kwargs in the object store at ``kwargs_ref[0]`` (one put per split and
    :func:`build_datasets` call; the ref's id is the cache key). It is built on the process's first batch of
    that split and kept, so a later epoch runs on Ray's warm worker processes and starts or builds nothing."""
    key = kwargs_ref[0].hex()
    udf = _DECODERS.get(key)
    if udf is None:
        udf = _DECODERS[key] = DecodeSamples(**ray.get(kwargs_ref[0]))
        while len(_DECODERS) > CACHED_DECODERS:
            _DECODERS.popitem(last=False)
    _DECODERS.move_to_end(key)
    return udf(batch)


class CollateSamples(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate: numeric arrays → torch tensors, strings → lists of str.

    Arrays that are views of read-only (Arrow) memory — what Parquet datasource v1 blocks arrive as — are copied:
    a tensor over them would let an in-place op (masking, augmentation) write into Ray's buffers. Writable arrays
    are wrapped without a copy."""

    def __call__(self, batch: dict) -> dict:
        import torch

        out = {}
        for key, value in batch.items():
            if value.dtype == object or value.dtype.kind in "US":
                out[key] = [str(v) for v in value]
                continue
            array = np.ascontiguousarray(value)
            out[key] = torch.from_numpy(array if array.flags.writeable else array.copy())
        return out


def read_dataset_meta(shard_dir: str) -> dict:
    """``dataset.json`` written by ``meltr-ray ingest`` (splits → shard files, modality, vq grid, ...).

    ``shard_dir`` may be a local folder or a URI (e.g. the ingest output uploaded to ``s3://bucket/shards``).
    A folder that is not a finished ingest (no ``dataset.json``, or one without ``"complete": true``: the run
    was interrupted) or of another schema version is refused with a ``ValueError`` naming it
    (:func:`meltr_ray.data.dataset_dir.read_complete_meta`, the check the train/tune preflight runs).
    """
    return read_complete_meta(shard_dir)[2]


def _answer_vocab(shard_dir: str, meta: dict) -> list[str]:
    return read_json(os.path.join(shard_dir, meta.get("answer_vocab") or "answer_vocab.json")) or []


def _columns(meta: dict) -> list[str]:
    if meta.get("modality") == "features":
        return FEATURE_COLUMNS + TEXT_COLUMNS
    return VIDEO_COLUMNS + TEXT_COLUMNS + (VQ_COLUMNS if meta.get("vq_grid") else [])


BIN_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
FOOTER_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_ACTOR = 64          # footer reads are small and IO-bound: one actor keeps ~128 in flight
V2_ENV = "RAY_DATA_USE_DATASOURCE_V2"
SMALL_SPLIT_BYTES = 512 << 20        # local splits up to this size take the start-up-light reader (v1)


@dataclass(frozen=True)
class ReadPlan:
    """Ray Data start-up settings for one split, sized from its shard files (a small job starts small).

    * ``bin_bytes``: Ray 2.60 packs row groups into read bins of ``RAY_DATA_PARQUET_BIN_PACKING_BYTES``
      (default 128 MiB) — a small split would be one block, decoded by one actor — so ~4 bins per decode
      actor, 64 KiB…16 MiB;
    * ``footer_actors``: the listing starts ``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`` footer-reader actor
      processes (default 32, each a Python process importing Ray: tens of CPU-seconds on a small machine
      before the first row is read); one per 64 files, 1…32;
    * ``decode_actors``: no more decode actors than read blocks (an actor without a block is only start-up
      cost), at least 1;
    * ``datasource``: a local split of at most 512 MiB is read by Parquet datasource v1, which reads the
      footers once on the driver when the dataset is built; v2 (Ray's default) re-lists the files every epoch
      in a 1-CPU ``ListFiles`` task plus a footer-reader actor. Measured with 500 clips (benchmarks/README.md):
      first batch 9.3 s vs 14.1 s after ``ray.init``, and 4.5 s vs 9.4 s per later epoch or trial. Larger or
      remote splits use v2, whose row-group bins balance the decode actors.

    * ``decode_pool``: a small local split is decoded in Ray *tasks* (:func:`decode_in_task`, at most
      ``decode_actors`` at a time) on Ray's already-running worker processes, whose decoder is cached per
      process: a later epoch or trial starts no process (a decode actor costs ~1 CPU-s of Python and Ray
      imports before its first clip); larger or remote splits use an actor pool, whose start-up is then
      negligible next to the decoding;
    * ``shuffle_blocks``: a small local split's training blocks are put in a new random order every epoch
      (``randomize_block_order``: a barrier over the read, so at most 512 MiB of encoded rows wait in the
      object store), or a one-file split would stream its rows in the same order every epoch; larger splits
      have several files (ingest cuts shards at 256 MiB), whose order ``read_parquet`` shuffles, and no
      barrier.

    Values the user exported in those variables (and ``RAY_DATA_USE_DATASOURCE_V2``) are kept. Remote shards
    (size unknown) keep the defaults for the bin size and ``decode_actors``.
    """
    bin_bytes: int | None
    footer_actors: int
    decode_actors: int
    datasource: str = "v2"
    decode_pool: str = "actors"
    shuffle_blocks: bool = False

    @classmethod
    def for_files(cls, files: list[str], decode_actors: int, decode_pool: str | None = None) -> "ReadPlan":
        """The plan for a split's ``files``; ``decode_pool`` ('tasks' | 'actors') overrides the size's choice."""
        if decode_pool not in (None, "tasks", "actors"):
            raise ValueError(f"decode_pool must be 'tasks', 'actors' or None (from the split's size), "
                             f"not {decode_pool!r}")
        total = sum(os.path.getsize(f) for f in files if "://" not in f and os.path.isfile(f))
        footer = min(32, max(1, math.ceil(len(files) / FILES_PER_FOOTER_ACTOR)))
        if not total:
            return cls(None, footer, max(decode_actors, 1), decode_pool=decode_pool or "actors")
        exported = os.environ.get(BIN_ENV)
        bin_bytes = int(exported) if exported else int(min(max(total // (4 * max(decode_actors, 1)), 64 << 10),
                                                              16 << 20))
        blocks = math.ceil(total / max(bin_bytes, 1))
        small = total <= SMALL_SPLIT_BYTES and all("://" not in f for f in files)
        return cls(bin_bytes, footer, max(1, min(decode_actors, blocks)), "v1" if small else "v2",
                   decode_pool or ("tasks" if small else "actors"), shuffle_blocks=small)

    @contextlib.contextmanager
    def applied(self):
        """Export the settings while ``read_parquet`` plans the read (the plan captures them)."""
        wanted = {BIN_ENV: self.bin_bytes, FOOTER_ENV: self.footer_actors}
        added = [k for k, v in wanted.items() if v is not None and k not in os.environ]
        context = ray.data.DataContext.get_current()
        previous = context.use_datasource_v2
        if V2_ENV not in os.environ:
            context.use_datasource_v2 = self.datasource == "v2"
        for key in added:
            os.environ[key] = str(wanted[key])
        try:
            yield
        finally:
            context.use_datasource_v2 = previous
            for key in added:
                os.environ.pop(key, None)

    def compute(self):
        """Tasks: at most ``decode_actors`` at a time. Actors: start one and grow to ``decode_actors`` while
        blocks queue, so the first batch waits for one actor's start-up, not for all of them competing for the
        same cores."""
        if self.decode_pool == "tasks":
            return ray.data.TaskPoolStrategy(size=self.decode_actors)
        if self.decode_actors == 1:
            return ray.data.ActorPoolStrategy(size=1)
        return ray.data.ActorPoolStrategy(min_size=1, max_size=self.decode_actors, initial_size=1)


def _warn_if_no_cpu_left(actor_cpus: float) -> None:
    """Ray 2.60's Parquet ``ListFiles`` task needs one whole CPU: warn when the decode actors leave none."""
    total = ray.cluster_resources().get("CPU", 0) if ray.is_initialized() else 0
    if total and actor_cpus > total - 1:
        log.warning("decode actors take %.2f of %g CPUs; Ray Data's ListFiles task needs a whole free CPU "
                    "(plus what the Train workers take), or the pipeline stalls", actor_cpus, total)


def build_datasets(shard_dir: str, *, splits=("train", "val"), num_frames: int = 4, image_size: int = 32,
                   max_text_len: int = 16, vocab_path: str | None = None, items: str = "captions",
                   sampling: str = "uniform", pad_to_square: bool = False, resize_mode: str | None = None,
                   decode_actors: int = 1, decode_cpus: float = 0.25, decode_batch_rows: int = 4,
                   min_frames: int = 1, text_mode: str = "all", decoder="decord", num_options: int = 5,
                   max_feature_frames: int = 48, decode_timeout_s: float | None = 60.0,
                   on_bad_row: Callable | None = None, log_name: str | None = BAD_ROW_LOG,
                   augment: str = "crop_flip", seed: int | None = None, decode_pool: str | None = None) -> dict:
    """``{split: ray.data.Dataset}`` of samples from the shards under ``shard_dir``.

    ``items`` is the kind of sample each row yields (:data:`meltr_ray.data.items.ITEM_KINDS`: ``captions``,
    ``qa_mc``, ``qa_oe``, ``labels``, ``scores``, ``rows``) — a backbone task's ``spec.data.items``.
    ``pad_to_square`` (Violet) zero-pads each frame centred to a square before the resize; ``resize_mode``
    ('stretch' | 'pad' | 'crop') overrides it. ``augment`` is what the image modality's training splits get
    (``crop_flip`` | ``crop`` | ``none``: the backbone spec's ``data.augment``); other splits get none. Splits
    without shards are left out of the result. The
    vocabulary and answer list are read here and shipped to the decode actors (they need not be on every
    node); the shards themselves must be readable from every node (shared storage or ``s3://…``).
    ``decode_pool`` ('tasks' | 'actors') overrides :class:`ReadPlan`'s choice from the split's size.

    Training splits (``train``, ``meta``) stream their files and, for small splits, their blocks in a new
    random order every epoch; with ``seed`` that order is reproducible (the seed and the epoch's execution
    index; the frames sampled inside a clip are not, see :class:`DecodeSamples`). Other splits keep the
    shards' order.
    """
    meta = read_dataset_meta(shard_dir)
    _warn_if_no_cpu_left(decode_actors * decode_cpus)
    common = dict(items=items, num_frames=num_frames, image_size=image_size, max_text_len=max_text_len,
                  vocab_path=read_vocab(vocab_path) if vocab_path else None, resize_mode=resize_mode or ("pad" if pad_to_square else "stretch"),
                  min_frames=min_frames, text_mode=text_mode, decoder=decoder, num_options=num_options,
                  modality=meta.get("modality", "video"), feature_dim=meta.get("feature_dim", 0),
                  vq_grid=tuple(meta["vq_grid"]) if meta.get("vq_grid") else None,
                  answer_vocab=_answer_vocab(shard_dir, meta), max_feature_frames=max_feature_frames,
                  decode_timeout_s=decode_timeout_s, seed=seed, on_bad_row=on_bad_row,
                  log=bad_row_log(log_name) if log_name else None)
    out = {}
    for split in splits:
        files = [os.path.join(shard_dir, f) for f in meta["splits"].get(split, [])]
        if not files:
            log.warning("no shards for split %r in %s", split, shard_dir)
            continue
        kwargs = dict(common, split=split, sampling=sampling if split in TRAIN_SPLITS else "uniform",
                      augment=augment if split in TRAIN_SPLITS else "none")   # images: training splits only
        plan = ReadPlan.for_files(files, decode_actors, decode_pool)
        training = split in TRAIN_SPLITS
        with plan.applied():
            read = ray.data.read_parquet(files, shuffle=_file_order(seed) if training else None)
        read = read.select_columns(_columns(meta))
        if training and plan.shuffle_blocks:
            read = read.randomize_block_order(seed=_epoch_seed(seed))
        out[split] = read.map_batches(**_decode_udf(plan, kwargs), batch_size=decode_batch_rows,
                                      batch_format="numpy", compute=plan.compute(), num_cpus=decode_cpus)
    return out


def _epoch_seed(seed: int | None):
    """None (a fresh order every epoch) or ``seed`` combined with the epoch's execution index."""
    return None if seed is None else ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)


def _file_order(seed: int | None):
    from ray.data.datasource import FileShuffleConfig
    return "files" if seed is None else FileShuffleConfig(seed=seed, reseed_after_execution=True)


def _decode_udf(plan: ReadPlan, kwargs: dict) -> dict:
    """``map_batches`` arguments of the decode UDF: the task function with its constructor kwargs put once in
    the object store, or the actor class with them."""
    if plan.decode_pool == "tasks":
        return {"fn": decode_in_task, "fn_kwargs": {"kwargs_ref": [ray.put(kwargs)]}}
    return {"fn": DecodeSamples, "fn_constructor_kwargs": kwargs}


def iter_split(split: str, batch_size: int, prefetch_batches: int = 1, drop_last: bool = False,
               local_shuffle_buffer_size: int | None = None):
    """Inside a Train worker: this worker's batches of ``split`` (frames uint8, ids int64, strings as lists).

    The samples of one clip (one per caption / question) arrive next to each other; for in-batch-negative
    losses (retrieval) pass ``local_shuffle_buffer_size`` (e.g. 8 × batch_size) to spread them out.
    """
    import ray.train

    shard = ray.train.get_dataset_shard(split)
    return shard.iter_torch_batches(batch_size=batch_size, collate_fn=CollateSamples(),
                                    prefetch_batches=prefetch_batches, drop_last=drop_last,
                                    local_shuffle_buffer_size=local_shuffle_buffer_size)
