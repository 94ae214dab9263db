"""What a backbone family declares about itself: :class:`BackboneSpec` (per variant) and :class:`DataSpec`.

A family is one folder under ``meltr_ray/backbones/`` that registers each variant with a spec (timm's
``default_cfg`` + torchtitan's TrainSpec): the rest of the project — the run builder, the data pipeline, the
preflight checks, the launchers, the contract tests — reads these specs instead of naming a family's tasks,
columns or sizes. A plugin family registered from outside the package is read the same way.

Per task a spec gives the loss names in MELTR input order (primary first), the MELTR preset, and a
:class:`DataSpec`: what the model eats (modality, frames, image size, text length) and which batch keys it
reads. Limits that belong to the model (the temporal embedding's rows, the text position table) are separate
fields from the values a run samples, so a config can be checked against them before anything starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..data.image import AUGMENTATIONS
from ..data.items import ITEM_KINDS

MODALITIES = ("video", "features", "image")
RESIZE_MODES = ("stretch", "pad", "crop")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



@dataclass(frozen=True)
class DataSpec:
    """The data one task of a backbone needs; ``meltr_ray.data`` builds batches from it.

    ``num_frames`` / ``image_size`` / ``text_len`` are the defaults a run samples (``data.*`` config fields);
    ``max_frames`` / ``max_image_size`` / ``text_positions`` are the model's hard limits (rows of its temporal
    embedding, spatial embedding and text position table). ``items`` says which text items of a shard row
    become samples (one of :data:`ITEM_KINDS`) and which per-row count gives the epoch's length.
    """
    modality: str = "video"                    # video | features | image
    num_frames: int = 4
    max_frames: int | None = None
    image_size: int = 224
    max_image_size: int | None = None
    resize_mode: str = "stretch"               # stretch | pad | crop
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    text_len: int = 32                          # tokens per text item a run uses (data.max_text_len)
    text_positions: int | None = None           # rows of the model's text position table
    feature_dim: int | None = None              # modality 'features': width of one feature vector
    batch_keys: tuple = ("frames", "text_ids", "text_mask")
    items: str = "captions"
    augment: str = "crop_flip"                  # modality 'image': training-split augmentation (crop_flip|crop|none)

    def check(self, where: str) -> None:
        """Raise ``ValueError`` naming ``where`` (backbone/task) and the field when the spec is inconsistent."""
        if self.modality not in MODALITIES:
            raise ValueError(f"{where}: data.modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"{where}: data.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.items not in ITEM_KINDS:
            raise ValueError(f"{where}: data.items must be one of {ITEM_KINDS}, got {self.items!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"{where}: data.augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        for value, limit, name in ((self.num_frames, self.max_frames, "num_frames"),
                                   (self.image_size, self.max_image_size, "image_size"),
                                   (self.text_len, self.text_positions, "text_len")):
            if limit is not None and value > limit:
                raise ValueError(f"{where}: data.{name} = {value} is above the model's maximum {limit}")


@dataclass(frozen=True)
class TaskSpec:
    """One task of a backbone: its losses in MELTR input order (first = primary), MELTR preset, data."""
    losses: tuple
    meltr_preset: str | None = None            # a key of meltr_ray.core.meltr.PRESETS; None = MeltrConfig sizes
    data: DataSpec = field(default_factory=DataSpec)

    @property
    def primary(self) -> str:
        return self.losses[0]


Builder = Callable[..., object]                  # (task=..., pretrained=None, **overrides) -> nn.Module
ExampleBatch = Callable[[str, int, object], dict]  # (task, batch_size, torch.Generator) -> batch


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the project needs to know about one registered variant.

    * ``build(task=..., pretrained=None, **overrides)`` returns the ``nn.Module`` with
      ``forward(batch, tasks=None) -> {loss name: scalar}`` and ``evaluate(batches) -> {metric: float}``;
    * ``tasks``: task name → :class:`TaskSpec`; ``default_task`` is used when a run names none;
    * ``default_meta_scope``: fnmatch patterns over parameter names (or ``model -> patterns``) the
      hypergradient is taken with respect to when ``meta.scope == "default"``; ``"all"`` = every parameter;
    * ``checkpoint_filter(state_dict, model, source) -> (state_dict, LoadReport)``: official layouts → model;
    * ``example_batch(task, batch_size, generator)``: a valid batch for tests and benchmarks;
    * ``test_sized``: the contract suite runs over this variant (also true for every ``*_tiny`` name).
    """
    family: str
    tasks: dict
    build: Builder | None = None
    default_task: str | None = None
    default_meta_scope: Sequence[str] | Callable | str = "all"
    checkpoint_filter: Callable | None = None
    example_batch: ExampleBatch | None = None
    test_sized: bool = False
    description: str = ""

    def task(self, task: str | None, backbone: str = "") -> TaskSpec:
        """The :class:`TaskSpec` of ``task`` (``None`` = the default task); ``ValueError`` names the field."""
        name = task or self.default_task or next(iter(self.tasks))
        if name not in self.tasks:
            raise ValueError(f"backbone {backbone or self.family!r} has no task {name!r} (backbone.task); "
                             f"its tasks are {sorted(self.tasks)}")
        return self.tasks[name]

    def meta_scope(self, model) -> Sequence[str] | str:
        """The default meta scope resolved for a built ``model``."""
        scope = self.default_meta_scope
        return scope(model) if callable(scope) else scope

    def replace(self, **changes) -> "BackboneSpec":
        return dataclasses.replace(self, **changes)

    def check(self, name: str) -> None:
        """Raise ``ValueError`` naming the backbone, the task and the field when the spec is inconsistent."""
        from ..core.meltr import PRESETS
        if not self.tasks:
            raise ValueError(f"backbone {name!r}: spec.tasks is empty; declare at least one task")
        if self.default_task is not None and self.default_task not in self.tasks:
            raise ValueError(f"backbone {name!r}: spec.default_task {self.default_task!r} is not one of its "
                             f"tasks {sorted(self.tasks)}")
        for task, ts in self.tasks.items():
            where = f"backbone {name!r}, task {task!r}"
            if not isinstance(ts, TaskSpec):
                raise ValueError(f"{where}: spec.tasks[{task!r}] must be a TaskSpec, got {type(ts).__name__}")
            if not ts.losses:
                raise ValueError(f"{where}: losses is empty; list the loss names, primary first")
            if len(set(ts.losses)) != len(ts.losses):
                raise ValueError(f"{where}: losses {list(ts.losses)} repeat a name")
            if ts.meltr_preset is not None:
                preset = PRESETS.get(ts.meltr_preset)
                if preset is None:
                    raise ValueError(f"{where}: meltr_preset {ts.meltr_preset!r} is not one of {sorted(PRESETS)}")
                count = preset.get("num_tasks")
                if count is not None and count != len(ts.losses):
                    raise ValueError(f"{where}: meltr_preset {ts.meltr_preset!r} combines {count} losses but the "
                                     f"task has {len(ts.losses)} ({list(ts.losses)})")
            ts.data.check(where)
