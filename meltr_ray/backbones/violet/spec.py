"""Violet's specs: its four tasks, their losses and data, and the two registered variants.

Everything the rest of the project knows about Violet comes from here (``get_spec("violet_base")``). The model
code is imported only when a variant is built, so reading a spec stays cheap.
"""
from __future__ import annotations

from .._registry import register_backbone
from .._spec import BackboneSpec, DataSpec, TaskSpec

FAMILY = "violet"
# MELTR input order (first = primary), the official MELTR preset, which text items become samples,
# the official text length and the batch keys each task's forward reads.
_TASKS = {
    "retrieval": (("vtm", "mtm", "mvm"), "violet_retrieval", "captions", 25, ()),
    "qa_mc": (("mc", "vtm", "mtm", "mvm"), "violet_qa", "qa_mc", 40, ("option_mask", "answer")),
    "qa_oe": (("oe", "vtm", "mtm", "mvm"), "violet_qa", "qa_oe", 25, ("answer",)),
    # action recognition (supplementary §H): two losses, no official MELTR preset (MeltrConfig sizes)
    "action": (("cls", "mvm"), None, "labels", 16, ("label",)),
}


def _tasks(max_frames: int, max_grid: int, text_positions: int, num_frames: int, image_size: int) -> dict:
    tasks = {}
    for task, (losses, preset, items, text_len, keys) in _TASKS.items():
        text = () if task == "action" else ("text_ids", "text_mask")
        data = DataSpec(modality="video", num_frames=num_frames, max_frames=max_frames, image_size=image_size,
                        max_image_size=32 * max_grid, resize_mode="pad", text_len=min(text_len, text_positions),
                        text_positions=text_positions, batch_keys=("frames", *text, "vq_ids", *keys), items=items)
        tasks[task] = TaskSpec(losses=losses, meltr_preset=preset, data=data)
    return tasks


def default_meta_scope(model) -> list[str]:
    """The top cross-encoder layer and every head: the paper's meta scope for Violet."""
    return [f"trsfr.layer.{model.cfg.num_layers - 1}.*"] + [f"{name}.*" for name in model.head_names.values()]


def _filter(state, model, source="<state dict>"):
    from .checkpoint import filter_violet_state_dict
    return filter_violet_state_dict(state, model, source)


def _builder(variant: str):
    def build(task: str = "retrieval", pretrained: str | None = None, **overrides):
        from . import model
        return model.build_violet(getattr(model, variant), task, pretrained, **overrides)
    build.__name__ = f"violet_{variant.split('_')[-1].lower()}"
    return build


def _example_batch(variant: str):
    def example_batch(task: str, batch_size: int, generator, **overrides) -> dict:
        from . import model
        from .model import config_with_overrides
        cfg = config_with_overrides(getattr(model, variant), overrides)
        data = SPECS[variant].tasks[task].data
        return model.example_batch(cfg, task, batch_size, generator, data.num_frames, data.image_size,
                                   data.text_len)
    return example_batch


def _spec(variant: str, description: str, num_frames: int, image_size: int, text_positions: int) -> BackboneSpec:
    return BackboneSpec(family=FAMILY, tasks=_tasks(6, 14, text_positions, num_frames, image_size),
                        build=_builder(variant), default_task="retrieval", default_meta_scope=default_meta_scope,
                        checkpoint_filter=_filter, example_batch=_example_batch(variant), description=description)


SPECS = {
    "VIOLET_BASE": _spec("VIOLET_BASE", "Video Swin-S (96, 2/2/18/2) + 12-layer BERT-base cross encoder, ~198M "
                         "parameters; loads the official checkpoints", 5, 224, 512),
    "VIOLET_TINY": _spec("VIOLET_TINY", "the same code at CPU-test size: Swin width 16, window (2, 4, 4), 2-layer "
                         "128-wide cross encoder", 2, 32, 64),
}
register_backbone("violet_base", spec=SPECS["VIOLET_BASE"])
register_backbone("violet_tiny", spec=SPECS["VIOLET_TINY"])
