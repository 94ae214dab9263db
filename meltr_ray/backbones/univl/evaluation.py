"""UniVL evaluation over whole splits (reference §3.6, with MnR added and bugs B-U2/B-U3 fixed).

* **Retrieval**: every text and every distinct clip (shard row, from ``sample_id``) is encoded once; every text × video pair
  is scored by the cross encoder's Align logit, ``eval_pair_batch`` pairs per pass (bounded memory: a 1k × 1k
  test set is 10⁶ pairs in chunks), and ranked → R@1/5/10, MedR, MnR (:mod:`meltr_ray.metrics.retrieval`).
* **Captioning**: one caption per distinct clip (beam search, beam 5, or greedy: ``decoding``), scored
  against *all* of that video's captions in the split (each a detokenised round trip of its token ids, as the
  official references) by :func:`meltr_ray.metrics.captioning.caption_metrics`. The vocabulary
  (``vocab_path``; a run passes ``data.vocab_path``) turns ids back into words; without one the scores are over
  WordPiece ids, METEOR is left out, a warning says so and ``word_level`` is 0.
* **Sentiment**: the regression head on every sample → Acc-2, F1, MAE, Corr, Acc-7
  (:mod:`meltr_ray.metrics.sentiment`).

Which split is evaluated is the run's ``data.val_split``: model selection is on a validation split, never the
test split (the official code selected on test and compared METEOR with BLEU-1, B-U4).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ...metrics.captioning import caption_metrics
from ...metrics.retrieval import all_pair_scores, retrieval_metrics
from ...metrics.sentiment import sentiment_metrics
from .decoding import detokenize, generate
from .tasks import batch_inputs, sentiment_scores

NO_VOCAB = ("UniVL captioning evaluation has no vocabulary (vocab_path) to turn token ids back into words: "
            "BLEU/ROUGE-L/CIDEr are computed over WordPiece ids ('w<id>'), not words, and METEOR is left out; "
            "metrics['word_level'] = 0. Set data.vocab_path (a run passes it to the backbone) or "
            "backbone.overrides.vocab_path")


def _pad_cat(tensors: list) -> torch.Tensor:
    """Concatenate (n_i, L_i, …) tensors along dim 0, zero-padding dim 1 to the longest (masks pad with 0)."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]) for t in tensors])


def _first_rows(vids: list, seen) -> list[int]:
    """Rows of the first sample of each video not in ``seen``."""
    rows, taken = [], set(seen)
    for i, vid in enumerate(vids):
        if vid not in taken:
            rows.append(i)
            taken.add(vid)
    return rows


def _video_ids(batch: dict, n: int) -> list[str]:
    """The clip of each sample: its shard row, ``sample_id`` = ``"{row id}#{item}"`` (a YouCook2 row is one clip
    of a video, so ``video_id`` alone would merge a video's clips), else ``video_id``."""
    if batch.get("sample_id") is not None:
        ids, key = [str(s).rsplit("#", 1)[0] for s in batch["sample_id"]], "sample_id"
    elif batch.get("video_id") is not None:
        ids, key = [str(v) for v in batch["video_id"]], "video_id"
    else:
        raise ValueError("UniVL evaluation needs batch['sample_id'] or batch['video_id'] (which clip each "
                         "sample belongs to)")
    if len(ids) != n:
        raise ValueError(f"batch[{key!r}] has {len(ids)} entries for {n} samples")
    return ids


# ---- retrieval -----------------------------------------------------------------------------------------------
def _collect_retrieval(m, batches):
    videos, video_masks, index, texts, text_masks, gt = [], [], {}, [], [], []
    for batch in batches:
        x = batch_inputs(m, batch)
        vids = _video_ids(batch, x["ids"].shape[0])
        new = _first_rows(vids, index)
        if new:
            encoded = m.encode_video(x["features"][new], x["video_mask"][new])
            for row, i in enumerate(new):
                index[vids[i]] = len(videos)
                videos.append(encoded[row:row + 1])
                video_masks.append(x["video_mask"][i:i + 1])
        texts.append(m.encode_text(x["ids"], x["mask"]))
        text_masks.append(x["mask"])
        gt.extend(index[vid] for vid in vids)
    return (_pad_cat(videos), _pad_cat(video_masks), _pad_cat(texts), _pad_cat(text_masks), torch.tensor(gt))


def align_scores(m, videos, video_mask, text, text_mask) -> torch.Tensor:
    """(texts, videos) Align logits of every pair, at most ``eval_pair_batch`` pairs per cross pass."""
    from .tasks import pair_logits
    return all_pair_scores(text.shape[0], videos.shape[0], m.cfg.eval_pair_batch,
                           lambda t, v: pair_logits(m, text[t], text_mask[t], videos[v], video_mask[v]))


def evaluate_retrieval(m, batches) -> dict:
    videos, video_mask, text, text_mask, gt = _collect_retrieval(m, batches)
    return retrieval_metrics(align_scores(m, videos, video_mask, text, text_mask), gt)


# ---- captioning ----------------------------------------------------------------------------------------------
def _words(m, ids, vocab: list[str]) -> str:
    c = m.cfg
    return detokenize(ids, vocab, c.cls_token_id, c.sep_token_id, c.pad_token_id)


def predict_captions(m, batch: dict, skip: set, vocab: list[str]) -> dict:
    """``{video_id: generated caption}`` for the batch's videos not in ``skip`` (one per video)."""
    x = batch_inputs(m, batch)
    vids = _video_ids(batch, x["ids"].shape[0])
    rows = _first_rows(vids, skip)
    if not rows:
        return {}
    hidden, _ = m.cross_pair(m.encode_text(x["ids"][rows], x["mask"][rows]), x["mask"][rows],
                             m.encode_video(x["features"][rows], x["video_mask"][rows]), x["video_mask"][rows])
    memory_mask = torch.cat([x["mask"][rows], x["video_mask"][rows]], dim=1)
    ids = generate(m, hidden, memory_mask)
    return {vids[i]: _words(m, seq, vocab) for i, seq in zip(rows, ids.cpu())}


def evaluate_captioning(m, batches) -> dict:
    vocab = m.vocab
    if vocab is None:
        warnings.warn(NO_VOCAB, RuntimeWarning, stacklevel=3)
        vocab = [f"w{i}" for i in range(m.cfg.vocab_size)]
    predictions, references = {}, {}
    for batch in batches:
        predictions.update(predict_captions(m, batch, set(predictions), vocab))
        caption_ids = m.check_text(batch["text_ids"]).cpu()
        for vid, ids in zip(_video_ids(batch, caption_ids.shape[0]), caption_ids):
            references.setdefault(vid, []).append(_words(m, ids, vocab))
    metrics = caption_metrics(predictions, references, meteor=m.vocab is not None)
    return {**metrics, "word_level": 1.0 if m.vocab is not None else 0.0}


# ---- sentiment -----------------------------------------------------------------------------------------------
def evaluate_sentiment(m, batches) -> dict:
    predictions, labels = [], []
    for batch in batches:
        x = batch_inputs(m, batch)
        if batch.get("score") is None:
            raise ValueError("sentiment evaluation needs batch['score'] (the labels)")
        _, pooled = m.cross_pair(m.encode_text(x["ids"], x["mask"]), x["mask"],
                                 m.encode_video(x["features"], x["video_mask"]), x["video_mask"])
        predictions.append(sentiment_scores(m, pooled).float().cpu())
        labels.append(torch.as_tensor(batch["score"]).float().reshape(-1))
    if not predictions:
        raise ValueError("sentiment evaluation over an empty split")
    return sentiment_metrics(torch.cat(predictions).numpy(), torch.cat(labels).numpy())


TASK_EVALUATE = {"retrieval": evaluate_retrieval, "captioning": evaluate_captioning,
                 "sentiment": evaluate_sentiment}
