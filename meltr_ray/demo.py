"""The embedded demo: a real (small) video dataset made on the spot, and the job that fine-tunes on it.

``prepare_demo_data(root)`` writes synthetic H.264 clips of one moving coloured shape whose captions name its
shape, colour and direction (:func:`meltr_ray.data.synthetic.make_demo_dataset`: 60 combinations, a val
split of 40 clips × 3 captions), ingests them into Parquet shards exactly like a real dataset
(``meltr-ray ingest``) and trains a WordPiece vocabulary, with a progress bar; a second call reuses what is
there. ``demo_config()`` is the ``violet_demo`` recipe.

**The warm-up stands in for a pretrained checkpoint.** MELTR fine-tunes a *pretrained* backbone; the demo has
none, and from random weights Violet's VTM sits on a plateau (every (video, text) score the same, loss ln B)
that the auxiliary losses keep it on: measured on this data, plain MTL left VTM at exactly ln 8 and R@1 at
chance for 190 steps. VTM alone leaves the plateau, but when is chaotic: after ~80 steps with one thread and
~270 with two, from the same seed (float sums in another order). So :func:`warm_up` trains VTM alone (no Ray)
*until* it has left the plateau — the mean VTM loss of the last 20 steps below 0.85·ln B — and then
:data:`WARMUP_AFTER_ESCAPE` steps more, at most :data:`WARMUP_MAX_STEPS`; the search fine-tunes from there, as a
real run starts from ``ckpt_violet_pretrain.pt``. No Ray here.
"""
from __future__ import annotations

import json
import logging
import os

from .config import JobConfig

log = logging.getLogger(__name__)

DEMO_RECIPE = "violet_demo"
DEMO_DATA_VERSION = "v3"             # a folder per layout: data of an older demo is never reused by mistake
TRAIN_PER_COMBINATION = 4            # train clips of each (shape, colour, direction): 240 clips, ~480 captions
CLIP_FRAMES, CLIP_SIZE = 16, 32         # 32 px: one visual token per frame for violet_tiny


def _texts(annotations: str):
    with open(annotations, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            texts = item.get("text") or []
            yield from ([texts] if isinstance(texts, str) else texts)
            if item.get("question"):
                yield item["question"]
            for qa in item.get("qa") or []:
                yield qa["question"]
            yield from item.get("options") or []


def _make_clips(raw: str, train_per_combination: int, progress: bool) -> str:
    """The synthetic clips, with a rich progress bar (on stderr) when ``progress``."""
    from .data.report import Progress
    from .data.synthetic import make_demo_dataset
    with Progress(progress, None, label="demo clips (H.264)", stderr=True) as bar:
        return make_demo_dataset(raw, train_per_combination, num_frames=CLIP_FRAMES, size=CLIP_SIZE,
                                 on_clip=bar.update)


def prepare_demo_data(root: str, train_per_combination: int = TRAIN_PER_COMBINATION,
                      progress: bool = False) -> tuple[str, str]:
    """Synthetic mp4s → Parquet shards → vocab under ``root/<version>``; returns ``(shard_dir, vocab_path)``.

    ``progress``: a progress bar while the clips are made and while they are ingested (stderr)."""
    from .data.ingest import ingest
    from .data.tokenize import build_vocab

    root = os.path.join(root, DEMO_DATA_VERSION)
    raw, shards = os.path.join(root, "raw"), os.path.join(root, "shards")
    vocab = os.path.join(root, "vocab.txt")
    annotations = os.path.join(raw, "annotations.jsonl")
    if not os.path.exists(annotations):                  # written last: its presence means the clips are complete
        _make_clips(raw, train_per_combination, progress)
    if not os.path.exists(os.path.join(shards, "dataset.json")):
        ingest(format="jsonl", videos=os.path.join(raw, "videos"), annotations=annotations, out=shards,
               vq=os.path.join(raw, "vq.npz"), workers=1, progress=progress)
    if not os.path.exists(vocab):
        build_vocab(_texts(annotations), vocab, vocab_size=200)
    return shards, vocab


WARMUP_AFTER_ESCAPE = 150      # steps on VTM alone once it has left its plateau
WARMUP_MAX_STEPS = 800         # ~2-3 min on 2 CPU cores: the warm-up gives up (with a warning) after this many
PLATEAU_WINDOW, PLATEAU_MARGIN = 20, 0.85
WARMUP_VERSION = 2             # in the file's digest: a warm-up made by an older rule is never reused
WARMUP_FILE = "warmup_{digest}.pt"


def split_samples(cfg: JobConfig, split: str, seed: int = 0) -> dict:
    """One split of ``cfg.data.path`` decoded into memory, as the decode actors would (the demo's splits are a
    few hundred captions of 4 small frames): ``{column: array}``, one row per sample."""
    import numpy as np
    import pyarrow.parquet as pq

    from .data.samples import SampleBuilder
    from .run import resolve_job
    cfg = resolve_job(cfg)                          # the spec's frames, size and resize mode where cfg leaves them
    with open(os.path.join(cfg.data.path, "dataset.json"), encoding="utf-8") as f:
        meta = json.load(f)
    d = cfg.data
    builder = SampleBuilder(items="captions", num_frames=d.num_frames, image_size=d.image_size,
                            max_text_len=d.max_text_len, vocab_path=d.vocab_path, resize_mode=d.resize_mode,
                            vq_grid=tuple(meta["vq_grid"]) if meta.get("vq_grid") else None, seed=seed)
    parts = []
    for name in meta["splits"][split]:
        table = pq.read_table(os.path.join(cfg.data.path, name))
        parts.append(builder({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _train_samples(cfg: JobConfig) -> dict:
    """The train split's frames and texts in memory, for the warm-up."""
    samples = split_samples(cfg, cfg.data.train_split)
    if len(samples["frames"]) < cfg.train.batch_size:
        raise ValueError(f"demo warm-up: {len(samples['frames'])} usable train samples in {cfg.data.path} "
                         f"(split {cfg.data.train_split!r}), fewer than one batch of {cfg.train.batch_size}; "
                         "delete the demo data folder to make it again")
    return {k: samples[k] for k in ("frames", "text_ids", "text_mask")}


def _warm_up_steps(model, samples: dict, batch_size: int, lr: float, on_step) -> tuple[int | None, int]:
    """AdamW steps on the VTM loss alone, random batches of the train captions, until VTM has left its plateau
    ln B (the mean of the last :data:`PLATEAU_WINDOW` losses below ``PLATEAU_MARGIN · ln B``) and then
    :data:`WARMUP_AFTER_ESCAPE` steps more, at most :data:`WARMUP_MAX_STEPS`. Returns ``(the step at which it
    left the plateau or None, the steps taken)``."""
    import math
    from collections import deque

    import numpy as np
    import torch
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    plateau, recent, left_at = math.log(batch_size), deque(maxlen=PLATEAU_WINDOW), None
    model.train()
    for step in range(1, WARMUP_MAX_STEPS + 1):
        rows = rng.choice(len(samples["frames"]), batch_size, replace=False)
        loss = model({k: torch.from_numpy(v[rows]) for k, v in samples.items()}, tasks=["vtm"])["vtm"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent.append(loss.item())
        off_plateau = len(recent) == PLATEAU_WINDOW and sum(recent) / PLATEAU_WINDOW < PLATEAU_MARGIN * plateau
        if left_at is None and off_plateau:
            left_at = step
        on_step(step)
        if left_at is not None and step >= left_at + WARMUP_AFTER_ESCAPE:
            break
    return left_at, step


def warm_up(cfg: JobConfig, out: str, progress: bool = False) -> str:
    """Train ``cfg``'s backbone on VTM alone from its seeded random start until it has left the VTM plateau
    (:func:`_warm_up_steps`) and save the state dict at ``out`` (a plain state dict: ``backbone.pretrained``
    loads it). Returns ``out``; a warm-up that never left the plateau is saved too, with a warning."""
    import torch

    from .backbones import create_backbone
    from .data.report import Progress
    torch.manual_seed(cfg.train.seed)
    model = create_backbone(cfg.backbone.name, task=cfg.backbone.task, **cfg.backbone.overrides)
    samples = _train_samples(cfg)
    label = f"VTM warm-up (≤ {WARMUP_MAX_STEPS} steps)"          # short: an 80-column pipe keeps the counts
    with Progress(progress, WARMUP_MAX_STEPS, label=label, stderr=True) as bar:
        left_at, steps = _warm_up_steps(model, samples, cfg.train.batch_size, cfg.optim.backbone_lr, bar.update)
        bar.update(steps, steps)                               # the bar ends full at the steps it took
    if left_at is None:
        log.warning("the demo's VTM warm-up did not leave its plateau (loss ln %d) in %d steps: every trial will "
                    "start from weights that score every (video, text) pair alike", cfg.train.batch_size,
                    WARMUP_MAX_STEPS)
    torch.save(model.state_dict(), out + ".tmp")
    os.replace(out + ".tmp", out)                            # complete or absent: a rerun never loads half a file
    return out


def prepare_demo_job(cfg: JobConfig, root: str, progress: bool = True) -> JobConfig:
    """``cfg`` (the demo recipe after the user's overrides) with the demo's data, vocabulary and warm-up
    checkpoint under ``root`` (made or reused), and two trials at a time unless set."""
    import hashlib
    shards, vocab = prepare_demo_data(root, progress=progress)
    cfg = cfg.with_overrides({"data.path": shards, "data.vocab_path": cfg.data.vocab_path or vocab,
                              "cluster.max_concurrent_trials": cfg.cluster.max_concurrent_trials or 2})
    if cfg.backbone.pretrained is None:
        # the warm-up depends on the backbone, the data settings and the seed: one file per combination
        from .run import resolve_job
        resolved = resolve_job(cfg)            # the same file whether the caller resolved the config or not
        key = json.dumps([WARMUP_VERSION, resolved.backbone.name, resolved.backbone.overrides, vars(resolved.data),
                          resolved.train.seed, resolved.train.batch_size, resolved.optim.backbone_lr],
                         sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        out = os.path.join(os.path.dirname(shards), WARMUP_FILE.format(digest=digest))
        if not os.path.exists(out):
            warm_up(cfg, out, progress=progress)
        cfg = cfg.with_overrides({"backbone.pretrained": out})
    return cfg


def demo_config() -> JobConfig:
    """The CPU demo job: the ``violet_demo`` recipe (violet_tiny, 64-px frames, 2 CPU workers per trial)."""
    from .recipes import get_recipe
    return get_recipe(DEMO_RECIPE)
