"""ResNet's specs: the ``classification`` task (ce + mixup + rotation), its image data, the variants.

=================  ==========================================================================================
variant            what
=================  ==========================================================================================
``resnet32``       CIFAR ResNet-32 (3 stages × 5 basic blocks, 16/32/64), 100 classes, 32-px RGB: supp. §H
``resnet_digits``  ResNet-8 (one block per stage, 16/32/64), 10 classes, 8-px images: the digits experiment
``resnet_tiny``    the same code at test size (one block per stage, 4/8/16), 10 classes, 16-px images
=================  ==========================================================================================

The model code is imported only when a variant is built, so reading a spec stays cheap.
"""
from __future__ import annotations

from .._registry import register_backbone
from .._spec import BackboneSpec, DataSpec, TaskSpec

FAMILY = "resnet"
LOSSES = ("ce", "mixup", "rotation")           # MELTR input order, primary first (tasks.LOSSES)
BATCH_KEYS = ("images", "label", "aug_seed")


def _tasks(image_size: int, mean: tuple, std: tuple, preset: str | None, augment: str) -> dict:
    data = DataSpec(modality="image", num_frames=1, max_frames=1, image_size=image_size, resize_mode="stretch",
                    mean=mean, std=std, text_len=1, batch_keys=BATCH_KEYS, items="rows", augment=augment)
    return {"classification": TaskSpec(losses=LOSSES, meltr_preset=preset, data=data)}


def default_meta_scope(model) -> list[str]:
    """The last stage and both heads: the hypergradient's w (the Neumann series' HVPs run over these only)."""
    return [f"stages.{len(model.stages) - 1}.*", "classifier.*", "rotation_head.*"]


def _filter(state, model, source="<state dict>"):
    from .checkpoint import filter_resnet_state_dict
    return filter_resnet_state_dict(state, model, source)


def _builder(variant: str, name: str):
    def build(task: str = "classification", pretrained: str | None = None, **overrides):
        from . import model
        return model.build_resnet(getattr(model, variant), task, pretrained, **overrides)
    build.__name__ = name
    return build


def _example_batch(variant: str, name: str):
    def example_batch(task: str, batch_size: int, generator, **overrides) -> dict:
        from . import model
        cfg = model.config_with_overrides(getattr(model, variant), overrides)
        return model.example_batch(cfg, batch_size, generator, SPECS[name].tasks[task].data.image_size)
    return example_batch


def _spec(variant: str, name: str, description: str, image_size: int, mean: tuple, std: tuple,
          preset: str | None = None, augment: str = "crop_flip") -> BackboneSpec:
    return BackboneSpec(family=FAMILY, tasks=_tasks(image_size, mean, std, preset, augment),
                        build=_builder(variant, name), default_task="classification",
                        default_meta_scope=default_meta_scope, checkpoint_filter=_filter,
                        example_batch=_example_batch(variant, name), description=description)


_CIFAR = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))       # CIFAR-100 channel mean / std
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
SPECS = {
    "resnet32": _spec("RESNET32", "resnet32", "CIFAR ResNet-32 (3×5 basic blocks, 16/32/64, option-A shortcuts), "
                      "~0.47M parameters with 100 classes; supplementary §H", 32, *_CIFAR),
    "resnet_digits": _spec("RESNET_DIGITS", "resnet_digits", "ResNet-8 (3×1 blocks, 16/32/64) for 8-px images, "
                           "10 classes: the digits experiment", 8, *_HALF, augment="none"),
    "resnet_tiny": _spec("RESNET_TINY", "resnet_tiny", "test size: 3×1 blocks, 4/8/16 wide, 10 classes, 16 px",
                         16, *_HALF, preset="meltr_tiny"),
}
for _name, _spec_ in SPECS.items():
    register_backbone(_name, spec=_spec_)
