"""``meltr-ray experiment digits``: does MELTR beat the fixed combinations on real data? (issue 9)

scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 grey 8×8 images, no
download), the image-only losses of supplementary §H (cross-entropy primary; mixup and 4-way rotation
auxiliaries) on ``resnet_digits`` (a ResNet-8: the CIFAR ResNet with one basic block per stage, 16/32/64
wide, at the digits' own 8×8 resolution — no upsampling, so a full run fits on one CPU core).

What is held equal, per seed and regime, across every method: the stratified split (600 test images, the rest
train), the training subset of the regime, the backbone's initial weights (``build_run`` seeds them from
``train.seed``), the batches in their order with their augmentation seeds, and the number of backbone updates.
Two regimes: every training label, and a stratified 20 % of them. The methods differ only in the loss
combiner and its meta-training (:data:`METHODS`).

The held-out meta split (``meta.source="split"``) is carved out of the regime's training images (stratified,
:data:`META_FRACTION`): the rows that use it train on what is left. "MTL, train minus meta" trains MTL on
exactly that remainder, so the table shows the split's *cost* (MTL vs MTL minus meta) next to its *effect*
(MELTR + meta split vs MTL minus meta).

The images are used as they are (grey repeated to 3 channels, 0…16 scaled to 0…255); no crop or flip (a
flipped digit is another shape). The mixup pairing/λ and the rotation of each image come from per-image seeds
drawn with the batch, identical for every method. Before testing, every method's BatchNorm statistics are
recomputed on the clean training images (:func:`precise_batchnorm`), since a meta step's extra forwards would
otherwise give MELTR rows different running statistics. ``LARGE_NEUMANN_LR`` = 0.03 is where the Neumann
correction is tens of per cent on this backbone (0.1 diverges); at α_w = 1e-3 it is ~1 %, so K only rescales.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

TEST_SIZE = 600
SPLIT_SEED = 0                  # the one fixed stratified split (and the fixed 20 % subset)
META_FRACTION = 0.2             # share of the training images held out as the meta split
REGIMES = {"all labels": 1.0, "20% labels": 0.2}
BATCH_SIZE = 32
FULL_STEPS = {"all labels": 300, "20% labels": 150}
QUICK_STEPS = {"all labels": 6, "20% labels": 3}
LARGE_NEUMANN_LR = 0.03         # the second Neumann step α of the K grid (the first is optim.backbone_lr)


@dataclass(frozen=True)
class Method:
    """One row of the table: config overrides on :func:`base_config`, and which data it trains on."""
    key: str
    label: str
    overrides: dict = field(default_factory=dict)
    meta_split: bool = False              # train minus the meta split (and use it, with meta.source="split")


METHODS = (
    Method("primary", "primary only", {"meltr.combiner": "fixed", "meltr.fixed_weights": [1.0, 0.0, 0.0]}),
    Method("mtl", "MTL (Σℓ)", {"meltr.combiner": "mtl"}),
    Method("fixed", "fixed weights (1, ½, ½)", {"meltr.combiner": "fixed", "meltr.fixed_weights": [1.0, 0.5, 0.5]}),
    Method("linear", "learned linear (MWN-style)", {"meltr.combiner": "linear"}),
    Method("meltr", "MELTR (MTL start; K=3, α=α_w)", {}),
    Method("meltr_official", "MELTR (official start)", {"meltr.start": "official"}),
    Method("meltr_k0", "MELTR K=0, α=α_w", {"meta.neumann_steps": 0}),
    Method("meltr_k0_large", f"MELTR K=0, α={LARGE_NEUMANN_LR:g}",
           {"meta.neumann_steps": 0, "meta.neumann_lr": LARGE_NEUMANN_LR}),
    Method("meltr_k3_large", f"MELTR K=3, α={LARGE_NEUMANN_LR:g}", {"meta.neumann_lr": LARGE_NEUMANN_LR}),
    Method("mtl_minus_meta", "MTL, train minus meta split", {"meltr.combiner": "mtl"}, meta_split=True),
    Method("meltr_split", "MELTR + held-out meta split", {"meta.source": "split", "data.meta_split": "meta"},
           meta_split=True),
)
METHOD_KEYS = tuple(m.key for m in METHODS)


# ---- data -----------------------------------------------------------------------------------------------
@dataclass
class Images:
    """uint8 images (N, 8, 8, 3) and int64 labels (N,)."""
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index) -> "Images":
        return Images(self.images[index], self.labels[index])


def load_digits_split(test_size: int = TEST_SIZE) -> tuple[Images, Images]:
    """(train, test): the fixed stratified split of sklearn's digits (grey 0…16 → RGB uint8 0…255)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(pixels[..., None], 3, axis=-1)
    train, test = train_test_split(np.arange(len(images)), test_size=test_size, stratify=digits.target,
                                   random_state=SPLIT_SEED)
    data = Images(images, digits.target.astype(np.int64))
    return data.take(train), data.take(test)


def stratified_part(data: Images, fraction: float) -> tuple[Images, Images]:
    """(the stratified ``fraction`` of ``data``, the rest), fixed by :data:`SPLIT_SEED`."""
    if fraction >= 1.0:
        return data, data.take(np.arange(0))
    from sklearn.model_selection import train_test_split
    part, rest = train_test_split(np.arange(len(data)), train_size=fraction, stratify=data.labels,
                                  random_state=SPLIT_SEED)
    return data.take(part), data.take(rest)


def epoch_batches(data: Images, seed: int, epoch: int, batch_size: int = BATCH_SIZE) -> list[dict]:
    """The epoch's shuffled batches (last partial batch dropped), each image with its augmentation seed.

    A pure function of (data, seed, epoch): every method of a seed sees the same batches in the same order.
    """
    import torch
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(data))
    seeds = rng.integers(0, 2**62, len(data))
    batches = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        batches.append({"images": torch.from_numpy(data.images[index]), "label": torch.from_numpy(data.labels[index]),
                        "aug_seed": torch.from_numpy(seeds[index])})
    if not batches:
        raise ValueError(f"{len(data)} training images make no batch of {batch_size}")
    return batches


def eval_batches(data: Images, batch_size: int = 200) -> list[dict]:
    import torch
    return [{"images": torch.from_numpy(data.images[i:i + batch_size]),
             "label": torch.from_numpy(data.labels[i:i + batch_size])} for i in range(0, len(data), batch_size)]


def precise_batchnorm(model, batches: list[dict]) -> None:
    """Recompute every BatchNorm's running mean/variance as the plain average over ``batches`` (clean images).

    Training leaves running statistics that depend on how many forwards each method made — a meta step
    forwards replayed batches again — and on the mixed and rotated images of the auxiliary losses. Evaluating
    every method with statistics of the same clean training images, under its final weights, removes that
    confound (detectron2's "precise BN").
    """
    import torch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                     # cumulative moving average: the exact mean over the batches
    model.train()
    with torch.no_grad():
        for batch in batches:
            model.features(model.pixels(batch["images"].to(model.mean.device)))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


# ---- one run --------------------------------------------------------------------------------------------
def base_config(seed: int, steps: int):
    """The ``resnet_digits`` recipe (AdamW α_w = 1e-3 with linear decay, batch 32, the project's MELTR defaults:
    MTL start, γ = 0.1, K = 3, a meta step every 3 updates from a replay buffer; β = 1e-3) for ``steps``
    backbone updates from seed ``seed``."""
    from ..recipes import get_recipe
    return get_recipe("resnet_digits").with_overrides({
        "train.batch_size": BATCH_SIZE, "train.max_steps": steps, "train.seed": seed,
        "train.log_every": max(1, steps // 30), "cluster.num_workers": 0})


@dataclass
class RunResult:
    accuracy: float                        # test accuracy, percent
    weights: list                          # [(step, {loss: ∂L/∂ℓ_t})] over training
    meta_steps: int
    extra: dict = field(default_factory=dict)


def run_method(method: Method, train: Images, test: Images, seed: int, steps: int,
               overrides: dict | None = None) -> RunResult:
    """Train ``resnet_digits`` with ``method`` for ``steps`` backbone updates; test accuracy and weights."""
    from ..run import build_run
    meta = None
    if method.meta_split:
        meta, train = stratified_part(train, META_FRACTION)
    cfg = base_config(seed, steps).with_overrides({**method.overrides, **(overrides or {})})
    per_epoch = len(train) // BATCH_SIZE
    cfg = cfg.with_overrides({"train.epochs": math.ceil(steps / max(per_epoch, 1))})
    run = build_run(cfg)
    weights, neumann = [], []

    def on_step(metrics: dict) -> None:
        found = {k[len("weight_"):]: v for k, v in metrics.items() if k.startswith("weight_")}
        if found:
            weights.append((metrics["step"], found))
        neumann.extend(v for k, v in metrics.items() if "neumann" in k and math.isfinite(v))

    meta_batches = (lambda epoch: epoch_batches(meta, seed + 7919, epoch)) if meta is not None else None
    started = time.process_time()
    run.fit(lambda epoch: epoch_batches(train, seed, epoch), meta_batches=meta_batches, on_step=on_step)
    precise_batchnorm(run.model, eval_batches(train))
    accuracy = run.model.evaluate(eval_batches(test))["accuracy"]
    extra = {"train_images": len(train), "meta_images": len(meta) if meta is not None else 0,
             "cpu_seconds": time.process_time() - started}
    if neumann:
        extra["neumann_correction"] = float(np.mean(neumann))
    return RunResult(accuracy, weights, run.trainer.counters.meta_steps, extra)


# ---- the whole experiment -------------------------------------------------------------------------------
def run_experiment(seeds=(0, 1, 2, 3, 4), regimes=tuple(REGIMES), methods=METHOD_KEYS, steps: dict | None = None,
                   overrides: dict | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Every (regime, method, seed): ``{"runs": [...], "config": {...}}`` (see :mod:`.report` for the table)."""
    import torch
    torch.set_num_threads(1)                 # the budget is one CPU core; also makes runs reproducible
    steps = {**FULL_STEPS, **(steps or {})}
    chosen = [m for m in METHODS if m.key in methods]
    unknown = sorted(set(methods) - set(METHOD_KEYS))
    if unknown:
        raise ValueError(f"unknown digits method(s) {unknown}; known: {list(METHOD_KEYS)}")
    if set(regimes) - set(REGIMES):
        raise ValueError(f"unknown regime(s) {sorted(set(regimes) - set(REGIMES))}; known: {list(REGIMES)}")
    train_all, test = load_digits_split()
    runs = []
    for regime in regimes:
        train, _ = stratified_part(train_all, REGIMES[regime])
        for seed in seeds:
            for method in chosen:
                result = run_method(method, train, test, seed, steps[regime], overrides)
                runs.append({"regime": regime, "method": method.key, "label": method.label, "seed": seed,
                             "accuracy": result.accuracy, "weights": result.weights,
                             "meta_steps": result.meta_steps, **result.extra})
                if progress is not None:
                    progress(f"{regime:>10}  seed {seed}  {method.label:<34} {result.accuracy:6.2f} %")
    return {"runs": runs, "config": {"seeds": list(seeds), "regimes": list(regimes), "steps": steps,
                                     "methods": [m.key for m in chosen], "train_images": len(train_all),
                                     "test_images": len(test), "batch_size": BATCH_SIZE,
                                     "meta_fraction": META_FRACTION, "overrides": dict(overrides or {}),
                                     "base": base_config(0, 1).to_dict()}}


def write_digits_image_folder(root: str) -> str:
    """The same split as PNGs for ``meltr-ray ingest --format image-folder``: ``root/{train,test}/<digit>/``.

    The Ray path (``meltr_ray.tune(recipe="resnet_digits", data=<shards>)``) reads these shards; the
    experiment itself keeps the images in memory.
    """
    from ..data.image import encode_png
    train, test = load_digits_split()
    for split, data in (("train", train), ("test", test)):
        for n, (pixels, label) in enumerate(zip(data.images, data.labels)):
            folder = os.path.join(root, split, str(int(label)))
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{n:04d}.png"), "wb") as f:
                f.write(encode_png(pixels))
    return root
