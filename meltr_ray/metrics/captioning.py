"""Caption metrics through pycocoevalcap (the coco-caption scorers nlg-eval wraps): never hand-rolled.

``caption_metrics(predictions, references)`` scores one generated caption per id against **all** reference
captions of that id (the official MSRVTT evaluation used one, bug B-U3) and returns, ×100 as the paper's
tables print them (so YouCook2's CIDEr 1.90 reads 190 here):

    bleu1..bleu4, meteor, rouge_l, cider (CIDEr-D as coco-caption), meteor_available, ptb_tokenizer

Tokenisation: coco-caption's Stanford PTB tokenizer (lowercase, punctuation removed), which runs on Java.
METEOR (meteor-1.5.jar) needs Java too. Without a ``java`` executable the other metrics still run, on a simple
tokenisation (lowercase; the PTB punctuation set split off and dropped), and METEOR is **absent** from the
result with ``meteor_available = 0`` and a warning — never a silent 0. ``ptb_tokenizer`` says which
tokenisation ran (1 = PTB). Install Java with ``apt-get install default-jre-headless``.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import warnings

# coco-caption's PTBTokenizer drops these tokens after tokenising
PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                   "...", ";"}
_SPLIT = re.compile(r"\.\.\.|--|``|''|[.?!,:;\-'`()\[\]{}]|[^\s.?!,:;\-'`()\[\]{}]+")


def java_available() -> bool:
    return shutil.which("java") is not None


def check_inputs(predictions: dict, references: dict) -> None:
    """Every prediction id has a non-empty reference list; every reference id has a prediction."""
    if not predictions:
        raise ValueError("caption metrics need at least one prediction")
    orphans = sorted(set(predictions) - set(references), key=str)
    if orphans:
        raise ValueError(f"{len(orphans)} prediction id(s) have no references, e.g. {orphans[:5]}")
    missing = sorted(set(references) - set(predictions), key=str)
    if missing:
        raise ValueError(f"{len(missing)} reference id(s) have no prediction, e.g. {missing[:5]}")
    empty = [k for k, refs in references.items() if isinstance(refs, str) or not list(refs)]
    if empty:
        raise ValueError(f"references must be a non-empty list of strings per id; bad ids: {empty[:5]}")


def simple_tokenize(text: str) -> str:
    """Lowercase, split off punctuation and drop coco-caption's punctuation tokens (the no-Java fallback)."""
    tokens = _SPLIT.findall(text.lower().replace("\n", " "))
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION and t not in "()[]{}")


def tokenize(captions: dict, use_ptb: bool) -> dict:
    """``{id: [str, ...]}`` → the same, tokenised (PTB through Java, or :func:`simple_tokenize`)."""
    if use_ptb:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


@functools.lru_cache(maxsize=1)
def meteor_scorer():
    """One METEOR scorer (a ``java -jar meteor-1.5.jar`` subprocess, -Xmx2G) per process, started on first use
    and reused: loading its paraphrase table takes from seconds to a minute, once rather than every epoch."""
    from pycocoevalcap.meteor.meteor import Meteor
    return Meteor()


def score_tokenized(gts: dict, res: dict, with_meteor: bool) -> dict:
    """The coco-caption scorers on tokenised ``gts`` ({id: [refs]}) and ``res`` ({id: [one caption]})."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    if with_meteor:
        out["meteor"] = float(meteor_scorer().compute_score(gts, res)[0])
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


def caption_metrics(predictions: dict, references: dict, meteor: bool = True) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (×100) of ``{id: caption}`` against ``{id: [reference, ...]}``.

    ``meteor=False`` leaves METEOR out on purpose (``meteor_available`` 0, no warning).
    """
    check_inputs(predictions, references)
    java = java_available()
    if meteor and not java:
        warnings.warn("METEOR is unavailable: no `java` executable (install a JRE, e.g. `apt-get install "
                      "default-jre-headless`); BLEU/ROUGE-L/CIDEr use a simple lowercase/punctuation "
                      "tokenisation instead of coco-caption's PTB tokenizer", RuntimeWarning, stacklevel=2)
    keys = sorted(predictions, key=str)
    refs = {k: [str(r) for r in references[k]] for k in keys}
    hyps = {k: [str(predictions[k])] for k in keys}
    ptb = java
    try:
        gts, res = tokenize(refs, ptb), tokenize(hyps, ptb)
    except (OSError, subprocess.SubprocessError) as err:       # e.g. a read-only site-packages (temp file)
        warnings.warn(f"coco-caption's PTB tokenizer failed ({err}); using the simple tokenisation",
                      RuntimeWarning, stacklevel=2)
        ptb = False
        gts, res = tokenize(refs, ptb), tokenize(hyps, ptb)
    out = {name: 100.0 * value for name, value in score_tokenized(gts, res, java and meteor).items()}
    out["meteor_available"] = 1.0 if java and meteor else 0.0
    out["ptb_tokenizer"] = 1.0 if ptb else 0.0
    return out
