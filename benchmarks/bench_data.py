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


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid → (ppid, own CPU seconds (user + system, reaped children not included), name) of every process."""
    tick, table = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    head, rest = f.read().rsplit(")", 1)
            except OSError:
                continue
            fields = rest.split()
            table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, head.split("(", 1)[1])
    return table


class CpuMeter:
    """CPU seconds used by this process and all its descendants since ``start``, including processes that
    have exited since: a thread samples /proc every ``interval`` s and keeps each pid's last value (Ray's
    short-lived workers and actors, reaped by the raylet or not, would otherwise drop out of a tree sum).
    The sampling thread's own CPU time (~0.03 s per second of wall time) is left out."""

    def __init__(self, interval: float = 0.1):
        import threading
        self.interval, self.last, self.base, self.names, self.started = interval, {}, {}, {}, False
        self.own = 0.0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _descendants(self, table: dict) -> list[int]:
        children: dict[int, list] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        out, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def sample(self) -> None:
        table = _proc_table()
        with self._lock:
            for pid in self._descendants(table):
                _, cpu, name = table[pid]
                self.base.setdefault(pid, 0.0 if self.started else cpu)   # alive at start: count from now
                self.last[pid], self.names[pid] = cpu, name

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
            self.own = time.thread_time()      # this thread's CPU: the meter's cost, not the measured work's

    def start(self) -> "CpuMeter":
        self.sample()
        self.started = True
        self._thread.start()
        return self

    def read(self) -> float:
        self.sample()
        with self._lock:
            return sum(cpu - self.base.get(pid, 0.0) for pid, cpu in self.last.items()) - self.own

    def by_name(self) -> dict[str, float]:
        """CPU seconds per process name (Ray names its workers ``ray::<task or actor>``)."""
        out: dict[str, float] = {}
        with self._lock:
            for pid, cpu in self.last.items():
                own = self.own if pid == os.getpid() else 0.0
                out[self.names[pid]] = out.get(self.names[pid], 0.0) + cpu - self.base.get(pid, 0.0) - own
        return out

    def pids(self) -> set[int]:
        """Every process seen so far (alive or exited)."""
        self.sample()
        with self._lock:
            return set(self.names)

    def stop(self) -> None:
        self._stop.set()


def in_processes(fn, blobs: list[bytes], procs: int, frames: int, size: int) -> tuple[float, float]:
    """(clips/s, clips per CPU-second) of ``fn`` over ``blobs`` split across ``procs`` processes."""
    parts = [(blobs[i::procs], frames, size) for i in range(procs)]
    with mp.get_context("fork").Pool(procs) as pool:
        pool.map(_noop, range(procs))                  # warm the pool (imports)
        meter, t0 = CpuMeter().start(), time.perf_counter()
        done = sum(pool.map(fn, parts))
        wall, cpu = time.perf_counter() - t0, meter.read()
        meter.stop()
        return done / wall, done / max(cpu, 1e-9)


def _noop(_):
    import decord  # noqa: F401  (warm-up: the import is not measured)
    return 0


# ---- the Ray pipeline --------------------------------------------------------------------------------------
def consume(shard_dir: str, vocab: str, n: int, procs: int, frames: int, size: int, batch: int,
            meter: "CpuMeter") -> dict:
    """Build the pipeline (``build_datasets``, as a trial does) and drain it into a consumer loop; returns the
    times (s, from the call) and tree CPU-seconds at the first batch, at 20 % of the clips and at the end."""
    from meltr_ray.cluster.data import CollateSamples, build_datasets
    t0, c0, by0 = time.perf_counter(), meter.read(), meter.by_name()
    pids0 = meter.pids()
    ds = build_datasets(shard_dir, splits=("train",), num_frames=frames, image_size=size, max_text_len=16,
                        vocab_path=vocab, items="captions", decode_actors=procs, decode_cpus=0.5,
                        decode_batch_rows=8, log_name=None)["train"]
    out, seen = {}, 0
    for b in ds.iter_torch_batches(batch_size=batch, collate_fn=CollateSamples(), prefetch_batches=2):
        seen += len(b["video_id"])
        if "first" not in out:
            out["first"] = (time.perf_counter() - t0, meter.read() - c0)
            out["first_by_process"] = meter.by_name()
        if "at20" not in out and seen >= 0.2 * n:
            out["at20"] = (time.perf_counter() - t0, meter.read() - c0, seen)
    out["end"] = (time.perf_counter() - t0, meter.read() - c0)
    out["by_process"] = {k: v - by0.get(k, 0.0) for k, v in meter.by_name().items()}
    out["new_processes"] = len(meter.pids() - pids0)
    assert seen == n, f"pipeline delivered {seen} of {n} clips"
    return out


def ray_pipeline(shard_dir: str, vocab: str, n: int, procs: int, frames: int, size: int, batch: int) -> dict:
    """Two passes in one Ray session: ``cold`` (the clock starts before ``ray.init``) and ``warm`` (Ray already up,
    as for every trial and epoch after the first). clips/s and clips per CPU-second end to end, in steady state
    (20 %→100 % of the clips, cold pass) and the first batch's delay."""
    import ray
    meter = CpuMeter().start()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=procs, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    init = (time.perf_counter() - t0, meter.read())
    try:
        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False
        cold = consume(shard_dir, vocab, n, procs, frames, size, batch, meter)
        warm = consume(shard_dir, vocab, n, procs, frames, size, batch, meter)
    finally:
        ray.shutdown()
        meter.stop()
    (t_end, c_end), (t20, c20, s20) = cold["end"], cold["at20"]
    return {"init_s": init[0], "init_cpu_s": init[1],
            "first_batch_s": init[0] + cold["first"][0], "first_after_init_s": cold["first"][0],
            "first_after_init_cpu_s": cold["first"][1],
            "end_to_end": n / (init[0] + t_end), "per_cpu_s": n / (init[1] + c_end),
            "steady": (n - s20) / max(t_end - t20, 1e-9), "steady_per_cpu_s": (n - s20) / max(c_end - c20, 1e-9),
            "warm_end_to_end": n / warm["end"][0], "warm_per_cpu_s": n / warm["end"][1],
            "warm_first_s": warm["first"][0], "warm_first_cpu_s": warm["first"][1],
            "first_by_process": cold["first_by_process"], "warm_by_process": warm["by_process"],
            "warm_new_processes": warm["new_processes"]}


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
    p.add_argument("--cpu-breakdown", action="store_true",
                   help="print the CPU-seconds of each process (by name) up to the first batch, and over the "
                        "whole warm pass")
    p.add_argument("--datasource", choices=["auto", "v2", "v1"], default="auto",
                   help="Ray Data's Parquet reader: auto = build_datasets' choice (v1 for local splits up to "
                        "512 MiB), v2 = footer actors + ListFiles every epoch, v1 = footers read on the driver")
    args = p.parse_args(argv)
    if args.datasource != "auto":                     # read by build_datasets (and by Ray Data's defaults)
        os.environ["RAY_DATA_USE_DATASOURCE_V2"] = "1" if args.datasource == "v2" else "0"
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work = args.workdir or tempfile.mkdtemp(prefix="bench_data_")
    from meltr_ray.data.ingest import ingest
    from meltr_ray.data.tokenize import build_vocab
    t = time.perf_counter()
    ann = os.path.join(work, "ann.jsonl")
    if not os.path.exists(ann) or sum(1 for _ in open(ann)) != args.clips:       # re-use an earlier --workdir
        ann = make_clips(work, args.clips, args.size, args.seconds, args.fps)
    ingested = ingest("jsonl", videos=os.path.join(work, "videos"), annotations=ann, out=os.path.join(work, "shards"),
                    workers=args.procs, progress=False, row_group_rows=16)
    vocab = build_vocab([t for x in open(ann) for t in json.loads(x)["text"]], os.path.join(work, "vocab.txt"), 300)
    print(f"setup: {args.clips} clips {args.size}² × {args.seconds:g} s, {ingested.bytes_written / 1e6:.1f} MB of "
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
    for key in ("end_to_end", "steady", "warm_end_to_end"):
        res[f"ray_{key}"] = ray_res[key]
    per_cpu.update(ray_end_to_end=ray_res["per_cpu_s"], ray_steady=ray_res["steady_per_cpu_s"],
                   ray_warm_end_to_end=ray_res["warm_per_cpu_s"])
    print(summary(args, res, per_cpu, ray_res, load0))


def summary(args, res: dict, per_cpu: dict, ray_res: dict, load0: float) -> str:
    """The measured numbers, the ratios to decord alone and the targets."""
    lines = [f"task: uniform {args.frames} frames → {args.out_size}², {args.clips} clips of {args.seconds:g} s, "
             f"{args.procs} processes/actors, Parquet {args.datasource}; load average {load0:.1f} → "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"]
    for key, value in res.items():
        lines.append(f"  {key:20s} {value:8.1f} clips/s   {per_cpu[key]:6.1f} clips per CPU-s")
    r = ray_res
    lines += [f"  ray.init            {r['init_s']:8.1f} s        {r['init_cpu_s']:6.1f} CPU-s",
              f"  first batch         {r['first_after_init_s']:8.1f} s after ray.init ({r['first_batch_s']:.1f} s "
              f"from its start), {r['first_after_init_cpu_s']:.1f} CPU-s after ray.init",
              f"  first batch, warm   {r['warm_first_s']:8.1f} s after build_datasets, "
              f"{r['warm_first_cpu_s']:.1f} CPU-s"]
    if args.cpu_breakdown:
        top = sorted(r["first_by_process"].items(), key=lambda kv: -kv[1])[:14]
        lines.append("  CPU-s by process from ray.init to the first batch: "
                     + ", ".join(f"{name} {cpu:.1f}" for name, cpu in top))
        top = sorted(r["warm_by_process"].items(), key=lambda kv: -kv[1])[:14]
        lines.append(f"  processes started during the warm pass: {r['warm_new_processes']}")
        lines.append("  CPU-s by process over the warm pass: "
                     + ", ".join(f"{name} {cpu:.1f}" for name, cpu in top if cpu >= 0.05))
    for clock, table in (("wall", res), ("per CPU-second", per_cpu)):
        d = table["decord"]
        lines.append(f"{clock}: ray steady / decord = {table['ray_steady'] / d:.2f} (target ≥ 0.95); "
                     f"ray end to end / decord = {table['ray_end_to_end'] / d:.2f} (target ≥ 0.8 at 500 clips); "
                     f"warm ray end to end / decord = {table['ray_warm_end_to_end'] / d:.2f}; "
                     f"decord / pyav decode-only = {d / table['pyav_limit']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
