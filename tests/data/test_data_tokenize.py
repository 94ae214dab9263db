"""WordPiece vocabulary, text encoding and the multiple-choice prompts (official bug B-V5 fixed)."""
from __future__ import annotations

import pytest

from meltr_ray.data.tokenize import SPECIAL_TOKENS, build_vocab, encode_mc_prompts, encode_texts, load_tokenizer

TEXTS = ["a red circle moves left", "the blue square is moving upwards", "what colour is the diamond?",
         "a green diamond slides right across the screen", "yellow", "magenta", "left", "right"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = build_vocab(TEXTS * 3, str(tmp_path_factory.mktemp("vocab") / "vocab.txt"), vocab_size=120)
    return load_tokenizer(path)


def test_vocab_file_starts_with_the_special_tokens(tok, tmp_path):
    path = build_vocab(TEXTS, str(tmp_path / "v.txt"), vocab_size=80)
    assert open(path).read().splitlines()[:5] == list(SPECIAL_TOKENS)
    assert tok.token_to_id("[PAD]") == 0


def test_missing_vocab_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path / "none.txt"))


def test_encode_texts_is_cls_text_sep_padded(tok):
    ids, mask = encode_texts(tok, ["a red circle moves left", "Yellow"], max_len=12)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert ids.shape == mask.shape == (2, 12) and str(ids.dtype) == "int64"
    assert ids[0, 0] == cls_id and sep_id in ids[0] and (mask == (ids != 0)).all()
    assert tok.decode(ids[1].tolist()) == "yellow"


def test_truncation_keeps_the_final_sep(tok):
    ids, mask = encode_texts(tok, [" ".join(TEXTS)], max_len=6)
    assert ids[0, -1] == tok.token_to_id("[SEP]") and mask.sum() == 6


def test_mc_prompts_never_truncate_the_candidate_answer(tok):
    long_question = " ".join(TEXTS * 4)
    options = ["yellow", "magenta", "a green diamond slides right"]
    ids, mask = encode_mc_prompts(tok, long_question, options, max_len=16)
    sep = tok.token_to_id("[SEP]")
    assert ids.shape == (3, 16)
    for k, option in enumerate(options):
        row = ids[k][mask[k] == 1].tolist()
        answer = tok.encode(option, add_special_tokens=False).ids
        assert row[-1] == sep and row[-1 - len(answer):-1] == answer and row[-2 - len(answer)] == sep


def test_mc_prompt_has_separators_between_question_and_options(tok):
    ids, mask = encode_mc_prompts(tok, "what colour", ["yellow", "magenta"], max_len=32)
    sep = tok.token_to_id("[SEP]")
    row = ids[1][mask[1] == 1].tolist()
    assert row.count(sep) == 4                      # question | yellow | magenta | answer
    assert tok.decode(row) == "what colour yellow magenta magenta"


def test_tokenizer_from_a_read_vocabulary_matches_the_file(tmp_path):
    from meltr_ray.data.tokenize import read_vocab

    path = build_vocab(TEXTS, str(tmp_path / "v.txt"), vocab_size=80)
    ids_file, _ = encode_texts(load_tokenizer(path), TEXTS, 12)
    ids_dict, _ = encode_texts(load_tokenizer(read_vocab(path)), TEXTS, 12)
    assert (ids_file == ids_dict).all()
