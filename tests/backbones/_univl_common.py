"""Small UniVL builders and batches shared by the UniVL tests."""
from __future__ import annotations

import torch

from meltr_ray.backbones import create_backbone, get_spec


def tiny(task: str = "retrieval", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_backbone("univl_tiny", task=task, **overrides)


def batch(task: str = "retrieval", size: int = 3, seed: int = 0) -> dict:
    return get_spec("univl_tiny").example_batch(task, size, torch.Generator().manual_seed(seed))


def write_vocab(path, size: int = 120) -> str:
    """A vocab.txt of ``size`` lines with bert-base's special ids ([PAD] 0, [CLS] 101, [SEP] 102, [MASK] 103)
    and plain words elsewhere, so univl_tiny's ids detokenise into words."""
    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    words = ["a", "the", "red", "blue", "cat", "dog", "runs", "jumps", "over", "fence", "##s", "big"]
    tokens = [special.get(i, words[i % len(words)] + ("" if i < len(words) else f"{i}")) for i in range(size)]
    path.write_text("\n".join(tokens) + "\n")
    return str(path)
