"""Whole-model checkpoints: transformers parity both ways, the official layout (incl. InternLM2's
fused wqkv), sharding, tying, image-token ids and strict errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from minivl.checkpoint import (
    StateDictKeyError,
    config_to_official,
    detect_layout,
    find_image_token_id,
    fuse_wqkv,
    llama_to_internlm2,
    split_wqkv,
)
from minivl.config import MiniVLConfig, VisionConfig
from minivl.model import MiniVL

IMG = 7  # <IMG_CONTEXT> id of the tiny vocabulary
VOCAB = 64
STYLES = {
    "300m": dict(norm_type="layer_norm", qk_normalization=False, qkv_bias=True),
    "6b": dict(norm_type="rms_norm", qk_normalization=True, qkv_bias=False),
}


def _vision(style: str) -> VisionConfig:
    # 56 px tiles, patch 14 -> 4x4 patches -> 4 tokens per tile after pixel unshuffle
    return VisionConfig.tiny(image_size=56, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                             num_hidden_layers=2, **STYLES[style])


def _text_config(kind: str):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=256)
    return Qwen2Config(**common) if kind == "qwen2" else LlamaConfig(**common)


def _hf_model(style: str, kind: str, tied: bool = False, seed: int = 0):
    """A tiny random transformers InternVL, every parameter perturbed (HF zero-inits CLS/positions)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig

    config = InternVLConfig(vision_config=InternVLVisionConfig(**_vision(style).to_transformers_dict()),
                            text_config=_text_config(kind), image_token_id=IMG, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _batch(seed: int = 0, tiles=(2, 1), tokens_per_tile: int = 4):
    """Two rows, row i holds one image of tiles[i] tiles; text ids avoid the image id."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in tiles:
        pre = torch.randint(8, VOCAB, (3,), generator=g)
        post = torch.randint(8, VOCAB, (4,), generator=g)
        rows.append(torch.cat([pre, torch.full((n * tokens_per_tile,), IMG), post]))
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, r in enumerate(rows):  # right padding: positions agree with transformers' arange
        input_ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    pixel_values = torch.randn(sum(tiles), 3, 56, 56, generator=g)
    return input_ids, mask, pixel_values


def _minivl(style: str = "300m", kind: str = "qwen2", official_arch: str | None = None, seed: int = 0) -> MiniVL:
    llm = _text_config(kind).to_dict()
    llm["tie_word_embeddings"] = False
    config = MiniVLConfig(vision=_vision(style), llm=llm, image_token_id=IMG, official_llm_architecture=official_arch)
    torch.manual_seed(seed)
    model = MiniVL(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _logits(model, input_ids, mask, pixel_values, **kw):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, **kw).logits


@pytest.mark.parametrize("style,kind", [("300m", "qwen2"), ("6b", "llama")])
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, style, kind):
    hf = _hf_model(style, kind)
    hf.save_pretrained(tmp_path)
    model = MiniVL.from_pretrained(tmp_path)
    assert model.config.image_token_id == IMG and model.dtype == torch.float32
    input_ids, mask, pixel_values = _batch()
    ref = _logits(hf, input_ids, mask, pixel_values)
    ours = _logits(model, input_ids, mask, pixel_values)
    assert ours.shape == (2, 3 + 8 + 4, VOCAB)
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], rtol=0, atol=1e-4)
    # a padding tile (flag 0) appended to the batch changes nothing
    pad_tile = torch.randn(1, 3, 56, 56)
    flags = torch.tensor([1, 1, 1, 0])
    padded = _logits(model, input_ids, mask, torch.cat([pixel_values, pad_tile]), image_flags=flags)
    torch.testing.assert_close(padded, ours, rtol=0, atol=1e-5)
    # and the loss agrees with transformers' ForCausalLMLoss
    labels = input_ids.masked_fill(input_ids == IMG, -100).masked_fill(mask == 0, -100)
    with torch.no_grad():
        ref_loss = hf(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, labels=labels).loss
        our_loss = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, labels=labels).loss
    torch.testing.assert_close(our_loss, ref_loss, rtol=0, atol=1e-5)


def test_in_memory_transformers_names_load_too(tmp_path):
    hf = _hf_model("300m", "qwen2")
    hf.save_pretrained(tmp_path, save_original_format=False)
    assert any(k.startswith("model.vision_tower.") for k in load_file(tmp_path / "model.safetensors"))
    model = MiniVL.from_pretrained(tmp_path)
    input_ids, mask, pixel_values = _batch(1)
    torch.testing.assert_close(_logits(model, input_ids, mask, pixel_values),
                               _logits(hf, input_ids, mask, pixel_values), rtol=0, atol=1e-4)


def test_tied_transformers_checkpoint(tmp_path):
    hf = _hf_model("300m", "qwen2", tied=True)
    hf.save_pretrained(tmp_path)
    assert "language_model.lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    model = MiniVL.from_pretrained(tmp_path)
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    input_ids, mask, pixel_values = _batch(2)
    torch.testing.assert_close(_logits(model, input_ids, mask, pixel_values),
                               _logits(hf, input_ids, mask, pixel_values), rtol=0, atol=1e-4)


@pytest.mark.parametrize("style,kind", [("300m", "qwen2"), ("6b", "llama")])
def test_save_hf_loads_in_transformers(tmp_path, style, kind):
    from transformers import InternVLForConditionalGeneration

    model = _minivl(style, kind)
    model.save_pretrained(tmp_path, format="hf")
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "internvl"
    hf = InternVLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    input_ids, mask, pixel_values = _batch(3)
    torch.testing.assert_close(_logits(hf, input_ids, mask, pixel_values),
                               _logits(model, input_ids, mask, pixel_values), rtol=0, atol=1e-4)


def test_wqkv_split_and_fuse_by_hand():
    # 4 query heads, 2 KV heads, head_dim 1: per KV group the rows are q q k v
    q = torch.tensor([[10.0], [11.0], [12.0], [13.0]])
    k = torch.tensor([[20.0], [21.0]])
    v = torch.tensor([[30.0], [31.0]])
    fused = fuse_wqkv(q, k, v, num_heads=4, num_kv_heads=2)
    assert fused.flatten().tolist() == [10, 11, 20, 30, 12, 13, 21, 31]
    q2, k2, v2 = split_wqkv(fused, num_heads=4, num_kv_heads=2)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)
    # head_dim 2, one KV head (MQA): q0 q0' q1 q1' k k' v v'
    q = torch.arange(4.0).reshape(4, 1)
    k = torch.tensor([[100.0], [101.0]])
    v = torch.tensor([[200.0], [201.0]])
    assert fuse_wqkv(q, k, v, 2, 1).flatten().tolist() == [0, 1, 2, 3, 100, 101, 200, 201]


@pytest.mark.parametrize("arch", [None, "InternLM2ForCausalLM"])
def test_official_layout_round_trip(tmp_path, arch):
    kind = "qwen2" if arch is None else "llama"
    model = _minivl("300m" if arch is None else "6b", kind, official_arch=arch)
    model.save_pretrained(tmp_path, format="official")
    raw = json.loads((tmp_path / "config.json").read_text())
    assert detect_layout(raw) == "official" and raw["architectures"] == ["InternVLChatModel"]
    keys = set(load_file(tmp_path / "model.safetensors"))
    if arch is None:
        assert raw["llm_config"]["model_type"] == "qwen2"
        assert "language_model.model.layers.0.self_attn.q_proj.weight" in keys
        assert "language_model.lm_head.weight" in keys
    else:
        assert raw["llm_config"]["model_type"] == "internlm2" and raw["llm_config"]["bias"] is False
        assert {"language_model.model.tok_embeddings.weight", "language_model.model.layers.1.attention.wqkv.weight",
                "language_model.model.layers.1.attention.wo.weight", "language_model.model.layers.0.feed_forward.w3.weight",
                "language_model.model.layers.0.attention_norm.weight", "language_model.model.layers.0.ffn_norm.weight",
                "language_model.output.weight"} <= keys
        assert not any("q_proj" in k or "embed_tokens" in k for k in keys)
        # the fused tensor is the grouped q q k v layout of this layer's weights
        attn = model.language_model.model.layers[1].self_attn
        w = load_file(tmp_path / "model.safetensors")["language_model.model.layers.1.attention.wqkv.weight"]
        d = 48 // 4
        grouped = w.reshape(2, 4, d, 48)  # (kv, g+2, d, D)
        torch.testing.assert_close(grouped[1, 0], attn.q_proj.weight[2 * d: 3 * d], rtol=0, atol=0)
        torch.testing.assert_close(grouped[1, 2], attn.k_proj.weight[d: 2 * d], rtol=0, atol=0)
        torch.testing.assert_close(grouped[0, 3], attn.v_proj.weight[:d], rtol=0, atol=0)
    assert find_image_token_id(tmp_path) == IMG
    loaded = MiniVL.from_pretrained(tmp_path)
    assert loaded.config.official_llm_architecture == arch
    input_ids, mask, pixel_values = _batch(4)
    torch.testing.assert_close(_logits(loaded, input_ids, mask, pixel_values),
                               _logits(model, input_ids, mask, pixel_values), rtol=0, atol=0)


def test_internlm2_key_map_is_complete():
    model = _minivl("300m", "llama")
    llm_state = model.language_model.state_dict()
    out = llama_to_internlm2(llm_state, 4, 2)
    assert len(out) == len(llm_state) - 2 * 2  # q, k, v -> wqkv in each of 2 layers
    with pytest.raises(StateDictKeyError, match="self_attn.v_proj.weight"):
        llama_to_internlm2({k: v for k, v in llm_state.items() if k != "model.layers.0.self_attn.v_proj.weight"}, 4, 2)


def test_minivl_layout_sharded_round_trip(tmp_path):
    model = _minivl("6b", "llama")
    model.save_pretrained(tmp_path, max_shard_size=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    loaded = MiniVL.from_pretrained(tmp_path)
    input_ids, mask, pixel_values = _batch(5)
    torch.testing.assert_close(_logits(loaded, input_ids, mask, pixel_values),
                               _logits(model, input_ids, mask, pixel_values), rtol=0, atol=0)
    loaded16 = MiniVL.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded16.dtype == torch.bfloat16


def test_image_token_id_sources(tmp_path):
    model = _minivl()
    model.save_pretrained(tmp_path, format="official")
    (tmp_path / "added_tokens.json").unlink()
    with pytest.raises(ValueError, match="no image token id"):
        MiniVL.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {"9": {"content": "<IMG_CONTEXT>", "special": True}}}))
    assert MiniVL.from_pretrained(tmp_path).config.image_token_id == 9
    assert MiniVL.from_pretrained(tmp_path, image_token_id=11).config.image_token_id == 11  # argument wins
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 13, "content": "<IMG_CONTEXT>"}]}))
    assert find_image_token_id(tmp_path) == 13


def test_missing_and_extra_keys_are_listed(tmp_path):
    model = _minivl()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state.pop("mlp1.1.bias")
    state["language_model.model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(StateDictKeyError) as err:
        MiniVL.from_pretrained(tmp_path)
    assert err.value.missing == ["mlp1.1.bias"]
    assert err.value.unexpected == ["language_model.model.layers.0.extra.weight"]
    assert "mlp1.1.bias" in str(err.value) and "extra.weight" in str(err.value)
    with pytest.warns(UserWarning, match="mlp1.1.bias"):
        MiniVL.from_pretrained(tmp_path, strict=False)


def test_pickle_checkpoint_is_refused(tmp_path):
    model = _minivl()
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickle"):
        MiniVL.from_pretrained(tmp_path)


def test_unknown_layout_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        detect_layout({"model_type": "llava"})
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        MiniVL.from_pretrained(tmp_path / "nope" / "deeper")


def test_official_config_of_internlm2_preset():
    raw = config_to_official(MiniVLConfig.internvl2_5_8b())
    llm = raw["llm_config"]
    assert llm["architectures"] == ["InternLM2ForCausalLM"]
    assert llm["rope_theta"] == 1e6 and llm["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    assert (llm["hidden_size"], llm["num_key_value_heads"], llm["vocab_size"]) == (4096, 8, 92553)


def test_state_digest_tells_weights_apart():
    import copy

    import torch
    from torch import nn

    from minivl.checkpoint import state_digest

    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    b = copy.deepcopy(a)
    assert state_digest(a) == state_digest(b)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6  # one value, barely moved
    assert state_digest(a) != state_digest(b)
    assert state_digest(a) != state_digest(copy.deepcopy(a).to(torch.bfloat16))  # same names, another dtype
