"""UniVL's building blocks, named as in the official checkpoint (reference ``checkpoints/univl.json``).

The text encoder is HF's ``BertEmbeddings`` + ``BertEncoder``; the rest is written here on top of HF's BERT
sub-layers so the parameter names match ``univl.pretrained.bin`` key for key:

* :class:`VisualEncoder` (``visual.*``): S3D features → ``Linear(feature_dim → d)`` ("word embeddings") +
  learned positions + LayerNorm, then a BERT encoder;
* :class:`CrossEncoder` (``cross.*``): [text ; video] + its own positions + token types (text 0, video 1) +
  LayerNorm, a BERT encoder, and the pooler tanh(Dense(h_0)) on the first token;
* :class:`Decoder` (``decoder.*``): word/position embeddings tied to BERT's, layers of causal self-attention
  (``slf_attn``), cross-attention on the cross encoder's output (``enc_attn``) and FFN, post-LN as BERT, and an
  MLM-style classifier tied to the word embeddings;
* :class:`LMHead` (``cls.*`` and ``decoder.classifier.cls.*``) and :class:`VisualHead` (``cls_visual.*``).

Attention is written out (eager), so every op has a double backward: the MELTR meta step differentiates twice.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (BertEncoder, BertIntermediate, BertOutput, BertPooler,
                                                    BertPredictionHeadTransform, BertSelfOutput)

from .._layers import MASKED_SCORE, additive_key_mask


def run_encoder(encoder: BertEncoder, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A BERT encoder over ``hidden`` (B, N, d) with key padding ``mask`` (B, N) (1 = attend)."""
    return encoder(hidden, additive_key_mask(mask, hidden.dtype)).last_hidden_state


class VisualEmbeddings(nn.Module):
    """``visual.embeddings``: Linear(feature_dim → d) + positions, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig, feature_dim: int):
        super().__init__()
        self.word_embeddings = nn.Linear(feature_dim, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(features.shape[1], device=features.device)
        x = self.word_embeddings(features) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class VisualEncoder(nn.Module):
    """``visual``: normalised S3D features (B, F, D) → (B, F, d)."""

    def __init__(self, cfg: BertConfig, feature_dim: int):
        super().__init__()
        self.embeddings = VisualEmbeddings(cfg, feature_dim)
        self.encoder = BertEncoder(cfg)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return run_encoder(self.encoder, self.embeddings(features), mask)


class CrossEmbeddings(nn.Module):
    """``cross.embeddings``: positions (own table) + token types (text 0, video 1) added to [text ; video]."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        x = torch.cat([text, video], dim=1)
        types = torch.cat([torch.zeros(text.shape[1], dtype=torch.long, device=x.device),
                           torch.ones(video.shape[1], dtype=torch.long, device=x.device)])
        positions = torch.arange(x.shape[1], device=x.device)
        return self.dropout(self.LayerNorm(x + self.position_embeddings(positions) + self.token_type_embeddings(types)))


class CrossEncoder(nn.Module):
    """``cross``: joint encoder over [text ; video]; returns (hidden (B, Lt+F, d), pooled (B, d))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.embeddings = CrossEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)

    def forward(self, text, text_mask, video, video_mask) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.cat([text_mask, video_mask], dim=1)
        hidden = run_encoder(self.encoder, self.embeddings(text, video), mask)
        return hidden, self.pooler(hidden)


class Attention(nn.Module):
    """Multi-head attention with BERT's ``query``/``key``/``value`` names; ``scores_offset`` is additive."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_attention_heads, d // cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, scores_offset: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(memory)), self._split(self.value(memory))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + scores_offset
        out = self.dropout(scores.softmax(-1)) @ v
        return out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)


class AttentionBlock(nn.Module):
    """``slf_attn`` / ``enc_attn``: attention (``att``) + residual Dense/LayerNorm (``output``)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.att = Attention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, x, memory, scores_offset):
        return self.output(self.att(x, memory, scores_offset), x)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention on the encoder output, FFN; post-LN (official names)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.slf_attn, self.enc_attn = AttentionBlock(cfg), AttentionBlock(cfg)
        self.intermediate, self.output = BertIntermediate(cfg), BertOutput(cfg)

    def forward(self, x, self_offset, memory, memory_offset):
        x = self.slf_attn(x, x, self_offset)
        x = self.enc_attn(x, memory, memory_offset)
        return self.output(self.intermediate(x), x)


def causal_offset(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) key padding → (B, 1, L, L) additive scores: position i sees keys j ≤ i that are not padding."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    allowed = causal[None] & mask.bool()[:, None, :]
    return (~allowed).to(torch.float32)[:, None] * MASKED_SCORE


class LMHead(nn.Module):
    """``<name>.predictions``: transform (Dense, GELU, LayerNorm) → tied word embeddingsᵀ + bias."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = nn.Module()
        self.predictions.transform = BertPredictionHeadTransform(cfg)
        self.predictions.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.predictions.decoder.weight = word_embeddings.weight          # one Parameter, several keys
        self.predictions.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        p = self.predictions
        return p.decoder(p.transform(hidden)) + p.bias


class VisualHead(nn.Module):
    """``cls_visual.predictions``: transform, then × the visual input projection's weight (d×D) + bias: a
    prediction in feature space (B, F, D) for every position (the MFM head)."""

    def __init__(self, cfg: BertConfig, projection: nn.Linear):
        super().__init__()
        self.predictions = nn.Module()
        self.predictions.transform = BertPredictionHeadTransform(cfg)
        self.predictions.weight = projection.weight                        # (d, D), tied
        self.predictions.bias = nn.Parameter(torch.zeros(projection.weight.shape[1]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        p = self.predictions
        return p.transform(hidden) @ p.weight + p.bias


class DecoderEmbeddings(nn.Module):
    """``decoder.embeddings``: word and position tables tied to BERT's, own LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig, word: nn.Embedding, position: nn.Embedding):
        super().__init__()
        self.word_embeddings, self.position_embeddings = word, position
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions)))


class Decoder(nn.Module):
    """``decoder``: teacher-forced or step-wise caption logits (B, L, vocab) given the cross output."""

    def __init__(self, cfg: BertConfig, num_layers: int, word: nn.Embedding, position: nn.Embedding):
        super().__init__()
        self.embeddings = DecoderEmbeddings(cfg, word, position)
        self.decoder = nn.Module()
        self.decoder.layer = nn.ModuleList(DecoderLayer(cfg) for _ in range(num_layers))
        self.classifier = nn.Module()
        self.classifier.cls = LMHead(cfg, word)

    def forward(self, ids, ids_mask, memory, memory_mask) -> torch.Tensor:
        x = self.embeddings(ids)
        self_offset = causal_offset(ids_mask).to(x.dtype)
        memory_offset = additive_key_mask(memory_mask, x.dtype)
        for layer in self.decoder.layer:
            x = layer(x, self_offset, memory, memory_offset)
        return self.classifier.cls(x)
