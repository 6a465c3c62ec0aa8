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


def test_word_similarity_reads_the_input_embeddings():
    """Two identical rows score 1, opposite rows -1, orthogonal rows 0; the mean is over pairs;
    a word that is not one token, or fewer than two words, is refused."""
    import pytest
    from transformers import AutoConfig, AutoModelForCausalLM

    from minivl.train.warmstart import word_similarity

    tok = train_tokenizer([t for c in CONVS for t in (c[0]["value"], c[1]["value"])], vocab_size=300)
    cfg = dict(llm_config("S", len(tok)))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    red, blue, green = (tok.convert_tokens_to_ids(w) for w in ("Ġred", "Ġblue", "Ġgreen"))
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight[red] = torch.zeros(weight.shape[1]).index_fill_(0, torch.tensor([0]), 2.0)
        weight[blue] = torch.zeros(weight.shape[1]).index_fill_(0, torch.tensor([0]), 0.5)
        weight[green] = torch.zeros(weight.shape[1]).index_fill_(0, torch.tensor([1]), 1.0)
    assert word_similarity(model, tok, ["Ġred", "Ġblue"]) == pytest.approx(1.0)
    assert word_similarity(model, tok, ["Ġred", "Ġgreen"]) == pytest.approx(0.0)
    assert word_similarity(model, tok, ["Ġred", "Ġblue", "Ġgreen"]) == pytest.approx(1 / 3)  # pairs: 1, 0, 0
    with torch.no_grad():
        weight[blue] = -weight[red]
    assert word_similarity(model, tok, ["Ġred", "Ġblue"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="not single tokens"):
        word_similarity(model, tok, ["Ġred", "Ġpurple"])
    with pytest.raises(ValueError, match="at least two"):
        word_similarity(model, tok, ["Ġred"])


def test_warm_start_can_untie_or_freeze_the_embeddings(tmp_path):
    """``tie_word_embeddings=False`` gives the LM head its own matrix (and its own cache key);
    ``train_embeddings=False`` leaves the input embeddings at their seeded initial values while
    the rest of the model learns; a MiniVL around an untied LLM saves and loads untied."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from minivl.config import MiniVLConfig, VisionConfig
    from minivl.model import MiniVL

    tok = train_tokenizer([t for c in CONVS for t in (c[0]["value"], c[1]["value"])], vocab_size=300)
    common = dict(size="S", steps=20, seq_len=64, batch_size=8, lr=3e-3, seed=3, progress=False)
    untied, info = warm_start_llm(tok, CONVS, tie_word_embeddings=False, cache=tmp_path / "untied", **common)
    assert untied.config.tie_word_embeddings is False and info["key"]["config"]["tie_word_embeddings"] is False
    assert untied.lm_head.weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()
    assert not torch.equal(untied.lm_head.weight, untied.get_input_embeddings().weight)

    frozen, info = warm_start_llm(tok, CONVS, train_embeddings=False, cache=tmp_path / "frozen", **common)
    assert info["key"]["train_embeddings"] is False
    torch.manual_seed(3)  # the warm start's initialisation, redone
    cfg = dict(llm_config("S", len(tok)))
    start = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    assert torch.equal(frozen.get_input_embeddings().weight, start.get_input_embeddings().weight)
    assert not torch.equal(frozen.model.layers[0].mlp.up_proj.weight, start.model.layers[0].mlp.up_proj.weight)
    assert info["losses"][-1] < info["losses"][0]

    vision = VisionConfig.tiny(image_size=56, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)
    model = MiniVL(MiniVLConfig(vision=vision, llm=llm_config("S", len(tok), tie_word_embeddings=False),
                                image_token_id=5), language_model=untied)
    model.save_pretrained(tmp_path / "vl")
    loaded = MiniVL.from_pretrained(tmp_path / "vl")
    assert loaded.language_model.config.tie_word_embeddings is False
    assert torch.equal(loaded.language_model.lm_head.weight, untied.lm_head.weight)
    assert torch.equal(loaded.get_input_embeddings().weight, untied.get_input_embeddings().weight)
