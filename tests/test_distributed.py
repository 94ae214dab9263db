"""Distributed correctness of the bilevel step: torch.distributed with gloo, 2 CPU processes.

Setup as in production: only the backbone is wrapped in DDP (passed to ``fit`` as ``train_model``), MELTR (φ) is
broadcast from rank 0 at start and its hypergradient is all-reduced (mean) as one flat vector.

* ``fit`` keeps φ and the backbone **bit-identical** on both ranks, even when every rank starts from different
  weights, sees different data and uses different dropout masks in MELTR (local and global mode).
* Global mode (``meta.global_hypergrad``) at world size 2 gives the hypergradient of world size 1 on the
  concatenated batch (float64, MELTR in eval mode), for K = 0 and 3, both conventions, with and without the direct
  term, with double backward and with finite differences. Local mode gives the mean of the per-rank hypergradients.
* A non-finite loss on one rank makes both ranks skip the step together (no deadlock, equal counters).

One module fixture starts two fresh processes running this very file as a script (``python test_distributed.py
<rank> <world> <init_file> <out_dir>``); each joins the group itself through a file store (no port to race for),
runs every scenario in turn, writes each one's results with ``torch.save`` and destroys the group. One pair of
processes for all scenarios because importing torch and DDP dominates the run time on a small machine. The pytest
process compares the files and computes the single-process references. The library never creates a process group.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meltr_ray.core.bilevel import BilevelTrainer
from meltr_ray.config import JobConfig
from meltr_ray.core.meltr import build_combiner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_models import ToyMultiTask, toy_batches  # noqa: E402

WORLD = 2
TIMEOUT_S = 180          # a deadlock fails the test instead of hanging it
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

# (products, K, convention, include_direct): every combination, each in global and in local mode.
HYPERGRAD_CASES = [dict(products=m, neumann_steps=k, convention=c, include_direct=d)
                   for m in ("exact", "finite_difference") for k in (0, 3)
                   for c in ("series", "inverse") for d in (False, True)]


# ---- shared by the workers and the pytest process ---------------------------------------------------------
def _config(**overrides) -> JobConfig:
    """A small, fast job: tiny MELTR, constant learning rates, meta step every 3 inner steps."""
    base = {"meltr.d_model": 16, "meltr.d_ffn": 16, "meltr.d_scale": 8, "meltr.n_heads": 2,
            "optim.backbone_lr": 0.05, "optim.meltr_lr": 0.01, "optim.schedule": "constant",
            "meta.meta_every": 3, "meta.neumann_steps": 3, "meta.reg_weight": 0.5, "train.log_every": 1}
    return JobConfig().with_overrides({**base, **overrides}).validate()


def _model() -> ToyMultiTask:
    """depth=2 so the default scope (heads + top trunk layer) leaves a layer out: out-of-scope code runs."""
    return ToyMultiTask(in_dim=8, hidden=16, depth=2)


class _GradRecorder(torch.optim.Optimizer):
    """A MELTR "optimizer" that records the gradient ``meta_step`` hands it and leaves φ unchanged."""

    def __init__(self, params):
        super().__init__(list(params), {})
        self.grads = None

    def step(self, closure=None):
        self.grads = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]


def _double(batch: dict) -> dict:
    return {k: v.double() for k, v in batch.items()}


def _meta_batches() -> tuple[dict, dict]:
    """The *global* outer and regulariser batches (8 rows each); rank r holds rows 4r..4r+3."""
    outer, reg = toy_batches(2, batch_size=8, seed=5)
    return _double(outer), _double(reg)


def _shard(batch: dict, rank: int, world: int) -> dict:
    size = next(iter(batch.values())).shape[0] // world
    return {k: v[rank * size:(rank + 1) * size] for k, v in batch.items()}


def _meta_gradient(case: dict, global_mode: bool, outer_batch: dict, reg_batch: dict) -> list:
    """The φ-gradient one ``BilevelTrainer.meta_step`` produces (after its all-reduce), in float64.

    Same initial weights everywhere (seed 0); MELTR in eval mode (dropout off) so the result is deterministic;
    no clipping, so the recorded gradient is exactly the hypergradient.
    """
    overrides = {f"meta.{k}": v for k, v in case.items()}
    cfg = _config(**overrides, **{"meta.global_hypergrad": global_mode, "meltr.eval_mode": True,
                                  "meta.clip_norm": None, "meta.neumann_lr": 0.2})
    torch.manual_seed(0)
    model = _model().double()
    combiner = build_combiner(cfg.meltr, len(model.task_names)).double()
    recorder = _GradRecorder(combiner.parameters())
    trainer = BilevelTrainer(model, combiner, cfg, torch.optim.SGD(model.parameters(), lr=0.0), recorder)
    metrics = trainer.meta_step(outer_batch, reg_batch)
    assert "skipped_meta" not in metrics, metrics
    return recorder.grads


# ---- scenarios (run inside each worker process) -----------------------------------------------------------
def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _scenario_fit(rank: int, world: int) -> dict:
    """fit() with different initial weights, data and dropout streams per rank, in local and global mode."""
    from torch.nn.parallel import DistributedDataParallel

    from meltr_ray.core.loop import fit
    results = {}
    for mode in ("local", "global"):
        # train.seed differs per rank, so MELTR's dropout masks (dropout 0.1, train mode) differ too.
        cfg = _config(**{"meta.global_hypergrad": mode == "global", "train.max_steps": 9,
                         "train.seed": 100 + rank})
        torch.manual_seed(1000 + rank)                      # every rank starts from its own weights
        model = _model()
        combiner = build_combiner(cfg.meltr, len(model.task_names))
        meltr_before = _state(combiner)
        batches = toy_batches(9, batch_size=8, seed=10 + rank)     # different data per rank
        metrics = fit(model, combiner, cfg, lambda epoch: batches, train_model=DistributedDataParallel(model))
        results[mode] = {"meltr_before": meltr_before, "meltr": _state(combiner), "backbone": _state(model),
                         "metrics": metrics}
    return results


def _scenario_hypergrad(rank: int, world: int) -> dict:
    """The φ-gradient of one meta step on this rank's shard, for every case, in global and local mode."""
    outer, reg = (_shard(b, rank, world) for b in _meta_batches())
    return {mode: [_meta_gradient(case, mode == "global", outer, reg) for case in HYPERGRAD_CASES]
            for mode in ("global", "local")}


def _scenario_nonfinite(rank: int, world: int) -> dict:
    """Rank 1 meets a NaN target at step 2; rank 0's data is clean."""
    from torch.nn.parallel import DistributedDataParallel

    from meltr_ray.core.loop import fit
    cfg = _config(**{"train.max_steps": 6})
    torch.manual_seed(0)
    model = _model()
    combiner = build_combiner(cfg.meltr, len(model.task_names))
    batches = toy_batches(6, batch_size=8, seed=10 + rank)
    if rank == 1:
        batches[1]["y_helpful"][0] = float("nan")
    metrics = fit(model, combiner, cfg, lambda epoch: batches, train_model=DistributedDataParallel(model))
    return {"meltr": _state(combiner), "backbone": _state(model), "metrics": metrics}


SCENARIOS = {"fit": _scenario_fit, "hypergrad": _scenario_hypergrad, "nonfinite": _scenario_nonfinite}


def _worker_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, scenario in SCENARIOS.items():
            torch.save(scenario(rank, world), Path(out_dir) / f"{name}_rank{rank}.pt")
            print(f"rank {rank}: scenario {name!r} done", flush=True)
    finally:
        dist.destroy_process_group()


# ---- the pytest side --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> dict:
    """Run every scenario on WORLD fresh processes: ``{scenario: [rank 0's results, rank 1's, ...]}``."""
    out_dir = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")   # loopback: no dependence on how the hostname resolves
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(rank), str(WORLD),
                               str(out_dir / "store"), str(out_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in range(WORLD)]
    outputs, timed_out = [], False
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
        except subprocess.TimeoutExpired:
            timed_out = True
            for p in procs:
                p.kill()
            outputs.append(proc.communicate()[0])
    if timed_out:
        pytest.fail(f"the ranks did not finish within {TIMEOUT_S}s (deadlock?):\n" + "\n".join(outputs))
    for rank, (proc, output) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output[-4000:]}"
    return {name: [torch.load(out_dir / f"{name}_rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
            for name in SCENARIOS}


def _assert_bit_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what} differs across ranks in {different}"


def test_fit_keeps_meltr_and_backbone_bit_identical_across_ranks(rank_results):
    ranks = rank_results["fit"]
    for mode in ("local", "global"):
        r0, r1 = ranks[0][mode], ranks[1][mode]
        # the broadcast mattered: the ranks started from different MELTRs
        assert any(not torch.equal(r0["meltr_before"][k], r1["meltr_before"][k]) for k in r0["meltr_before"])
        for r in (r0, r1):
            assert r["metrics"]["step"] == 9 and r["metrics"]["meta_steps"] == 3, r["metrics"]
            assert r["metrics"]["skipped_inner"] == 0 and r["metrics"]["skipped_meta"] == 0
        # the meta steps moved φ away from rank 0's initial weights
        assert any(not torch.equal(r0["meltr"][k], r0["meltr_before"][k]) for k in r0["meltr"])
        _assert_bit_identical(r0["meltr"], r1["meltr"], f"MELTR ({mode} mode)")
        _assert_bit_identical(r0["backbone"], r1["backbone"], f"backbone ({mode} mode)")


@pytest.fixture(scope="module")
def hypergrad_results(rank_results):
    """Both ranks' φ-gradients for every case and mode, plus the single-process references."""
    ranks = rank_results["hypergrad"]
    outer, reg = _meta_batches()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # tiny ops: one thread is ~40x faster than two on a busy 2-core machine
    try:
        global_ref = [_meta_gradient(case, False, outer, reg) for case in HYPERGRAD_CASES]
        local_ref = []
        for case in HYPERGRAD_CASES:
            per_rank = [_meta_gradient(case, False, _shard(outer, r, WORLD), _shard(reg, r, WORLD))
                        for r in range(WORLD)]
            local_ref.append([sum(gs) / WORLD for gs in zip(*per_rank)])
    finally:
        torch.set_num_threads(threads)
    return ranks, {"global": global_ref, "local": local_ref}


def _case_id(case: dict) -> str:
    return f"{case['products']}-K{case['neumann_steps']}-{case['convention']}-direct{int(case['include_direct'])}"


def _flat(grads: list) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("mode", ["global", "local"])
def test_hypergradient_matches_single_process(hypergrad_results, mode):
    """global: = world size 1 on the concatenated batch; local: = mean of the per-rank hypergradients."""
    ranks, refs = hypergrad_results
    failures = []
    for i, case in enumerate(HYPERGRAD_CASES):
        g0, g1, ref = _flat(ranks[0][mode][i]), _flat(ranks[1][mode][i]), _flat(refs[mode][i])
        assert torch.equal(g0, g1), f"{_case_id(case)} ({mode}): φ-gradient differs across ranks"
        assert ref.norm() > 0, f"{_case_id(case)}: the reference hypergradient is zero (test is vacuous)"
        err = float((g0 - ref).abs().max() / ref.abs().max())
        if not err <= 1e-5:
            failures.append(f"{_case_id(case)}: relative max error {err:.2e}")
    assert not failures, f"{mode} mode does not match the single-process reference:\n" + "\n".join(failures)


def test_hypergradient_references_discriminate(hypergrad_results):
    """The comparisons above are not vacuous: K=3 differs from K=0, and global differs from local mode."""
    _, refs = hypergrad_results
    index = {_case_id(c): i for i, c in enumerate(HYPERGRAD_CASES)}
    k0 = _flat(refs["global"][index["exact-K0-series-direct0"]])
    k3 = _flat(refs["global"][index["exact-K3-series-direct0"]])
    assert (k3 - k0).norm() > 1e-4 * k0.norm()
    for i in range(len(HYPERGRAD_CASES)):
        glob, local = _flat(refs["global"][i]), _flat(refs["local"][i])
        assert (glob - local).norm() > 1e-6 * glob.norm(), _case_id(HYPERGRAD_CASES[i])


def test_nonfinite_loss_on_one_rank_skips_the_step_on_both(rank_results):
    r0, r1 = rank_results["nonfinite"]
    m0, m1 = r0["metrics"], r1["metrics"]
    for key in ("step", "meta_steps", "skipped_inner", "skipped_meta"):
        assert m0[key] == m1[key], f"{key}: rank 0 {m0[key]} vs rank 1 {m1[key]}"
    assert m0["step"] == 6 and m0["skipped_inner"] == 1
    assert m0["meta_steps"] + m0["skipped_meta"] == 2
    _assert_bit_identical(r0["meltr"], r1["meltr"], "MELTR")
    _assert_bit_identical(r0["backbone"], r1["backbone"], "backbone")


if __name__ == "__main__":
    _rank, _world, _init_file, _out_dir = sys.argv[1:5]
    _worker_main(int(_rank), int(_world), _init_file, _out_dir)
