"""Text → WordPiece ids with HF ``tokenizers`` (a BERT vocab.txt from a local file; never a hub download).

Ids are ``[CLS] tokens [SEP]`` padded with ``[PAD] = 0``; the mask is 1 on real tokens (official Violet/UniVL
convention: mask = ids ≠ 0). For multiple-choice QA there is one prompt per option,

    [CLS] question [SEP] option_0 [SEP] … [SEP] option_{O-1} [SEP] answer_k [SEP]

and truncation cuts the question/options context, **never the candidate answer** (this fixes the official bug
B-V5, where "question Options: … Answer: option_k" without separators was cut at 40 tokens, answer last).
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")      # [PAD] = 0, as BERT


def build_vocab(texts: Iterable[str], path: str, vocab_size: int = 1000, lowercase: bool = True,
                min_frequency: int = 1) -> str:
    """Train a WordPiece vocabulary on ``texts`` and write it as a BERT ``vocab.txt`` at ``path``.

    The special tokens come first, so ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3, ``[MASK]`` = 4.
    Returns ``path``.
    """
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=lowercase)
    tok.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(token for token, _ in vocab) + "\n")
    return path


def load_tokenizer(vocab_path: "str | dict[str, int]", lowercase: bool = True):
    """A BERT WordPiece tokenizer from a local ``vocab.txt`` (``FileNotFoundError`` if missing) or from an
    already-read ``{token: id}`` mapping (what the Ray pipeline ships to its actors on other nodes)."""
    from tokenizers import BertWordPieceTokenizer

    if isinstance(vocab_path, dict):
        return BertWordPieceTokenizer(vocab_path, lowercase=lowercase)
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"vocab file not found: {vocab_path}")
    return BertWordPieceTokenizer(vocab_path, lowercase=lowercase)


def read_vocab(vocab_path: str) -> dict[str, int]:
    """``{token: line number}`` of a BERT ``vocab.txt``."""
    with open(vocab_path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f) if line.rstrip("\n")}


def _special_ids(tokenizer) -> tuple[int, int]:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ValueError("vocabulary lacks [CLS] or [SEP]")
    return cls_id, sep_id


def _pad(seqs: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = seq[:max_len]
    return ids, (ids != 0).astype(np.int64)


def _pieces(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def encode_texts(tokenizer, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``texts`` as ``[CLS] … [SEP]`` (truncated to ``max_len``): int64 ids and mask, both (N, max_len)."""
    if max_len < 2:
        raise ValueError("max_len must leave room for [CLS] and [SEP]")
    cls_id, sep_id = _special_ids(tokenizer)
    seqs = [[cls_id, *p[:max_len - 2], sep_id] for p in _pieces(tokenizer, texts)]
    return _pad(seqs, max_len)


def mc_prompt(context: list[int], answer: list[int], cls_id: int, sep_id: int, max_len: int) -> list[int]:
    """``[CLS] context [SEP] answer [SEP]`` in ``max_len`` tokens, cutting the context first."""
    answer = answer[:max(max_len - 3, 0)]
    context = context[:max(max_len - 3 - len(answer), 0)]
    return [cls_id, *context, sep_id, *answer, sep_id]


def encode_mc_prompts(tokenizer, question: str, options: Sequence[str], max_len: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One prompt per option (see the module docstring): int64 ids and mask, both (O, max_len)."""
    if max_len < 4:
        raise ValueError("max_len must leave room for [CLS], two [SEP] and one answer token")
    cls_id, sep_id = _special_ids(tokenizer)
    q_ids, *opt_ids = _pieces(tokenizer, [question, *options])
    context = list(q_ids)
    for i, o in enumerate(opt_ids):
        context += [sep_id, *o] if i or q_ids else list(o)
    seqs = [mc_prompt(context, list(a), cls_id, sep_id, max_len) for a in opt_ids]
    return _pad(seqs, max_len)
