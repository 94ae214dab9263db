"""Cost of MELTR's meta step: time per training step and peak memory, MTL vs MELTR K=0 vs MELTR K=3.

    python benchmarks/bench_meta_step.py --size cpu --threads 1   # 12 x 128 transformer, a few minutes on a CPU
    python benchmarks/bench_meta_step.py --size gpu               # BERT-base-sized (12 x 768, 12 heads, seq 128, batch 32)
    ... --levers                                                  # also the lever variants below

Every variant trains its own copy of the *same* initial model on the *same* batches, through the real
:class:`meltr_ray.core.bilevel.BilevelTrainer` (``build_trainer``):

* ``mtl``          plain sum of the task losses, no meta step;
* ``meltr_k0``     MELTR, meta step every 3 steps, K = 0 (the official formula), default scope;
* ``meltr_k3``     MELTR, meta step every 3 steps, K = 3 (the paper), default scope  <- the issue's target.

Levers (``--levers``):

* ``meltr_k3_all``       hypergradient over *all* backbone parameters (the official code's choice);
* ``meltr_k3_heads``     hypergradient over the heads and final norm only (a smaller scope than the default);
* ``meltr_k3_shared_b``  ``meta.share_forward``: B = the current batch, sharing the inner step's forward; A from
  the replay buffer (one extra forward instead of two);
* ``meltr_k3_shared_ab`` ``meta.share_forward`` + ``meta.source='current'``: A = B = the current batch (no extra
  forward);
* ``meltr_k3_heads_shared_ab`` both levers: heads-only scope and A = B = the current batch.

The default scope is the backbone's ``default_meta_scope``: its top transformer block, the final norm and the task
heads. Out-of-scope parameters stop requiring grad during the meta step (the core does this), so no graph is
recorded below the top block.

**Time** is measured interleaved in one process: in each round every variant runs one full meta cycle (3 steps,
i.e. 3 inner steps + 1 meta step), the order rotating from round to round, so machine noise hits all variants
alike. Reported: the median per-step time over rounds and the median over rounds of the per-round ratio to MTL
(paired, which cancels slow drifts of the machine). On CPU the process CPU time (``time.process_time``) is reported
next to wall time: with ``--threads 1`` it is the work the step does, and other processes on a shared machine
disturb it far less than wall time.

**Peak memory** is measured per variant in a fresh subprocess running two meta cycles (6 steps, 2 meta steps):
on CUDA ``torch.cuda.max_memory_allocated`` (everything the caching allocator handed out: weights, gradients,
optimizer states, activations, autograd graphs); on CPU the process's peak resident set (``VmHWM`` from
/proc/self/status, Linux) minus its resident set just before the first step (after the model, batches and
trainer exist), i.e. the memory the training steps themselves add (gradients, Adam states, activations, graphs).
Both are printed for CPU; the ratio uses the step delta.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meltr_ray.config import JobConfig
from meltr_ray.core.loop import build_trainer
from meltr_ray.core.meltr import build_combiner

# MELTR sizes (meltr.*): gpu uses the Violet-retrieval shape (d_model 512, FFN 512, scale 256: 1.7 M parameters,
# ~1.5 % of BERT-base); cpu uses the All-in-one shape (128/128/128: ~0.13 M, ~5 % of the CPU backbone) so that
# MELTR is not larger than the backbone it trains, as it never is in practice.
SIZES = {
    # BERT-base: 12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522, seq 128, batch 32.
    "gpu": dict(vocab=30522, hidden=768, layers=12, heads=12, seq_len=128, batch_size=32, rounds=10,
                meltr={"meltr.d_model": 512, "meltr.d_ffn": 512, "meltr.d_scale": 256}),
    # BERT-base's depth (so the default scope is the same 1/12 of the blocks) at a CPU-friendly width: 2.5 M
    # backbone parameters, a few minutes on a busy 2-core CPU.
    "cpu": dict(vocab=1000, hidden=128, layers=12, heads=4, seq_len=32, batch_size=8, rounds=6,
                meltr={"meltr.d_model": 128, "meltr.d_ffn": 128, "meltr.d_scale": 128, "meltr.init": "normal"}),
}
SHARED = {"meta.share_forward": True}
HEADS = {"meta.scope": ["heads.*", "final_norm.*"]}
# name -> config overrides
VARIANTS = {
    "mtl": {"meltr.combiner": "mtl"},
    "meltr_k0": {"meta.neumann_steps": 0},
    "meltr_k3": {"meta.neumann_steps": 3},
    # levers (--levers): the scope, both ways, and the shared forward (meta.share_forward, meta.source)
    "meltr_k3_all": {"meta.neumann_steps": 3, "meta.scope": "all"},
    "meltr_k3_heads": {"meta.neumann_steps": 3, **HEADS},
    "meltr_k3_shared_b": {"meta.neumann_steps": 3, **SHARED},
    "meltr_k3_shared_ab": {"meta.neumann_steps": 3, **SHARED, "meta.source": "current"},
    "meltr_k3_heads_shared_b": {"meta.neumann_steps": 3, **SHARED, **HEADS},
    "meltr_k3_heads_shared_ab": {"meta.neumann_steps": 3, **SHARED, **HEADS, "meta.source": "current"},
}
DEFAULT_VARIANTS = ["mtl", "meltr_k0", "meltr_k3"]
META_EVERY = 3


# ---- the benchmark backbone (follows the backbone contract) ------------------------------------------------
class Block(nn.Module):
    """Pre-LN transformer block; attention through ``scaled_dot_product_attention`` (fused kernels when allowed)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, hidden)
        x = x + self.proj(context)
        return x + self.mlp(self.norm2(x))


class MultiTaskTransformer(nn.Module):
    """A BERT-like encoder with three task heads: ``primary`` (sequence classification from the first token),
    ``tagging`` (per-token classification) and ``regression`` (mean-pooled MSE).

    ``batch = {"tokens": (B, S) int, "label": (B,) int, "tags": (B, S) int, "target": (B,) float}``.
    """

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, seq_len: int, num_classes: int = 8,
                 num_tags: int = 16):
        super().__init__()
        self.task_names = ["primary", "tagging", "regression"]
        self.primary_task = "primary"
        self.embed = nn.Embedding(vocab, hidden)
        self.position = nn.Parameter(torch.randn(seq_len, hidden) * 0.02)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.heads = nn.ModuleDict({
            "primary": nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)),
            "tagging": nn.Linear(hidden, num_tags),
            "regression": nn.Linear(hidden, 1),
        })
        # the meta step's hypergradient is taken w.r.t. the top block, the final norm and the heads
        self.default_meta_scope = [f"blocks.{layers - 1}.*", "final_norm.*", "heads.*"]

    def forward(self, batch: dict, tasks=None) -> dict:
        h = self.embed(batch["tokens"]) + self.position
        for block in self.blocks:
            h = block(h)
        h = self.final_norm(h)
        losses = {}
        for task in (self.task_names if tasks is None else tasks):
            if task == "primary":
                losses[task] = F.cross_entropy(self.heads["primary"](h[:, 0]), batch["label"])
            elif task == "tagging":
                losses[task] = F.cross_entropy(self.heads["tagging"](h).flatten(0, 1), batch["tags"].flatten())
            else:
                losses[task] = F.mse_loss(self.heads["regression"](h.mean(1)).squeeze(-1), batch["target"])
        return losses


def make_batches(size: dict, count: int, device, num_classes: int = 8, num_tags: int = 16) -> list:
    g = torch.Generator().manual_seed(0)
    b, s = size["batch_size"], size["seq_len"]
    batches = []
    for _ in range(count):
        batch = {"tokens": torch.randint(size["vocab"], (b, s), generator=g),
                 "label": torch.randint(num_classes, (b,), generator=g),
                 "tags": torch.randint(num_tags, (b, s), generator=g),
                 "target": torch.randn(b, generator=g)}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


# ---- one variant -----------------------------------------------------------------------------------------
def make_config(variant: str, size: dict, precision: str) -> JobConfig:
    base = {"optim.schedule": "constant", "meta.meta_every": META_EVERY, "train.precision": precision,
            "meta.scope": "default", **size["meltr"]}
    return JobConfig().with_overrides({**base, **VARIANTS[variant]}).validate()


def make_trainer(variant: str, base_model: nn.Module, size: dict, precision: str, device):
    cfg = make_config(variant, size, precision)
    model = copy.deepcopy(base_model)
    torch.manual_seed(1)
    combiner = build_combiner(cfg.meltr, len(model.task_names)).to(device)
    return build_trainer(model, combiner, cfg, device=device)


class Runner:
    """A trainer cycling through the shared batches."""

    def __init__(self, trainer, batches):
        self.trainer, self.batches, self.index = trainer, batches, 0

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.trainer.step(self.batches[self.index % len(self.batches)])
            self.index += 1


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- timing (interleaved, one process) --------------------------------------------------------------------
def time_variants(variants: list, size: dict, precision: str, device, rounds: int) -> dict:
    torch.manual_seed(0)
    base_model = build_model(size).to(device)
    batches = make_batches(size, 12, device)
    runners = {v: Runner(make_trainer(v, base_model, size, precision, device), batches) for v in variants}
    for runner in runners.values():                     # warm-up: one full meta cycle each
        runner.steps(META_EVERY)
    synchronize(device)
    per_step = {"wall": {v: [] for v in variants}, "cpu": {v: [] for v in variants}}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            runners[v].steps(META_EVERY)
            synchronize(device)
            per_step["wall"][v].append((time.perf_counter() - wall) / META_EVERY)
            per_step["cpu"][v].append((time.process_time() - cpu) / META_EVERY)
        print(f"  round {r + 1}/{rounds}: " + "  ".join(
            f"{v} {per_step['wall'][v][-1] * 1e3:.1f} ms (cpu {per_step['cpu'][v][-1] * 1e3:.1f})" for v in variants),
            flush=True)
    for v, runner in runners.items():
        c = runner.trainer.counters
        assert c.skipped_inner == 0 and c.skipped_meta == 0, f"{v}: skipped steps {c}"
        assert c.meta_steps == (c.step // META_EVERY if v != "mtl" else 0), f"{v}: {c}"
    return per_step


def build_model(size: dict) -> nn.Module:
    return MultiTaskTransformer(size["vocab"], size["hidden"], size["layers"], size["heads"], size["seq_len"])


# ---- the physical floor (--floor) ---------------------------------------------------------------------
def floor(size: dict, precision: str, device, rounds: int, variant: str = "meltr_k3") -> str:
    """Markdown report of ``meta_step_floor.time_floor`` for ``variant`` against MTL."""
    from meta_step_floor import floor_report, time_floor
    torch.manual_seed(0)
    base_model = build_model(size).to(device)
    batches = make_batches(size, 12, device)
    mtl, meltr = (Runner(make_trainer(v, base_model, size, precision, device), batches) for v in ("mtl", variant))
    for runner in (mtl, meltr):
        runner.steps(2 * META_EVERY)                    # warm-up; fills MELTR's replay buffer
    parts = time_floor(mtl, meltr, META_EVERY, rounds, device)
    clocks = ["cpu", "wall"] if device.type == "cpu" else ["wall"]
    lines = [f"floor of {variant}: size={size['layers']}x{size['hidden']}, device={device}, precision={precision}, "
             f"threads={torch.get_num_threads()}, torch {torch.__version__}", ""]
    for clock in clocks:
        lines += floor_report(parts, clock, META_EVERY) + [""]
    return "\n".join(lines)


# ---- peak memory (one fresh subprocess per variant) ------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_here(variant: str, size: dict, precision: str, device) -> dict:
    """Run in the subprocess: no warm-up step, so the Adam states the first step allocates count; two meta cycles."""
    torch.manual_seed(0)
    runner = Runner(make_trainer(variant, build_model(size).to(device), size, precision, device),
                    make_batches(size, 12, device))
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        runner.steps(2 * META_EVERY)
        synchronize(device)
        return {"peak": torch.cuda.max_memory_allocated(device), "before": before}
    before = _status_kib("VmRSS") * 1024
    runner.steps(2 * META_EVERY)
    return {"peak": _status_kib("VmHWM") * 1024, "before": before}


def measure_memory(variants: list, args) -> dict:
    out = {}
    for v in variants:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--size", args.size, "--precision", args.precision,
               "--device", args.device, "--threads", str(args.threads), "--memory-of", v]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory run of {v} failed:\n{proc.stderr[-3000:]}")
        out[v] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {v}: peak {out[v]['peak'] / 2**20:.0f} MiB (before the first step {out[v]['before'] / 2**20:.0f} MiB)",
              flush=True)
    return out


# ---- report ----------------------------------------------------------------------------------------------
def _median_ms_and_ratio(times: dict, v: str) -> str:
    ms, ratio = _median_and_ratio(times, v)
    return f"{ms:.1f} ms | {ratio:.2f}"


def _median_and_ratio(times: dict, v: str) -> tuple[float, float]:
    """(median ms per step, median of the paired per-round ratios to MTL)."""
    ratios = [a / b for a, b in zip(times[v], times["mtl"])]
    return statistics.median(times[v]) * 1e3, statistics.median(ratios)


def numbers(per_step: dict, memory: dict | None, device, args) -> dict:
    """The report's numbers as a dict (``--json``): per variant ms / step and × MTL per clock, memory."""
    mem_key = (lambda m: m["peak"]) if device.type == "cuda" else (lambda m: m["peak"] - m["before"])
    out = {"size": args.size, "precision": args.precision, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "variants": {}}
    for v in per_step["wall"]:
        row = {}
        for clock in per_step:
            row[f"{clock}_ms"], row[f"{clock}_x_mtl"] = _median_and_ratio(per_step[clock], v)
        if memory:
            row["memory_mib"] = mem_key(memory[v]) / 2 ** 20
            row["memory_x_mtl"] = mem_key(memory[v]) / mem_key(memory["mtl"])
        out["variants"][v] = row
    return out


def report(per_step: dict, memory: dict, device, args, size: dict) -> str:
    variants = list(per_step["wall"])
    mem_key = (lambda m: m["peak"]) if device.type == "cuda" else (lambda m: m["peak"] - m["before"])
    rounds = len(per_step["wall"]["mtl"])
    cpu_time = device.type == "cpu"      # process CPU time: robust to other processes on a shared machine
    lines = [f"size={args.size} ({size['layers']} layers x {size['hidden']} hidden, {size['heads']} heads, "
             f"seq {size['seq_len']}, batch {size['batch_size']}, vocab {size['vocab']}), device={device}, "
             f"precision={args.precision}, threads={torch.get_num_threads()}, meta_every={META_EVERY}, "
             f"rounds={rounds}, torch {torch.__version__}",
             "",
             "| variant | wall time / step | x MTL | " + ("CPU time / step | x MTL | " if cpu_time else "")
             + "peak memory | x MTL |",
             "|---|---|---|" + ("---|---|" if cpu_time else "") + "---|---|"]
    mtl_mem = mem_key(memory["mtl"]) if memory else None
    for v in variants:
        mem = f"{mem_key(memory[v]) / 2**20:.0f} MiB" if memory else "not measured"
        mem_ratio = f"{mem_key(memory[v]) / mtl_mem:.2f}" if memory else "-"
        cpu_cols = f" {_median_ms_and_ratio(per_step['cpu'], v)} |" if cpu_time else ""
        lines.append(f"| {v} | {_median_ms_and_ratio(per_step['wall'], v)} |{cpu_cols} {mem} | {mem_ratio} |")
    lines.append("")
    lines.append("times: median over rounds; x MTL: median over rounds of the paired per-round ratio")
    if memory and device.type != "cuda":
        lines.append("")
        lines.append("CPU peak memory = peak RSS during the steps minus RSS before the first step; total peak RSS: "
                     + ", ".join(f"{v} {memory[v]['peak'] / 2**20:.0f} MiB" for v in variants))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--device", default=None, help="default: cuda if --size gpu else cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = PyTorch's default)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {list(VARIANTS)}; mtl is always run")
    parser.add_argument("--levers", action="store_true", help="run every variant, the levers included")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--floor", action="store_true",
                        help="time the meta step's physical floor (two scoped forwards + the products) next to "
                             "the full meta step, for meltr_k3 (see meta_step_floor.py)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if args.size == "gpu" else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, size = torch.device(args.device), SIZES[args.size]
    if args.memory_of:
        print(json.dumps(measure_memory_here(args.memory_of, size, args.precision, device)))
        return
    if args.floor:
        print(floor(size, args.precision, device, args.rounds or 2 * size["rounds"]))
        return
    chosen = list(VARIANTS) if args.levers else args.variants.split(",")
    variants = ["mtl"] + [v for v in chosen if v and v != "mtl"]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    print(f"timing {variants} interleaved ...", flush=True)
    per_step = time_variants(variants, size, args.precision, device, args.rounds or size["rounds"])
    memory = None
    if not args.no_memory:
        print("peak memory, one subprocess per variant ...", flush=True)
        memory = measure_memory(variants, args)
    print()
    print(report(per_step, memory, device, args, size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers(per_step, memory, device, args), f, indent=1)


if __name__ == "__main__":
    main()
