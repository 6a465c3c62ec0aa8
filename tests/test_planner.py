"""The scaling planner against measurements of tiny models on the CPU.

* parameter counts: exact against models built on the meta device, and the released sizes
  round to the paper's Table 2;
* weights + gradients + optimizer states: exact against the tensors of a tiny model after
  one AdamW step (fp32, and bf16 with fp32 master weights);
* activations: within 10 % of the bytes really kept for backward (saved-tensor hooks, and a
  dispatch mode that sees every tensor still alive after the forward, which also covers
  gradient checkpointing);
* FLOPs: equal to ``FlopCounterMode`` on a forward + backward (math attention, so that the
  attention matmuls are counted too); LoRA within 5 %.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from minivl.config import MiniVLConfig, VisionConfig
from minivl.model import MiniVL, build_language_model, count_parameters
from minivl.train.measure import LiveTensors, saved_bytes, storage_keys
from minivl.train.measure import storage_key as _storage_key
from minivl.train.planner import (
    GB,
    activation_bytes,
    custom,
    flops_per_sample,
    llm_layer_activation_bytes,
    llm_param_count,
    lora_param_count,
    param_counts,
    plan,
    planner_config,
    recommend,
    static_memory,
    vision_param_count,
    vit_layer_activation_bytes,
)
from minivl.train.stages import LoraSpec, finetune_full, finetune_lora, stage1, stage2
from minivl.train.trainer import add_lora, apply_stage_freezing
from minivl.vision.intern_vit import InternVisionModel

IMG = 5
ACT_TOLERANCE = 0.10  # activation estimates are within 10 % of the measured bytes


# ----------------------------------------------------------------------------------------
# measuring helpers (minivl.train.measure; chapter 13 uses the same ones)
# ----------------------------------------------------------------------------------------


def _param_keys(module: torch.nn.Module) -> set[int]:
    return storage_keys(module)


def _close(measured: float, estimate: float, tol: float = ACT_TOLERANCE) -> None:
    assert measured > 0
    assert abs(estimate - measured) <= tol * measured, f"estimate {estimate} vs measured {measured}"


def _tiny_qwen(layers: int = 2, vocab: int = 256, **kw) -> dict:
    llm = MiniVLConfig.smoke(vocab_size=vocab).llm
    llm.update(num_hidden_layers=layers, max_window_layers=layers, **kw)
    return llm


def _smoke_batch(cfg: MiniVLConfig, tiles: int = 2, text: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(10, cfg.vocab_size, (4,), generator=g),
                     torch.full((tiles * cfg.num_image_token,), IMG),
                     torch.randint(10, cfg.vocab_size, (text,), generator=g)])[None]  # (L,) -> (1, L)
    return ids, torch.randn(tiles, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)


def _smoke_model(stage, seed: int = 0) -> tuple[MiniVLConfig, MiniVL]:
    torch.manual_seed(seed)
    cfg = MiniVLConfig.smoke(vocab_size=512, image_token_id=IMG)
    model = MiniVL(cfg)
    if stage.lora is not None:
        add_lora(model, stage.lora)
    apply_stage_freezing(model, stage)
    model.train()
    return cfg, model


# ----------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "tiny", "internvl2_5_1b", "internvl2_5_2b"])
def test_param_counts_equal_meta_device_models(name):
    cfg = planner_config(name)
    meta = count_parameters(cfg)  # built on the meta device
    counts = param_counts(cfg)
    for tower in ("vision", "projector", "llm"):
        assert counts[tower]["total"] == meta[tower], tower
    assert counts["all"]["total"] == meta["total"]


@pytest.mark.parametrize("llm_overrides", [
    {"model_type": "llama", "attention_bias": True, "mlp_bias": True, "head_dim": 32},
    {"tie_word_embeddings": True},
])
def test_llm_param_formula_biases_head_dim_and_tying(llm_overrides):
    llm = _tiny_qwen(layers=3, vocab=300, **llm_overrides)
    with torch.device("meta"):
        model = build_language_model(llm)
    assert llm_param_count(llm) == sum(p.numel() for p in model.parameters())


def test_vision_param_formula_6b_style_vit():
    vcfg = VisionConfig.tiny(hidden_size=48, num_attention_heads=3, norm_type="rms_norm", qk_normalization=True,
                             qkv_bias=False, num_hidden_layers=3)
    with torch.device("meta"):
        model = InternVisionModel(vcfg)
    assert vision_param_count(vcfg) == sum(p.numel() for p in model.parameters())


def test_released_sizes_round_to_the_paper():
    # paper Table 2 "#Param": 0.9B, 2.2B, 3.7B, 8.1B, 25.5B, 38.4B, 78.4B
    paper = {"1b": 0.9, "2b": 2.2, "4b": 3.7, "8b": 8.1, "26b": 25.5, "38b": 38.4, "78b": 78.4}
    for size, billions in paper.items():
        total = param_counts(planner_config(f"internvl2_5_{size}"))["all"]["total"]
        assert round(total / 1e9, 1) == billions, size
    # and the towers: InternViT-300M is ~0.3B, InternViT-6B-V2.5 ~5.5B (report Table 1)
    assert round(vision_param_count(VisionConfig.internvit_300m()) / 1e9, 1) == 0.3
    assert round(vision_param_count(VisionConfig.internvit_6b()) / 1e9, 1) == 5.5


@pytest.mark.parametrize("target", ["llm", "vision"])
def test_lora_param_count_equals_peft(target):
    stage = finetune_lora("tiny", target=target).replace(lora=LoraSpec(target=target, r=4, alpha=8))
    cfg, model = _smoke_model(stage)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_param_count(cfg, stage.lora) == trainable
    assert param_counts(cfg, stage)["all"]["trainable"] == trainable


# ----------------------------------------------------------------------------------------
# weights, gradients, optimizer states
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [stage2("tiny"), stage1("tiny"), finetune_full("tiny")], ids=lambda s: s.name)
def test_static_memory_fp32_exact_after_one_adamw_step(stage):
    cfg, model = _smoke_model(stage)
    ids, px = _smoke_batch(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(input_ids=ids, pixel_values=px, labels=ids).loss.backward()
    opt.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    moments = sum(s[k].numel() * s[k].element_size() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    est = static_memory(param_counts(cfg, stage), "fp32", "ddp", 1)
    assert est == {"weights": weights, "gradients": grads, "master_weights": 0, "optimizer_states": moments}
    assert grads < weights or stage.name == "stage2"  # frozen towers get no gradient


def test_static_memory_bf16_mixed_precision_exact():
    # bf16 model weights and gradients, fp32 master copies of the trainable ones, fp32 AdamW on the masters
    stage = stage1("tiny")
    cfg, model = _smoke_model(stage)
    model.to(torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    masters = [p.detach().float().requires_grad_() for p in trainable]
    opt = torch.optim.AdamW(masters, lr=1e-3)
    ids, px = _smoke_batch(cfg)
    model(input_ids=ids, pixel_values=px.bfloat16(), labels=ids).loss.backward()
    for master, p in zip(masters, trainable):
        master.grad = p.grad.float()
    opt.step()
    est = static_memory(param_counts(cfg, stage), "bf16", "ddp", 1)
    assert est["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert est["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    assert est["master_weights"] == sum(m.numel() * m.element_size() for m in masters)
    assert est["optimizer_states"] == sum(s[k].numel() * s[k].element_size() for s in opt.state.values()
                                          for k in ("exp_avg", "exp_avg_sq"))


def test_sharding_per_strategy():
    params = {"all": {"total": 1000, "trainable": 800}}
    ddp = static_memory(params, "bf16", "ddp", 8)
    assert ddp == {"weights": 2000, "gradients": 1600, "master_weights": 3200, "optimizer_states": 6400}
    assert static_memory(params, "bf16", "zero1", 8) == {**ddp, "master_weights": 400, "optimizer_states": 800}
    assert static_memory(params, "bf16", "zero2", 8) == {**ddp, "master_weights": 400, "optimizer_states": 800,
                                                        "gradients": 200}
    z3 = {"weights": 250, "gradients": 200, "master_weights": 400, "optimizer_states": 800}
    assert static_memory(params, "bf16", "zero3", 8) == z3
    assert static_memory(params, "bf16", "fsdp", 8) == z3
    # 16 bytes per trainable parameter in mixed precision (ZeRO paper), 16 in fp32 without a master copy
    assert sum(static_memory({"all": {"total": 10, "trainable": 10}}, "fp32", "ddp", 1).values()) == 160


# ----------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_vit_activation_estimate_vs_saved_tensors(norm, dtype):
    vcfg = VisionConfig.tiny(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=3,
                             norm_type=norm, qk_normalization=norm == "rms_norm")
    model = InternVisionModel(vcfg).to(dtype).train()
    x = torch.randn(4, 3, 112, 112, dtype=dtype)
    b = torch.finfo(dtype).bits // 8
    measured, _ = saved_bytes(lambda: model(x), _param_keys(model) | {_storage_key(x)})
    tokens = 4 * (1 + vcfg.num_patches)
    _close(measured, tokens * vcfg.num_hidden_layers * vit_layer_activation_bytes(vcfg, b, "train"))


def test_vit_activation_estimate_with_gradient_checkpointing():
    vcfg = VisionConfig.tiny(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=3)
    model = InternVisionModel(vcfg).train()
    model.gradient_checkpointing = True
    x = torch.randn(4, 3, 112, 112)
    live = LiveTensors()
    with live:
        out = model(x)
    measured = live.live_bytes(_param_keys(model) | {_storage_key(x), _storage_key(out)})
    tokens = 4 * (1 + vcfg.num_patches)
    # one (tokens, C) fp32 input per layer; the full per-layer activations are 15x that here
    assert measured == tokens * vcfg.num_hidden_layers * vcfg.hidden_size * 4
    assert vit_layer_activation_bytes(vcfg, 4) > 10 * vcfg.hidden_size * 4


def _llm_estimate(llm: dict, tokens: int, b: int, mode: str, checkpointing: bool) -> float:
    stage = stage2("tiny") if mode == "train" else stage1("tiny")  # stage 1: the LLM is frozen, gradient flows
    cfg = MiniVLConfig.smoke(vocab_size=llm["vocab_size"]).replace(llm=llm)
    acts = activation_bytes(cfg, stage, tiles=0, tokens=tokens, dtype={2: "bf16", 4: "fp32"}[b],
                            gradient_checkpointing=checkpointing)
    return acts["llm"]


@pytest.mark.parametrize("mode", ["train", "frozen"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["no_ckpt", "ckpt"])
def test_llm_activation_estimate_vs_measured(mode, checkpointing):
    llm = _tiny_qwen(layers=3)
    model = build_language_model(llm).train()
    if mode == "frozen":
        model.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, llm["vocab_size"], (1, 96))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(mode == "frozen")
    kwargs = {"input_ids": ids} if mode == "train" else {"inputs_embeds": embeds}
    exclude = _param_keys(model) | {_storage_key(embeds), _storage_key(ids)}
    live = LiveTensors()
    with live:
        logits = model(**kwargs, use_cache=False).logits
    measured = live.live_bytes(exclude | {_storage_key(logits)})
    # the inputs are excluded from the measurement: the ids (8 bytes per token) in train mode, the
    # embeddings (first layer input, 4H bytes per token) in frozen mode
    estimate = _llm_estimate(llm, 96, 4, mode, checkpointing) - 96 * (8 if mode == "train" else 4 * llm["hidden_size"])
    _close(measured, estimate)
    if not checkpointing:  # autograd's own view agrees
        saved, _ = saved_bytes(lambda: model(**kwargs, use_cache=False).logits, exclude)
        _close(saved, estimate)


def test_llm_layer_formula_by_hand():
    # H 64, 4 heads x 16, 2 KV heads, I 128, fp32: 4*(4H + 2*64 + 2*32 + 4I) + 2*(4 + 4H) + 4*4
    llm = _tiny_qwen()
    assert llm_layer_activation_bytes(llm, 4, "train") == 4 * (256 + 128 + 64 + 512) + 2 * (4 + 256) + 16
    # bf16: the RMSNorm fp32 copy (4H) is extra
    assert llm_layer_activation_bytes(llm, 2, "train") == 2 * (256 + 128 + 64 + 512) + 2 * (4 + 128 + 256) + 16


@pytest.mark.parametrize("stage", [stage2("tiny"), stage1("tiny")], ids=lambda s: s.name)
def test_whole_model_activations_with_loss(stage):
    stage = stage.replace(gradient_checkpointing=False)
    cfg, model = _smoke_model(stage)
    ids, px = _smoke_batch(cfg, tiles=2, text=60)
    exclude = _param_keys(model) | {_storage_key(ids), _storage_key(px)}
    measured, _ = saved_bytes(lambda: model(input_ids=ids, pixel_values=px, labels=ids).loss, exclude)
    acts = activation_bytes(cfg, stage, tiles=2, tokens=ids.shape[1], dtype="fp32", gradient_checkpointing=False)
    estimate = acts["vision"] + acts["projector"] + acts["llm"] + acts["logits_saved"]
    _close(measured, estimate)
    assert acts["vision"] == (0 if stage.name == "stage1" else acts["vision"])  # frozen first tower: nothing kept


# ----------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [stage2("tiny"), stage1("tiny"), finetune_full("tiny"), finetune_lora("tiny")],
                         ids=lambda s: s.name)
def test_flops_equal_flop_counter(stage):
    stage = stage.replace(gradient_checkpointing=False)
    cfg, model = _smoke_model(stage)
    ids, px = _smoke_batch(cfg)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, pixel_values=px, labels=ids).loss.backward()
    est = flops_per_sample(cfg, stage, tiles=2, tokens=ids.shape[1], lora=stage.lora)
    measured = counter.get_total_flops()
    if stage.lora is None:
        assert est["total"] == measured
    else:  # LoRA: the first layer's partial backward is not modelled
        assert abs(est["total"] - measured) <= 0.05 * measured


@pytest.mark.parametrize("llm_ckpt", [False, True], ids=["vit_ckpt", "both_ckpt"])
def test_flops_recompute_with_gradient_checkpointing(llm_ckpt):
    stage = stage2("tiny").replace(gradient_checkpointing=True)
    cfg, model = _smoke_model(stage)
    model.gradient_checkpointing_enable(vision=True, llm=llm_ckpt)
    ids, px = _smoke_batch(cfg)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, pixel_values=px, labels=ids).loss.backward()
    est = flops_per_sample(cfg, stage, tiles=2, tokens=ids.shape[1])
    extra = counter.get_total_flops() - est["total"]
    if not llm_ckpt:  # the backward re-runs every ViT layer's forward once, exactly
        assert extra == est["recompute_vision"]
    else:
        # every LLM Linear is re-run (2 x weights x tokens per layer); torch's checkpoint stops
        # recomputing early, so part of the attention is not re-run: the estimate is an upper bound
        layer_w = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * cfg.llm["intermediate_size"]  # q, o; k, v; MLP
        matmuls = 2 * ids.shape[1] * cfg.llm["num_hidden_layers"] * layer_w
        assert est["recompute_vision"] + matmuls < extra <= est["recompute"]


def test_flops_6nd_rule_for_a_large_llm():
    # without images and attention, an LLM trained on T tokens costs 6 x (matmul params) x T
    cfg = planner_config("internvl2_5_1b")
    f = flops_per_sample(cfg, stage2("1b"), tiles=0, tokens=4096, attention_span=0)
    n_matmul = param_counts(cfg)["llm"]["total"] - 151674 * 896 - 24 * (2 * 896 + 896 + 2 * 128) - 896
    assert f["llm"] == 6 * n_matmul * 4096


# ----------------------------------------------------------------------------------------
# plans
# ----------------------------------------------------------------------------------------


def test_colab_recipe_1b_lora_fits_t4_and_l4():
    stage = finetune_lora("1b").replace(batch_size=1)
    for gpu, dtype in (("T4", "fp16"), ("L4", "bf16")):
        p = plan("internvl2_5_1b", stage, 1, gpu, tiles_per_sample=7, tokens_per_sample=2048, dtype=dtype)
        assert p.fits, str(p)
        assert p.params["all"]["trainable"] == p.params["lora"]["total"] == 8_798_208
    # the same recipe in full fine-tuning (projector + LLM) does not fit a T4
    assert not plan("internvl2_5_1b", finetune_full("1b").replace(batch_size=1), 1, "T4", tiles_per_sample=7,
                    tokens_per_sample=2048, dtype="fp16").fits
    t4_bf16 = plan("internvl2_5_1b", stage, 1, "T4", tiles_per_sample=7, tokens_per_sample=2048)
    assert any("fp16" in note for note in t4_bf16.notes)


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_8b_full_finetune_zero1_on_8_a100_80gb(batch):
    # the official 2nd-finetune recipe: ViT frozen, ZeRO-1, 8 GPUs x micro-batch 4; 6 tiles + thumbnail
    stage = finetune_full("8b").replace(batch_size=batch)
    p = plan("internvl2_5_8b", stage, 8, "A100-80GB", strategy="zero1", tiles_per_sample=7, tokens_per_sample=4096)
    assert p.fits, str(p)
    assert not plan("internvl2_5_8b", stage, 8, "A100-80GB", strategy="ddp", tiles_per_sample=7,
                    tokens_per_sample=4096).fits


def test_78b_does_not_fit_one_gpu_and_recommend_picks_cheapest():
    with pytest.raises(ValueError, match="no strategy fits"):
        recommend("internvl2_5_78b", finetune_lora("8b").replace(batch_size=1), 1, "H100-80GB",
                  tiles_per_sample=7, tokens_per_sample=2048)
    # 78B bf16 weights alone are 157 GB
    p = plan("internvl2_5_78b", finetune_lora("8b"), 1, custom(141, 989, "H200"),
             tiles_per_sample=1, tokens_per_sample=512)
    assert p.memory["weights"] == 2 * p.params["all"]["total"] > 141 * GB
    best = recommend("internvl2_5_8b", stage2("8b"), 8, "A100-80GB")
    assert best.strategy == "zero1"  # ddp's 16 bytes per parameter (129 GB) do not fit
    assert recommend("internvl2_5_1b", stage2("1b"), 1, "H100-80GB").strategy == "ddp"


def test_chunked_loss_is_why_78b_stage2_uses_liger():
    # InternVL 2.5 trains 38B/78B stage 2 with ZeRO-3 on 512 GPUs and Liger's fused linear
    # cross-entropy: without it the 16k-token pack's logits alone do not fit an 80 GB card
    stage = stage2("8b")
    plain = plan("internvl2_5_78b", stage, 512, "A100-80GB", strategy="zero3")
    fused = plan("internvl2_5_78b", stage, 512, "A100-80GB", strategy="zero3", chunked_loss=True)
    assert not plain.fits and fused.fits
    # 1B: V/H = 151674/896 -> 170 chunks; 16384 / 170 -> 97 -> 128 tokens of fp32 logits + gradient
    small = plan("internvl2_5_1b", stage2("1b"), 1, chunked_loss=True)
    assert small.memory["act_logits_transient"] == 128 * 151674 * 8 and small.memory["act_logits_saved"] == 0


def test_plan_time_table_and_dict():
    p = plan("internvl2_5_1b", stage2("1b"), 4, "A100-80GB", strategy="zero2", num_samples=10_000, mfu=0.5)
    assert p.tiles_per_sample == 48 and p.tokens_per_sample == 16384  # the stage's packing knobs
    expected = 10_000 * p.flops["total"] / (4 * 312e12 * 0.5)
    assert p.seconds_per_epoch == pytest.approx(expected, rel=1e-12)
    assert p.seconds_per_step == pytest.approx(p.flops["total"] * 4 / (4 * 312e12 * 0.5), rel=1e-12)
    assert p.tokens_per_second == pytest.approx(16384 * 4 / p.seconds_per_step, rel=1e-12)
    total = sum(v for k, v in p.memory.items() if k != "total")
    assert p.memory["total"] == pytest.approx(total, rel=1e-12)
    assert p.memory["margin"] == pytest.approx(0.1 * (total - p.memory["margin"] - GB), rel=1e-12)
    text = str(p)
    assert "zero2" in text and "fits" in text and "epoch time" in text
    d = json.loads(json.dumps(p.to_dict()))
    assert d["fits"] is True and d["params"]["all"]["total"] == 938_193_024


def test_errors_are_loud():
    with pytest.raises(ValueError, match="unknown GPU"):
        plan("internvl2_5_1b", stage2("1b"), gpu="V100")
    with pytest.raises(ValueError, match="unknown strategy"):
        plan("internvl2_5_1b", stage2("1b"), strategy="zero4")
    with pytest.raises(ValueError, match="image tokens"):
        plan("internvl2_5_1b", stage2("1b"), tiles_per_sample=10, tokens_per_sample=1024)
    with pytest.raises(ValueError, match="unknown model preset"):
        planner_config("internvl2_5_3b")


# ----------------------------------------------------------------------------------------
# the GPU benchmark script, its CPU parts
# ----------------------------------------------------------------------------------------


def _gpu_train_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.py"
    spec = importlib.util.spec_from_file_location("minivl_bench_gpu_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_packed_row_layout():
    bench = _gpu_train_module()
    # InternVL 2.5's pack: 16384 tokens, 48 tiles of 256 tokens (+ <img>, </img>) over 8 samples
    lengths = bench.sample_lengths(16384, 48, 8, 256)
    assert lengths == [(2048, 6)] * 8
    assert bench.sample_lengths(100, 5, 2, 16) == [(3 * 18 + 5, 3), (2 * 18 + 5, 2)]
    cfg = MiniVLConfig.smoke(vocab_size=512, image_token_id=IMG)
    row = bench.make_packed_row(cfg, 256, 8, 4, 6, 7)
    ids, labels, pos = row["input_ids"][0], row["labels"][0], row["position_ids"][0]
    assert ids.shape == labels.shape == pos.shape == (256,)
    assert int((ids == IMG).sum()) == 8 * cfg.num_image_token and row["pixel_values"].shape == (8, 3, 112, 112)
    assert row["cu_seqlens"].tolist() == [0, 64, 128, 192, 256]
    assert pos[:64].tolist() == list(range(64)) and pos[64] == 0
    assert ((labels == -100) | (labels == ids)).all() and not (labels[ids == IMG] != -100).any()


def test_gpu_benchmark_step_trains_and_keeps_masters_in_sync():
    bench = _gpu_train_module()
    torch.manual_seed(0)
    cfg = MiniVLConfig.smoke(vocab_size=512, image_token_id=IMG)
    model = bench.build_model(cfg, "cpu", torch.bfloat16, "sdpa")
    row = bench.make_packed_row(cfg, 256, 8, 4, 6, 7)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = bench.MasterAdamW(params, lr=1e-3, weight_decay=0.01, fused=False)
    times, losses = bench.train_steps(model, row, steps=3, warmup=1, optimizer=opt, sync=lambda: None)
    assert len(times) == 2 and losses[-1] < losses[0]
    assert all(m.dtype == torch.float32 for m in opt.masters)
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(params, opt.masters))
    state = opt.opt.state[opt.masters[0]]
    assert state["exp_avg"].dtype == torch.float32  # fp32 moments, as the planner counts them


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_benchmark_exits_2_without_cuda(capsys):
    assert _gpu_train_module().main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
