"""Caption metrics: equal to pycocoevalcap's scorers called directly, all references per id, bad input,
and the no-Java path (METEOR reported unavailable, never a silent 0)."""
from __future__ import annotations

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from meltr_ray.metrics import captioning
from meltr_ray.metrics.captioning import caption_metrics, java_available, simple_tokenize

PREDICTIONS = {"v1": "A man is slicing an onion.", "v2": "a dog runs on the grass", "v3": "someone cooks pasta"}
REFERENCES = {
    "v1": ["a man slices an onion", "A person is cutting an onion.", "the man chops onions on a board"],
    "v2": ["a dog is running across the grass", "the dog runs in a field"],
    "v3": ["a woman boils pasta in a pot", "pasta is cooked in water", "someone is cooking noodles",
           "a cook stirs the pasta"],
}


def direct_scores(gts: dict, res: dict) -> dict:
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": 100 * b for n, b in enumerate(bleu)}
    out["rouge_l"] = 100 * Rouge().compute_score(gts, res)[0]
    out["cider"] = 100 * Cider().compute_score(gts, res)[0]
    return out


@pytest.mark.skipif(not java_available(), reason="the PTB tokenizer and METEOR need Java (CI installs it)")
def test_metrics_equal_the_coco_caption_scorers_on_a_multi_reference_set():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tok.tokenize({k: [{"caption": PREDICTIONS[k]}] for k in REFERENCES})
    expected = direct_scores(gts, res)
    # pycocoevalcap's Meteor scorer called directly (the process's one JVM: starting it takes up to a minute)
    expected["meteor"] = 100 * captioning.meteor_scorer().compute_score(gts, res)[0]
    got = caption_metrics(PREDICTIONS, REFERENCES)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert got["meteor_available"] == 1.0 and got["ptb_tokenizer"] == 1.0
    assert 0 < got["bleu1"] <= 100 and got["cider"] > 0


def test_every_reference_counts():
    """B-U3: scoring against all references is not scoring against the first one."""
    first_only = {k: v[:1] for k, v in REFERENCES.items()}
    every = caption_metrics(PREDICTIONS, REFERENCES, meteor=False)
    assert every["bleu4"] != caption_metrics(PREDICTIONS, first_only, meteor=False)["bleu4"]
    assert "meteor" not in every and every["meteor_available"] == 0.0


def test_a_prediction_without_references_is_an_error():
    with pytest.raises(ValueError, match="have no references, e.g. \\['v4'\\]"):
        caption_metrics({**PREDICTIONS, "v4": "a cat"}, REFERENCES)
    with pytest.raises(ValueError, match="have no prediction"):
        caption_metrics({"v1": PREDICTIONS["v1"]}, REFERENCES)
    with pytest.raises(ValueError, match="non-empty list"):
        caption_metrics(PREDICTIONS, {**REFERENCES, "v2": []})


def test_without_java_meteor_is_absent_and_loud_and_the_rest_still_runs(monkeypatch):
    monkeypatch.setattr(captioning, "java_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="METEOR is unavailable"):
        got = caption_metrics(PREDICTIONS, REFERENCES)
    assert "meteor" not in got and got["meteor_available"] == 0.0 and got["ptb_tokenizer"] == 0.0
    gts = {k: [simple_tokenize(c) for c in v] for k, v in REFERENCES.items()}
    res = {k: [simple_tokenize(PREDICTIONS[k])] for k in REFERENCES}
    for key, value in direct_scores(gts, res).items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_simple_tokenisation_lowercases_and_drops_ptb_punctuation():
    assert simple_tokenize("A man, slicing an Onion... (fast)!") == "a man slicing an onion fast"
    assert simple_tokenize("it's the dog's bowl; isn't it?") == "it s the dog s bowl isn t it"
