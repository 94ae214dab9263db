"""All-in-one's spec: the retrieval task, its losses and data, and the two registered variants.

Everything the rest of the project knows about All-in-one comes from here (``get_spec("allinone_base")``). The
model code is imported only when a variant is built, so reading a spec stays cheap.
"""
from __future__ import annotations

from .._registry import register_backbone
from .._spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, DataSpec, TaskSpec

FAMILY = "allinone"


def _tasks(frames: int, image_size: int, text_positions: int, text_len: int) -> dict:
    """[VTM, MLM] with VTM primary (B-A1 fixed); frames stretched to a square (the official decoder ignores the
    aspect ratio), normalised with the a100 transform's ImageNet mean/std; one sample per caption."""
    data = DataSpec(modality="video", num_frames=frames, max_frames=frames, image_size=image_size,
                    max_image_size=image_size, resize_mode="stretch", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    text_len=text_len, text_positions=text_positions,
                    batch_keys=("frames", "text_ids", "text_mask"), items="captions")
    return {"retrieval": TaskSpec(losses=("vtm", "mlm"), meltr_preset="allinone", data=data)}


def _filter(state, model, source="<state dict>"):
    from .checkpoint import filter_allinone_state_dict
    return filter_allinone_state_dict(state, model, source)


def _builder(variant: str):
    def build(task: str = "retrieval", pretrained: str | None = None, **overrides):
        from . import model
        return model.build_allinone(getattr(model, variant), task, pretrained, **overrides)
    build.__name__ = f"allinone_{variant.split('_')[-1].lower()}"
    return build


def _example_batch(variant: str):
    def example_batch(task: str, batch_size: int, generator, **overrides) -> dict:
        from . import model
        cfg = model.config_with_overrides(getattr(model, variant), overrides)
        data = SPECS[variant].tasks[task].data
        return model.example_batch(cfg, batch_size, generator, data.num_frames, data.text_len)
    return example_batch


def _spec(variant: str, description: str, frames: int, image_size: int, text_positions: int,
          text_len: int) -> BackboneSpec:
    # meta scope "all": the official meta step differentiates through every non-MELTR parameter
    return BackboneSpec(family=FAMILY, tasks=_tasks(frames, image_size, text_positions, text_len),
                        build=_builder(variant), default_task="retrieval", default_meta_scope="all",
                        checkpoint_filter=_filter, example_batch=_example_batch(variant), description=description)


SPECS = {
    "ALLINONE_BASE": _spec("ALLINONE_BASE", "one shared ViT-B/16 (timm names) for text and 3 frames at 224 px, "
                           "temporal token roll, 40 text positions, ~135M parameters; loads the official "
                           "Lightning checkpoints", 3, 224, 40, 40),
    "ALLINONE_TINY": _spec("ALLINONE_TINY", "the same code at CPU-test size: 32-wide, 2 blocks, 8-px patches of "
                           "32-px frames, 16 text positions", 3, 32, 16, 12),
}
register_backbone("allinone_base", spec=SPECS["ALLINONE_BASE"])
register_backbone("allinone_tiny", spec=SPECS["ALLINONE_TINY"])
