"""Progressive scaling: moving a trained ViT to a larger LLM, and the compute accounting."""

from __future__ import annotations

import pytest
import torch

from minivl.config import MiniVLConfig, VisionConfig
from minivl.model import MiniVL, build_language_model
from minivl.train.stages import get_stage
from minivl.train.trainer import apply_stage_freezing, train
from minivl.train.transfer import (
    FlopMeter,
    batch_flops,
    check_vision_compatible,
    compute_table,
    training_flops,
    transfer_vision,
)

VOCAB = 64
IMG = 60  # the <IMG_CONTEXT> id of these tests


def small_model(seed: int = 0) -> MiniVL:
    torch.manual_seed(seed)
    model = MiniVL(MiniVLConfig.smoke(vocab_size=VOCAB, image_token_id=IMG))
    with torch.no_grad():  # a "trained" ViT: weights no fresh initialisation would give
        for p in model.vision_model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def large_llm(hidden: int = 96, vocab: int = VOCAB):
    torch.manual_seed(1)
    cfg = MiniVLConfig.smoke(vocab_size=vocab).llm
    cfg.update(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2)
    return build_language_model(cfg)


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 112, 112, generator=torch.Generator().manual_seed(3))


def test_vit_copied_llm_is_the_large_one_projector_fresh():
    small, llm = small_model(), large_llm()
    model = transfer_vision(small, llm, IMG)
    # the ViT: equal tensors, separate storage
    ref = small.vision_model.state_dict()
    got = model.vision_model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
        assert ref[k].data_ptr() != got[k].data_ptr(), k
    with torch.no_grad():
        model.vision_model.embeddings.patch_embedding.weight.add_(1.0)
    assert torch.equal(small.vision_model.embeddings.patch_embedding.weight,
                       ref["embeddings.patch_embedding.weight"])
    # the LLM: the very module passed in, and the config follows it
    assert model.language_model is llm
    assert model.config.llm_hidden_size == 96 and model.config.image_token_id == IMG
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(model(input_ids=ids).logits, llm(input_ids=ids).logits)
    # the projector: a fresh one for the large width (LayerNorm at its init, Linear 4C -> 96)
    assert model.mlp1[1].weight.shape == (96, 4 * 32) and model.mlp1[3].weight.shape == (96, 96)
    assert torch.equal(model.mlp1[0].weight, torch.ones(128)) and torch.equal(model.mlp1[0].bias, torch.zeros(128))
    # seeded: the same seed gives the same projector, another seed another one
    again = transfer_vision(small, large_llm(), IMG, seed=0)
    other = transfer_vision(small, large_llm(), IMG, seed=1)
    assert torch.equal(again.mlp1[1].weight, model.mlp1[1].weight)
    assert not torch.allclose(other.mlp1[1].weight, model.mlp1[1].weight)


def test_transferred_model_sees_what_the_small_model_saw():
    small, llm = small_model(), large_llm()
    model = transfer_vision(small, llm, IMG).eval()
    small.eval()
    pv = pixels()
    with torch.no_grad():
        a = small.vision_model(pv)
        b = model.vision_model(pv)
        feats = model.extract_feature(pv)
    assert torch.equal(a, b)
    assert feats.shape == (2, 16, 96)  # 64 patches / 4 after pixel unshuffle, large LLM width
    # a full multimodal forward runs: 2 tiles -> 32 <IMG_CONTEXT> tokens
    ids = torch.tensor([[1] + [IMG] * 32 + [2, 3]])
    out = model(input_ids=ids, pixel_values=pv, labels=ids)
    assert out.logits.shape == (1, 35, VOCAB) and torch.isfinite(out.loss)


def test_projector_copied_only_when_widths_match():
    small = small_model()
    with torch.no_grad():
        for p in small.mlp1.parameters():
            p.add_(torch.randn_like(p))
    same_width = transfer_vision(small, large_llm(hidden=64), IMG, reset_projector=False)
    for k, v in small.mlp1.state_dict().items():
        assert torch.equal(v, same_width.mlp1.state_dict()[k]), k
    fresh = transfer_vision(small, large_llm(hidden=64), IMG, reset_projector=True)
    assert not torch.allclose(fresh.mlp1[1].weight, small.mlp1[1].weight)
    with pytest.raises(ValueError, match="cannot keep the projector.*64.*96"):
        transfer_vision(small, large_llm(hidden=96), IMG, reset_projector=False)


def test_mismatches_fail_loudly():
    small = small_model()
    # a target MiniVL whose ViT is wider / whose tiles are larger
    wide = MiniVL(MiniVLConfig(vision=VisionConfig.tiny(hidden_size=64, num_attention_heads=2, intermediate_size=64,
                                                       num_hidden_layers=2),
                               llm=MiniVLConfig.smoke(vocab_size=VOCAB).llm), language_model=large_llm(hidden=64))
    with pytest.raises(ValueError, match=r"vision\.hidden_size: 32 != 64"):
        transfer_vision(small, wide, IMG)
    big_tiles = MiniVLConfig(vision=VisionConfig.tiny(image_size=224, hidden_size=32, num_attention_heads=2,
                                                      intermediate_size=64, num_hidden_layers=2),
                             llm=MiniVLConfig.smoke(vocab_size=VOCAB).llm)
    with pytest.raises(ValueError, match=r"vision\.image_size: 112 != 224"):
        check_vision_compatible(small.config, big_tiles)
    with pytest.raises(ValueError, match="downsample_ratio"):
        check_vision_compatible(small.config, small.config.replace(downsample_ratio=0.25))
    # a matching target MiniVL is accepted and its ViT replaced
    target = MiniVL(MiniVLConfig.smoke(vocab_size=VOCAB, image_token_id=IMG), language_model=large_llm(hidden=64))
    moved = transfer_vision(small, target, IMG)
    assert moved.language_model is target.language_model
    assert torch.equal(moved.vision_model.encoder.layers[0].attn.qkv.weight,
                       small.vision_model.encoder.layers[0].attn.qkv.weight)
    # the tokenizer's image token must be the one the small model was trained with, inside the vocabulary
    with pytest.raises(ValueError, match="<IMG_CONTEXT> id is 59 but the small model was trained with "
                                         "image_token_id 60"):
        transfer_vision(small, large_llm(), 59)
    with pytest.raises(ValueError, match="outside the large LLM's vocabulary"):
        transfer_vision(small, large_llm(vocab=40), IMG)


def test_tokenizer_image_token_id_is_checked():
    from minivl.text.tokenizer import image_token_id, train_tokenizer

    tok = train_tokenizer(vocab_size=300)
    tid = image_token_id(tok)
    torch.manual_seed(0)
    small = MiniVL(MiniVLConfig.smoke(vocab_size=len(tok), image_token_id=tid))
    llm = large_llm(vocab=len(tok))
    assert transfer_vision(small, llm, tok).config.image_token_id == tid
    small.config.image_token_id = tid + 1
    with pytest.raises(ValueError, match=f"<IMG_CONTEXT> id is {tid} but"):
        transfer_vision(small, llm, tok)


def test_stage1_after_transfer_trains_only_the_projector():
    model = transfer_vision(small_model(), large_llm(), IMG)
    stage = get_stage("stage1", "tiny", max_steps=2, lr=1e-2, warmup_steps=0, mixed_precision="no",
                      gradient_checkpointing=False, log_every=1)
    counts = apply_stage_freezing(model, stage)
    assert counts["vision_trainable"] == 0 and counts["llm_trainable"] == 0
    assert counts["projector_trainable"] == counts["projector_total"] == 2 * 128 + 128 * 96 + 96 + 96 * 96 + 96
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[1] + [IMG] * 32 + [5, 6, 7, 8]])
    labels = ids.clone()
    labels[:, :34] = -100
    batch = {"input_ids": ids, "labels": labels, "pixel_values": pixels()}
    result = train(model, lambda epoch: [batch], stage, resume=False, progress=False)
    assert result.steps == 2 and result.losses[1] < result.losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mlp1.") for k in changed), sorted(changed)[:5]
    assert {k for k in before if k.startswith("mlp1.") and k.endswith("weight")} <= changed


# ----------------------------------------------------------------------------------------
# Compute accounting, against the formulas written out by hand for the smoke config:
# ViT 32 wide x 2 layers (MLP 64), 112 px tiles of 64 patches (+ CLS = 65 tokens), patch 14;
# projector 4*32=128 -> 64 -> 64, 16 image tokens per tile; Qwen2 64 wide x 2 layers,
# 4 heads of 16, 2 KV heads, MLP 128, vocabulary V.
# ----------------------------------------------------------------------------------------

def hand_stage1_flops(tiles: int, tokens: int, span: float, vocab: int) -> float:
    """Stage 1: ViT forward only (x1), projector trained (x3), LLM frozen but crossed by the
    gradient (matmuls x2, attention x3)."""
    vit_layer_weights = 3 * 32 * 32 + 32 * 32 + 2 * 32 * 64  # qkv, proj, fc1, fc2 = 8192
    vit = (2 * tiles * 65 * 2 * vit_layer_weights  # matmuls, 2 layers
           + 4 * tiles * 65 * 65 * 32 * 2  # QK^T and AV, 2 layers
           + 2 * tiles * 64 * 3 * 14 * 14 * 32)  # the patch convolution
    projector = 3 * 2 * 16 * tiles * (128 * 64 + 64 * 64)
    llm_layer_weights = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128  # q, k+v, o, MLP = 36864
    llm = 2 * 2 * tokens * (2 * llm_layer_weights + vocab * 64) + 3 * 4 * tokens * span * 64 * 2
    return vit + projector + llm


def test_training_flops_equals_the_formula_times_steps():
    config = MiniVLConfig.smoke(vocab_size=512)
    stage = get_stage("stage1", "tiny", batch_size=1, grad_accum=1)
    per_sample = hand_stage1_flops(3, 100, 100, 512)
    assert per_sample == 3 * 5_619_968 + 3 * 1_179_648 + 4 * 100 * (73_728 + 512 * 64) + 3 * 512 * 100 * 100
    assert training_flops(config, stage, tiles=3, tokens=100, steps=7) == 7 * per_sample
    accum = stage.replace(grad_accum=2, batch_size=3)
    assert training_flops(config, accum, tiles=3, tokens=100, steps=7) == 7 * 6 * per_sample
    # stage 1.5 trains the ViT: its matmuls and attention x3, the convolution x2 (no pixel gradient)
    s15 = get_stage("stage1_5", "tiny", batch_size=1, grad_accum=1)
    extra_vit = 2 * (2 * 65 * 2 * 8192) + 2 * (4 * 65 * 65 * 32 * 2) + 1 * (2 * 64 * 3 * 196 * 32)
    assert training_flops(config, s15, tiles=1, tokens=50, steps=1) == hand_stage1_flops(1, 50, 50, 512) + extra_vit


def test_flop_meter_counts_every_batch_with_per_sample_attention():
    config = MiniVLConfig.smoke(vocab_size=512)
    stage = get_stage("stage1", "tiny")
    b1 = {"input_ids": torch.zeros(1, 100, dtype=torch.long), "pixel_values": torch.zeros(3, 3, 112, 112),
          "cu_seqlens": torch.tensor([0, 30, 100], dtype=torch.int32)}
    b2 = {"input_ids": torch.zeros(2, 40, dtype=torch.long), "pixel_values": torch.zeros(2, 3, 112, 112)}
    # packed: attention over each sample alone, sum n_i^2 = 30^2 + 70^2 = 5800 = 100 tokens x span 58
    assert batch_flops(config, stage, b1) == hand_stage1_flops(3, 100, 58, 512)
    # padded (2, 40): every row attends over its 40 positions
    assert batch_flops(config, stage, b2) == hand_stage1_flops(2, 80, 40, 512)
    meter = FlopMeter(config, stage)
    seen = list(meter.wrap(lambda epoch: [b1, b2])(0))
    assert seen == [b1, b2]
    assert meter.flops == hand_stage1_flops(3, 100, 58, 512) + hand_stage1_flops(2, 80, 40, 512)
    assert meter.to_dict() == {"flops": meter.flops, "batches": 2, "samples": 4, "tokens": 180, "tiles": 5}


def test_compute_table_counts_the_small_run_for_transfer_or_not():
    def run(flops: list[float], seconds: list[float], acc: float) -> dict:
        return {"stages": [{"flops": f, "seconds": s} for f, s in zip(flops, seconds)],
                "curve": [{"shape_qa": 0.0, "all": 0.0}, {"shape_qa": acc, "all": acc}]}

    runs = {"a_small": run([1e9, 4e9], [2.0, 8.0], 0.5), "b_transfer": run([3e9], [5.0], 0.6),
            "c_scratch": run([3e9, 12e9], [5.0, 20.0], 0.55)}
    rows = {r["run"]: r for r in compute_table(runs, ["shape_qa"])}
    assert rows["(b) transfer, ViT reused"]["flops"] == 3e9
    assert rows["(b) transfer + cost of (a)"]["flops"] == 8e9 and rows["(b) transfer + cost of (a)"]["seconds"] == 15.0
    assert rows["(c) LLM-L from scratch"]["flops"] == 15e9 and rows["(c) LLM-L from scratch"]["shape_qa"] == 0.55
    assert rows["(a) LLM-S: stage 1 -> 1.5"]["mean"] == 0.5
