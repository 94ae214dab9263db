"""Configuration: small dataclasses composed into one :class:`JobConfig`.

Every knob of a run lives here, with the paper symbol where there is one:

=====  =======================  ==========================================
paper  field                    meaning
=====  =======================  ==========================================
γ      ``meta.reg_weight``      weight of the regulariser γ·|Σℓ − MELTR(ℓ)|
α      ``optim.backbone_lr``    backbone (inner) learning rate, also the Neumann step
β      ``optim.meltr_lr``       MELTR (outer) learning rate
K      ``meta.neumann_steps``   Neumann-series terms of the inverse-Hessian approximation
=====  =======================  ==========================================

``meta.meta_every`` (the official ``auxgrad_every``) is the number of inner steps between meta steps; it is
not K. Configs round-trip through plain dicts (``to_dict``/``from_dict``) so they travel through Ray Tune and
YAML, accept dotted overrides (``{"meta.reg_weight": 0.3}`` or the short names ``reg_weight``…), and
``validate()`` raises ``ValueError`` naming the bad field and value.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hyperparameter:
    """One searched method hyperparameter: paper symbol, config path, short alias, paper value, meaning."""
    symbol: str
    path: str
    alias: str
    paper_value: float | int
    paper_text: str
    meaning: str


# THE table of the searched hyperparameters; config overrides, search spaces, the paper point HyperOpt tries
# first and the live trial table all read it.
HYPERPARAMETERS = (
    Hyperparameter("γ", "meta.reg_weight", "reg_weight", 0.3, "{0.1, 0.3, 0.5}; Supp. Table 1 best 1–10",
                   "weight of the regulariser γ·|Σℓ − MELTR(ℓ)|"),
    Hyperparameter("α", "optim.backbone_lr", "backbone_lr", 3e-5, "3e-5",
                   "backbone (inner) learning rate, also the Neumann step unless meta.neumann_lr is set"),
    Hyperparameter("β", "optim.meltr_lr", "meltr_lr", 1e-4, "1e-4", "MELTR (outer) learning rate"),
    Hyperparameter("K", "meta.neumann_steps", "neumann_steps", 3, "3",
                   "Neumann-series terms of the inverse-Hessian approximation"),
    Hyperparameter("every", "meta.meta_every", "meta_every", 3, "3 (5 for All-in-one)",
                   "meta step every N inner steps (official auxgrad_every; not K)"),
    Hyperparameter("α_N", "meta.neumann_lr", "neumann_lr", 3e-5, "= α (3e-5)",
                   "Neumann step of the inverse-Hessian series (None = α); at α ≈ 3e-5, K only rescales"),
)
# Short names accepted in overrides and search spaces -> dotted config paths.
FIELD_ALIASES = {h.alias: h.path for h in HYPERPARAMETERS}


def hyperparameter(name: str) -> Hyperparameter | None:
    """The table row of an alias or a dotted path, else ``None``."""
    return next((h for h in HYPERPARAMETERS if name in (h.alias, h.path)), None)


@dataclass
class BackboneConfig:
    """Which registered backbone to build (see ``meltr_ray.backbones``)."""
    name: str = "violet_tiny"
    task: str = "retrieval"
    pretrained: str | None = None          # local checkpoint path; never a hub id
    overrides: dict = field(default_factory=dict)


@dataclass
class MeltrConfig:
    """The loss combiner. ``combiner='meltr'`` is the paper's model; the others are its baselines."""
    combiner: str = "meltr"                # meltr | mtl | fixed | linear
    preset: str | None = None              # univl | violet_retrieval | violet_qa | allinone; None = sizes below
    d_model: int = 512
    d_ffn: int = 512
    d_scale: int = 256
    n_heads: int = 8
    n_layers: int = 1
    dropout: float = 0.1
    embedding: str = "se_te"               # se_te | se | te (scale / task embedding)
    architecture: str = "transformer"      # transformer | linear
    init: str = "default"                  # default (PyTorch) | normal (N(0, 0.02), All-in-one style)
    start: str = "mtl"                     # mtl (Σℓ + zero-initialised head: starts as MTL) | official
    fixed_weights: list | None = None      # combiner='fixed'
    eval_mode: bool = False                # run MELTR with dropout off (UniVL official behaviour)


@dataclass
class MetaConfig:
    """The meta (outer) step: hypergradient, regulariser, meta batches."""
    reg_weight: float = 0.1                # γ
    reg_form: str = "abs"                  # abs | square
    neumann_steps: int = 3                 # K
    neumann_lr: float | None = None        # Neumann step; None = optim.backbone_lr (α), as in the paper
    convention: str = "series"             # series | inverse  (see hypergrad.py)
    include_direct: bool = False           # add ∂L_outer/∂φ (the regulariser depends on φ directly)
    inverse: str = "neumann"               # inverse-Hessian approximation: neumann (K terms) | identity (K = 0)
    products: str = "exact"                # second-order products: exact (double backward) | finite_difference
    fd_radius: float = 1e-3                # finite-difference radius R (ε = R/‖p‖; benchmarks/README)
    scope: Any = "default"                 # all | default (backbone's choice) | list of fnmatch patterns
    meta_every: int = 3                    # meta step every N inner steps (official auxgrad_every)
    source: str = "replay"                 # replay | split | current (where meta batch A comes from)
    share_forward: bool = False            # meta iterations reuse the inner forward: B = the current batch
    buffer_size: int = 10
    eviction: str = "fifo"                 # fifo | weighted (official Violet/All-in-one) | random
    clip_norm: float | None = 12.0         # global-norm clip of the hypergradient
    global_hypergrad: bool = False         # all-reduce losses, g and each HVP: equals 1-process on the global batch
    max_nonfinite: int = 10                # this many non-finite steps in a row stops training


@dataclass
class OptimConfig:
    backbone_lr: float = 3e-5              # α
    meltr_lr: float = 1e-4                 # β
    optimizer: str = "adamw"               # adam | adamw
    backbone_weight_decay: float = 1e-3
    meltr_weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.98)
    warmup_ratio: float = 0.0
    schedule: str = "linear"               # linear (warmup + linear decay) | constant
    grad_clip: float | None = None         # backbone global-norm clip


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None           # stop early after this many inner steps
    batch_size: int = 8
    eval_batch_size: int = 32
    eval_every: int = 1                    # epochs
    seed: int = 0
    precision: str = "fp32"                # fp32 | bf16 (autocast on GPU)
    log_every: int = 10
    keep_checkpoints: int = 2              # local_saver: newest epochs kept (plus the best); 0 = keep all


@dataclass
class DataConfig:
    path: str | None = None                # directory of Parquet shards (None = embedded demo data)
    train_split: str = "train"
    meta_split: str | None = None          # used when meta.source == 'split'
    val_split: str = "val"
    # None = the backbone spec's value for the task (meltr_ray.backbones.get_spec(name).task(task).data)
    num_frames: int | None = None
    image_size: int | None = None
    max_text_len: int | None = None
    vocab_path: str | None = None
    sampling: str = "uniform"              # uniform | random (segment-random)
    resize_mode: str | None = None         # stretch | pad (zero-pad centred to a square first) | crop; None = spec
    shuffle_buffer: int = 8                # shuffle train samples within this many batches (0 = off)
    decode_actors: int = 1


@dataclass
class ClusterConfig:
    num_workers: int = 8                   # Train workers (DDP ranks) per trial; 0 = Train local mode
    use_gpu: bool = True
    cpus_per_worker: float = 8.0
    storage_path: str | None = None
    max_failures: int = 3                  # Train worker-group restarts per run (from the last checkpoint)
    checkpoints_to_keep: int = 2
    gpus_per_worker: float = 1.0           # used when use_gpu
    resources_per_worker: dict | None = None   # explicit Ray resources per worker; overrides the two above
    controller_failure_limit: int = 3      # Train controller failures (e.g. worker-group start timeouts)
    trial_max_failures: int = 1            # Tune re-runs of a trial whose driver died (resumes its Train run)
    max_concurrent_trials: int | None = None   # None = as many as the cluster's resources fit


@dataclass
class JobConfig:
    name: str = "meltr"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    meltr: MeltrConfig = field(default_factory=MeltrConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    # ---- dict round trip -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobConfig":
        cfg = cls()
        for key, value in data.items():
            section = getattr(cfg, key, None) if key in _field_names(cls) else None
            if key not in _field_names(cls):
                raise ValueError(f"unknown config section {key!r}")
            if dataclasses.is_dataclass(section):
                setattr(cfg, key, _section_from_dict(type(section), value, key))
            else:
                setattr(cfg, key, value)
        return cfg

    @classmethod
    def from_saved(cls, data: dict, source: str = "a saved config") -> "JobConfig":
        """A config read back from a checkpoint or ``meltr_run.json``: :func:`with_legacy_defaults` first."""
        return cls.from_dict(with_legacy_defaults(data, source))

    # ---- overrides ----------------------------------------------------------------------------------
    def with_overrides(self, overrides: dict | None) -> "JobConfig":
        """A copy with ``{"section.field": value}`` (or a short alias such as ``reg_weight``) applied."""
        cfg = copy.deepcopy(self)
        for dotted, value in (overrides or {}).items():
            set_by_path(cfg, FIELD_ALIASES.get(dotted, dotted), value)
        return cfg

    def validate(self) -> "JobConfig":
        validate(self)
        return self


# Fields whose default changed after configs were first saved: a saved config without the field ran with the
# value on the right, so it must be rebuilt with it (a new config still gets the dataclass default).
LEGACY_DEFAULTS = {
    "meltr.start": "official",   # before meltr.start existed (issue 9) every MELTR had the official forward
}


def with_legacy_defaults(data: dict, source: str = "a saved config") -> dict:
    """A copy of the saved config dict ``data`` with each missing :data:`LEGACY_DEFAULTS` field set to the value
    it was trained with; logs one line naming ``source`` and the fields filled. Use only where a config is read
    back (checkpoints, ``meltr_run.json``), never for a user's new config."""
    data = copy.deepcopy(data)
    filled = []
    for dotted, value in LEGACY_DEFAULTS.items():
        section, name = dotted.split(".")
        if isinstance(data.get(section), dict) and name not in data[section]:
            data[section][name] = value
            filled.append(f"{dotted}={value!r}")
    if filled:
        logger.warning("%s predates %s: rebuilt with %s (what it was trained with)",
                       source, ", ".join(d.split("=")[0] for d in filled), ", ".join(filled))
    return data


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _section_from_dict(cls, data: dict, prefix: str):
    unknown = set(data) - _field_names(cls)
    if unknown:
        raise ValueError(f"unknown config field {prefix}.{sorted(unknown)[0]}")
    kwargs = dict(data)
    if "betas" in kwargs and kwargs["betas"] is not None:
        kwargs["betas"] = tuple(kwargs["betas"])
    return cls(**kwargs)


def set_by_path(cfg: JobConfig, dotted: str, value) -> None:
    """Set ``section.field`` on ``cfg``; unknown paths raise ``ValueError`` naming the path."""
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ValueError(f"config override {dotted!r} must look like 'section.field' or a short alias "
                         f"({', '.join(sorted(FIELD_ALIASES))})")
    section_name, name = parts
    section = getattr(cfg, section_name, None)
    if not dataclasses.is_dataclass(section) or name not in _field_names(type(section)):
        raise ValueError(f"unknown config field {dotted!r}")
    current = getattr(section, name)
    if isinstance(current, bool) or current is None:
        pass
    elif isinstance(current, int) and isinstance(value, float) and value.is_integer():
        value = int(value)   # Tune's quantised spaces hand back floats for integer fields
    setattr(section, name, value)


# ---- validation -----------------------------------------------------------------------------------------
_CHOICES = {
    "meltr.combiner": {"meltr", "mtl", "fixed", "linear"},
    "meltr.embedding": {"se_te", "se", "te"},
    "meltr.architecture": {"transformer", "linear"},
    "meltr.init": {"default", "normal"},
    "meltr.start": {"mtl", "official"},
    "meta.reg_form": {"abs", "square"},
    "meta.convention": {"series", "inverse"},
    "meta.source": {"replay", "split", "current"},
    "meta.eviction": {"fifo", "weighted", "random"},
    "optim.optimizer": {"adam", "adamw"},
    "optim.schedule": {"linear", "constant"},
    "train.precision": {"fp32", "bf16"},
    "data.sampling": {"uniform", "random"},
    "data.resize_mode": {"stretch", "pad", "crop", None},
}
_NON_NEGATIVE = ["meta.reg_weight", "meta.neumann_steps", "optim.backbone_lr", "optim.meltr_lr",
                 "optim.backbone_weight_decay", "optim.meltr_weight_decay", "optim.warmup_ratio"]
_AT_LEAST_ONE = ["meta.meta_every", "meta.buffer_size", "meta.max_nonfinite", "train.epochs",
                 "train.batch_size", "train.eval_batch_size", "train.eval_every", "train.log_every",
                 "data.decode_actors"]
_AT_LEAST_ONE_OR_NONE = ["data.num_frames", "data.image_size", "data.max_text_len"]


def _get(cfg: JobConfig, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def check_non_negative(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def validate(cfg: JobConfig) -> None:
    """Raise ``ValueError`` naming the first bad field and its value."""
    for dotted, choices in _CHOICES.items():
        value = _get(cfg, dotted)
        if value not in choices:
            raise ValueError(f"{dotted} must be one of {sorted(choices, key=str)}, got {value!r}")
    for dotted in _NON_NEGATIVE:
        check_non_negative(dotted, _get(cfg, dotted))
    if not float(cfg.meta.neumann_steps).is_integer():
        raise ValueError(f"meta.neumann_steps must be an integer, got {cfg.meta.neumann_steps!r}")
    for dotted in _AT_LEAST_ONE:
        value = _get(cfg, dotted)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{dotted} must be an integer >= 1, got {value!r}")
    for dotted in _AT_LEAST_ONE_OR_NONE:
        value = _get(cfg, dotted)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{dotted} must be an integer >= 1 or None (the backbone's), got {value!r}")
    _validate_hypergradient(cfg.meta)
    if cfg.meta.neumann_lr is not None:
        check_non_negative("meta.neumann_lr", cfg.meta.neumann_lr)
    for dotted in ("meta.clip_norm", "optim.grad_clip"):
        value = _get(cfg, dotted)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"{dotted} must be > 0 or None, got {value!r}")
    if cfg.meta.fd_radius <= 0:
        raise ValueError(f"meta.fd_radius must be > 0, got {cfg.meta.fd_radius!r}")
    if cfg.meta.source == "split" and not cfg.data.meta_split:
        raise ValueError("meta.source='split' needs data.meta_split (the held-out meta split's name)")
    if cfg.meta.share_forward and (cfg.meta.global_hypergrad or cfg.meta.products != "exact"):
        raise ValueError("meta.share_forward works with meta.products='exact' and without meta.global_hypergrad")
    if cfg.train.max_steps is not None and (not isinstance(cfg.train.max_steps, int) or cfg.train.max_steps < 1):
        raise ValueError(f"train.max_steps must be an integer >= 1 or None, got {cfg.train.max_steps!r}")
    if isinstance(cfg.train.keep_checkpoints, bool) or not isinstance(cfg.train.keep_checkpoints, int) \
            or cfg.train.keep_checkpoints < 0:
        raise ValueError(f"train.keep_checkpoints must be an integer >= 0, got {cfg.train.keep_checkpoints!r}")
    if cfg.cluster.num_workers < 0:
        raise ValueError(f"cluster.num_workers must be >= 0, got {cfg.cluster.num_workers!r}")


def _validate_hypergradient(meta: MetaConfig) -> None:
    """meta.inverse / meta.products must be keys of the hypergradient registries (imported lazily: torch)."""
    from .core.hypergrad import INVERSE_APPROXIMATIONS, PRODUCT_BACKENDS
    for dotted, value, registry in (("meta.inverse", meta.inverse, INVERSE_APPROXIMATIONS),
                                    ("meta.products", meta.products, PRODUCT_BACKENDS)):
        if value not in registry:
            raise ValueError(f"{dotted} must be one of {sorted(registry)}, got {value!r}")
