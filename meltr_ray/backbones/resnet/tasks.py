"""The image-only losses of supplementary §H: classification (primary) + mixup + rotation (auxiliaries).

With x the normalised images, y the labels, f the trunk, h_c the class head and h_r the rotation head:

    ℓ_ce       = CE(h_c(f(x)), y)                                                        primary
    ℓ_mixup    = λ·CE(h_c(f(x̃)), y) + (1 − λ)·CE(h_c(f(x̃)), y_π),   x̃ = λx + (1 − λ)x_π    (Zhang et al. 2018)
    ℓ_rotation = CE(h_r(f(rot(x_i, 90°·k_i))), k_i)                                       (Gidaris et al. 2018)

λ ~ Beta(α, α) and the pairing π are drawn once per batch, k_i ∈ {0, 1, 2, 3} per image. Every draw is a
deterministic function of the batch's per-sample ``aug_seed`` (drawn by the data layer), never of a global
random state: the replay buffer's batches and the meta step's second forward of a batch see exactly the draws
the inner step saw, so ℓ(B) is one function of the weights and not a new sample each time it is evaluated.

BatchNorm normalises every forward with its own batch statistics, but only the clean forward of ℓ_ce updates
the running statistics that evaluation uses: the mixed and rotated images are not what the model is evaluated
on, and two thirds of the forwards would otherwise be theirs.
"""
from __future__ import annotations

from dataclasses import dataclass

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...metrics.classification import AccuracyMeter

LOSSES = ("ce", "mixup", "rotation")
TASKS = {"classification": LOSSES}
ROTATIONS = 4


@dataclass
class AugmentationDraws:
    """One batch's random draws: mixup weight λ, mixup partner π(i), rotation k_i (quarter turns)."""
    lam: float
    partner: torch.Tensor
    rotation: torch.Tensor


def augmentation_draws(aug_seed: torch.Tensor, alpha: float, device=None) -> AugmentationDraws:
    """λ ~ Beta(α, α), π a permutation and k_i ~ U{0..3}, from a generator seeded by all of ``aug_seed``.

    numpy's ``SeedSequence`` takes the whole seed vector as entropy, so the draws depend on every sample of
    the batch and on nothing else; they are drawn in a fixed order, whichever losses are asked for.
    """
    seeds = [int(s) % 2**64 for s in aug_seed.detach().cpu().reshape(-1).tolist()]
    if not seeds:
        raise ValueError("batch['aug_seed'] is empty: a batch needs one augmentation seed per image")
    rng = np.random.default_rng(seeds)
    lam = float(rng.beta(alpha, alpha))
    partner = torch.as_tensor(rng.permutation(len(seeds)), dtype=torch.long, device=device)
    rotation = torch.as_tensor(rng.integers(0, ROTATIONS, len(seeds)), dtype=torch.long, device=device)
    return AugmentationDraws(lam, partner, rotation)


def rotate(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate image i of (B, C, S, S) ``x`` by 90°·k_i (counter-clockwise), grouped by k."""
    out = x.clone()
    for k in range(1, ROTATIONS):
        index = (quarter_turns == k).nonzero().squeeze(-1)
        if len(index):
            out[index] = torch.rot90(x[index], k, dims=(2, 3))
    return out


@contextlib.contextmanager
def running_stats_frozen(model):
    """BatchNorm layers normalise with batch statistics as usual but leave their running statistics as they are
    (momentum 0: running = 1·running + 0·batch), so auxiliary forwards do not shift what evaluation uses."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _check_tasks(tasks) -> list[str]:
    wanted = list(LOSSES) if tasks is None else list(tasks)
    unknown = [t for t in wanted if t not in LOSSES]
    if unknown:
        raise ValueError(f"unknown ResNet loss(es) {unknown}; the classification task has {list(LOSSES)}")
    return wanted


def _labels(model, batch: dict) -> torch.Tensor:
    y = batch["label"].to(model.mean.device).long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= model.cfg.num_classes):
        raise ValueError(f"batch['label'] must lie in [0, {model.cfg.num_classes}) (num_classes), got values "
                         f"from {int(y.min())} to {int(y.max())}; rows without a class label have -1")
    return y


def task_losses(model, batch: dict, tasks=None) -> dict:
    """``{loss name: scalar}`` for the asked losses (all by default), in :data:`LOSSES` order."""
    wanted = _check_tasks(tasks)
    x = model.pixels(batch["images"].to(model.mean.device))
    y = _labels(model, batch)
    out = {}
    if "ce" in wanted:
        out["ce"] = F.cross_entropy(model.classifier(model.features(x)), y)
    if "mixup" in wanted or "rotation" in wanted:
        if "aug_seed" not in batch:
            raise ValueError("batch has no 'aug_seed': the mixup and rotation losses draw from per-image seeds "
                             "the data layer adds (meltr_ray.data.image)")
        draws = augmentation_draws(batch["aug_seed"], model.cfg.mixup_alpha, x.device)
        with running_stats_frozen(model):
            if "mixup" in wanted:
                out["mixup"] = mixup_loss(model, x, y, draws)
            if "rotation" in wanted:
                out["rotation"] = F.cross_entropy(model.rotation_head(model.features(rotate(x, draws.rotation))),
                                                  draws.rotation)
    return {name: out[name] for name in LOSSES if name in out}


def mixup_loss(model, x: torch.Tensor, y: torch.Tensor, draws: AugmentationDraws) -> torch.Tensor:
    """λ·CE(h_c(f(x̃)), y) + (1 − λ)·CE(h_c(f(x̃)), y_π) on x̃ = λx + (1 − λ)x_π."""
    lam, partner = draws.lam, draws.partner
    logits = model.classifier(model.features(lam * x + (1 - lam) * x[partner]))
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[partner])


def evaluate_accuracy(model, batches) -> dict:
    """``{"accuracy": percent}`` of clean images classified correctly, over every example of ``batches``."""
    meter = AccuracyMeter()
    for batch in batches:
        x = model.pixels(batch["images"].to(model.mean.device))
        meter.update(model.classifier(model.features(x)).argmax(-1), _labels(model, batch))
    return {"accuracy": meter.result()}
