"""UniVL's configuration: sizes and switches (:class:`UniVLConfig`), the variants, the losses of each task.

Kept free of torch and transformers so reading a spec stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._contract import replace_config

# official MELTR input order (reference §1.3); a run puts the primary first (the project's convention)
LOSSES = ("joint", "align", "cmlm", "cmfm", "m_joint", "m_align", "decoder", "m_decoder")
TASK_PRIMARY = {"retrieval": "align", "captioning": "decoder", "sentiment": "sentiment"}
SPECIAL_TOKENS = {"pad_token_id": "[PAD]", "cls_token_id": "[CLS]", "sep_token_id": "[SEP]",
                  "mask_token_id": "[MASK]"}


@dataclass
class UniVLConfig:
    """Sizes and switches of one UniVL variant (``create_backbone`` overrides any field by name)."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    text_layers: int = 12
    visual_layers: int = 6
    cross_layers: int = 2
    decoder_layers: int = 3
    feature_dim: int = 1024                # S3D (HowTo100M) features
    text_positions: int = 512              # BERT's position table, shared by the decoder
    visual_positions: int = 512            # frames (seconds of features) at most
    cross_positions: int = 1024            # text + frames at most
    dropout: float = 0.1
    pad_token_id: int = 0                  # bert-base-uncased ids; a vocab_path sets them from the file
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    mask_prob: float = 0.15
    margin: float = 0.1                    # Joint max-margin m
    losses: tuple | None = None            # a subset of the task's losses (supplementary Table 4); None = all
    primary: str | None = None             # the primary loss (first MELTR input); None = the task's
    count_pad_targets: bool = False        # True = official B-U6: [PAD] decoder targets count in the loss
    decoding: str = "beam"                 # beam | greedy (captioning evaluation)
    beam_size: int = 5
    max_caption_len: int = 20              # generated tokens at most (official max_words)
    eval_pair_batch: int = 256             # (text, video) pairs per cross-encoder pass in retrieval eval
    vocab_path: str | None = None          # WordPiece vocab.txt: vocab size, special ids, detokenisation

    def validate(self) -> "UniVLConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.decoding not in ("beam", "greedy"):
            raise ValueError(f"decoding must be 'beam' or 'greedy', got {self.decoding!r}")
        for name in ("beam_size", "max_caption_len", "eval_pair_batch", "feature_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        return self


def read_vocab_tokens(path: str) -> list[str]:
    """The tokens of a BERT ``vocab.txt``, one per line (the line number is the id)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.rstrip("\n")]
    except OSError as err:
        raise ValueError(f"cannot read the UniVL vocabulary vocab_path={path!r}: {err}") from None


def _from_vocab(path: str, overrides: dict) -> dict:
    """vocab_size and special ids from the vocabulary file; an explicit override that disagrees is an error."""
    tokens = read_vocab_tokens(path)
    index = {t: i for i, t in enumerate(tokens)}
    derived = {"vocab_size": len(tokens)}
    for field, token in SPECIAL_TOKENS.items():
        if token not in index:
            raise ValueError(f"vocabulary {path} (vocab_path) has no {token} token")
        derived[field] = index[token]
    for field, value in derived.items():
        if field in overrides and overrides[field] != value:
            raise ValueError(f"{field}={overrides[field]} disagrees with the vocabulary {path} (vocab_path), "
                             f"which gives {value}")
    return derived


def config_with_overrides(base: UniVLConfig, overrides: dict) -> UniVLConfig:
    """``base`` with fields replaced; unknown names raise ``ValueError`` naming them."""
    resolved = dict(overrides)
    if resolved.get("losses") is not None:
        resolved["losses"] = tuple(resolved["losses"])
    if resolved.get("vocab_path"):
        resolved.update(_from_vocab(resolved["vocab_path"], overrides))
    return replace_config(base, resolved, "UniVL")


def task_losses(task: str, losses=None, primary: str | None = None) -> tuple:
    """The losses of ``task`` in MELTR input order with the primary first; ``losses`` selects a subset."""
    if task not in TASK_PRIMARY:
        raise ValueError(f"unknown UniVL task {task!r}; choose one of {sorted(TASK_PRIMARY)}")
    available = (("sentiment",) if task == "sentiment" else ()) + LOSSES
    chosen = tuple(losses) if losses is not None else available
    unknown = [name for name in chosen if name not in available]
    if unknown or len(set(chosen)) != len(chosen) or not chosen:
        raise ValueError(f"losses={list(chosen)} must be distinct names among {list(available)} for UniVL task "
                         f"{task!r}" + (f"; unknown: {unknown}" if unknown else ""))
    primary = primary or TASK_PRIMARY[task]
    if primary not in chosen:
        raise ValueError(f"primary loss {primary!r} (primary) is not among the losses {list(chosen)}")
    order = (primary,) + available
    return tuple(dict.fromkeys(name for name in order if name in chosen))


# ---- variants ------------------------------------------------------------------------------------------------
UNIVL_BASE = UniVLConfig()
UNIVL_TINY = UniVLConfig(vocab_size=120, hidden_size=32, num_heads=2, intermediate_size=64, text_layers=2,
                         visual_layers=1, cross_layers=1, decoder_layers=1, feature_dim=16, text_positions=64,
                         visual_positions=64, cross_positions=128, max_caption_len=8, beam_size=3)
