"""``meltr-ray ingest``: videos (or feature files) + annotations → Parquet shards, an answer vocabulary, a report.

Steps: the format's converter turns annotations into records (bad lines are reported, not fatal) → rows of an
unknown split, duplicate ids, files outside ``--videos`` (symlinks resolved), missing files and non-files are
reported → every video is probed in a subprocess with a timeout (:mod:`meltr_ray.data.probe`) → good rows are
written as shards ``{split}-{n:05d}.parquet`` (row groups of 16–64 clips, ~256 MB shards; video_data_notes
§3) → ``ingest_report.json`` and, last, ``dataset.json`` next to them.

**Resumable.** The shard plan is a pure function of the records and the options, and each finished shard gets
a ``.done.json`` sidecar holding a hash of its plan. A re-run re-uses every shard whose hash matches, rewrites
the others (atomically, via a temporary file) and deletes ingest's own shards that are no longer in the plan,
so rows are never duplicated. What ingest owns in ``--out`` and how it writes durably:
:mod:`meltr_ray.data.dataset_dir`.
"""
from __future__ import annotations

import collections
import os
import time
import zlib
from typing import Callable

import numpy as np

from . import converters, datasets, image_formats
from .converters import Skip
from .dataset_dir import (DATASET_NAME, LEGACY_DIR, OLD_STDERR_LOG, OWNER, REPORT_NAME, VOCAB_NAME, WORDPIECE_NAME,
                          claim_shard, classify_out, known_splits, read_sidecar, remove_durably, sidecar_path,
                          write_json_atomic)
from .legacy import encode_legacy_frames
from .probe import ProbePool, probe_video
from .report import IngestReport, Progress, summary_table
from .schema import SCHEMA_VERSION
from .shards import plan_hash, plan_shards, row_group_rows_for, shard_row, write_planned_shard
from .tokenize import build_vocab

FORMATS: dict[str, Callable] = {"jsonl": converters.read_jsonl, "csv": converters.read_csv, **datasets.FORMATS,
                                **image_formats.FORMATS}
OUTSIDE = "outside --videos"

__all__ = ["ingest", "IngestReport", "summary_table", "FORMATS", "REPORT_NAME", "DATASET_NAME", "VOCAB_NAME"]


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


def _skip(rec: dict, reason: str) -> dict:
    return {"id": rec["id"], "video": rec.get("video") or "", "reason": reason}


def drop_unknown_splits(records: list[dict], splits: tuple[str, ...], skipped: list[dict]) -> list[dict]:
    """Keep rows of a known split; a split name becomes a shard file name, so nothing else is written."""
    keep = []
    for rec in records:
        if rec["split"] in splits:
            keep.append(rec)
        else:
            skipped.append(_skip(rec, f"unknown split: {rec['split']!r:.60} (known: {', '.join(splits)}; "
                                      "declare others with --extra-split)"))
    return keep


def _under(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def file_problem(video: str, roots: tuple[str, ...]) -> str | None:
    """Why ``video`` (relative to ``roots[0]``, or absolute) cannot be ingested, or ``None``.

    The path is resolved with every symlink followed (``os.path.realpath``) before it is compared with the
    allowed folders, so ``..``, absolute paths and links pointing out are all caught before the file is opened.
    """
    path = os.path.realpath(os.path.join(roots[0], video))
    if not any(_under(path, root) for root in roots):
        return OUTSIDE
    if not os.path.exists(path):
        return "missing file"
    if not os.path.isfile(path):
        return "not a regular file"
    return None


def has_file(rec: dict) -> bool:
    """True when the record's media is a file to probe; False for features or an image carried inline."""
    return rec.get("features") is None and rec.get("video_bytes") is None


def drop_bad_files(records: list[dict], roots: tuple[str, ...], skipped: list[dict]) -> list[dict]:
    """Keep feature rows, inline images and rows whose video is a regular file inside ``roots`` (``--videos``,
    legacy cache)."""
    keep = []
    for rec in records:
        problem = file_problem(rec.get("video") or "", roots) if has_file(rec) else None
        if problem:
            skipped.append(_skip(rec, problem))
        else:
            keep.append(rec)
    return keep


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
           extra_splits: tuple[str, ...] | list[str] = (), **format_options) -> IngestReport:
    """Convert ``annotations`` (+ the files under ``videos``) into shards under ``out``; see the module doc.

    Video paths must resolve (symlinks followed) inside ``videos`` (the current folder when ``None``);
    rows outside are skipped as "outside --videos". Splits are ``train | meta | val | test`` plus
    ``extra_splits``; rows of any other split are skipped as "unknown split". ``probe_fn(path, min_frames=,
    decoder=) -> dict`` must be a module-level function of an importable module (the probe workers are fresh
    processes that import it by name); tests inject a hanging one. ``vocab_size`` also trains a WordPiece
    ``vocab.txt`` of that size on the train split's texts (the demo's vocabulary). ``legacy_frames`` is a
    Violet ``img_*.pkl`` (needs ``allow_pickle``): its frames become mp4s under ``out/legacy_videos``.
    Returns the report; raises :class:`~meltr_ray.data.probe.ProbePoolError` when the probe workers are broken.
    """
    if not annotations or not out:
        raise ValueError("ingest needs annotations and out")
    splits = known_splits(extra_splits)
    os.makedirs(out, exist_ok=True)
    records, skipped, vocab = load_records(format, annotations, videos, allow_pickle, **format_options)
    records = drop_unknown_splits(records, splits, skipped)
    roots = (os.path.realpath(videos or "."),)
    if legacy_frames:
        skipped += encode_legacy_frames(records, legacy_frames, os.path.join(out, LEGACY_DIR), allow_pickle)
        roots += (os.path.realpath(os.path.join(out, LEGACY_DIR)),)
    if vq:
        attach_vq(records, vq, allow_pickle)
    assign_meta_split(records, meta_fraction)
    vocab = vocab if vocab is not None else build_answer_vocab(records, answer_vocab_size)
    records = drop_bad_files(records, roots, skipped)
    plan = plan_shards(records, videos, shard_bytes, max_rows_per_shard)
    options = {"min_frames": min_frames, "decoder": decoder,
               "rgr": row_group_rows or row_group_rows_for(records, videos)}
    report = IngestReport(out=out, skipped=skipped)
    report.left_alone = _start_run(out, plan)
    todo = _reuse_finished(plan, out, videos, options, report)
    with Progress(progress, total=len(records), done=len(records) - sum(len(v) for v in todo.values())) as bar:
        with ProbePool(workers or os.cpu_count() or 1, probe_timeout_s, probe_fn,
                       {"min_frames": 1, "decoder": decoder}) as pool:
            for name, rows, probes in _probe_shards(todo, videos, pool, bar):
                _write_one(out, name, rows, probes, videos, options, report)
    report.shards = sorted(report.shards, key=lambda s: s["file"])
    _write_metadata(out, records, report, vocab, vocab_size)
    if progress:
        from rich.console import Console
        console = Console(stderr=True)
        console.print(summary_table(report))
        console.print(f"shards: {report.out}", soft_wrap=True)     # whole, whatever the width: the next command needs it
    return report


def _start_run(out: str, plan: dict) -> list[str]:
    """Mark the folder unfinished (no ``dataset.json``), delete ingest's shards that left the plan.

    Returns the files of ``out`` that ingest did not write (left alone, listed in the report).
    """
    stale, foreign = classify_out(out, plan)          # raises before anything is touched
    remove_durably(os.path.join(out, DATASET_NAME))
    remove_durably(os.path.join(out, OLD_STDERR_LOG))
    for fname in stale:
        remove_durably(os.path.join(out, fname))
    return [f for f in foreign if f != OLD_STDERR_LOG]


def _reuse_finished(plan: dict, out: str, videos, options: dict, report: IngestReport) -> dict:
    """Count shards whose sidecar matches their plan hash; return the plan of the others."""
    todo = {}
    for name, rows in plan.items():
        done = read_sidecar(out, name) or {}
        finished = done.get("state", "done") == "done" and done.get("plan") == plan_hash(rows, videos, options)
        if finished and os.path.isfile(os.path.join(out, name)):
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
            skipped.append(_skip(rec, reason))
        else:
            good.append(shard_row(rec, probe, videos))
    digest, path = plan_hash(rows, videos, options), os.path.join(out, name)
    claim_shard(out, name, digest)
    size = write_planned_shard(path, good, options["rgr"]) if good else 0
    if not good:
        remove_durably(path)
    done = {"owner": OWNER, "state": "done", "plan": digest, "rows_written": len(good), "bytes": size,
            "skipped": skipped, "written_at": time.time()}
    write_json_atomic(sidecar_path(out, name), done)
    _account(report, name, done)


def _write_metadata(out: str, records: list[dict], report: IngestReport, vocab: list[str],
                    vocab_size: int | None) -> None:
    """Vocabularies and the report, then ``dataset.json`` last: its presence means the run finished."""
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
    meta = {"schema_version": SCHEMA_VERSION, "complete": True, "modality": "features" if feature_dim else "video",
            "splits": dict(splits), "rows": dict(rows), "items": text_item_counts(records, report),
            "vq_grid": grid, "feature_dim": feature_dim, "answer_vocab": VOCAB_NAME}
    meta.update(image_formats.image_meta(records))        # modality "image", its size and class names
    if vocab_size:
        build_vocab(train_texts(records), os.path.join(out, WORDPIECE_NAME), vocab_size=vocab_size)
    write_json_atomic(os.path.join(out, VOCAB_NAME), vocab, indent=1)
    write_json_atomic(os.path.join(out, REPORT_NAME), report.to_dict(), indent=1)
    write_json_atomic(os.path.join(out, DATASET_NAME), meta, indent=1)


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
