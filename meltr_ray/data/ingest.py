"""``meltr-ray ingest``: videos (or feature files) + annotations → Parquet shards, an answer vocabulary, a report.

Steps: the format's converter turns annotations into records (bad lines are reported, not fatal) → duplicate
ids and missing files are reported → every video is probed in a subprocess with a timeout
(:mod:`meltr_ray.data.probe`) → good rows are written as shards ``{split}-{n:05d}.parquet`` (row groups of
16–64 clips, ~256 MB shards; video_data_notes §3) → ``ingest_report.json`` and ``dataset.json`` next to them.

**Resumable.** The shard plan is a pure function of the records and the options, and each finished shard gets
a ``.done.json`` sidecar holding a hash of its plan. A re-run re-uses every shard whose hash matches, rewrites
the others (atomically, via a temporary file) and deletes shards that are no longer in the plan, so rows are
never duplicated.
"""
from __future__ import annotations

import collections
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import converters, datasets, image_formats
from .converters import Skip
from .legacy import encode_legacy_frames
from .probe import ProbePool, probe_video
from .schema import SCHEMA_VERSION
from .tokenize import build_vocab
from .shards import plan_hash, plan_shards, row_group_rows_for, shard_row, write_planned_shard

FORMATS: dict[str, Callable] = {"jsonl": converters.read_jsonl, "csv": converters.read_csv, **datasets.FORMATS,
                                **image_formats.FORMATS}
REPORT_NAME, DATASET_NAME, VOCAB_NAME = "ingest_report.json", "dataset.json", "answer_vocab.json"


@dataclass
class IngestReport:
    """What an ingest run did; also written as ``ingest_report.json``."""
    out: str
    rows_written: int = 0
    bytes_written: int = 0
    shards: list = field(default_factory=list)
    shards_reused: int = 0
    skipped: list = field(default_factory=list)          # {"id", "video", "reason"}

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(collections.Counter(_reason_kind(s["reason"]) for s in self.skipped))

    def to_dict(self) -> dict:
        return {"rows_written": self.rows_written, "bytes_written": self.bytes_written, "shards": self.shards,
                "shards_reused": self.shards_reused, "skipped_count": len(self.skipped),
                "skipped_by_reason": self.skipped_by_reason, "skipped": self.skipped}


def _reason_kind(reason: str) -> str:
    return reason.split(" (", 1)[0].split(":", 1)[0]


# ---- records ---------------------------------------------------------------------------------------------
def load_records(fmt: str, annotations: str, videos: str | None, allow_pickle: bool, **options
                 ) -> tuple[list[dict], list[dict], list[str] | None]:
    """Run the converter; return (records, skipped, answer vocabulary given by the format or None)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    records, skipped, vocab, seen = [], [], None, set()
    for item in FORMATS[fmt](annotations, videos=videos, allow_pickle=allow_pickle, **options):
        if isinstance(item, Skip):
            skipped.append({"id": item.id, "video": item.video, "reason": item.reason})
        elif "answer_vocab" in item:
            vocab = item["answer_vocab"]
        elif item["id"] in seen:
            skipped.append({"id": item["id"], "video": item.get("video") or "", "reason": "duplicate id"})
        else:
            seen.add(item["id"])
            records.append(item)
    return records, skipped, vocab


def assign_meta_split(records: list[dict], meta_fraction: float) -> None:
    """Move a deterministic ``meta_fraction`` of the train rows (by id hash) to the ``meta`` split."""
    for rec in records:
        if rec["split"] == "train" and meta_fraction > 0:
            if zlib.crc32(rec["id"].encode()) % 10_000 < meta_fraction * 10_000:
                rec["split"] = "meta"


def build_answer_vocab(records: list[dict], size: int) -> list[str]:
    """Top-``size`` open-ended answers of the train split by frequency (ties alphabetical)."""
    counts = collections.Counter(a for r in records if r["split"] == "train" for a in r["answer_texts"] if a)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def train_texts(records: list[dict]) -> list[str]:
    """Captions, questions, options and answers of the train split (what a demo vocabulary is trained on)."""
    texts = []
    for rec in records:
        if rec["split"] == "train":
            texts += rec["captions"] + rec["questions"] + rec["answer_texts"]
            texts += [o for opts in rec["options"] for o in opts]
    return [t for t in texts if t]


def attach_vq(records: list[dict], vq_path: str, allow_pickle: bool) -> None:
    """Join per-frame visual-token ids (``{id or video_id: int array (n_frames, h, w)}``) onto the records."""
    codes = dict(np.load(vq_path)) if vq_path.endswith(".npz") else converters.load_pickle(vq_path, allow_pickle)
    for rec in records:
        arr = codes.get(rec["id"], codes.get(rec["video_id"]))
        if arr is not None:
            arr = np.asarray(arr)
            rec["vq_ids"] = arr.astype(np.int16).reshape(-1).tolist()
            rec["vq_h"], rec["vq_w"] = int(arr.shape[-2]), int(arr.shape[-1])
            rec["vq_frames"] = int(arr.shape[0])


def validate_record(rec: dict, videos: str | None, min_frames: int, probe: dict | None) -> str | None:
    """Reason to skip a record after probing (None = keep)."""
    if probe is not None and not probe.get("ok"):
        return probe.get("reason", "probe failed")
    if probe is not None and probe["n_frames"] < min_frames:
        return f"too short: {probe['n_frames']} frames < min_frames {min_frames}"
    if probe is not None and rec.get("vq_frames") not in (None, probe["n_frames"]):
        return f"vq codes for {rec['vq_frames']} frames but the video has {probe['n_frames']}"
    return None




# ---- the driver ------------------------------------------------------------------------------------------
def ingest(format: str = "jsonl", videos: str | None = None, annotations: str | None = None,
           out: str | None = None, *, workers: int | None = None, vq: str | None = None, min_frames: int = 1,
           probe_timeout_s: float = 60.0, meta_fraction: float = 0.0, answer_vocab_size: int = 1000,
           shard_bytes: int = 256 << 20, max_rows_per_shard: int = 4096, allow_pickle: bool = False,
           progress: bool = True, probe_fn: Callable = probe_video, decoder: str = "decord",
           row_group_rows: int | None = None, vocab_size: int | None = None, legacy_frames: str | None = None,
           **format_options) -> IngestReport:
    """Convert ``annotations`` (+ the files under ``videos``) into shards under ``out``; see the module doc.

    ``probe_fn(path, min_frames=, decoder=) -> dict`` must be an importable module-level function (it runs in
    spawned worker processes); tests inject a hanging one. ``vocab_size`` also trains a WordPiece
    ``vocab.txt`` of that size on the train split's texts (the demo's vocabulary). ``legacy_frames`` is a
    Violet ``img_*.pkl`` (needs ``allow_pickle``): its frames become mp4s under ``out/legacy_videos``.
    Returns the report.
    """
    if not annotations or not out:
        raise ValueError("ingest needs annotations and out")
    os.makedirs(out, exist_ok=True)
    records, skipped, vocab = load_records(format, annotations, videos, allow_pickle, **format_options)
    if legacy_frames:
        skipped += encode_legacy_frames(records, legacy_frames, os.path.join(out, "legacy_videos"), allow_pickle)
    if vq:
        attach_vq(records, vq, allow_pickle)
    assign_meta_split(records, meta_fraction)
    vocab = vocab if vocab is not None else build_answer_vocab(records, answer_vocab_size)
    records = _drop_missing(records, videos, skipped)
    plan = plan_shards(records, videos, shard_bytes, max_rows_per_shard)
    options = {"min_frames": min_frames, "decoder": decoder,
               "rgr": row_group_rows or row_group_rows_for(records, videos)}
    report = IngestReport(out=out, skipped=skipped)
    todo = _reuse_finished(plan, out, videos, options, report)
    _remove_stale(out, plan)
    with _Progress(progress, total=len(records), done=len(records) - sum(len(v) for v in todo.values())) as bar:
        pool = ProbePool(workers or os.cpu_count() or 1, probe_timeout_s, probe_fn,
                         {"min_frames": 1, "decoder": decoder}, os.path.join(out, "probe_stderr.log"))
        with pool:
            for name, rows, probes in _probe_shards(todo, videos, pool, bar):
                _write_one(out, name, rows, probes, videos, options, report)
    report.shards = sorted(report.shards, key=lambda s: s["file"])
    _drop_empty(os.path.join(out, "probe_stderr.log"))
    _write_metadata(out, records, report, vocab)
    if vocab_size:
        build_vocab(train_texts(records), os.path.join(out, "vocab.txt"), vocab_size=vocab_size)
    if progress:
        from rich.console import Console
        Console(stderr=True).print(summary_table(report))
    return report


def has_file(rec: dict) -> bool:
    """True when the record's media is a file to probe; False for features or an image carried inline."""
    return rec.get("features") is None and rec.get("video_bytes") is None


def _drop_missing(records: list[dict], videos: str | None, skipped: list[dict]) -> list[dict]:
    keep = []
    for rec in records:
        if has_file(rec) and not os.path.isfile(os.path.join(videos or "", rec.get("video") or "")):
            skipped.append({"id": rec["id"], "video": rec.get("video") or "", "reason": "missing file"})
        else:
            keep.append(rec)
    return keep


def _drop_empty(path: str) -> None:
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        os.remove(path)


def _sidecar(out: str, name: str) -> str:
    return os.path.join(out, name + ".done.json")


def _reuse_finished(plan: dict, out: str, videos, options: dict, report: IngestReport) -> dict:
    """Count shards whose sidecar matches their plan hash; return the plan of the others."""
    todo = {}
    for name, rows in plan.items():
        digest, side = plan_hash(rows, videos, options), _sidecar(out, name)
        try:
            with open(side) as f:
                done = json.load(f)
        except (OSError, ValueError):
            done = {}
        if done.get("plan") == digest and os.path.isfile(os.path.join(out, name)):
            _account(report, name, done)
            report.shards_reused += 1
        else:
            todo[name] = rows
    return todo


def _account(report: IngestReport, name: str, done: dict) -> None:
    report.rows_written += done["rows_written"]
    report.bytes_written += done["bytes"]
    report.skipped.extend(done["skipped"])
    report.shards.append({"file": name, "rows": done["rows_written"], "bytes": done["bytes"]})


def _remove_stale(out: str, plan: dict) -> None:
    """Delete shard files (and sidecars) a previous run wrote that are not in this plan."""
    for fname in os.listdir(out):
        base = fname[:-len(".done.json")] if fname.endswith(".done.json") else fname
        if base.endswith((".parquet", ".parquet.tmp")) and base.removesuffix(".tmp") not in plan:
            os.remove(os.path.join(out, fname))


def _probe_shards(todo: dict, videos, pool: ProbePool, bar):
    """Yield ``(shard name, rows, {row id: probe})`` as soon as every video of a shard is probed."""
    waiting = {name: sum(1 for r in rows if has_file(r)) for name, rows in todo.items()}
    probes: dict[str, dict] = {name: {} for name in todo}
    by_path: dict[str, list] = collections.defaultdict(list)
    for name, rows in todo.items():
        for rec in rows:
            if has_file(rec):
                by_path[os.path.join(videos or "", rec["video"])].append((name, rec["id"]))
            else:
                bar.advance()
    for name in [n for n, count in waiting.items() if count == 0]:
        yield name, todo[name], probes[name]
    for path, result in pool.run((p, p) for p in by_path):
        for name, row_id in by_path[path]:
            probes[name][row_id] = result
            waiting[name] -= 1
            bar.advance()
            if waiting[name] == 0:
                yield name, todo[name], probes[name]


def _write_one(out: str, name: str, rows: list[dict], probes: dict, videos, options: dict,
               report: IngestReport) -> None:
    good, skipped = [], []
    for rec in rows:
        probe = probes.get(rec["id"]) if has_file(rec) else None
        reason = validate_record(rec, videos, options["min_frames"], probe)
        if reason:
            skipped.append({"id": rec["id"], "video": rec.get("video") or "", "reason": reason})
        else:
            good.append(shard_row(rec, probe, videos))
    path = os.path.join(out, name)
    size = write_planned_shard(path, good, options["rgr"]) if good else 0
    if not good and os.path.exists(path):
        os.remove(path)
    done = {"plan": plan_hash(rows, videos, options), "rows_written": len(good), "bytes": size,
            "skipped": skipped, "written_at": time.time()}
    with open(_sidecar(out, name), "w") as f:
        json.dump(done, f)
    _account(report, name, done)


def _write_metadata(out: str, records: list[dict], report: IngestReport, vocab: list[str]) -> None:
    splits: dict[str, list] = collections.defaultdict(list)
    rows: dict[str, int] = collections.Counter()
    for shard in report.shards:
        if shard["rows"]:
            split = shard["file"].rsplit("-", 1)[0]
            splits[split].append(shard["file"])
            rows[split] += shard["rows"]
    grid = next(([r["vq_h"], r["vq_w"]] for r in records if r.get("vq_h")), None)
    feature_dim = next((int(np.asarray(r["features"]).shape[1]) for r in records
                        if r.get("features") is not None), 0)
    meta = {"schema_version": SCHEMA_VERSION, "modality": "features" if feature_dim else "video",
            "splits": dict(splits), "rows": dict(rows), "items": text_item_counts(records, report),
            "vq_grid": grid, "feature_dim": feature_dim, "answer_vocab": VOCAB_NAME}
    meta.update(image_formats.image_meta(records))        # modality "image", its size and class names
    for name, obj in ((DATASET_NAME, meta), (VOCAB_NAME, vocab), (REPORT_NAME, report.to_dict())):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=1)


def text_item_counts(records: list[dict], report: IngestReport) -> dict:
    """Per split, how many samples each task yields per epoch (for steps_per_epoch): written rows only."""
    skipped = {s["id"] for s in report.skipped}
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for rec in records:
        if rec["id"] in skipped:
            continue
        c = counts[rec["split"]]
        c["captions"] += len(rec["captions"])
        c["qa_mc"] += sum(1 for o, a in zip(rec["options"], rec["answers"]) if o and a >= 0)
        c["qa_oe"] += sum(1 for t in rec["answer_texts"] if t)
        c["labels"] += rec.get("label", -1) >= 0
        c["scores"] += rec.get("score") is not None
    return {split: dict(c) for split, c in counts.items()}


def summary_table(report: IngestReport):
    """A rich table: rows written, bytes, shards, skipped rows by reason."""
    from rich.table import Table

    table = Table(title=f"meltr-ray ingest → {report.out}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("rows written", str(report.rows_written))
    table.add_row("bytes written", f"{report.bytes_written / 1e6:.1f} MB")
    table.add_row("shards (reused)", f"{len(report.shards)} ({report.shards_reused})")
    table.add_row("rows skipped", str(len(report.skipped)))
    for reason, count in sorted(report.skipped_by_reason.items()):
        table.add_row(f"  skipped: {reason}", str(count))
    return table


class _Progress:
    """A rich progress bar over records (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int = 0):
        self.enabled, self.total, self.done = enabled, total, done
        self._bar = self._task = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
            self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("probing + writing", total=self.total, completed=self.done)
        return self

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
