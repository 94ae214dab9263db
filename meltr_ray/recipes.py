"""Named recipes: functions returning a complete :class:`~meltr_ray.config.JobConfig` per (backbone, dataset, task).

Each paper setting comes twice:

* ``<name>`` — the **official** hyperparameters of the released code (reference §4.1): AdamW (0.9, 0.98) at a
  constant learning rate, fp32, no backbone clipping, a meta step every 3 steps (``auxgrad_every``) with the
  hypergradient clipped at 12, K = 0 (identity inverse Hessian, no direct term), γ = 0.1, meta batches from a
  replay buffer of 10 training batches with the official eviction rule, the whole backbone in the meta scope;
  MELTR in train mode with the official sizes (``violet_retrieval`` 256/512/512, ``violet_qa`` 128/256/256).
* ``<name>_paper`` — the **paper's** (supplementary §A.3): Adam, α = 3e-5, β = 1e-4, linear decay, K = 3 Neumann
  terms, γ = 0.1 (searched in {0.1, 0.3, 0.5}), one MELTR layer with 8 heads and 512 hidden units, 40 epochs for
  retrieval and 20 for QA. The paper names no weight decay (0 here), no Adam betas (PyTorch's defaults), no
  replay eviction rule (FIFO) and no meta scope; we take the backbone's ``default_meta_scope`` (top cross layer
  + heads), since K = 3 HVPs over all ~200M parameters would multiply the meta step's cost.

``train.batch_size`` is per worker: the official ``size_batch`` is per GPU (VTM negatives come from each GPU's
own sub-batch), which is what a DDP worker holds. Datasets are Parquet shards written by ``meltr-ray ingest``
(train split ``train``; the official code evaluates on ``test`` — there is no validation split). The user sets
``data.path`` and ``backbone.pretrained`` (``ckpt_violet_pretrain.pt``) through overrides.

``get_recipe(name)`` returns a fresh config; ``list_recipes(pattern)`` lists names; ``find_recipe(backbone,
task, dataset=None, paper=False)`` picks the recipe for a (backbone family, task[, dataset]).
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Callable

from .config import (BackboneConfig, ClusterConfig, DataConfig, JobConfig, MeltrConfig, MetaConfig, OptimConfig,
                     TrainConfig)

_RECIPES: dict[str, Callable[[], JobConfig]] = {}
# (backbone family, task, dataset) -> recipe name; the first one registered per (family, task) is the default
_INDEX: dict[tuple, str] = {}


def recipe(name: str, backbone: str | None = None, task: str | None = None, dataset: str | None = None):
    """Register ``fn() -> JobConfig`` under ``name``; with ``backbone``/``task``/``dataset`` also in the index
    :func:`find_recipe` searches (register ``*_paper`` variants without, they are found by suffix)."""
    def decorator(fn: Callable[[], JobConfig]):
        if name in _RECIPES:
            raise ValueError(f"recipe {name!r} is already registered")
        _RECIPES[name] = fn
        if backbone is not None:
            _INDEX.setdefault((backbone, task, dataset), name)
        return fn
    return decorator


def get_recipe(name: str) -> JobConfig:
    """A fresh, validated copy of recipe ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {list_recipes()}")
    return copy.deepcopy(_RECIPES[name]()).validate()


def list_recipes(pattern: str = "*") -> list[str]:
    return sorted(n for n in _RECIPES if fnmatch.fnmatchcase(n, pattern))


def backbone_family(backbone: str) -> str:
    """The family of a registered variant (``resnet32`` → ``resnet``), else the name up to its first ``_``."""
    from .backbones import get_spec
    try:
        return get_spec(backbone).family
    except ValueError:
        return backbone.split("_")[0]


def find_recipe(backbone: str, task: str, dataset: str | None = None, paper: bool = False) -> str:
    """The recipe name for a backbone family (``violet``), a task and optionally a dataset (``msrvtt9k``)."""
    family = backbone_family(backbone)
    names = [n for (b, t, d), n in _INDEX.items() if b == family and t == task and dataset in (None, d)]
    if not names:
        known = sorted({(b, t, d) for (b, t, d) in _INDEX})
        raise ValueError(f"no recipe for backbone={backbone!r} task={task!r} dataset={dataset!r}; known: {known}")
    return names[0] + ("_paper" if paper else "")


# ---- Violet --------------------------------------------------------------------------------------------------
# name: (task, dataset key, text length, batch/GPU, epochs, backbone lr, backbone wd, MELTR lr, MELTR wd, extra)
VIOLET_OFFICIAL = {
    "violet_msrvtt7k_retrieval": ("retrieval", "msrvtt7k", 25, 5, 20, 3e-6, 1e-3, 3e-6, 1e-3, {}),
    "violet_msrvtt9k_retrieval": ("retrieval", "msrvtt9k", 25, 5, 20, 3e-6, 1e-3, 3e-6, 1e-3, {}),
    "violet_tgif_action": ("qa_mc", "tgif_action", 40, 3, 20, 6e-6, 1e-3, 1e-4, 1e-4, {}),
    "violet_tgif_transition": ("qa_mc", "tgif_transition", 40, 3, 20, 3e-6, 1e-3, 1e-4, 1e-4, {}),
    "violet_tgif_frame": ("qa_oe", "tgif_frame", 25, 5, 20, 3e-5, 1e-4, 1e-4, 1e-4, {"size_vocab": 1540}),
    "violet_msvd_qa": ("qa_oe", "msvd_qa", 25, 5, 30, 1.2e-5, 1e-3, 1e-4, 1e-4, {"size_vocab": 1000}),
    # Kinetics-400 (supplementary §H, Table 3: classification + MVM). No released code or config: we reuse
    # TGIF-Frame's classification-head settings (the nearest official classification task).
    "violet_kinetics400": ("action", "kinetics400", 16, 5, 20, 3e-5, 1e-4, 1e-4, 1e-4, {"num_classes": 400}),
}
PAPER_EPOCHS = {"retrieval": 40, "qa_mc": 20, "qa_oe": 20, "action": 20}


def violet_official(name: str) -> JobConfig:
    task, _, text_len, batch, epochs, lr, wd, meltr_lr, meltr_wd, extra = VIOLET_OFFICIAL[name]
    from .backbones import get_spec
    preset = get_spec("violet_base").task(task).meltr_preset
    return JobConfig(
        name=name,
        backbone=BackboneConfig(name="violet_base", task=task, overrides=dict(extra)),
        # action has 2 losses and no official MELTR: violet_retrieval's sizes (256/512/512)
        meltr=MeltrConfig(combiner="meltr", preset=preset, d_model=512, d_ffn=512, d_scale=256, eval_mode=False),
        meta=MetaConfig(reg_weight=0.1, reg_form="abs", neumann_steps=0, convention="series",
                        include_direct=False, scope="all", meta_every=3, source="replay", buffer_size=10,
                        eviction="weighted", clip_norm=12.0),
        optim=OptimConfig(backbone_lr=lr, meltr_lr=meltr_lr, optimizer="adamw", backbone_weight_decay=wd,
                          meltr_weight_decay=meltr_wd, betas=(0.9, 0.98), warmup_ratio=0.0, schedule="constant",
                          grad_clip=None),
        train=TrainConfig(epochs=epochs, batch_size=batch, eval_batch_size=16, eval_every=1, precision="fp32"),
        data=DataConfig(train_split="train", val_split="test", num_frames=5, image_size=224,
                        max_text_len=text_len, sampling="uniform"),   # resize_mode: the spec's (pad to square)
        cluster=ClusterConfig(num_workers=8, use_gpu=True),
    )


def violet_paper(name: str) -> JobConfig:
    """The official recipe with the paper's optimisation (supplementary §A.3) in place of the code's."""
    cfg = violet_official(name)
    task = cfg.backbone.task
    cfg.name = name + "_paper"
    cfg.meltr.preset, cfg.meltr.d_model, cfg.meltr.d_ffn, cfg.meltr.d_scale = None, 512, 512, 256
    cfg.meta.neumann_steps, cfg.meta.neumann_lr, cfg.meta.scope = 3, None, "default"
    cfg.meta.eviction = "fifo"              # the paper describes no replay buffer; drop the B-V6 quirk
    cfg.optim = OptimConfig(backbone_lr=3e-5, meltr_lr=1e-4, optimizer="adam", backbone_weight_decay=0.0,
                            meltr_weight_decay=0.0, betas=(0.9, 0.999), warmup_ratio=0.0, schedule="linear")
    cfg.train.epochs = PAPER_EPOCHS[task]
    return cfg


def _register_violet() -> None:
    for name, (task, dataset, *_) in VIOLET_OFFICIAL.items():
        recipe(name, "violet", task, dataset)(lambda n=name: violet_official(n))
        recipe(name + "_paper")(lambda n=name: violet_paper(n))


_register_violet()


@recipe("violet_demo", "violet_tiny", "retrieval", "synthetic")
def violet_demo() -> JobConfig:
    """``violet_tiny`` on the synthetic dataset (``meltr_ray.data.synthetic``) on a CPU in minutes.

    64-px frames (the synthetic default; a 2×2 visual-token grid), 4 frames, 16 text tokens, the demo WordPiece
    vocabulary (≤ 1000 ids, [PAD]/[CLS]/[SEP]/[MASK] = 0/2/3/4) and the synthetic shards' ``vq_ids``; K = 1.
    """
    return JobConfig(
        name="violet_demo",
        backbone=BackboneConfig(name="violet_tiny", task="retrieval", overrides=dict(
            vocab_size=1000, pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4)),
        meltr=MeltrConfig(combiner="meltr", preset=None, d_model=64, d_ffn=64, d_scale=32, n_heads=4),
        meta=MetaConfig(reg_weight=0.1, neumann_steps=1, scope="default", meta_every=3, clip_norm=12.0),
        optim=OptimConfig(backbone_lr=3e-4, meltr_lr=1e-3, optimizer="adamw", backbone_weight_decay=1e-4,
                          meltr_weight_decay=1e-4, schedule="linear"),
        train=TrainConfig(epochs=3, batch_size=8, eval_batch_size=16, log_every=2),
        data=DataConfig(train_split="train", val_split="val", num_frames=4, image_size=64, max_text_len=16),
        cluster=ClusterConfig(num_workers=2, use_gpu=False, cpus_per_worker=0.5, max_failures=1,
                              checkpoints_to_keep=1),
    )


# ---- ResNet: the image-only setting (supplementary §H, Table 3 right) -----------------------------------------
@recipe("resnet32_cifar100", "resnet", "classification", "cifar100")
def resnet32_cifar100() -> JobConfig:
    """ResNet-32 on CIFAR-100 with cross-entropy + mixup + rotation (paper: 66.5 → 69.2 with MELTR).

    The supplementary names the model, the dataset and the two auxiliary losses, and nothing else about this
    setting, and there is no released code for it. So: the MELTR side is the paper's (§A.3): Adam, β = 1e-4,
    linear decay, K = 3, γ = 0.3 (the middle of its grid {0.1, 0.3, 0.5}), one MELTR layer with 8 heads and 512
    hidden units, a meta step every 3 updates. The backbone side cannot be §A.3's α = 3e-5 — that is a
    fine-tuning rate for pre-trained video models, and a CIFAR ResNet trains from scratch — so it follows the
    CIFAR ResNet schedule of He et al. 2016 (batch 128, ~64k updates = 160 epochs, weight decay, random crop
    with 4-pixel padding + flip) with Adam at its usual from-scratch rate 1e-3 in place of SGD 0.1.
    Mixup α = 1 (Zhang et al. 2018 on CIFAR). CIFAR-100 has no validation split: the test split is evaluated,
    as the official MELTR code does for its datasets.

    Data: a local copy only, never downloaded — ``meltr-ray ingest --format cifar100 --annotations
    cifar-100-python --allow-pickle --out cifar100_shards``, then ``data.path=cifar100_shards``.
    """
    return JobConfig(
        name="resnet32_cifar100",
        backbone=BackboneConfig(name="resnet32", task="classification", overrides={"mixup_alpha": 1.0}),
        meltr=MeltrConfig(combiner="meltr", preset=None, d_model=512, d_ffn=512, d_scale=256, n_heads=8),
        meta=MetaConfig(reg_weight=0.3, neumann_steps=3, scope="default", meta_every=3, source="replay",
                        buffer_size=10, eviction="fifo", clip_norm=12.0),
        optim=OptimConfig(backbone_lr=1e-3, meltr_lr=1e-4, optimizer="adam", backbone_weight_decay=5e-4,
                          meltr_weight_decay=0.0, betas=(0.9, 0.999), warmup_ratio=0.0, schedule="linear"),
        train=TrainConfig(epochs=160, batch_size=128, eval_batch_size=500, eval_every=5, log_every=50),
        data=DataConfig(train_split="train", val_split="test", image_size=32, shuffle_buffer=8),
        cluster=ClusterConfig(num_workers=1, use_gpu=True, cpus_per_worker=8.0),
    )


@recipe("resnet_digits", "resnet", "classification", "digits")
def resnet_digits() -> JobConfig:
    """``resnet_digits`` (ResNet-8 at 8 px) on scikit-learn's digits: the setting of ``meltr-ray experiment
    digits`` (AdamW 1e-3 with linear decay, batch 32, β = 1e-3, γ = 0.1, K = 3) on one CPU worker.

    For shards (the Ray path), ingest the digits as an image folder first (``meltr_ray.experiments.digits
    .write_digits_image_folder``, then ``meltr-ray ingest --format image-folder``).
    """
    return JobConfig(
        name="resnet_digits",
        backbone=BackboneConfig(name="resnet_digits", task="classification"),
        meltr=MeltrConfig(combiner="meltr"),
        meta=MetaConfig(reg_weight=0.1, neumann_steps=3, scope="default", meta_every=3, source="replay",
                        buffer_size=10, clip_norm=12.0),
        optim=OptimConfig(backbone_lr=1e-3, meltr_lr=1e-3, optimizer="adamw", backbone_weight_decay=5e-4,
                          schedule="linear"),
        train=TrainConfig(epochs=8, batch_size=32, eval_batch_size=200, log_every=10),
        data=DataConfig(train_split="train", val_split="test", image_size=8, shuffle_buffer=4),
        cluster=ClusterConfig(num_workers=1, use_gpu=False, cpus_per_worker=1.0, max_failures=0,
                              checkpoints_to_keep=1),
    )
