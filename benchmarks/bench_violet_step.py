"""Throughput of MELTR fine-tuning steps on a real Violet: clips per second through the bilevel trainer.

    python benchmarks/bench_violet_step.py                                   # violet_base, CUDA, bf16, batch sized to the card
    python benchmarks/bench_violet_step.py --backbone violet_tiny --device cpu --batch 2 --cycles 1   # CPU smoke run

The run is built by :func:`meltr_ray.build_run` from a config (backbone, task, precision, meta step every
``--meta-every`` steps, the paper's K = 3 and the backbone's default meta scope), and fed the spec's
``example_batch`` (uint8 frames at the spec's size — Violet-base: 5 frames of 224² — token ids, visual-token
targets), so it measures the model and the trainer, not the data pipeline. Every timed cycle is
``meta_every`` steps: the inner steps and one meta step, in the ratio training runs them.

``--batch 0`` (the default) sizes the batch to the card: it tries powers of two from ``--max-batch`` down and
keeps the largest whose full meta cycle fits in memory. Reported: the batch, the median ms per step over the
timed cycles, clips/s (batch × steps / time), the peak memory and, with ``--json``, the same as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from meltr_ray import JobConfig, build_run


def make_run(args, batch_size: int):
    """A fresh run (weights, MELTR, optimizers) for ``batch_size``."""
    cfg = JobConfig().with_overrides({
        "backbone.name": args.backbone, "backbone.task": args.task, "train.precision": args.precision,
        "train.batch_size": batch_size, "optim.schedule": "constant", "meta.meta_every": args.meta_every,
        "meta.neumann_steps": args.neumann_steps, "train.log_every": 10 ** 9})
    return build_run(cfg, device=args.device)


def example_batches(run, batch_size: int, count: int, device) -> list:
    """``count`` distinct batches from the spec, on ``device`` (the replay buffer sees several batches)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        batch = run.spec.example_batch(run.cfg.backbone.task, batch_size, g)
        out.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    return out


def cycle(run, batches: list, start: int, steps: int) -> None:
    for i in range(steps):
        run.trainer.step(batches[(start + i) % len(batches)])


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fits(args, batch_size: int, device) -> bool:
    """Whether one full meta cycle at ``batch_size`` runs without running out of memory."""
    run = None
    try:
        run = make_run(args, batch_size)
        cycle(run, example_batches(run, batch_size, 2, device), 0, args.meta_every)
        _sync(device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del run
        if device.type == "cuda":
            torch.cuda.empty_cache()


def choose_batch(args, device) -> int:
    """The largest power of two ≤ ``--max-batch`` whose meta cycle fits (halving on out-of-memory)."""
    size = 1 << (max(args.max_batch, 1).bit_length() - 1)
    while size > 1 and not fits(args, size, device):
        print(f"  batch {size}: out of memory", flush=True)
        size //= 2
    return size


def measure(args, batch_size: int, device) -> dict:
    run = make_run(args, batch_size)
    batches = example_batches(run, batch_size, 4, device)
    cycle(run, batches, 0, 2 * args.meta_every)                 # warm-up: kernels, optimizer states, buffer
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step = []
    for c in range(args.cycles):
        _sync(device)
        start = time.perf_counter()
        cycle(run, batches, c * args.meta_every, args.meta_every)
        _sync(device)
        per_step.append((time.perf_counter() - start) / args.meta_every)
    c = run.trainer.counters
    assert c.skipped_inner == 0 and c.skipped_meta == 0 and c.meta_steps > 0, c
    step = statistics.median(per_step)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    precision = args.precision if device.type == "cuda" else "fp32"      # the trainer autocasts on CUDA only
    return {"backbone": args.backbone, "task": args.task, "precision": precision, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch": batch_size, "frames": run.cfg.data.num_frames, "image_size": run.cfg.data.image_size,
            "meta_every": args.meta_every, "neumann_steps": args.neumann_steps, "ms_per_step": step * 1e3,
            "clips_per_s": batch_size / step, "peak_memory_gib": peak, "cycles": args.cycles}


def markdown(r: dict) -> str:
    peak = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "-"
    return "\n".join([
        "| backbone | task | device | precision | frames × size | batch | ms / step | clips/s | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['backbone']} | {r['task']} | {r['device_name']} | {r['precision']} | {r['frames']} × "
        f"{r['image_size']}² | {r['batch']} | {r['ms_per_step']:.0f} | {r['clips_per_s']:.1f} | {peak} |",
        "", f"MELTR K={r['neumann_steps']}, a meta step every {r['meta_every']} steps; median over "
            f"{r['cycles']} cycles"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="violet_base")
    p.add_argument("--task", default="retrieval")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--batch", type=int, default=0, help="0: the largest that fits (CUDA); 2 on CPU")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--cycles", type=int, default=5, help="timed meta cycles")
    p.add_argument("--meta-every", type=int, default=3)
    p.add_argument("--neumann-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = PyTorch's default)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device = str(device)
    batch = args.batch or (choose_batch(args, device) if device.type == "cuda" else 2)
    result = measure(args, batch, device)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
