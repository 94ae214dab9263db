"""The CIFAR ResNet (He et al. 2016, §4.2): the backbone of the image-only setting (supplementary §H).

    stem   3×3 conv (C_in → w_1) + BN + ReLU                        at S×S
    stage  n basic blocks of width w_s; the first block of stages 2 and 3 halves the resolution
    head   global average pool → Linear(w_3 → classes)             (the class head: cross-entropy, mixup)
           global average pool → Linear(w_3 → 4)                   (the rotation head: 0°/90°/180°/270°)

ResNet-32 is n = 5 (6n + 2 = 32 layers) with widths 16/32/64. The shortcut of a block that changes width or
resolution is the paper's option A — stride-2 subsampling and zero-padded channels, parameter free — so
ResNet-32 has the published ~0.46 M parameters (0.47 M with a 100-way head).

A batch holds ``images`` uint8 (B, S, S, C) as the data layer decodes them (channel-last, 0…255), ``label``
int64 (B,) and ``aug_seed`` int64 (B,), from which the auxiliary losses derive their random draws
(:func:`meltr_ray.backbones.resnet.tasks.augmentation_draws`) — so a batch replayed from MELTR's buffer
re-forwards to exactly the same losses.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import tasks as tasks_mod

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass
class ResNetConfig:
    """Sizes and switches of one variant (``create_backbone(..., **overrides)`` replaces any field by name)."""
    blocks_per_stage: int = 5             # n; depth = 6n + 2
    widths: tuple = (16, 32, 64)
    in_channels: int = 3
    num_classes: int = 100
    mixup_alpha: float = 1.0              # mixup's Beta(α, α) (Zhang et al. 2018 use α = 1 on CIFAR)
    mean: tuple = CIFAR100_MEAN           # per-channel normalisation of [0, 1] pixels
    std: tuple = CIFAR100_STD

    def validate(self) -> "ResNetConfig":
        """``ValueError`` naming the field (as ``backbone.overrides.<field>``) for an unusable value."""
        alpha = self.mixup_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"backbone.overrides.mixup_alpha (mixup's Beta(α, α)) must be a finite number > 0, "
                             f"got {alpha!r}")
        for name in ("blocks_per_stage", "in_channels", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"backbone.overrides.{name} must be an integer >= 1, got {value!r}")
        if len(self.widths) != 3 or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"backbone.overrides.widths must be three positive stage widths, got {self.widths!r}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.in_channels:
                raise ValueError(f"backbone.overrides.{name} needs one value per input channel "
                                 f"({self.in_channels}), got {getattr(self, name)!r}")
        return self


def config_with_overrides(base: ResNetConfig, overrides: dict) -> ResNetConfig:
    """``base`` with fields replaced; unknown names raise ``ValueError`` naming them."""
    fields = {f.name for f in dataclasses.fields(ResNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ResNet override(s) {unknown} (backbone.overrides); known: {sorted(fields)}")
    tuples = {k: tuple(v) for k, v in overrides.items() if isinstance(getattr(base, k), tuple)}
    return dataclasses.replace(base, **{**overrides, **tuples}).validate()


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN + shortcut, ReLU; option-A shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.extra_channels = stride, c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or (option A) subsample by the stride and zero-pad the new channels on both sides."""
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The network and its task losses: ``forward(batch, tasks=None) -> {loss name: scalar}``."""

    task_names = tasks_mod.LOSSES          # MELTR input order, primary first

    def __init__(self, cfg: ResNetConfig, task: str = "classification"):
        super().__init__()
        if task not in tasks_mod.TASKS:
            raise ValueError(f"unknown ResNet task {task!r} (backbone.task); choose one of {list(tasks_mod.TASKS)}")
        self.cfg, self.task = cfg, task
        w1, w2, w3 = (int(w) for w in cfg.widths)
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1),
                                  nn.ReLU())
        self.stages = nn.ModuleList(self._stage(c_in, c_out, stride, cfg.blocks_per_stage)
                                    for c_in, c_out, stride in ((w1, w1, 1), (w1, w2, 2), (w2, w3, 2)))
        self.classifier = nn.Linear(w3, cfg.num_classes)
        self.rotation_head = nn.Linear(w3, tasks_mod.ROTATIONS)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1), persistent=False)
        self._init_weights()

    @staticmethod
    def _stage(c_in: int, c_out: int, stride: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(*[BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                               for i in range(blocks)])

    def _init_weights(self) -> None:
        """He (fan-out) initialisation for convolutions, as in the ResNet paper; BN at γ = 1, β = 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, C) images → normalised float (B, C, S, S)."""
        if images.dim() != 4 or images.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"batch['images'] must be (batch, size, size, {self.cfg.in_channels}) channel-last, "
                             f"got shape {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        x = x / 255.0 if images.dtype == torch.uint8 else x
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, S, S) → pooled features (B, w_3)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x.mean(dim=(2, 3))

    def forward(self, batch: dict, tasks=None) -> dict:
        return tasks_mod.task_losses(self, batch, tasks)

    def evaluate(self, batches) -> dict:
        """Top-1 accuracy (percent) over every batch, in eval mode on clean images."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return tasks_mod.evaluate_accuracy(self, batches)
        finally:
            self.train(was_training)


# ---- variants ------------------------------------------------------------------------------------------------
RESNET32 = ResNetConfig()
# test size: one block per stage, narrow, 10 classes
RESNET_TINY = ResNetConfig(blocks_per_stage=1, widths=(4, 8, 16), num_classes=10, mean=(0.5, 0.5, 0.5),
                           std=(0.5, 0.5, 0.5))
# the digits experiment (sklearn's 8×8 handwritten digits): ResNet-8 (one block per stage) at full width
RESNET_DIGITS = ResNetConfig(blocks_per_stage=1, widths=(16, 32, 64), num_classes=10,
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def build_resnet(base: ResNetConfig, task: str = "classification", pretrained: str | None = None,
                 verbose: bool = True, **overrides) -> CifarResNet:
    """Build a variant for ``task``; given a local checkpoint path, load it (strictly, with a report)."""
    model = CifarResNet(config_with_overrides(base, overrides), task)
    if pretrained:
        from .checkpoint import load_resnet_checkpoint
        model.load_report = load_resnet_checkpoint(model, pretrained, verbose=verbose)
    return model


def example_batch(cfg: ResNetConfig, batch_size: int, generator: torch.Generator, image_size: int) -> dict:
    """A valid random batch in the data layer's format (uint8 channel-last images, labels, per-sample seeds)."""
    g, b = generator, batch_size
    return {
        "sample_id": [f"r{i}#0" for i in range(b)],
        "images": torch.randint(0, 256, (b, image_size, image_size, cfg.in_channels), dtype=torch.uint8,
                                generator=g),
        "label": torch.randint(0, cfg.num_classes, (b,), generator=g),
        "aug_seed": torch.randint(0, 2**62, (b,), generator=g),
    }
