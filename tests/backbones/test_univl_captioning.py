"""UniVL captioning: greedy and beam search, detokenisation, evaluation against every reference of a video."""
from __future__ import annotations

import pytest
import torch
from _univl_common import batch, tiny, write_vocab

from meltr_ray.backbones.univl import evaluation
from meltr_ray.backbones.univl.decoding import beam_decode, detokenize, greedy_decode, step_log_probs
from meltr_ray.backbones.univl.tasks import batch_inputs
from meltr_ray.metrics import captioning


def memory_of(model, b):
    x = batch_inputs(model, b)
    hidden, _ = model.cross_pair(model.encode_text(x["ids"], x["mask"]), x["mask"],
                                 model.encode_video(x["features"], x["video_mask"]), x["video_mask"])
    return hidden, torch.cat([x["mask"], x["video_mask"]], dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_with_beam_one_is_greedy(seed):
    model = tiny("captioning", seed=seed).eval()
    with torch.no_grad():
        memory, mask = memory_of(model, batch("captioning", seed=seed))
        greedy = greedy_decode(model, memory, mask, max_len=6)
        beam = beam_decode(model, memory, mask, max_len=6, beam=1)
    assert greedy.shape[1] > 2 and torch.equal(beam, greedy)


def test_a_full_width_beam_finds_the_best_two_token_caption():
    """With beam = vocabulary size, two steps of beam search are exhaustive: compare with brute force."""
    model = tiny("captioning").eval()
    c, v = model.cfg, model.cfg.vocab_size
    with torch.no_grad():
        memory, mask = memory_of(model, batch("captioning", size=1))
        found = beam_decode(model, memory, mask, max_len=2, beam=v)[0]
        first = step_log_probs(model, torch.tensor([[c.cls_token_id]]), memory, mask)[0]
        prefixes = torch.stack([torch.full((v,), c.cls_token_id), torch.arange(v)], dim=1)
        second = step_log_probs(model, prefixes, memory.expand(v, -1, -1), mask.expand(v, -1))
    totals = first[:, None] + second
    totals[c.sep_token_id] = float("-inf")                   # [SEP] first ends the caption: scored alone
    best = divmod(int(totals.argmax()), v)
    if float(first[c.sep_token_id]) > float(totals.max()):
        assert found.tolist()[:2] == [c.cls_token_id, c.sep_token_id]
    else:
        assert found.tolist()[1:3] == list(best)


def test_detokenize_glues_wordpieces_and_cuts_at_sep_or_pad():
    vocab = ["[PAD]", "[CLS]", "[SEP]", "the", "dog", "##s", "run", "fast"]
    assert detokenize([1, 3, 4, 5, 6, 2, 7, 0], vocab, 1, 2, 0) == "the dogs run"
    assert detokenize([1, 3, 7, 0, 6], vocab, 1, 2, 0) == "the fast"


def clips_with_two_captions(size: int = 4) -> list[dict]:
    """Two batches: every video appears once per batch, with a different caption each time."""
    first, second = batch("captioning", size=size, seed=0), batch("captioning", size=size, seed=1)
    second.update(features=first["features"], feature_mask=first["feature_mask"], video_id=first["video_id"],
                  transcript_ids=first["transcript_ids"], transcript_mask=first["transcript_mask"])
    return [first, second]


def test_evaluation_scores_one_caption_per_video_against_all_its_references(tmp_path, monkeypatch):
    monkeypatch.setattr(captioning, "java_available", lambda: False)       # no JVM in the default suite
    seen = {}
    real = evaluation.caption_metrics

    def spy(predictions, references, meteor=True):
        seen.update(predictions=predictions, references=references)
        return real(predictions, references, meteor)
    monkeypatch.setattr(evaluation, "caption_metrics", spy)
    model = tiny("captioning", vocab_path=write_vocab(tmp_path / "vocab.txt"), decoding="beam").train()
    with pytest.warns(RuntimeWarning, match="METEOR is unavailable"):
        metrics = model.evaluate(clips_with_two_captions())
    assert model.training                                                    # mode restored
    assert sorted(seen["predictions"]) == ["v0", "v1", "v2", "v3"]
    assert all(len(refs) == 2 and refs[0] != refs[1] for refs in seen["references"].values())
    words = set(" ".join(r for refs in seen["references"].values() for r in refs).split())
    assert words and not any(w.startswith("w") and w[1:].isdigit() for w in words)      # real words
    assert {"bleu1", "bleu4", "rouge_l", "cider", "word_level"} <= set(metrics) and metrics["word_level"] == 1.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_evaluation_without_a_vocabulary_says_so():
    model = tiny("captioning", decoding="greedy")
    with pytest.warns(RuntimeWarning, match="no vocabulary"):
        metrics = model.evaluate(clips_with_two_captions(2))
    assert metrics["word_level"] == 0.0 and "meteor" not in metrics and metrics["meteor_available"] == 0.0
