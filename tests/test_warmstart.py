"""The cpu-scale LLM warm start: learns the suite's text, caches, sizes S < L."""

from __future__ import annotations

import torch

from minivl.text.tokenizer import tokenizer_fingerprint, train_tokenizer
from minivl.train.warmstart import LLM_SIZES, llm_config, render_conversations, token_stream, warm_start_llm

CONVS = [[{"from": "human", "value": f"<image>\nHow many {c} shapes are there?"},
          {"from": "gpt", "value": str(n)}] for c in ("red", "blue", "green") for n in range(1, 6)] * 8


def test_render_removes_placeholders_and_uses_the_template():
    (text,) = render_conversations(CONVS[:1])
    assert "<image>" not in text
    assert text.endswith("<|im_start|>user\nHow many red shapes are there?<|im_end|>\n"
                         "<|im_start|>assistant\n1<|im_end|>\n")
    assert text.startswith("<|im_start|>system\n")


def test_token_stream_cuts_rows():
    tok = train_tokenizer([t for c in CONVS for t in (c[0]["value"], c[1]["value"])], vocab_size=300)
    rows = token_stream(tok, ["a b c d"] * 10, seq_len=8)
    total = len(tok("a b c d", add_special_tokens=False)["input_ids"]) * 10
    assert rows.shape == (total // 8, 8)


def test_warm_start_learns_and_caches(tmp_path, monkeypatch):
    tok = train_tokenizer([t for c in CONVS for t in (c[0]["value"], c[1]["value"])], vocab_size=300)
    model, info = warm_start_llm(tok, CONVS, size="S", steps=40, seq_len=64, batch_size=8, lr=3e-3,
                                 cache=tmp_path, progress=False)
    losses = info["losses"]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    again, info2 = warm_start_llm(tok, CONVS, size="S", steps=40, seq_len=64, batch_size=8, lr=3e-3,
                                  cache=tmp_path, progress=False)
    assert info2["losses"] == losses  # loaded, not retrained
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # a changed architecture under the same size name is retrained, not loaded from the cache
    monkeypatch.setitem(LLM_SIZES, "S", (64, 1, 4, 2, 128))
    other, info3 = warm_start_llm(tok, CONVS, size="S", steps=40, seq_len=64, batch_size=8, lr=3e-3,
                                  cache=tmp_path, progress=False)
    assert other.config.num_hidden_layers == 1 and info3["losses"] != losses
    monkeypatch.undo()
    # a tokenizer of the same size with other tokens is retrained too (its ids mean other things)
    other_tok = train_tokenizer([t.upper() for c in CONVS for t in (c[0]["value"], c[1]["value"])], vocab_size=300)
    assert len(other_tok) == len(tok) and tokenizer_fingerprint(other_tok) != tokenizer_fingerprint(tok)
    _, info4 = warm_start_llm(other_tok, CONVS, size="S", steps=40, seq_len=64, batch_size=8, lr=3e-3,
                              cache=tmp_path, progress=False)
    assert info4["key"]["tokenizer"] == tokenizer_fingerprint(other_tok) and info4["losses"] != losses
    s, big = llm_config("S", 500), llm_config("L", 500)
    assert (s["hidden_size"], s["num_hidden_layers"]) == (128, 2) and (big["hidden_size"], big["num_hidden_layers"]) == (256, 4)
