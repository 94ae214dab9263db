"""All-in-one (Wang et al. 2022) as MELTR fine-tunes it for text-to-video retrieval (reference §5).

One shared ViT (``transformer``, timm names) reads text and video:

* text: BERT embeddings with **40** positions (``text_embeddings``) + modality row 0 of
  ``token_type_embeddings``;
* video: each of the T frames → [CLS] + 16×16 patches, + spatial ``pos_embed``, + the frame's ``temporal_embed``
  row on its patches, + modality row 1;
* unimodal passes (the contrastive loss): text alone, or the frames alone with no roll; each frame's output is
  normalised and **averaged over frames**; [CLS] → ``txt_proj`` / ``vid_proj`` (d → 512);
* joint pass (MLM): per frame [text ; image tokens], the temporal roll before every block, averaged over frames;
  the MLM head (``mlm_score``) reads the text positions.

Losses ([VTM, MLM], VTM primary — fixes B-A1, where the official meta step used MLM) are in :mod:`.tasks`; the
official-checkpoint filter in :mod:`.checkpoint`. ``pooler`` is kept, frozen, only so the official checkpoints
load strictly: neither loss reads it. Bad input raises ``ValueError`` naming the value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings

from .._contract import (check_frames, check_text_ids, evaluating, in_order, replace_config,
                         wanted_losses)
from .._layers import init_bert_style
from .._spec import IMAGENET_MEAN, IMAGENET_STD
from . import tasks as tasks_mod
from .vit import VideoTransformer

TASK_LOSSES = {"retrieval": ("vtm", "mlm")}


@dataclass
class AllInOneConfig:
    """Sizes and switches of one All-in-one variant (``create_backbone`` overrides any field by name)."""
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 3                    # rows of transformer.temporal_embed
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_rate: float = 0.1
    drop_path: float = 0.1
    vocab_size: int = 30522
    max_text_len: int = 40                 # rows of text_embeddings.position_embeddings
    embed_dim: int = 512                   # shared_embedding_dim: txt_proj / vid_proj width
    mean: tuple = IMAGENET_MEAN            # the a100 video transform's normalisation (§5.4)
    std: tuple = IMAGENET_STD
    pad_token_id: int = 0                  # bert-base-uncased ids; the demo WordPiece vocab uses 0/2/3/4
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    mlm_prob: float = 0.15
    itc_temperature: float = 0.05          # τ of the contrastive (ind-ITC / "VTM") loss
    resize_temporal: str | None = None     # checkpoint temporal_embed rows ≠ num_frames: None = error | crop_or_zero

    def validate(self) -> "AllInOneConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.resize_temporal not in (None, "crop_or_zero", "nearest"):
            raise ValueError(f"resize_temporal must be None, 'crop_or_zero' or 'nearest', got {self.resize_temporal!r}")
        return self


def config_with_overrides(base: AllInOneConfig, overrides: dict) -> AllInOneConfig:
    """``base`` with fields replaced; unknown names raise ``ValueError`` naming them."""
    return replace_config(base, overrides, "All-in-one")


class MLMHead(nn.Module):
    """``mlm_score``: dense → GELU → LayerNorm → decoder (no bias) + a separate ``bias`` (not tied, official)."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(dim, dim))
        self.transform.add_module("act", nn.GELU())
        self.transform.add_module("LayerNorm", nn.LayerNorm(dim, eps=1e-12))
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden)) + self.bias


class Pooler(nn.Module):
    """tanh(dense(h_[CLS])); in the official checkpoints, unused by the retrieval losses (kept frozen)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


def _text_embeddings(cfg: AllInOneConfig) -> BertEmbeddings:
    bert = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, max_position_embeddings=cfg.max_text_len,
                      type_vocab_size=2, hidden_dropout_prob=cfg.drop_rate, pad_token_id=cfg.pad_token_id)
    return BertEmbeddings(bert)


class AllInOne(nn.Module):
    """All-in-one for retrieval; ``forward(batch, tasks=None) -> {loss name: scalar}`` (backbone contract)."""

    def __init__(self, task: str, cfg: AllInOneConfig):
        super().__init__()
        if task not in TASK_LOSSES:
            raise ValueError(f"unknown All-in-one task {task!r}; choose one of {sorted(TASK_LOSSES)}")
        self.task, self.cfg = task, cfg.validate()
        d = cfg.hidden_size
        self.text_embeddings = _text_embeddings(cfg)
        self.token_type_embeddings = nn.Embedding(2, d)
        self.transformer = VideoTransformer(cfg.image_size, cfg.patch_size, cfg.num_frames, d, cfg.num_layers,
                                            cfg.num_heads, cfg.mlp_ratio, cfg.drop_rate, cfg.drop_path)
        self.pooler = Pooler(d)
        self.mlm_score = MLMHead(d, cfg.vocab_size)
        self.txt_proj, self.vid_proj = nn.Linear(d, cfg.embed_dim), nn.Linear(d, cfg.embed_dim)
        for part in (self.text_embeddings, self.token_type_embeddings, self.pooler, self.mlm_score, self.txt_proj,
                     self.vid_proj):
            part.apply(init_bert_style)   # All-in-one's objectives.init_weights
        self.pooler.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 1, 3, 1, 1), persistent=False)
        self.task_names = list(TASK_LOSSES[task])
        self.primary_task = self.task_names[0]
        self.mask_generator: torch.Generator | None = None     # CPU generator for masking (None = global)
        self.load_report = None

    @property
    def device(self) -> torch.device:
        return self.transformer.cls_token.device

    # ---- inputs -------------------------------------------------------------------------------------------
    def frames(self, frames) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) RGB → normalised float (B, T, 3, H, W), after checking the geometry."""
        frames = check_frames(frames, "All-in-one")
        t, h, w = frames.shape[1:4]
        rows = self.transformer.temporal_embed.shape[1]
        if t > rows:
            raise ValueError(f"{t} frames per video, but transformer.temporal_embed has {rows} rows (num_frames)")
        if (h, w) != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"frames are {h}x{w}, but transformer.pos_embed holds a {self.transformer.grid}x"
                             f"{self.transformer.grid} grid: image_size {self.cfg.image_size}")
        x = frames.to(self.device).permute(0, 1, 4, 2, 3)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    def text(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) on the device, checked against the 40-row position table and the vocabulary."""
        ids = check_text_ids(batch["text_ids"], self.cfg.max_text_len, self.cfg.vocab_size,
                             "text_embeddings.position_embeddings")
        mask = torch.as_tensor(batch["text_mask"])
        return ids.to(self.device), mask.to(self.device).long()

    # ---- passes -------------------------------------------------------------------------------------------
    def text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_embeddings(input_ids=ids) + self.token_type_embeddings.weight[0]

    def video_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        return self.transformer.embed(frames) + self.token_type_embeddings.weight[1]

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-only pass → [CLS] → txt_proj, (B, embed_dim). The official code repeats the text once per frame
        and averages; without image tokens every frame's pass is the same, so one pass is run."""
        hidden = self.transformer.run(self.text_tokens(ids).unsqueeze(1), mask)
        return self.txt_proj(hidden[:, 0, 0])

    def video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Video-only pass (no roll) → frame mean → [CLS] → vid_proj, (B, embed_dim)."""
        hidden = self.transformer.run(self.video_tokens(frames))
        return self.vid_proj(hidden.mean(dim=1)[:, 0])

    def joint(self, frames: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Joint pass with the temporal roll, averaged over frames → (B, L + 1 + N, d); text first."""
        video = self.video_tokens(frames)
        b, t = video.shape[:2]
        text = self.text_tokens(ids).unsqueeze(1).expand(-1, t, -1, -1)
        keys = torch.cat([mask, torch.ones(b, video.shape[2], dtype=mask.dtype, device=mask.device)], dim=1)
        hidden = self.transformer.run(torch.cat([text, video], dim=2), keys, roll_from=ids.shape[1])
        return hidden.mean(dim=1)

    # ---- the contract -------------------------------------------------------------------------------------
    def forward(self, batch: dict, tasks=None) -> dict:
        """{loss name: scalar} for ``tasks`` (default both, in MELTR order [vtm, mlm])."""
        wanted = wanted_losses(self, tasks, "All-in-one")
        losses = tasks_mod.retrieval_losses(self, batch, set(wanted))
        return in_order(self, losses, wanted)

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Text→video R@1/5/10, MedR, MnR over every batch (eval mode, the frames the batches hold)."""
        with evaluating(self):
            return tasks_mod.evaluate_retrieval(self, batches)


# ---- variants ------------------------------------------------------------------------------------------------
ALLINONE_BASE = AllInOneConfig()
ALLINONE_TINY = AllInOneConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2,
                               drop_rate=0.0, drop_path=0.0, max_text_len=16, embed_dim=16)


def build_allinone(base: AllInOneConfig, task: str = "retrieval", pretrained: str | None = None,
                   verbose: bool = True, **overrides) -> AllInOne:
    """Build an All-in-one for ``task`` and, given a local checkpoint path, load it (strictly, with a report)."""
    from .checkpoint import load_allinone_checkpoint
    model = AllInOne(task, config_with_overrides(base, overrides))
    if pretrained:
        model.load_report = load_allinone_checkpoint(model, pretrained, verbose=verbose)
    return model


def example_batch(cfg: AllInOneConfig, batch_size: int, generator: torch.Generator, frames: int,
                  text_len: int) -> dict:
    """A valid random batch in the data layer's format (uint8 frames, [CLS] … [SEP] ids padded with [PAD])."""
    first = max(cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id) + 1
    ids = torch.randint(first, cfg.vocab_size, (batch_size, text_len), generator=generator)
    mask = torch.ones_like(ids)
    pad = text_len // 4
    ids[:, 0], ids[:, text_len - pad - 1] = cfg.cls_token_id, cfg.sep_token_id
    ids[:, text_len - pad:], mask[:, text_len - pad:] = cfg.pad_token_id, 0
    size = cfg.image_size
    return {"video_id": [f"v{i}" for i in range(batch_size)], "text_ids": ids, "text_mask": mask,
            "frames": torch.randint(0, 256, (batch_size, frames, size, size, 3), dtype=torch.uint8,
                                    generator=generator)}
