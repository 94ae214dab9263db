"""UniVL's specs: its three tasks, their losses and data, and the two registered variants.

Everything the rest of the project knows about UniVL comes from here (``get_spec("univl_base")``). The model
code (torch, transformers) is imported only when a variant is built.
"""
from __future__ import annotations

from .._registry import register_backbone
from .._spec import BackboneSpec, DataSpec, TaskSpec
from .config import UNIVL_BASE, UNIVL_TINY, UniVLConfig, config_with_overrides, task_losses

FAMILY = "univl"
# task: (item kind a shard row yields, official MELTR preset, extra batch keys)
_TASKS = {
    "retrieval": ("captions", "univl", ()),
    "captioning": ("captions", "univl", ()),
    # 9 losses (sentiment + the eight): no official MELTR configuration, so the MeltrConfig sizes
    "sentiment": ("scores", None, ("score",)),
}


def _tasks(cfg: UniVLConfig, num_frames: int, text_len: int) -> dict:
    tasks = {}
    for task, (items, preset, keys) in _TASKS.items():
        data = DataSpec(modality="features", num_frames=num_frames, max_frames=cfg.visual_positions,
                        text_len=text_len, text_positions=cfg.text_positions, feature_dim=cfg.feature_dim,
                        batch_keys=("features", "feature_mask", "text_ids", "text_mask", *keys), items=items)
        tasks[task] = TaskSpec(losses=task_losses(task), meltr_preset=preset, data=data)
    return tasks


def default_meta_scope(model) -> list[str]:
    return model.default_meta_scope


def _filter(state, model, source="<state dict>"):
    from .checkpoint import filter_univl_state_dict
    return filter_univl_state_dict(state, model, source)


def _builder(base: UniVLConfig, name: str):
    def build(task: str = "retrieval", pretrained: str | None = None, vocab_path: str | None = None,
              **overrides):
        from .model import build_univl
        return build_univl(base, task, pretrained, **overrides, **({"vocab_path": vocab_path} if vocab_path else {}))
    build.__name__ = name
    return build


def _example_batch(base: UniVLConfig, frames: int, text_len: int):
    def example_batch(task: str, batch_size: int, generator, **overrides) -> dict:
        from .model import example_batch as make
        return make(config_with_overrides(base, overrides), task, batch_size, generator, frames, text_len)
    return example_batch


def _spec(base: UniVLConfig, name: str, description: str, num_frames: int, text_len: int,
          example_frames: int) -> BackboneSpec:
    return BackboneSpec(family=FAMILY, tasks=_tasks(base, num_frames, text_len), build=_builder(base, name),
                        default_task="retrieval", default_meta_scope=default_meta_scope,
                        checkpoint_filter=_filter, example_batch=_example_batch(base, example_frames, text_len),
                        description=description)


SPECS = {
    "univl_base": _spec(UNIVL_BASE, "univl_base", "UniVL at the official sizes: BERT-base text encoder (12), "
                        "visual encoder over 1024-d S3D features (6), cross encoder (2), decoder (3); ~200M "
                        "parameters; loads univl.pretrained.bin", 48, 20, 8),
    "univl_tiny": _spec(UNIVL_TINY, "univl_tiny", "the same code at CPU-test size: width 32, 16-d features, "
                        "layers 2/1/1/1, 120-token vocabulary", 48, 16, 6),
}
for _name, _spec_value in SPECS.items():
    register_backbone(_name, spec=_spec_value)
