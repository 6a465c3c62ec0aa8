"""InternViT: configs, parameter counts, one layer by hand, norms, drop path, checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import minivl.vision.intern_vit as iv
from minivl.config import VisionConfig, internvit_6b, internvit_300m
from minivl.vision.intern_vit import (
    InternRMSNorm,
    InternVisionEncoderLayer,
    InternVisionModel,
    drop_path,
    interpolate_pos_embed,
)


def _small(**overrides) -> VisionConfig:
    base = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=3)
    base.update(overrides)
    return VisionConfig.tiny(**base)


def _perturb(module: torch.nn.Module, scale: float = 0.2) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


# ----- configs and parameter counts ---------------------------------------------------------------


def test_presets():
    tiny = VisionConfig.tiny()
    assert (tiny.image_size, tiny.patch_size, tiny.grid_size, tiny.num_patches) == (112, 14, 8, 64)
    c300, c6b = internvit_300m(), internvit_6b()
    assert (c300.hidden_size, c300.num_hidden_layers, c300.num_attention_heads, c300.head_dim) == (1024, 24, 16, 64)
    assert (c300.qkv_bias, c300.qk_normalization, c300.norm_type) == (True, False, "layer_norm")
    assert (c6b.hidden_size, c6b.num_hidden_layers, c6b.num_attention_heads, c6b.head_dim) == (3200, 45, 25, 128)
    assert (c6b.qkv_bias, c6b.qk_normalization, c6b.norm_type, c6b.intermediate_size) == (False, True, "rms_norm", 12800)
    assert c300.num_patches == 1024 and c300.layer_norm_eps == 1e-6 and c300.initializer_factor == 0.1
    assert VisionConfig.tiny(hidden_size=64).hidden_size == 64
    assert VisionConfig.from_official_dict({**c6b.to_official_dict(), "architectures": ["x"]}) == c6b


def test_config_errors():
    with pytest.raises(ValueError, match="norm_type"):
        VisionConfig(norm_type="batch_norm")
    with pytest.raises(ValueError, match="divisible"):
        VisionConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionConfig(image_size=100, patch_size=14)


def _hand_count(c: int, layers: int, inter: int, patches: int, qkv_bias: bool, qk_norm: bool, layer_norm: bool) -> int:
    emb = c + (3 * 14 * 14 * c + c) + (1 + patches) * c
    per_layer = (
        c * 3 * c + (3 * c if qkv_bias else 0)  # qkv
        + (2 * c if qk_norm else 0)  # q_norm, k_norm
        + c * c + c  # proj
        + c * inter + inter + inter * c + c  # fc1, fc2
        + 2 * (2 * c if layer_norm else c)  # norm1, norm2
        + 2 * c  # ls1, ls2
    )
    return emb + layers * per_layer


@pytest.mark.parametrize(
    ("cfg", "hand", "published"),
    [
        (internvit_300m(), 304_012_288, 0.3e9),
        (internvit_6b(), 5_536_496_000, 5.5e9),
    ],
)
def test_parameter_counts_on_meta(cfg, hand, published):
    from transformers import InternVLVisionConfig, InternVLVisionModel

    with torch.device("meta"):
        model = InternVisionModel(cfg)
        ref = InternVLVisionModel(InternVLVisionConfig(**cfg.to_transformers_dict()))
    n = sum(p.numel() for p in model.parameters())
    assert n == hand
    assert n == _hand_count(
        cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_patches,
        cfg.qkv_bias, cfg.qk_normalization, cfg.norm_type == "layer_norm",
    )
    assert n == sum(p.numel() for p in ref.parameters())
    assert abs(n - published) / published < 0.02


# ----- building blocks ----------------------------------------------------------------------------


def test_intern_rms_norm_casts_before_weight():
    torch.manual_seed(0)
    norm = InternRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16) * 3)
    x = torch.randn(4, 16) * 5
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    # bf16: normalised in fp32, rounded to bf16, *then* multiplied by the fp32 weight (-> fp32)
    xb = x.bfloat16()
    normed = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    torch.testing.assert_close(norm(xb), norm.weight * normed, rtol=0, atol=0)


def test_pos_embed_interpolation():
    pos = torch.randn(1, 1 + 16, 8)
    # identity at the trained 4x4 grid
    torch.testing.assert_close(interpolate_pos_embed(pos, 4, 4), pos, rtol=0, atol=1e-6)
    out = interpolate_pos_embed(pos, 6, 2)
    assert out.shape == (1, 1 + 12, 8)
    torch.testing.assert_close(out[:, 0], pos[:, 0], rtol=0, atol=0)
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)  # (1, g*g, C) -> (1, C, g, g)
    ref = F.interpolate(grid, size=(6, 2), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[0, 1:], ref[0].permute(1, 2, 0).reshape(12, 8))
    # a bf16 table is resized in fp32 and cast back
    assert interpolate_pos_embed(pos.bfloat16(), 6, 2).dtype == torch.bfloat16


@pytest.mark.parametrize("style", ["300m", "6b"])
def test_layer_step_by_step(style):
    torch.manual_seed(1)
    if style == "300m":
        cfg = _small()
    else:
        cfg = _small(norm_type="rms_norm", qk_normalization=True, qkv_bias=False)
    layer = InternVisionEncoderLayer(cfg).eval()
    _perturb(layer)
    x = torch.randn(2, 5, 32)
    c, h, d = 32, 4, 8

    def norm(mod, t):
        if style == "300m":
            return F.layer_norm(t, (c,), mod.weight, mod.bias, 1e-6)
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * mod.weight

    a = norm(layer.norm1, x)
    qkv = a @ layer.attn.qkv.weight.T
    if cfg.qkv_bias:
        qkv = qkv + layer.attn.qkv.bias
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    if cfg.qk_normalization:  # full-width RMSNorm before the head split
        q, k = norm(layer.attn.q_norm, q), norm(layer.attn.k_norm, k)
    q, k, v = (t.reshape(2, 5, h, d).transpose(1, 2) for t in (q, k, v))  # (B, N, C) -> (B, h, N, d)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    o = (att @ v).transpose(1, 2).reshape(2, 5, c)  # (B, h, N, d) -> (B, N, C)
    x1 = x + (o @ layer.attn.proj.weight.T + layer.attn.proj.bias) * layer.ls1
    m = norm(layer.norm2, x1) @ layer.mlp.fc1.weight.T + layer.mlp.fc1.bias
    m = 0.5 * m * (1 + torch.erf(m / math.sqrt(2)))
    x2 = x1 + (m @ layer.mlp.fc2.weight.T + layer.mlp.fc2.bias) * layer.ls2
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.attn.attention_probs(layer.norm1(x)), att, rtol=1e-5, atol=1e-6)


def test_parameter_names_follow_official_layout():
    cfg = _small(num_hidden_layers=1, norm_type="rms_norm", qk_normalization=True, qkv_bias=False)
    keys = set(InternVisionModel(cfg).state_dict())
    assert keys == {
        "embeddings.class_embedding",
        "embeddings.position_embedding",
        "embeddings.patch_embedding.weight",
        "embeddings.patch_embedding.bias",
        "encoder.layers.0.ls1",
        "encoder.layers.0.ls2",
        "encoder.layers.0.attn.qkv.weight",
        "encoder.layers.0.attn.q_norm.weight",
        "encoder.layers.0.attn.k_norm.weight",
        "encoder.layers.0.attn.proj.weight",
        "encoder.layers.0.attn.proj.bias",
        "encoder.layers.0.mlp.fc1.weight",
        "encoder.layers.0.mlp.fc1.bias",
        "encoder.layers.0.mlp.fc2.weight",
        "encoder.layers.0.mlp.fc2.bias",
        "encoder.layers.0.norm1.weight",
        "encoder.layers.0.norm2.weight",
    }
    model = InternVisionModel(cfg)
    assert model.encoder.layers[0].ls1.detach().eq(0.1).all()


def test_forward_shapes_and_select_layer():
    torch.manual_seed(2)
    model = InternVisionModel(_small()).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        states = model.hidden_states(x)
        assert len(states) == 4 and states[-1].shape == (2, 65, 32)
        torch.testing.assert_close(model(x), states[-1], rtol=0, atol=0)
        torch.testing.assert_close(model(x, select_layer=-2), states[2], rtol=0, atol=0)
        torch.testing.assert_close(model(x, select_layer=0), states[0], rtol=0, atol=0)
        # embeddings by hand: CLS + row-major conv patches + positions
        conv = F.conv2d(x, model.embeddings.patch_embedding.weight, model.embeddings.patch_embedding.bias, stride=14)
        patches = conv.flatten(2).transpose(1, 2)  # (N, C, 8, 8) -> (N, 64, C)
        cls = model.embeddings.class_embedding.expand(2, 1, 32)
        torch.testing.assert_close(states[0], torch.cat([cls, patches], 1) + model.embeddings.position_embedding)
        assert model(torch.randn(1, 3, 140, 84)).shape == (1, 1 + 10 * 6, 32)
    with pytest.raises(ValueError, match="select_layer"):
        model(x, select_layer=4)
    with pytest.raises(ValueError, match="patch size"):
        model(torch.randn(1, 3, 100, 112))


# ----- drop path ------------------------------------------------------------------------------------


def test_drop_path_function():
    x = torch.ones(4000, 3, 2)
    assert drop_path(x, 0.25, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.reshape(4000, -1)
    # each sample is either all 0 or all 1 / 0.75
    assert torch.all(per_sample == per_sample[:, :1])
    assert sorted(per_sample[:, 0].unique().tolist()) == pytest.approx([0.0, 1 / 0.75])
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.03  # 4000 draws: std 0.007
    assert abs(y.mean().item() - 1.0) < 0.04  # unbiased in expectation


def test_drop_path_rates_rise_linearly():
    model = InternVisionModel(_small(num_hidden_layers=5, drop_path_rate=0.4))
    rates = [layer.drop_path1.drop_prob for layer in model.encoder.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert [layer.drop_path2.drop_prob for layer in model.encoder.layers] == rates


def test_drop_path_in_layer_eval_identity_and_train_combinations():
    torch.manual_seed(3)
    cfg = _small(drop_path_rate=0.5)
    layer = InternVisionEncoderLayer(cfg, drop_path_rate=0.5)
    _perturb(layer)
    plain = InternVisionEncoderLayer(_small(), drop_path_rate=0.0)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(64, 5, 32)
    layer.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)
        # hand: every sample is one of the 4 keep/drop combinations, kept branches scaled by 2
        candidates = []
        for k1 in (0.0, 2.0):
            h = x + k1 * layer.attn(layer.norm1(x)) * layer.ls1
            for k2 in (0.0, 2.0):
                candidates.append(h + k2 * layer.mlp(layer.norm2(h)) * layer.ls2)
        layer.train()
        y = layer(x)
    err = torch.stack([(y - c).abs().amax(dim=(1, 2)) for c in candidates])  # (4, B)
    best = err.min(0)
    assert best.values.max() < 1e-5
    assert len(set(best.indices.tolist())) == 4  # 64 samples: every combination shows up


# ----- gradient checkpointing -----------------------------------------------------------------------


def test_gradient_checkpointing_same_grads(monkeypatch):
    torch.manual_seed(4)
    model = InternVisionModel(_small())
    _perturb(model, 0.05)
    x = torch.randn(2, 3, 112, 112)

    def grads():
        model.zero_grad()
        out = model(x)
        out.pow(2).mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    model.train()
    out0, g0 = grads()
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(iv.torch.utils.checkpoint, "checkpoint", counting)
    model.gradient_checkpointing = True
    assert model.encoder.gradient_checkpointing is True
    out1, g1 = grads()
    assert len(calls) == 3
    torch.testing.assert_close(out1, out0, rtol=0, atol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    model.eval()
    with torch.no_grad():
        model(x)
    assert len(calls) == 3  # not used in eval mode
