"""UniVL (Luo et al. 2020) as MELTR fine-tunes it: text, visual and cross encoders, a caption decoder, heads.

Architecture (reference §3.4; parameter names = the official checkpoint's, ``checkpoints/univl.json``):

* ``normalize_video.visual_norm2d``: LayerNorm over each raw S3D feature vector (1024-d, one per second);
* ``bert``: BERT embeddings + encoder (12 layers) over the text; its pooler is unused and not built;
* ``visual``: Linear(1024 → 768) + positions + LayerNorm, then a 6-layer BERT encoder (its pooler: unused);
* ``cross``: 2-layer BERT encoder over [text ; video] with its own position and type embeddings, pooler;
* ``decoder``: 3 layers, word/position embeddings tied to BERT's, classifier tied to the word embeddings;
* heads ``cls`` (MLM, tied), ``cls_visual`` (MFM, tied to the visual projection), ``similarity_dense``
  (Linear d → 1 on the cross pooled output), and for sentiment ``sentiment_head`` (Linear d → 1, new).

Only the parts the chosen losses (and the task's evaluation) use are built, so every built parameter gets a
gradient. The losses are in :mod:`.tasks`, evaluation in :mod:`.evaluation`. Built from a local
``BertConfig`` with eager attention (double backward); never downloads anything.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder

from .._contract import evaluating, in_order, wanted_losses
from .._layers import init_bert_style
from . import evaluation
from .tasks import univl_losses
from .config import TASK_PRIMARY, UniVLConfig, config_with_overrides, read_vocab_tokens, task_losses
from .layers import CrossEncoder, Decoder, LMHead, VisualEncoder, VisualHead, run_encoder

def bert_config(cfg: UniVLConfig, layers: int, positions: int) -> BertConfig:
    bert = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                      max_position_embeddings=positions, type_vocab_size=2, layer_norm_eps=1e-12,
                      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                      pad_token_id=cfg.pad_token_id)
    bert._attn_implementation = "eager"        # written-out attention: double backward works
    return bert


class UniVL(nn.Module):
    """UniVL for one task; ``forward(batch, tasks=None) -> {loss name: scalar}`` (backbone contract)."""

    def __init__(self, task: str, cfg: UniVLConfig):
        super().__init__()
        self.task, self.cfg = task, cfg.validate()
        self.task_names = list(task_losses(task, cfg.losses, cfg.primary))
        self.primary_task = self.task_names[0]
        used = set(self.task_names)
        text = bert_config(cfg, cfg.text_layers, cfg.text_positions)
        self.bert = nn.Module()
        self.bert.embeddings, self.bert.encoder = BertEmbeddings(text), BertEncoder(text)
        self.normalize_video = nn.Module()
        self.normalize_video.visual_norm2d = nn.LayerNorm(cfg.feature_dim, eps=1e-12)
        self.visual = VisualEncoder(bert_config(cfg, cfg.visual_layers, cfg.visual_positions), cfg.feature_dim)
        self.cross = CrossEncoder(bert_config(cfg, cfg.cross_layers, cfg.cross_positions))
        self._build_heads(text, used)
        self.apply(init_bert_style)
        self.mask_generator: torch.Generator | None = None     # CPU generator for masking (None = global)
        self.load_report = None
        self.vocab = read_vocab_tokens(cfg.vocab_path) if cfg.vocab_path else None

    def _build_heads(self, text: BertConfig, used: set) -> None:
        cfg, words = self.cfg, self.bert.embeddings.word_embeddings
        if used & {"decoder", "m_decoder"} or self.task == "captioning":
            self.decoder = Decoder(text, cfg.decoder_layers, words, self.bert.embeddings.position_embeddings)
        if "cmlm" in used:
            self.cls = LMHead(text, words)
        if "cmfm" in used:
            self.cls_visual = VisualHead(text, self.visual.embeddings.word_embeddings)
        if used & {"align", "m_align"} or self.task == "retrieval":
            self.similarity_dense = nn.Linear(cfg.hidden_size, 1)
            # a constant added to every Align logit: softmax and ranking ignore it, so it never gets a
            # gradient; frozen (it still loads from the checkpoint)
            self.similarity_dense.bias.requires_grad_(False)
        if self.task == "sentiment":
            self.sentiment_head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_size, 1))

    @property
    def device(self) -> torch.device:
        return self.normalize_video.visual_norm2d.weight.device

    @property
    def default_meta_scope(self) -> list[str]:
        """The top cross layer, the cross pooler, the top decoder layer and every head (not tied embeddings)."""
        top = [f"cross.encoder.layer.{self.cfg.cross_layers - 1}.*", "cross.pooler.*"]
        if hasattr(self, "decoder"):
            top += [f"decoder.decoder.layer.{self.cfg.decoder_layers - 1}.*", "decoder.classifier.*"]
        return top + ["cls.*", "cls_visual.*", "similarity_dense.*", "sentiment_head.*"]

    # ---- checked inputs -------------------------------------------------------------------------------
    def check_text(self, ids, what: str = "text_ids") -> torch.Tensor:
        """Token ids on the model's device, after checking them against the position table and vocabulary."""
        ids = torch.as_tensor(ids)
        if ids.dim() != 2:
            raise ValueError(f"{what} must be (batch, length), got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.cfg.text_positions:
            raise ValueError(f"{what} length {ids.shape[1]} is longer than the text position table "
                             f"({self.cfg.text_positions} rows, text_positions); shorten data.max_text_len")
        if ids.numel() and (int(ids.max()) >= self.cfg.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"{what} must lie in [0, {self.cfg.vocab_size}) (vocab_size), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.to(self.device).long()

    def check_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, F, D) float, feature_mask (B, F)) after checking width and length."""
        if "features" not in batch:
            raise ValueError("UniVL needs batch['features'] (B, F, D): pre-extracted S3D features "
                             "(ingest a feature dataset: --format youcook2 | msrvtt features | cmu-mosi)")
        feats = torch.as_tensor(batch["features"]).to(self.device).float()
        if feats.dim() != 3 or feats.shape[-1] != self.cfg.feature_dim:
            raise ValueError(f"features must be (B, F, {self.cfg.feature_dim}) (feature_dim), got shape "
                             f"{tuple(feats.shape)}")
        if feats.shape[1] > self.cfg.visual_positions:
            raise ValueError(f"{feats.shape[1]} feature frames per clip, but the visual position table has "
                             f"{self.cfg.visual_positions} rows (visual_positions)")
        mask = batch.get("feature_mask")
        mask = torch.ones(feats.shape[:2]) if mask is None else torch.as_tensor(mask)
        return feats, mask.to(self.device).long()

    def check_pair_length(self, text_len: int, frames: int) -> None:
        if text_len + frames > self.cfg.cross_positions:
            raise ValueError(f"{text_len} text tokens + {frames} frames exceed the cross encoder's position "
                             f"table ({self.cfg.cross_positions} rows, cross_positions)")

    # ---- encoders ---------------------------------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return run_encoder(self.bert.encoder, self.bert.embeddings(input_ids=ids), mask)

    def encode_video(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.visual(self.normalize_video.visual_norm2d(features), mask)

    def cross_pair(self, text, text_mask, video, video_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross hidden (B, Lt+F, d), pooled (B, d)) of aligned (text_i, video_i) pairs."""
        return self.cross(text, text_mask, video, video_mask)

    def decode_logits(self, ids, ids_mask, memory, memory_mask) -> torch.Tensor:
        return self.decoder(ids, ids_mask, memory, memory_mask)

    # ---- the contract -----------------------------------------------------------------------------------
    def forward(self, batch: dict, tasks=None) -> dict:
        """{loss name: scalar} for ``tasks`` (default all of this model's losses, in MELTR order)."""
        wanted = wanted_losses(self, tasks, "UniVL")
        losses = univl_losses(self, batch, set(wanted))
        return in_order(self, losses, wanted)

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        """Task metrics over every batch, in eval mode (retrieval R@K/MedR/MnR, captioning BLEU…CIDEr,
        sentiment Acc-2/F1/MAE/Corr/Acc-7)."""
        with evaluating(self):
            return evaluation.TASK_EVALUATE[self.task](self, batches)


def build_univl(base: UniVLConfig, task: str = "retrieval", pretrained: str | None = None,
                verbose: bool = True, **overrides) -> UniVL:
    """Build a UniVL for ``task`` and, given a local checkpoint path, load it (strictly, with a report)."""
    if task not in TASK_PRIMARY:
        raise ValueError(f"unknown UniVL task {task!r}; choose one of {sorted(TASK_PRIMARY)}")
    model = UniVL(task, config_with_overrides(base, overrides))
    if pretrained:
        from .checkpoint import load_univl_checkpoint
        model.load_report = load_univl_checkpoint(model, pretrained, verbose=verbose)
    return model


def _random_text(cfg: UniVLConfig, b: int, length: int, generator: torch.Generator) -> tuple:
    """``[CLS] w… [SEP] [PAD]…`` ids (the last quarter padding) and their mask."""
    first = max(cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id, cfg.mask_token_id) + 1
    ids = torch.randint(first, cfg.vocab_size, (b, length), generator=generator)
    mask = torch.ones(b, length, dtype=torch.long)
    pad = length // 4
    ids[:, 0], ids[:, length - pad - 1] = cfg.cls_token_id, cfg.sep_token_id
    ids[:, length - pad:], mask[:, length - pad:] = cfg.pad_token_id, 0
    return ids, mask


def example_batch(cfg: UniVLConfig, task: str, batch_size: int, generator: torch.Generator, frames: int,
                  text_len: int) -> dict:
    """A valid random batch in the data layer's format (features + mask, caption ids, per-task extras): the
    last clip has two padded frames; captioning batches carry an ASR transcript, sentiment ones a score."""
    g, b = generator, batch_size
    feature_mask = torch.ones(b, frames, dtype=torch.long)
    feature_mask[-1, max(1, frames - 2):] = 0
    features = torch.randn(b, frames, cfg.feature_dim, generator=g) * feature_mask[..., None]
    ids, mask = _random_text(cfg, b, text_len, g)
    batch = {"video_id": [f"v{i}" for i in range(b)], "features": features, "feature_mask": feature_mask,
             "text_ids": ids, "text_mask": mask}
    if task == "captioning":
        batch["transcript_ids"], batch["transcript_mask"] = _random_text(cfg, b, text_len, g)
    if task == "sentiment":
        batch["score"] = torch.rand(b, generator=g) * 6.0 - 3.0
    return batch
