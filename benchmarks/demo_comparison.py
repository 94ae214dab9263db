"""The demo's MELTR-vs-MTL comparison with seeds, in one process (no Ray), on the demo's own data and warm-up.

    python benchmarks/demo_comparison.py                       # MTL and MELTR at three β, 3 seeds each (~15 min)
    python benchmarks/demo_comparison.py --configs mtl --seeds 0 1

The demo (`python launchers/tune_retrieval.py`) runs one trial per setting, so its "MELTR vs MTL" line is one
seed each and best-of-N against one. This script measures the spread the line hides: each setting trained for
the demo's 2 epochs from the same VTM warm-up (``meltr_ray.demo.prepare_demo_job``: data under
``--root``, made when missing), batches of 16 (the demo's 2 workers × 8), several seeds (masking draws and batch
order), and reports text→video R@1/R@5 on the 120 val queries and MELTR's task weights ∂MELTR/∂ℓ_t.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SETTINGS = {
    "mtl": {"meltr.combiner": "mtl"},
    "meltr_b1e-3": {"optim.meltr_lr": 1e-3, "meta.reg_weight": 0.3, "meta.neumann_steps": 2},
    "meltr_b1e-2": {"optim.meltr_lr": 1e-2, "meta.reg_weight": 0.3, "meta.neumann_steps": 2},
    "meltr_b3e-2": {"optim.meltr_lr": 3e-2, "meta.reg_weight": 0.3, "meta.neumann_steps": 2},
}


def _batch(samples: dict, rows) -> dict:
    import torch
    return {k: [str(x) for x in v[rows]] if v.dtype.kind in "OUS" else torch.from_numpy(np.ascontiguousarray(v[rows]))
            for k, v in samples.items()}


def shuffled_batches(samples: dict, batch_size: int, seed: int) -> list[dict]:
    order = np.random.default_rng(seed).permutation(len(samples["frames"]))
    return [_batch(samples, order[i:i + batch_size]) for i in range(0, len(order) - batch_size + 1, batch_size)]


def in_order_batches(samples: dict, batch_size: int) -> list[dict]:
    n = len(samples["frames"])
    return [_batch(samples, np.arange(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def train_one(base, overrides: dict, seed: int, val: dict, batch_size: int) -> dict:
    from meltr_ray.demo import split_samples
    from meltr_ray.run import build_run
    cfg = base.with_overrides({**overrides, "train.seed": seed})
    train = split_samples(cfg, cfg.data.train_split, seed)
    run = build_run(cfg, steps_per_epoch=len(train["frames"]) // batch_size)
    return run.fit(lambda epoch: shuffled_batches(train, batch_size, seed * 100 + epoch),
                   evaluate=lambda model: model.evaluate(in_order_batches(val, 32)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.expanduser("~/meltr_results/demo_data"), help="demo data folder")
    p.add_argument("--configs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=16, help="global batch (the demo: 2 workers × 8)")
    args = p.parse_args(argv)

    import torch

    from meltr_ray.demo import demo_config, prepare_demo_job, split_samples
    from meltr_ray.run import resolve_job
    torch.set_num_threads(1)
    base = resolve_job(prepare_demo_job(demo_config(), args.root, progress=True))
    val = split_samples(base, base.data.val_split)
    print(f"load average {os.getloadavg()[0]:.1f}; {base.train.epochs} epochs, batch {args.batch}")
    for name in args.configs:
        for seed in args.seeds:
            start = time.time()
            m = train_one(base, SETTINGS[name], seed, val, args.batch)
            weights = " ".join(f"{k[7:]} {v:.3f}" for k, v in m.items() if k.startswith("weight_"))
            print(f"{name:12s} seed {seed}  R@1 {m['val_r1']:5.1f}  R@5 {m['val_r5']:5.1f}  "
                  f"vtm {m['loss_vtm']:.3f}  weights: {weights}  ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
