"""ALPRO (Li et al., CVPR 2022, "Align and Prompt") as MELTR fine-tunes it for MSVD-QA (supplementary §H).

* ``visual_encoder``: TimeSformer, divided space-time attention (:mod:`.timesformer`); its output is [CLS] + the
  frame mean of each patch token, (B, 1 + N, d).
* ``text_encoder.bert``: one BERT-base whose layers ``0 .. fusion_layer−1`` are the **text encoder** (text alone)
  and layers ``fusion_layer ..`` the **multimodal encoder** (self-attention over [text ; video], as ALPRO's
  ``mode='fusion'``); ``text_encoder.cls``: the MLM head (decoder tied to the word embeddings).
* heads: ``vision_proj`` / ``text_proj`` (d → 256) and the learnt temperature ``temp`` (VTC), ``itm_head``
  (d → 2, VTM), ``mpm_head`` (PEM: d → 2d → entities), ``classifier`` (QA: d → 2d → answers).

Tasks and their MELTR losses (first = primary) are in :data:`TASK_LOSSES`, the losses in :mod:`.tasks`, the
checkpoint layout in :mod:`.checkpoint`. Bad input raises ``ValueError`` naming the value or the column.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertModel, BertOnlyMLMHead

from .._contract import (check_frames, check_text_ids, evaluating, in_order, replace_config,
                         wanted_losses)
from .._layers import additive_key_mask
from . import tasks as tasks_mod
from .timesformer import VisualEncoder

TASK_LOSSES = {"qa_oe": ("oe", "vtc", "vtm", "mlm"), "qa_oe_pem": ("oe", "vtc", "vtm", "mlm", "pem")}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)       # ALPRO's img_pixel_mean / std (config_release)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class AlproConfig:
    """Sizes and switches of one ALPRO variant (``create_backbone`` overrides any field by name)."""
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 16                   # rows of visual_encoder.model.time_embed
    vision_layers: int = 12
    vision_heads: int = 12
    drop_path: float = 0.1
    hidden_size: int = 768                 # BERT width = TimeSformer width (the fusion concatenates them)
    num_layers: int = 12
    fusion_layer: int = 6                  # layers [0, 6) text encoder, [6, 12) multimodal encoder
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout: float = 0.1
    vocab_size: int = 30522
    max_text_len: int = 512                # rows of the BERT position table
    embed_dim: int = 256                   # vision_proj / text_proj width
    temp: float = 0.07                     # initial VTC temperature (learnt, clamped to [0.001, 0.5])
    num_answers: int = 1000                # MSVD-QA: the 1,000 most frequent answers (MELTR supp. §B)
    num_entities: int = 1000               # PEM: entities the prompter scores
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    mlm_prob: float = 0.15
    resize_temporal: str | None = None     # checkpoint time_embed rows ≠ num_frames: None = error | nearest | …

    def validate(self) -> "AlproConfig":
        if not 0 < self.fusion_layer < self.num_layers:
            raise ValueError(f"fusion_layer must lie in (0, num_layers={self.num_layers}), got {self.fusion_layer}")
        for width, heads, what in ((self.hidden_size, self.num_heads, "num_heads"),
                                   (self.hidden_size, self.vision_heads, "vision_heads")):
            if width % heads:
                raise ValueError(f"hidden_size {width} is not divisible by {what} {heads}")
        if self.resize_temporal not in (None, "crop_or_zero", "nearest"):
            raise ValueError(f"resize_temporal must be None, 'crop_or_zero' or 'nearest', got {self.resize_temporal!r}")
        return self


def config_with_overrides(base: AlproConfig, overrides: dict) -> AlproConfig:
    """``base`` with fields replaced; unknown names raise ``ValueError`` naming them."""
    return replace_config(base, overrides, "ALPRO")


def bert_config(cfg: AlproConfig) -> BertConfig:
    bert = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                      hidden_dropout_prob=cfg.hidden_dropout, attention_probs_dropout_prob=cfg.hidden_dropout,
                      max_position_embeddings=cfg.max_text_len, type_vocab_size=2, pad_token_id=cfg.pad_token_id)
    bert._attn_implementation = "eager"        # written-out attention: double backward works
    return bert


class TextEncoder(nn.Module):
    """``text_encoder``: ``bert`` (embeddings + layers, no pooler) and ``cls`` (MLM head), ALPRO's layout."""

    def __init__(self, cfg: AlproConfig):
        super().__init__()
        bert = bert_config(cfg)
        self.bert = BertModel(bert, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(bert)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight    # tied (BERT)
        self.cls.predictions.decoder.bias = self.cls.predictions.bias                      # one Parameter

    def layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        offset = additive_key_mask(mask, hidden.dtype)
        for layer in self.bert.encoder.layer[start:stop]:
            out = layer(hidden, offset)
            hidden = out[0] if isinstance(out, tuple) else out        # transformers 4 returns a tuple
        return hidden


def _pair_head(dim: int, out: int) -> nn.Sequential:
    """ALPRO's ``classifier`` / ``mpm_head``: Linear(d, 2d) → ReLU → Linear(2d, out) (keys ``0.*``, ``2.*``)."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(True), nn.Linear(2 * dim, out))


class Alpro(nn.Module):
    """ALPRO for open-ended video QA; ``forward(batch, tasks=None) -> {loss name: scalar}`` (backbone contract)."""

    def __init__(self, task: str, cfg: AlproConfig):
        super().__init__()
        if task not in TASK_LOSSES:
            raise ValueError(f"unknown ALPRO task {task!r}; choose one of {sorted(TASK_LOSSES)}")
        self.task, self.cfg = task, cfg.validate()
        d = cfg.hidden_size
        self.visual_encoder = VisualEncoder(image_size=cfg.image_size, patch=cfg.patch_size, frames=cfg.num_frames,
                                            dim=d, depth=cfg.vision_layers, heads=cfg.vision_heads,
                                            drop_path=cfg.drop_path)
        self.text_encoder = TextEncoder(cfg)
        self.temp = nn.Parameter(torch.tensor(cfg.temp))
        self.vision_proj, self.text_proj = nn.Linear(d, cfg.embed_dim), nn.Linear(d, cfg.embed_dim)
        self.itm_head = nn.Linear(d, 2)
        self.classifier = _pair_head(d, cfg.num_answers)
        if "pem" in TASK_LOSSES[task]:
            self.mpm_head = _pair_head(d, cfg.num_entities)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 1, 3, 1, 1), persistent=False)
        self.task_names = list(TASK_LOSSES[task])
        self.primary_task = self.task_names[0]
        self.mask_generator: torch.Generator | None = None     # CPU generator for masking and negatives
        self.load_report = None

    @property
    def device(self) -> torch.device:
        return self.temp.device

    # ---- inputs -------------------------------------------------------------------------------------------
    def frames(self, frames) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) RGB → normalised float (B, T, 3, H, W), after checking the geometry."""
        frames = check_frames(frames, "ALPRO")
        t, h, w = frames.shape[1:4]
        model = self.visual_encoder.model
        if t > model.time_embed.shape[1]:
            raise ValueError(f"{t} frames per video, but visual_encoder.model.time_embed has "
                             f"{model.time_embed.shape[1]} rows (num_frames)")
        if (h, w) != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"frames are {h}x{w}, but visual_encoder.model.pos_embed holds a {model.grid}x"
                             f"{model.grid} grid: image_size {self.cfg.image_size}")
        x = frames.to(self.device).permute(0, 1, 4, 2, 3)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    def text(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids = check_text_ids(batch["text_ids"], self.cfg.max_text_len, self.cfg.vocab_size, "the position table")
        mask = torch.as_tensor(batch["text_mask"])
        return ids.to(self.device), mask.to(self.device).long()

    # ---- encoders -----------------------------------------------------------------------------------------
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(frames)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text encoder (layers below ``fusion_layer``) → (B, L, d)."""
        hidden = self.text_encoder.bert.embeddings(input_ids=ids)
        return self.text_encoder.layers(hidden, mask, 0, self.cfg.fusion_layer)

    def fuse(self, text: torch.Tensor, mask: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Multimodal encoder over [text ; video] (text padding masked) → (B, L + 1 + N, d), text first."""
        keys = torch.cat([mask, torch.ones(video.shape[:2], dtype=mask.dtype, device=mask.device)], dim=1)
        return self.text_encoder.layers(torch.cat([text, video], dim=1), keys, self.cfg.fusion_layer, None)

    # ---- the contract -------------------------------------------------------------------------------------
    def forward(self, batch: dict, tasks=None) -> dict:
        """{loss name: scalar} for ``tasks`` (default all, in MELTR order, the QA loss first)."""
        wanted = wanted_losses(self, tasks, "ALPRO")
        losses = tasks_mod.qa_losses(self, batch, set(wanted))
        return in_order(self, losses, wanted)

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """QA accuracy (percent) over every example; an answer outside the vocabulary counts as wrong."""
        with evaluating(self):
            return tasks_mod.evaluate_qa(self, batches)


# ---- variants ------------------------------------------------------------------------------------------------
ALPRO_BASE = AlproConfig()
ALPRO_TINY = AlproConfig(image_size=32, patch_size=8, num_frames=4, vision_layers=2, vision_heads=2, drop_path=0.0,
                         hidden_size=32, num_layers=4, fusion_layer=2, num_heads=2, intermediate_size=64,
                         hidden_dropout=0.0, max_text_len=16, embed_dim=16, num_answers=10, num_entities=12)


def build_alpro(base: AlproConfig, task: str = "qa_oe", pretrained: str | None = None, verbose: bool = True,
                **overrides) -> Alpro:
    """Build an ALPRO for ``task`` and, given a local checkpoint path, load it (strictly, with a report)."""
    from .checkpoint import load_alpro_checkpoint
    model = Alpro(task, config_with_overrides(base, overrides))
    if pretrained:
        model.load_report = load_alpro_checkpoint(model, pretrained, verbose=verbose)
    return model


def example_batch(cfg: AlproConfig, task: str, batch_size: int, generator: torch.Generator, frames: int,
                  text_len: int) -> dict:
    """A valid random batch (uint8 frames, [CLS] question [SEP] padded, answer ids, and for ``qa_oe_pem`` the
    prompter's entity distribution per video)."""
    g, b = generator, batch_size
    first = max(cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id) + 1
    ids = torch.randint(first, cfg.vocab_size, (b, text_len), generator=g)
    mask = torch.ones_like(ids)
    pad = text_len // 4
    ids[:, 0], ids[:, text_len - pad - 1] = cfg.cls_token_id, cfg.sep_token_id
    ids[:, text_len - pad:], mask[:, text_len - pad:] = cfg.pad_token_id, 0
    size = cfg.image_size
    batch = {"video_id": [f"v{i}" for i in range(b)], "text_ids": ids, "text_mask": mask,
             "frames": torch.randint(0, 256, (b, frames, size, size, 3), dtype=torch.uint8, generator=g),
             "answer": torch.randint(0, cfg.num_answers, (b,), generator=g)}
    if "pem" in TASK_LOSSES[task]:
        batch[tasks_mod.ENTITY_COLUMN] = torch.randn(b, cfg.num_entities, generator=g).softmax(-1)
    return batch
