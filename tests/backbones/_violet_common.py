"""Random batches in the data layer's format and small Violet builders shared by the Violet tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meltr_ray.backbones import create_backbone

VOCAB, MVM_VOCAB, ANSWERS, CLASSES, OPTIONS = 120, 64, 7, 5, 3
CLS, SEP, MASK = 101, 102, 103
# tiny sizes small enough for CPU tests; every other field is violet_tiny's
TINY = dict(vocab_size=VOCAB, mvm_vocab=MVM_VOCAB, size_vocab=ANSWERS, num_classes=CLASSES)
# Names and shapes of the official checkpoints (copied from the reference notes: tests read nothing outside tests/)
MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"


def tiny(task: str, **overrides):
    torch.manual_seed(0)
    return create_backbone("violet_tiny", task=task, **{**TINY, **overrides})


def make_batch(task: str, batch: int = 3, frames: int = 4, size: int = 32, length: int = 8, seed: int = 0,
               pad: int = 2) -> dict:
    """A batch as ``meltr_ray.data`` produces it: uint8 frames, [CLS] … [SEP] ids padded with 0, targets."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, OPTIONS, length) if task == "qa_mc" else (batch, length)
    ids = torch.randint(MASK + 1, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    ids[..., 0], ids[..., length - pad - 1] = CLS, SEP
    ids[..., length - pad:], mask[..., length - pad:] = 0, 0
    grid = size // 32
    return {
        "video_id": [f"v{seed}_{i}" for i in range(batch)],
        "frames": torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8, generator=g),
        "text_ids": ids, "text_mask": mask,
        "vq_ids": torch.randint(0, MVM_VOCAB, (batch, frames, grid, grid), generator=g),
        "answer": torch.randint(0, OPTIONS if task == "qa_mc" else ANSWERS, (batch,), generator=g),
        "label": torch.randint(0, CLASSES, (batch,), generator=g),
    }


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread avoids OpenMP spin-waiting (≈10× faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
