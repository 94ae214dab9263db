"""Caption generation with UniVL's decoder: greedy and beam search, and WordPiece detokenisation.

Both start from ``[CLS]`` (BOS) and stop at ``[SEP]`` (EOS) or after ``max_len`` generated tokens. Beam search
keeps the ``beam`` best prefixes by summed log-probability, with no length penalty (as the official OpenNMT-style
``Beam``); a finished prefix is carried on with [PAD] at no cost, so with ``beam = 1`` it picks the arg-max
token at every step — exactly greedy decoding (tested). The decoder is re-run on the whole prefix each step
(captions are ≤ 20 tokens; no key/value cache needed).
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def step_log_probs(m, prefix: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
    """log p(next token | prefix, memory): (N, vocab) for prefixes (N, t)."""
    logits = m.decode_logits(prefix, torch.ones_like(prefix), memory, memory_mask)[:, -1]
    return logits.float().log_softmax(-1)


def greedy_decode(m, memory, memory_mask, max_len: int) -> torch.Tensor:
    """(B, ≤ 1 + max_len) token ids ``[CLS] w_1 … [SEP] [PAD]…``: the arg-max token at every step."""
    c = m.cfg
    seq = torch.full((memory.shape[0], 1), c.cls_token_id, dtype=torch.long, device=memory.device)
    done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        token = step_log_probs(m, seq, memory, memory_mask).argmax(-1)
        token = token.masked_fill(done, c.pad_token_id)
        seq = torch.cat([seq, token[:, None]], dim=1)
        done |= token == c.sep_token_id
        if bool(done.all()):
            break
    return seq


def _continue_finished(logp: torch.Tensor, finished: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Finished beams may only append [PAD], at log-probability 0."""
    if bool(finished.any()):
        pad_only = logp.new_full((logp.shape[-1],), NEG_INF)
        pad_only[pad_id] = 0.0
        logp = torch.where(finished[..., None], pad_only, logp)
    return logp


def beam_decode(m, memory, memory_mask, max_len: int, beam: int) -> torch.Tensor:
    """(B, ≤ 1 + max_len) ids of the best of ``beam`` hypotheses per video (highest summed log-probability)."""
    c, b = m.cfg, memory.shape[0]
    seqs = torch.full((b, 1, 1), c.cls_token_id, dtype=torch.long, device=memory.device)
    scores = torch.zeros(b, 1, device=memory.device)
    finished = torch.zeros(b, 1, dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        k = seqs.shape[1]
        logp = step_log_probs(m, seqs.reshape(b * k, -1), memory.repeat_interleave(k, 0),
                              memory_mask.repeat_interleave(k, 0)).view(b, k, -1)
        logp = _continue_finished(logp, finished, c.pad_token_id)
        total = (scores[..., None] + logp).view(b, -1)
        scores, flat = total.topk(min(beam, total.shape[1]), dim=-1)
        parent, token = flat // logp.shape[-1], flat % logp.shape[-1]
        seqs = torch.cat([seqs.gather(1, parent[..., None].expand(-1, -1, seqs.shape[-1])), token[..., None]], -1)
        finished = finished.gather(1, parent) | (token == c.sep_token_id)
        if bool(finished.all()):
            break
    return seqs[:, 0]           # topk returns the beams sorted: column 0 is the best


def generate(m, memory, memory_mask) -> torch.Tensor:
    """Token ids of one caption per video, by ``cfg.decoding`` (beam | greedy)."""
    c = m.cfg
    if c.decoding == "greedy":
        return greedy_decode(m, memory, memory_mask, c.max_caption_len)
    return beam_decode(m, memory, memory_mask, c.max_caption_len, c.beam_size)


def detokenize(ids, vocab: list[str], cls_id: int, sep_id: int, pad_id: int) -> str:
    """WordPiece ids → text: drop [CLS], cut at the first [SEP] or [PAD], join, glue ``##`` pieces."""
    tokens = []
    for token_id in (int(i) for i in ids):
        if token_id in (sep_id, pad_id):
            break
        if token_id != cls_id:
            tokens.append(vocab[token_id] if 0 <= token_id < len(vocab) else "[UNK]")
    return " ".join(tokens).replace(" ##", "").replace("##", "").strip()
