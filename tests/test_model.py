"""MiniVL: merging image tokens, losses, generation, chat, freezing, presets."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from minivl.config import MiniVLConfig
from minivl.model import MiniVL, causal_lm_loss, count_parameters

IMG = 5  # <IMG_CONTEXT> in minivl's trained tokenizer (and in these hand-made batches)
VOCAB = 300


def _model(seed: int = 0, **llm) -> MiniVL:
    torch.manual_seed(seed)
    model = MiniVL(MiniVLConfig.smoke(vocab_size=VOCAB, image_token_id=IMG, **llm)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _ids(*parts) -> torch.Tensor:
    out = []
    for p in parts:
        out += [IMG] * p if isinstance(p, int) else list(p)
    return torch.tensor([out])


def test_image_tokens_land_at_placeholders_in_order():
    model = _model()
    tokens = model.num_image_token  # 112 px, patch 14, ratio 0.5 -> 16
    assert tokens == 16
    pixel_values = torch.randn(3, 3, 112, 112)
    ids = torch.cat([_ids([20, 21], 2 * tokens, [22]), _ids([23, 24], tokens, [25] * (tokens + 1))])
    embeds = model.embed_inputs(ids, pixel_values)
    features = model.extract_feature(pixel_values)  # (3, 16, 64)
    assert features.shape == (3, tokens, 64)
    # row 0 holds tiles 0 and 1, row 1 holds tile 2; text positions keep their token embeddings
    torch.testing.assert_close(embeds[0, 2:2 + 2 * tokens], features[:2].reshape(-1, 64), rtol=0, atol=0)
    torch.testing.assert_close(embeds[1, 2:2 + tokens], features[2], rtol=0, atol=0)
    table = model.get_input_embeddings().weight
    torch.testing.assert_close(embeds[0, :2], table[[20, 21]], rtol=0, atol=0)
    torch.testing.assert_close(embeds[1, -1], table[25], rtol=0, atol=0)


def test_image_flags_drop_dummy_tiles():
    model = _model()
    tokens = model.num_image_token
    tiles = torch.randn(3, 3, 112, 112)
    ids = _ids([20], tokens, [21])
    flags = torch.tensor([[0], [1], [0]])  # only the middle tile is real
    with torch.no_grad():
        a = model(ids, pixel_values=tiles, image_flags=flags).logits
        b = model(ids, pixel_values=tiles[1:2]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # a text-only sample with one dummy tile still sends gradient through the ViT (all zero)
    model.train()
    out = model(_ids([20, 21, 22]), pixel_values=tiles[:1], image_flags=torch.tensor([0]), labels=_ids([20, 21, 22]))
    out.loss.backward()
    grad = model.vision_model.embeddings.patch_embedding.weight.grad
    assert grad is not None and float(grad.abs().sum()) == 0.0


def test_placeholder_count_mismatch_names_both_numbers():
    model = _model()
    with pytest.raises(ValueError, match=r"15 <IMG_CONTEXT> tokens.*16 features \(1 tiles x 16 tokens\)"):
        model(_ids([20], 15, [21]), pixel_values=torch.randn(1, 3, 112, 112))
    model.config.image_token_id = None
    with pytest.raises(ValueError, match="image_token_id is not set"):
        model(_ids([20], 16), pixel_values=torch.randn(1, 3, 112, 112))


def test_losses():
    model = _model()
    ids = _ids([20, 21], 16, [30, 31, 32, 33])
    labels = ids.clone()
    labels[0, :18] = -100  # only the last four tokens are supervised
    pixel_values = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        out = model(ids, pixel_values=pixel_values, labels=labels)
    # by hand: logits at positions 17..20 predict tokens 18..21
    expected = F.cross_entropy(out.logits[0, 17:21], ids[0, 18:22])
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(causal_lm_loss(out.logits, labels), expected, rtol=0, atol=1e-6)
    # the weighted loss: weight 3 on the last label, 1 on the others
    weight = (labels != -100).float()
    weight[0, -1] = 3.0
    with torch.no_grad():
        weighted = model(ids, pixel_values=pixel_values, labels=labels, loss_weight=weight).loss
    ce = F.cross_entropy(out.logits[0, 17:21], ids[0, 18:22], reduction="none")
    torch.testing.assert_close(weighted, (ce[:3].sum() + 3 * ce[3]) / 6, rtol=0, atol=1e-6)


def test_packed_rows_pass_cu_seqlens_to_the_llm():
    from minivl.train.attention import packed_attention

    model = _model()
    a = _ids([20, 21], 16, [22, 23])
    b = _ids([24], 16, [25, 26, 27])
    tiles = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        alone = [model(a, pixel_values=tiles[:1]).logits, model(b, pixel_values=tiles[1:]).logits]
        packed_ids = torch.cat([a, b], dim=1)
        cu = torch.tensor([0, a.shape[1], a.shape[1] + b.shape[1]], dtype=torch.int32)
        pos = torch.cat([torch.arange(a.shape[1]), torch.arange(b.shape[1])])[None]
        with packed_attention(model.language_model):
            packed = model(packed_ids, pixel_values=tiles, position_ids=pos, cu_seqlens=cu).logits
    torch.testing.assert_close(packed, torch.cat(alone, dim=1), rtol=0, atol=1e-5)


def test_greedy_generation_with_cache_matches_full_recompute():
    model = _model(seed=3)
    ids = _ids([20, 21], 16, [22])
    pixel_values = torch.randn(1, 3, 112, 112)
    new = model.generate(pixel_values=pixel_values, input_ids=ids, max_new_tokens=6, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    assert new.shape == (1, 6)
    # without a cache: re-run the whole sequence (image included) for every new token
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = model(seq, pixel_values=pixel_values).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert new.tolist() == seq[:, ids.shape[1]:].tolist()
    with pytest.raises(ValueError, match="KV cache"):
        model.generate(pixel_values=pixel_values, input_ids=ids, max_new_tokens=2, use_cache=False)


@pytest.fixture(scope="module")
def tokenizer():
    from minivl.text.tokenizer import train_tokenizer

    tok = train_tokenizer(vocab_size=VOCAB)
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == IMG
    return tok


def test_chat_builds_the_official_prompt_and_streams(tokenizer):
    from transformers import TextIteratorStreamer

    from minivl.text.template import INTERNVL2_5_SYSTEM_MESSAGE

    model = _model(seed=1)
    pixel_values = torch.randn(2, 3, 112, 112)
    config = dict(max_new_tokens=5, do_sample=False)
    answer, history = model.chat(tokenizer, pixel_values, "what colour?", config, return_history=True)
    prompt = ("<|im_start|>system\n" + INTERNVL2_5_SYSTEM_MESSAGE + "<|im_end|>\n<|im_start|>user\n<img>"
              + "<IMG_CONTEXT>" * 32 + "</img>\nwhat colour?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    new = model.generate(pixel_values=pixel_values, input_ids=ids, max_new_tokens=5, do_sample=False,
                         eos_token_id=2, pad_token_id=0)
    expected = tokenizer.decode(new[0], skip_special_tokens=True).split("<|im_end|>")[0].strip()
    assert answer == expected
    assert history == [("<image>\nwhat colour?", answer)]
    # a follow-up turn does not add <image> again and the history goes into the prompt
    _, history = model.chat(tokenizer, pixel_values, "<image>\nand now?", config, history=history, return_history=True)
    assert [q for q, _ in history] == ["<image>\nwhat colour?", "<image>\nand now?"]
    # streaming gives the same text
    streamer = TextIteratorStreamer(tokenizer, skip_special_tokens=True)
    thread = threading.Thread(target=model.chat, args=(tokenizer, pixel_values, "what colour?",
                                                       {**config, "streamer": streamer}))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed.strip() == answer


def test_batch_chat_equals_one_by_one(tokenizer):
    model = _model(seed=2)
    pixel_values = torch.randn(3, 3, 112, 112)
    config = dict(max_new_tokens=4, do_sample=False)
    questions = ["how many shapes are there?", "colour?"]  # different lengths: left padding
    batch = model.batch_chat(tokenizer, pixel_values, questions, config, num_patches_list=[2, 1])
    single = [model.chat(tokenizer, pixel_values[:2], questions[0], config),
              model.chat(tokenizer, pixel_values[2:], questions[1], config)]
    assert batch == single
    with pytest.raises(ValueError, match="num_patches_list"):
        model.chat(tokenizer, pixel_values, "q", config, num_patches_list=[1, 1])


def test_freezing_helpers():
    model = _model()
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.towers().items()}
    summary = model.freeze(vision=True, projector=False, llm=True)  # stage 1
    assert summary["projector"] == {"trainable": counts["projector"], "total": counts["projector"]}
    assert summary["vision"]["trainable"] == 0 and summary["llm"]["trainable"] == 0
    assert summary["all"]["trainable"] == counts["projector"]
    assert all(not p.requires_grad for p in model.language_model.get_input_embeddings().parameters())
    model.freeze_vision(False)  # stage 1.5: ViT + projector
    summary = model.trainable_parameter_summary()
    assert summary["all"]["trainable"] == counts["vision"] + counts["projector"]
    assert model.vision_model.training is False  # freezing does not touch train/eval mode
    model.freeze(llm=False)
    assert model.trainable_parameter_summary()["all"]["trainable"] == sum(counts.values())


def test_gradient_checkpointing_gives_same_gradients():
    ids = _ids([20], 16, [21, 22, 23])
    pixel_values = torch.randn(1, 3, 112, 112)
    grads = []
    for enabled in (False, True):
        model = _model().train()
        if enabled:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing == {"vision": True, "llm": True}
        model(ids, pixel_values=pixel_values, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


# published totals (model cards): 1B 938M, 2B 2.21B, 4B 3.71B, 8B 8.08B
PUBLISHED = {"internvl2_5_1b": 0.938e9, "internvl2_5_2b": 2.21e9, "internvl2_5_4b": 3.71e9, "internvl2_5_8b": 8.08e9}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_counts(name):
    counts = count_parameters(MiniVLConfig.preset(name))
    assert counts["vision"] == 304_012_288  # InternViT-300M
    assert abs(counts["total"] / PUBLISHED[name] - 1) < 0.005, counts
    assert counts["total"] == counts["vision"] + counts["projector"] + counts["llm"]


def test_tiny_preset_size():
    counts = count_parameters(MiniVLConfig.tiny())
    assert 5e6 <= counts["llm"] <= 10e6
    assert counts["projector"] == (512 * 2 + 512 * 256 + 256 + 256 * 256 + 256)  # LN, Linear(512, 256), Linear(256, 256)
