"""Violet (Fu et al. 2021) as MELTR fine-tunes it: Video Swin + BERT cross encoder, four tasks.

Architecture (reference §4.4):

* ``enc_img``: ImageNet-normalised frames → Video Swin (temporal stride 1) → per frame, [CLS_f] + gh·gw patch
  tokens; + spatial ``emb_pos[:1+gh·gw]`` + temporal ``emb_len[:T]`` → LayerNorm. T·(1+gh·gw) video tokens.
* ``enc_txt.emb_txt``: BERT embeddings (word + position + type, LayerNorm).
* ``trsfr``: a BERT encoder over [video tokens ; text tokens] with padding masked; eager attention, so every op
  has a double backward (the MELTR meta step differentiates twice through the layers in its scope).
* heads (official names, so the official checkpoints load unchanged): VTM Dropout→Linear(d,2d)→ReLU→
  Linear(2d,1) at the text [CLS]; MTM = BERT MLM head on text positions; MVM Dropout→…→8192 on video positions;
  QA-OE (Dropout 0.5, size_vocab answers), QA-MC (one score per option), action (num_classes).

Tasks → MELTR losses (order = MELTR input order, first = primary) are in :data:`TASK_LOSSES`; the losses
themselves are in :mod:`meltr_ray.backbones.violet.tasks`. Bad input raises ``ValueError`` naming the value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder, BertOnlyMLMHead

from . import tasks as tasks_mod
from .._contract import evaluating, in_order, replace_config, wanted_losses
from .._layers import additive_key_mask, init_bert_style, two_layer_head
from .checkpoint import load_violet_checkpoint
from .video_swin import SwinTransformer3D

TASK_LOSSES = {
    "retrieval": ("vtm", "mtm", "mvm"),
    "qa_mc": ("mc", "vtm", "mtm", "mvm"),
    "qa_oe": ("oe", "vtm", "mtm", "mvm"),
    "action": ("cls", "mvm"),
}
# loss role -> head module name per task; the official code calls the VTM head `fc` in retrieval (and in the
# pretrained checkpoint) but `fc_vtm` in QA, and we keep both so each official layout loads as is.
HEAD_NAMES = {
    "retrieval": {"vtm": "fc", "mtm": "fc_mtm", "mvm": "fc_mvm"},
    "qa_mc": {"mc": "fc_mc", "vtm": "fc_vtm", "mtm": "fc_mtm", "mvm": "fc_mvm"},
    "qa_oe": {"oe": "fc_oe", "vtm": "fc_vtm", "mtm": "fc_mtm", "mvm": "fc_mvm"},
    "action": {"cls": "fc_cls", "mvm": "fc_mvm"},
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VioletConfig:
    """Sizes and switches of one Violet variant (``create_backbone`` overrides any field by name)."""
    embed_dim: int = 96                    # Swin stage-1 width; the video features are 8× this
    swin_depths: tuple = (2, 2, 18, 2)
    swin_heads: tuple = (3, 6, 12, 24)
    window: tuple = (8, 7, 7)
    drop_path: float = 0.2
    hidden_size: int = 768                 # cross encoder width (= 8·embed_dim)
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_text_len: int = 512                # rows of the text position table
    max_frames: int = 6                    # rows of the temporal embedding emb_len
    max_grid: int = 14                     # emb_pos holds [CLS] + max_grid² cells (≤ 448 px)
    mvm_vocab: int = 8192                  # DALL-E dVAE codes
    size_vocab: int = 1000                 # open-ended answers (MSVD-QA 1000, TGIF-Frame 1540)
    num_classes: int = 400                 # action recognition (Kinetics-400)
    pad_token_id: int = 0                  # bert-base-uncased ids; the demo WordPiece vocab uses 0/2/3/4
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    mtm_prob: float = 0.15
    vtm_temperature: float = 0.05          # VTM logits = score / 0.05 in training (official)
    # official: video→text CE only, blind to a per-video score offset; from random weights that offset grows
    # freely and text→video ranking stays at chance (the demo measured it): True adds the text→video CE
    vtm_symmetric: bool = False
    dropout: float = 0.1                   # BERT hidden/attention and head dropout (official 0.1; OE head 0.5)
    mvm_targets: str = "shards"            # shards (batch["vq_ids"]) | color (stand-in, demos only)
    masked_primary: bool = False           # True = official bug B-V2: the primary loss sees masked frames
    reuse_pretrained_vtm: bool = True      # QA: start fc_vtm from the pretrained VTM head `fc` (official: fresh)
    eval_pair_batch: int = 64              # (text, video) pairs per cross-encoder pass in retrieval eval

    def validate(self) -> "VioletConfig":
        if self.hidden_size != self.embed_dim * 2 ** (len(self.swin_depths) - 1):
            raise ValueError(f"hidden_size ({self.hidden_size}) must equal the Swin output width "
                             f"embed_dim·2^(stages-1) = {self.embed_dim * 2 ** (len(self.swin_depths) - 1)}")
        if self.mvm_targets not in ("shards", "color"):
            raise ValueError(f"mvm_targets must be 'shards' or 'color', got {self.mvm_targets!r}")
        if self.mvm_targets == "color" and self.mvm_vocab < 512:
            raise ValueError(f"mvm_targets='color' needs mvm_vocab >= 512, got {self.mvm_vocab}")
        return self


OVERRIDE_ALIASES = {"num_answers": "size_vocab"}


def config_with_overrides(base: VioletConfig, overrides: dict) -> VioletConfig:
    """``base`` with fields replaced; unknown names raise ``ValueError`` naming them."""
    return replace_config(base, overrides, "Violet", OVERRIDE_ALIASES)


class VideoEmbedder(nn.Module):
    """``enc_img``: frames (B, T, 3, H, W) in [0, 1] → tokens (B, T·(1+gh·gw), d)."""

    def __init__(self, cfg: VioletConfig):
        super().__init__()
        d = cfg.hidden_size
        self.swin = SwinTransformer3D(cfg.embed_dim, cfg.swin_depths, cfg.swin_heads, cfg.window,
                                      drop_path_rate=cfg.drop_path)
        self.emb_cls = nn.Parameter(0.02 * torch.randn(1, 1, 1, d))
        self.emb_pos = nn.Parameter(0.02 * torch.randn(1, 1, 1 + cfg.max_grid ** 2, d))
        self.emb_len = nn.Parameter(0.02 * torch.randn(1, cfg.max_frames, 1, d))
        self.norm = nn.LayerNorm(d)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = self.swin(((frames - self.mean) / self.std).transpose(1, 2))       # (B, T, gh, gw, d)
        cells = x.shape[2] * x.shape[3]
        x = torch.cat([self.emb_cls.expand(b, t, 1, -1), x.reshape(b, t, cells, -1)], dim=2)
        x = x + self.emb_pos[:, :, :1 + cells] + self.emb_len[:, :t]
        return self.norm(x).reshape(b, t * (1 + cells), -1)


class TextEmbedder(nn.Module):
    """``enc_txt``: BERT word + position + token-type embeddings with LayerNorm (module ``emb_txt``)."""

    def __init__(self, bert_cfg: BertConfig):
        super().__init__()
        self.emb_txt = BertEmbeddings(bert_cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb_txt(input_ids=ids)


def bert_config(cfg: VioletConfig) -> BertConfig:
    bert = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                      max_position_embeddings=cfg.max_text_len, type_vocab_size=2, layer_norm_eps=1e-12,
                      pad_token_id=cfg.pad_token_id, hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout)
    bert._attn_implementation = "eager"        # written-out attention: double backward works
    return bert


def _build_head(role: str, cfg: VioletConfig, bert: BertConfig) -> nn.Module:
    d = cfg.hidden_size
    if role == "mtm":
        head = BertOnlyMLMHead(bert)
        head.predictions.decoder.bias = head.predictions.bias      # one Parameter, two keys (as official)
        return head
    out = {"vtm": 1, "mc": 1, "mvm": cfg.mvm_vocab, "oe": cfg.size_vocab, "cls": cfg.num_classes}[role]
    return two_layer_head(d, out, dropout=0.5 if role == "oe" else cfg.dropout)


def _init_bert_style(module: nn.Module) -> None:
    """BERT's init for the text/cross/head parts (:func:`init_bert_style`), padding embedding rows zeroed."""
    init_bert_style(module)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


class Violet(nn.Module):
    """Violet for one task; ``forward(batch, tasks=None) -> {loss name: scalar}`` (backbone contract)."""

    def __init__(self, task: str, cfg: VioletConfig):
        super().__init__()
        if task not in TASK_LOSSES:
            raise ValueError(f"unknown Violet task {task!r}; choose one of {sorted(TASK_LOSSES)}")
        self.task, self.cfg = task, cfg.validate()
        bert = bert_config(cfg)
        self.enc_img = VideoEmbedder(cfg)
        self.enc_txt = TextEmbedder(bert)
        self.trsfr = BertEncoder(bert)
        self.head_names = dict(HEAD_NAMES[task])
        for role, name in self.head_names.items():
            self.add_module(name, _build_head(role, cfg, bert))
        for part in [self.enc_txt, self.trsfr] + [getattr(self, n) for n in self.head_names.values()]:
            part.apply(_init_bert_style)
        self.task_names = list(TASK_LOSSES[task])
        self.primary_task = self.task_names[0]
        self.default_meta_scope = ([f"trsfr.layer.{cfg.num_layers - 1}.*"]
                                   + [f"{name}.*" for name in self.head_names.values()])
        self.mask_generator: torch.Generator | None = None     # CPU generator for masking (None = global)
        self.load_report = None

    # ---- building blocks used by the task losses ------------------------------------------------------
    def head(self, role: str) -> nn.Module:
        return getattr(self, self.head_names[role])

    @property
    def device(self) -> torch.device:
        return self.enc_img.emb_cls.device

    def frames01(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) RGB → float (B, T, 3, H, W) in [0, 1], after checking the geometry."""
        frames = torch.as_tensor(frames)
        if frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (B, T, H, W, 3) RGB, got shape {tuple(frames.shape)}")
        t, h, w = frames.shape[1:4]
        stride = self.enc_img.swin.stride
        if t > self.cfg.max_frames:
            raise ValueError(f"{t} frames per video, but Violet's temporal embedding emb_len has "
                             f"{self.cfg.max_frames} rows (max_frames); sample at most {self.cfg.max_frames}")
        if h % stride or w % stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of {stride} (the Swin output stride)")
        if (h // stride) * (w // stride) > self.cfg.max_grid ** 2:
            raise ValueError(f"image size {h}x{w} gives {h // stride}x{w // stride} cells, more than the "
                             f"{self.cfg.max_grid}x{self.cfg.max_grid} of the spatial embedding emb_pos")
        x = frames.to(self.device).permute(0, 1, 4, 2, 3)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def check_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text ids on the model's device, after checking them against the position table and vocabulary."""
        ids = torch.as_tensor(ids)
        if ids.shape[-1] > self.cfg.max_text_len:
            raise ValueError(f"text length {ids.shape[-1]} is longer than the position table "
                             f"({self.cfg.max_text_len} rows, max_text_len)")
        if ids.numel() and (int(ids.max()) >= self.cfg.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"text ids must lie in [0, {self.cfg.vocab_size}) (vocab_size), got ids in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.to(self.device)

    def encode_video(self, frames01: torch.Tensor) -> torch.Tensor:
        return self.enc_img(frames01)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.enc_txt(ids)

    def cross(self, video: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """BERT encoder over [video ; text]; video tokens are all attended, text padding is masked."""
        mask = torch.cat([torch.ones(video.shape[:2], dtype=torch.long, device=video.device),
                          text_mask.to(video.device).long()], dim=1)
        hidden = torch.cat([video, text], dim=1)
        return self.trsfr(hidden, additive_key_mask(mask, hidden.dtype)).last_hidden_state

    # ---- the contract -----------------------------------------------------------------------------------
    def forward(self, batch: dict, tasks=None) -> dict:
        """{loss name: scalar} for ``tasks`` (default all, in MELTR order); primary losses see clean frames."""
        wanted = wanted_losses(self, tasks, "Violet")
        losses = tasks_mod.TASK_FORWARD[self.task](self, batch, set(wanted))
        return in_order(self, losses, wanted)

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Task metrics over every batch (no dropped last batch), in eval mode on clean frames."""
        with evaluating(self):
            return tasks_mod.TASK_EVALUATE[self.task](self, batches)


# ---- variants ------------------------------------------------------------------------------------------------
VIOLET_BASE = VioletConfig()
VIOLET_TINY = VioletConfig(embed_dim=16, swin_depths=(2, 2, 2, 2), swin_heads=(1, 2, 4, 8), window=(2, 4, 4),
                           drop_path=0.0, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256,
                           max_text_len=64)


def build_violet(base: VioletConfig, task: str = "retrieval", pretrained: str | None = None,
                 verbose: bool = True, **overrides) -> Violet:
    """Build a Violet for ``task`` and, given a local checkpoint path, load it (strictly, with a report)."""
    if task == "qa":
        raise ValueError("Violet task 'qa' is ambiguous: use 'qa_mc' (multiple choice: TGIF-Action, "
                         "TGIF-Transition) or 'qa_oe' (open-ended: MSVD-QA, TGIF-Frame)")
    if task not in TASK_LOSSES:
        raise ValueError(f"unknown Violet task {task!r}; choose one of {sorted(TASK_LOSSES)}")
    model = Violet(task, config_with_overrides(base, overrides))
    if pretrained:
        model.load_report = load_violet_checkpoint(model, pretrained, verbose=verbose)
    return model


def example_batch(cfg: VioletConfig, task: str, batch_size: int, generator: torch.Generator, frames: int,
                  image_size: int, text_len: int) -> dict:
    """A valid random batch in the data layer's format (uint8 frames, [CLS] … [SEP] ids padded with 0,
    visual tokens of every frame, per-task targets) for tests and benchmarks."""
    g, b = generator, batch_size
    options = 3
    shape = (b, options, text_len) if task == "qa_mc" else (b, text_len)
    first = max(cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id) + 1
    ids = torch.randint(first, cfg.vocab_size, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    pad = max(0, text_len // 4)
    ids[..., 0], ids[..., text_len - pad - 1] = cfg.cls_token_id, cfg.sep_token_id
    ids[..., text_len - pad:], mask[..., text_len - pad:] = cfg.pad_token_id, 0
    grid = image_size // 32
    batch = {
        "video_id": [f"v{i}" for i in range(b)],
        "frames": torch.randint(0, 256, (b, frames, image_size, image_size, 3), dtype=torch.uint8, generator=g),
        "vq_ids": torch.randint(0, cfg.mvm_vocab, (b, frames, grid, grid), generator=g),
    }
    if task != "action":
        batch.update(text_ids=ids, text_mask=mask)
    if task == "qa_mc":
        batch.update(option_mask=torch.ones(b, options, dtype=torch.long),
                     answer=torch.randint(0, options, (b,), generator=g))
    elif task == "qa_oe":
        batch["answer"] = torch.randint(0, cfg.size_vocab, (b,), generator=g)
    elif task == "action":
        batch["label"] = torch.randint(0, cfg.num_classes, (b,), generator=g)
    return batch
