"""ALPRO's specs: open-ended QA with three or four pretext losses, their data, and the two registered variants.

* ``qa_oe``: [OE, VTC, VTM, MLM] — runs on any ``meltr-ray ingest`` QA shards;
* ``qa_oe_pem``: [OE, VTC, VTM, MLM, PEM] — the paper's four pretext losses (supplementary §H); every batch needs
  the ``entity_scores`` column (the ALPRO prompter's per-video entity distribution, see :mod:`.tasks`).

The model code is imported only when a variant is built, so reading a spec stays cheap.
"""
from __future__ import annotations

from .._registry import register_backbone
from .._spec import BackboneSpec, DataSpec, TaskSpec

FAMILY = "alpro"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)       # ALPRO's config_release img_pixel_mean / std
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TASKS = {"qa_oe": ("oe", "vtc", "vtm", "mlm"), "qa_oe_pem": ("oe", "vtc", "vtm", "mlm", "pem")}


def _tasks(frames: int, image_size: int, text_positions: int, text_len: int) -> dict:
    """Frames resized on the short side and centre-cropped (ALPRO: resize 256, crop 224); one sample per
    question; no official MELTR preset exists for ALPRO (the run's MeltrConfig sizes)."""
    tasks = {}
    for task, losses in _TASKS.items():
        extra = ("entity_scores",) if "pem" in losses else ()
        data = DataSpec(modality="video", num_frames=frames, max_frames=frames, image_size=image_size,
                        max_image_size=image_size, resize_mode="crop", mean=CLIP_MEAN, std=CLIP_STD,
                        text_len=text_len, text_positions=text_positions,
                        batch_keys=("frames", "text_ids", "text_mask", "answer", *extra), items="qa_oe")
        tasks[task] = TaskSpec(losses=losses, meltr_preset=None, data=data)
    return tasks


def default_meta_scope(model) -> list[str]:
    """The top multimodal layer and every head (as Violet's paper scope: the top cross layer + heads)."""
    top = model.cfg.num_layers - 1
    return [f"text_encoder.bert.encoder.layer.{top}.*", "text_encoder.cls.*", "classifier.*", "itm_head.*",
            "vision_proj.*", "text_proj.*", "temp", "mpm_head.*"]


def _filter(state, model, source="<state dict>"):
    from .checkpoint import filter_alpro_state_dict
    return filter_alpro_state_dict(state, model, source)


def _builder(variant: str):
    def build(task: str = "qa_oe", pretrained: str | None = None, **overrides):
        from . import model
        return model.build_alpro(getattr(model, variant), task, pretrained, **overrides)
    build.__name__ = f"alpro_{variant.split('_')[-1].lower()}"
    return build


def _example_batch(variant: str):
    def example_batch(task: str, batch_size: int, generator, **overrides) -> dict:
        from . import model
        cfg = model.config_with_overrides(getattr(model, variant), overrides)
        data = SPECS[variant].tasks[task].data
        return model.example_batch(cfg, task, batch_size, generator, data.num_frames, data.text_len)
    return example_batch


def _spec(variant: str, description: str, frames: int, image_size: int, text_positions: int,
          text_len: int) -> BackboneSpec:
    return BackboneSpec(family=FAMILY, tasks=_tasks(frames, image_size, text_positions, text_len),
                        build=_builder(variant), default_task="qa_oe", default_meta_scope=default_meta_scope,
                        checkpoint_filter=_filter, example_batch=_example_batch(variant), description=description)


SPECS = {
    "ALPRO_BASE": _spec("ALPRO_BASE", "TimeSformer ViT-B/16 (divided space-time attention, 16 frames at 224) + "
                        "BERT-base split into a 6-layer text and a 6-layer multimodal encoder, 233,892,645 "
                        "parameters (qa_oe)",
                        16, 224, 512, 40),
    "ALPRO_TINY": _spec("ALPRO_TINY", "the same code at CPU-test size: 32-wide, 2 TimeSformer blocks, 2 + 2 BERT "
                        "layers, 4 frames of 32 px", 4, 32, 16, 12),
}
register_backbone("alpro_base", spec=SPECS["ALPRO_BASE"])
register_backbone("alpro_tiny", spec=SPECS["ALPRO_TINY"])
