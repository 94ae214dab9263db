"""Video data path throughput, side by side on the same clips and the same cores, in one run.

    python benchmarks/bench_data.py                 # small default (48 clips)
    python benchmarks/bench_data.py --clips 500     # the issue's target run

Measures clips/s of
1. **decord alone**: ``--procs`` plain processes, each decoding its share of the clips from the shard bytes
   (uniform ``--frames`` frames, resize on decode to ``--size``) — the reference;
2. **the Ray Data pipeline**: ``meltr_ray.cluster.data.build_datasets`` (read_parquet → decode UDF on
   ``--procs`` actors → tokenised samples) delivering torch batches to a consumer loop on the driver; reported
   end to end (incl. start-up) and in steady state (from 20 % to 100 % of the clips);
3. **PyAV decode-only** (every frame decoded, none converted) in ``--procs`` processes: the decoder limit.
Prints the ratios (targets: pipeline ≥ 0.95× decord in steady state, ≥ 0.8× including start-up at 500
clips) and the machine's load average, since other tenants' load changes every number.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meltr_ray.data.synthetic import COLOURS, DIRECTIONS, SHAPES, describe, encode_mp4, make_clip  # noqa: E402


# ---- data ------------------------------------------------------------------------------------------------
def make_clips(root: str, n: int, size: int, seconds: float, fps: int, seed: int = 0) -> str:
    """Synthetic clips with per-frame grain (a realistic bitrate) and one caption each; returns the JSONL."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    lines = []
    for i in range(n):
        shape, colour = SHAPES[i % 3], list(COLOURS)[i % 5]
        direction = DIRECTIONS[i % 4]
        frames, _ = make_clip(i, int(seconds * fps), shape, colour, direction, size)
        grain = [np.clip(f.astype(np.int16) + rng.integers(-12, 13, f.shape), 0, 255).astype(np.uint8)
                 for f in frames]
        encode_mp4(grain, os.path.join(root, "videos", f"c{i:05d}.mp4"), fps=fps, crf=23)
        lines.append({"id": f"c{i:05d}", "video": f"c{i:05d}.mp4", "text": describe(shape, colour, direction, 1)})
    path = os.path.join(root, "ann.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
    return path


def shard_bytes(shard_dir: str) -> list[bytes]:
    import pyarrow.parquet as pq
    meta = json.load(open(os.path.join(shard_dir, "dataset.json")))
    return [b for f in meta["splits"]["train"]
            for b in pq.read_table(os.path.join(shard_dir, f), columns=["video_bytes"]).column(0).to_pylist()]


# ---- decoders in plain processes -------------------------------------------------------------------------
def _decord_part(args) -> int:
    blobs, frames, size = args
    from meltr_ray.data.video import DecordDecoder, sample_clip
    dec = DecordDecoder()
    for b in blobs:
        sample_clip(dec, b, num_frames=frames, image_size=size)
    return len(blobs)


def _pyav_part(args) -> int:
    blobs, _, _ = args
    import av
    for b in blobs:
        with av.open(io.BytesIO(b)) as c:
            stream = c.streams.video[0]
            stream.thread_count = 1
            for _ in c.decode(stream):
                pass
    return len(blobs)


def tree_cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) of process ``pid`` and all its descendants, reaped ones included (Linux)."""
    pid = pid or os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))   # ppid, u+s+cu+cs
    children: dict[int, list] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0))[1]
        todo += children.get(p, [])
    return total / tick


def in_processes(fn, blobs: list[bytes], procs: int, frames: int, size: int) -> tuple[float, float]:
    """(clips/s, clips per CPU-second) of ``fn`` over ``blobs`` split across ``procs`` processes."""
    parts = [(blobs[i::procs], frames, size) for i in range(procs)]
    with mp.get_context("fork").Pool(procs) as pool:
        pool.map(_noop, range(procs))                  # warm the pool (imports)
        t0, c0 = time.perf_counter(), tree_cpu_seconds()
        done = sum(pool.map(fn, parts))
        return done / (time.perf_counter() - t0), done / max(tree_cpu_seconds() - c0, 1e-9)


def _noop(_):
    import decord  # noqa: F401  (warm-up: the import is not measured)
    return 0


# ---- the Ray pipeline --------------------------------------------------------------------------------------
def ray_pipeline(shard_dir: str, vocab: str, n: int, procs: int, frames: int, size: int, batch: int) -> dict:
    """End-to-end and steady clips/s of the pipeline into a consumer loop (includes ``ray.init``)."""
    import ray
    t0, c0 = time.perf_counter(), tree_cpu_seconds()
    ray.init(address="local", num_cpus=procs, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        import ray.data
        from meltr_ray.cluster.data import CollateSamples, build_datasets
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = build_datasets(shard_dir, splits=("train",), num_frames=frames, image_size=size, max_text_len=16,
                            vocab_path=vocab, items="captions", decode_actors=procs, decode_cpus=0.5,
                            decode_batch_rows=8, log_name=None)["train"]
        stamps, seen, cpu20 = [], 0, None
        for b in ds.iter_torch_batches(batch_size=batch, collate_fn=CollateSamples(), prefetch_batches=2):
            seen += len(b["video_id"])
            stamps.append((time.perf_counter(), seen))
            if cpu20 is None and seen >= 0.2 * n:
                cpu20 = tree_cpu_seconds()
        end, cpu_end = time.perf_counter(), tree_cpu_seconds()
    finally:
        ray.shutdown()
    assert seen == n, f"pipeline delivered {seen} of {n} clips"
    t20, s20 = next((t, s) for t, s in stamps if s >= 0.2 * n)
    return {"end_to_end": n / (end - t0), "steady": (n - s20) / max(end - t20, 1e-9),
            "first_batch_s": stamps[0][0] - t0, "per_cpu_s": n / (cpu_end - c0),
            "steady_per_cpu_s": (n - s20) / max(cpu_end - cpu20, 1e-9)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--size", type=int, default=256, help="source clip size (square)")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    p.add_argument("--out-size", type=int, default=224, help="decoded frame size")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="processes / decode actors")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2, help="rounds of the plain-process measurements")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work = args.workdir or tempfile.mkdtemp(prefix="bench_data_")
    from meltr_ray.data.ingest import ingest
    from meltr_ray.data.tokenize import build_vocab
    t = time.perf_counter()
    ann = os.path.join(work, "ann.jsonl")
    if not os.path.exists(ann) or sum(1 for _ in open(ann)) != args.clips:       # re-use an earlier --workdir
        ann = make_clips(work, args.clips, args.size, args.seconds, args.fps)
    report = ingest("jsonl", videos=os.path.join(work, "videos"), annotations=ann, out=os.path.join(work, "shards"),
                    workers=args.procs, progress=False, row_group_rows=16)
    vocab = build_vocab([t for x in open(ann) for t in json.loads(x)["text"]], os.path.join(work, "vocab.txt"), 300)
    print(f"setup: {args.clips} clips {args.size}² × {args.seconds:g} s, {report.bytes_written / 1e6:.1f} MB of "
          f"shards, {time.perf_counter() - t:.1f} s (not measured)")
    blobs = shard_bytes(os.path.join(work, "shards"))
    load0 = os.getloadavg()[0]
    res, per_cpu = {}, {}
    for _ in range(args.repeat):                        # interleaved rounds; keep each method's best
        for key, fn in (("decord", _decord_part), ("pyav_limit", _pyav_part)):
            wall, cpu = in_processes(fn, blobs, args.procs, args.frames, args.out_size)
            res[key], per_cpu[key] = max(res.get(key, 0), wall), max(per_cpu.get(key, 0), cpu)
    ray_res = ray_pipeline(os.path.join(work, "shards"), vocab, args.clips, args.procs, args.frames,
                           args.out_size, args.batch)
    res["ray_steady"], res["ray_end_to_end"] = ray_res["steady"], ray_res["end_to_end"]
    per_cpu["ray_end_to_end"], per_cpu["ray_steady"] = ray_res["per_cpu_s"], ray_res["steady_per_cpu_s"]
    print(f"task: uniform {args.frames} frames → {args.out_size}², {args.procs} processes/actors; "
          f"load average {load0:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for key, value in res.items():
        extra = f"   {per_cpu[key]:6.1f} clips per CPU-s" if key in per_cpu else ""
        print(f"  {key:16s} {value:8.1f} clips/s{extra}")
    print(f"  ray first batch  {ray_res['first_batch_s']:8.1f} s after the start of ray.init")
    print(f"ratios: ray steady / decord = {res['ray_steady'] / res['decord']:.2f} (target ≥ 0.95); "
          f"ray end-to-end / decord = {res['ray_end_to_end'] / res['decord']:.2f} (target ≥ 0.8 at 500 clips); "
          f"decord / pyav decode-only = {res['decord'] / res['pyav_limit']:.2f}; "
          f"ray steady / pyav decode-only = {res['ray_steady'] / res['pyav_limit']:.2f}")
    print(f"per CPU-second: ray steady / decord = {per_cpu['ray_steady'] / per_cpu['decord']:.2f}, "
          f"ray end-to-end / decord = {per_cpu['ray_end_to_end'] / per_cpu['decord']:.2f}, "
          f"decord / pyav decode-only = {per_cpu['decord'] / per_cpu['pyav_limit']:.2f}")


if __name__ == "__main__":
    main()
