"""Special tokens, the small byte-level BPE, saving/loading and image_token_id (minivl.text.tokenizer)."""

from __future__ import annotations

import pytest

from minivl.text.template import get_template
from minivl.text.tokenizer import (
    INTERNVL_TOKENS,
    SPECIAL_TOKENS,
    add_internvl_tokens,
    default_corpus,
    image_token_id,
    load_tokenizer,
    token_id,
    train_tokenizer,
)

CORPUS = [
    "There are 3 red circles at the top-left of the image.",
    "How many blue squares are there? The answer is 7.",
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>the red circle</ref>",
    "<ref>the red circle</ref><box>[[120, 45, 987, 1000]]</box>",
    "Image-1: <image>\nImage-2: <image>\nWhich image has the most shapes? Image-2",
    "Frame-1: <image>\nFrame-2: <image>\nThe green triangle moves to the left.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=400)


def pieces(tok, text):
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_special_token_ids_are_stable_and_low(tok):
    expected = {
        "<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<img>": 3, "</img>": 4, "<IMG_CONTEXT>": 5,
        "<quad>": 6, "</quad>": 7, "<ref>": 8, "</ref>": 9, "<box>": 10, "</box>": 11,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} == expected
    assert set(INTERNVL_TOKENS) <= set(SPECIAL_TOKENS) and len(INTERNVL_TOKENS) == 9
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.bos_token is None
    # 12 special tokens + 256 byte symbols + merges, at most the requested size
    assert 12 + 256 < len(tok) <= 400


def test_image_span_encodes_to_one_id_per_token(tok):
    text = "<img>" + "<IMG_CONTEXT>" * 4 + "</img>"
    assert tok(text, add_special_tokens=False)["input_ids"] == [3, 5, 5, 5, 5, 4]
    # special tokens never merge with the text around them
    assert tok("a<box>b", add_special_tokens=False)["input_ids"][1] == 10
    assert pieces(tok, "x<ref>y</ref>z") == ["x", "<ref>", "y", "</ref>", "z"]


def test_digits_are_split_one_by_one(tok):
    assert pieces(tok, "1000") == ["1", "0", "0", "0"]
    ps = pieces(tok, "[[120, 45]]")
    assert [p for p in ps if any(c.isdigit() for c in p)] == ["1", "2", "0", "4", "5"]
    assert "".join(ps).replace("Ġ", " ") == "[[120, 45]]"


def test_frequent_words_are_merged(tok):
    # " red" appears in the corpus dozens of times: it is one token, with the space folded in
    assert pieces(tok, "the red circle") == ["the", "Ġred", "Ġcircle"]


@pytest.mark.parametrize("text", [
    "Hello, world! 12 + 30 = 42?",
    "Zürich — naïve café; 你是书生·万象",
    "tabs\tand\n\nnewlines  double  spaces",
    "<|im_start|>user\n<img><IMG_CONTEXT></img>\nWhat?<|im_end|>\n",
])
def test_decode_round_trips_any_text(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_save_and_reload(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nHow many red circles? 12<|im_end|>\n"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.chat_template == tok.chat_template
    assert again.eos_token_id == 2 and again.pad_token_id == 0
    mine = load_tokenizer(tmp_path)
    assert mine(text)["input_ids"] == tok(text)["input_ids"]
    # transformers' InternVLProcessor finds the image tokens by these names
    assert (mine.start_image_token, mine.end_image_token, mine.context_image_token) == ("<img>", "</img>", "<IMG_CONTEXT>")
    # the image token id is read from the directory's tokenizer files
    assert image_token_id(tmp_path) == 5
    assert image_token_id(str(tmp_path)) == 5
    assert image_token_id(mine) == 5


def _plain_tokenizer():
    """A tokenizer without the InternVL tokens (like a raw LLM's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "<": 3, ">": 4, "IMG_CONTEXT": 5, "<IMG_CONTEXT>": 6}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")


def test_image_token_id_errors_when_missing():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    with pytest.raises(KeyError, match="no '<IMG_CONTEXT>' token.*add_internvl_tokens"):
        image_token_id(plain)
    # adding InternVL's nine tokens, as the official script does for a raw LLM
    assert add_internvl_tokens(plain) == 9
    assert len(plain) == 3 + 9
    # added in the official order <img>, </img>, <IMG_CONTEXT>, ... after the 3 old ids
    assert [token_id(plain, t) for t in ("<img>", "</img>", "<IMG_CONTEXT>", "</box>")] == [3, 4, 5, 11]
    assert image_token_id(plain) == 5
    assert plain("hello <IMG_CONTEXT> world")["input_ids"] == [1, 5, 2]
    assert add_internvl_tokens(plain) == 0  # idempotent


def test_image_token_id_errors_when_token_would_be_split():
    plain = _plain_tokenizer()
    # "<IMG_CONTEXT>" is in the vocabulary but the pre-tokenizer splits the text into 3 pieces
    with pytest.raises(ValueError, match=r"encodes the text '<IMG_CONTEXT>' as \[3, 5, 4\]"):
        image_token_id(plain)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="vocab_size must be >= 268"):
        train_tokenizer(CORPUS, vocab_size=200)


def test_default_corpus_covers_the_formats():
    corpus = default_corpus(n=60, seed=1)
    assert corpus == default_corpus(n=60, seed=1)
    assert corpus != default_corpus(n=60, seed=2)
    text = "\n".join(corpus)
    for needle in ("<ref>", "</box>", "Image-2: <image>\n", "Frame-1: <image>", "\\boxed{", "0", "9", ";", "!"):
        assert needle in text, needle
    # the template's default system prompt is in the corpus, so BPE learns merges for it
    system = get_template("internvl2_5").system_message
    assert corpus.count(system) == 20
    tok = train_tokenizer(vocab_size=800)
    assert len(tok(system)["input_ids"]) < 20 < len(system.encode("utf-8"))


def test_token_id_without_an_unknown_token_and_for_the_unknown_token_itself():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # a BPE model without an unk token (as Qwen2.5's): a missing token converts to None
    raw = Tokenizer(models.BPE({"h": 0, "i": 1, "hi": 2}, [("h", "i")]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe = PreTrainedTokenizerFast(tokenizer_object=raw)
    assert bpe.unk_token is None
    with pytest.raises(KeyError, match="no '<IMG_CONTEXT>' token"):
        token_id(bpe, "<IMG_CONTEXT>")
    assert token_id(bpe, "hi") == 2
    # a WordLevel vocabulary maps unknown words to [UNK]; [UNK] itself is a real token
    plain = _plain_tokenizer()
    plain.add_tokens(["[UNK]"], special_tokens=True)
    assert token_id(plain, "[UNK]") == 0
    with pytest.raises(KeyError, match="no '<quad>' token"):
        token_id(plain, "<quad>")


def test_load_tokenizer_beside_a_minivl_model_is_quiet(tok, tmp_path, caplog):
    """A saved MiniVL keeps its tokenizer next to a config.json of model type "minivl", which
    transformers does not know: loading the tokenizer must neither warn about it nor change."""
    import json
    import logging

    from transformers.utils import logging as hf_logging

    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "minivl"}))
    hf_logging.enable_propagation()  # transformers' records reach caplog's handler
    try:
        with caplog.at_level(logging.WARNING):
            mine = load_tokenizer(tmp_path)
    finally:
        hf_logging.disable_propagation()
    assert "instantiate a model of type" not in caplog.text
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nHow many red circles?<|im_end|>\n"
    assert mine(text)["input_ids"] == tok(text)["input_ids"] and len(mine) == len(tok)
