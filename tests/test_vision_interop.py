"""Vision half vs transformers' InternVL, and the official <-> minivl <-> transformers key maps."""

from __future__ import annotations

import pytest
import torch

from minivl.checkpoint import (
    StateDictKeyError,
    check_state_dict,
    load_state_dict_strict,
    projector_minivl_to_official,
    projector_minivl_to_transformers,
    projector_official_to_minivl,
    projector_transformers_to_minivl,
    vit_minivl_to_official,
    vit_minivl_to_transformers,
    vit_official_to_minivl,
    vit_transformers_to_minivl,
)
from minivl.config import VisionConfig
from minivl.projector import MLPProjector, extract_feature
from minivl.vision.intern_vit import InternVisionModel

LLM_HIDDEN = 48

STYLES = {
    "300m": dict(norm_type="layer_norm", qk_normalization=False, qkv_bias=True),
    "6b": dict(norm_type="rms_norm", qk_normalization=True, qkv_bias=False),
}


def _vision_config(style: str) -> VisionConfig:
    return VisionConfig.tiny(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=3, **STYLES[style])


def _hf_model(cfg: VisionConfig, seed: int = 0):
    """A tiny random transformers InternVL with every parameter perturbed (HF zero-inits CLS/positions)."""
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen2Config,
    )

    text = Qwen2Config(
        hidden_size=LLM_HIDDEN, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, vocab_size=64,
    )
    config = InternVLConfig(vision_config=InternVLVisionConfig(**cfg.to_transformers_dict()), text_config=text)
    config.vision_config._attn_implementation = "eager"  # the explicit softmax path as reference
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _minivl_from_hf(cfg: VisionConfig, hf_state: dict) -> tuple[InternVisionModel, MLPProjector]:
    vit = InternVisionModel(cfg).eval()
    proj = MLPProjector(cfg.hidden_size, LLM_HIDDEN).eval()
    load_state_dict_strict(vit, vit_transformers_to_minivl(hf_state), "vision")
    load_state_dict_strict(proj, projector_transformers_to_minivl(hf_state), "projector")
    return vit, proj


@pytest.mark.parametrize("style", ["300m", "6b"])
@pytest.mark.parametrize("size", [112, 140])  # 140: a 10x10 grid, positions interpolated from 8x8
def test_matches_transformers(style, size):
    cfg = _vision_config(style)
    hf = _hf_model(cfg)
    vit, proj = _minivl_from_hf(cfg, hf.state_dict())
    torch.manual_seed(1)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ours = extract_feature(vit, proj, x)
        ref = hf.model.get_image_features(pixel_values=x).pooler_output
        assert ours.shape == ref.shape == (3, (size // 14 // 2) ** 2, LLM_HIDDEN)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(vit(x), hf.model.vision_tower(pixel_values=x).last_hidden_state, rtol=0, atol=1e-5)
        # a wrong key map would be visible: swapping k and v changes the output a lot
        bad = vit_transformers_to_minivl(hf.state_dict())
        c = cfg.hidden_size
        w = bad["encoder.layers.0.attn.qkv.weight"]
        bad["encoder.layers.0.attn.qkv.weight"] = torch.cat([w[:c], w[2 * c :], w[c : 2 * c]])
        vit.load_state_dict(bad)
        assert (extract_feature(vit, proj, x) - ref).abs().max() > 1e-3


def test_matches_transformers_select_layer_and_non_square():
    cfg = _vision_config("6b")
    hf = _hf_model(cfg, seed=2)
    vit, proj = _minivl_from_hf(cfg, hf.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ours = extract_feature(vit, proj, x, select_layer=-2)
        ref = hf.model.get_image_features(pixel_values=x, vision_feature_layer=-2).pooler_output
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        assert (ours - extract_feature(vit, proj, x)).abs().max() > 1e-3
        # non-square input: positions are resized to a 6x10 grid in both
        xr = torch.randn(2, 3, 84, 140)
        torch.testing.assert_close(vit(xr), hf.model.vision_tower(pixel_values=xr).last_hidden_state, rtol=0, atol=1e-5)


def _random_minivl_state(cfg: VisionConfig) -> tuple[dict, dict]:
    torch.manual_seed(5)
    vit = InternVisionModel(cfg)
    proj = MLPProjector(cfg.hidden_size, LLM_HIDDEN)
    return vit.state_dict(), proj.state_dict()


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("style", ["300m", "6b"])
def test_round_trip_official_minivl_transformers(style):
    cfg = _vision_config(style)
    vit_sd, proj_sd = _random_minivl_state(cfg)
    official = {**vit_minivl_to_official(vit_sd), **projector_minivl_to_official(proj_sd), "language_model.x": torch.zeros(1)}
    assert "vision_model.encoder.layers.2.attn.qkv.weight" in official and "mlp1.3.bias" in official
    # official -> minivl (other components are ignored by prefix)
    vit2 = vit_official_to_minivl(official)
    proj2 = projector_official_to_minivl(official)
    _assert_same(vit2, vit_sd)
    _assert_same(proj2, proj_sd)
    # minivl -> transformers (in memory) -> minivl
    hf = {**vit_minivl_to_transformers(vit2), **projector_minivl_to_transformers(proj2)}
    _assert_same(vit_transformers_to_minivl(hf), vit_sd)
    _assert_same(projector_transformers_to_minivl(hf), proj_sd)
    # the split follows rows [q; k; v]
    c = cfg.hidden_size
    qkv = vit_sd["encoder.layers.1.attn.qkv.weight"]
    torch.testing.assert_close(hf["model.vision_tower.encoder.layer.1.attention.k_proj.weight"], qkv[c : 2 * c], rtol=0, atol=0)
    # the transformers keys are exactly those of transformers' own model
    ref_keys = {k for k in _hf_model(cfg).state_dict() if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    assert set(hf) == ref_keys
    # on-disk prefixes too, detected automatically
    disk = {**vit_minivl_to_transformers(vit_sd, prefix="vision_tower."),
            **projector_minivl_to_transformers(proj_sd, prefix="multi_modal_projector.")}
    _assert_same(vit_transformers_to_minivl(disk), vit_sd)
    _assert_same(projector_transformers_to_minivl(disk), proj_sd)
    # and back to official
    _assert_same(vit_minivl_to_official(vit_transformers_to_minivl(disk)), vit_minivl_to_official(vit_sd))


def test_missing_and_unexpected_keys_are_listed():
    cfg = _vision_config("300m")
    vit_sd, proj_sd = _random_minivl_state(cfg)
    vit = InternVisionModel(cfg)
    # missing
    broken = dict(vit_sd)
    del broken["encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(StateDictKeyError) as err:
        load_state_dict_strict(vit, broken, "vision")
    assert err.value.missing == ["encoder.layers.1.mlp.fc2.bias"] and err.value.unexpected == []
    assert "encoder.layers.1.mlp.fc2.bias" in str(err.value) and "vision" in str(err.value)
    # unexpected (a final norm InternViT does not have)
    extra = {**vit_sd, "layernorm.weight": torch.ones(32)}
    with pytest.raises(StateDictKeyError, match=r"unexpected \(1\): layernorm.weight"):
        load_state_dict_strict(vit, extra, "vision")
    # shape mismatch
    wrong = {**vit_sd, "encoder.layers.0.ls1": torch.ones(31)}
    with pytest.raises(ValueError, match="encoder.layers.0.ls1"):
        check_state_dict(vit, wrong)
    # 6B weights (no qkv bias, qk-norm) into a 300M-style model: both sides listed
    sd6b, _ = _random_minivl_state(_vision_config("6b"))
    with pytest.raises(StateDictKeyError) as err:
        load_state_dict_strict(vit, sd6b, "vision")
    assert "encoder.layers.0.attn.qkv.bias" in err.value.missing
    assert "encoder.layers.0.attn.q_norm.weight" in err.value.unexpected


def test_converters_reject_unknown_and_partial_keys():
    cfg = _vision_config("300m")
    vit_sd, proj_sd = _random_minivl_state(cfg)
    hf = vit_minivl_to_transformers(vit_sd)
    del hf["model.vision_tower.encoder.layer.2.attention.v_proj.bias"]
    hf["model.vision_tower.layernorm.weight"] = torch.ones(32)
    with pytest.raises(StateDictKeyError) as err:
        vit_transformers_to_minivl(hf)
    assert err.value.missing == ["model.vision_tower.encoder.layer.2.attention.v_proj.bias"]
    assert err.value.unexpected == ["model.vision_tower.layernorm.weight"]
    with pytest.raises(StateDictKeyError, match="encoder.layers.0.attn.dropout.weight"):
        vit_minivl_to_transformers({**vit_sd, "encoder.layers.0.attn.dropout.weight": torch.ones(1)})
    with pytest.raises(StateDictKeyError, match="2.weight"):
        projector_minivl_to_transformers({**proj_sd, "2.weight": torch.ones(1)})
    with pytest.raises(KeyError, match="vision_tower"):
        vit_transformers_to_minivl({"vision_model.x": torch.ones(1)})
    with pytest.raises(KeyError, match="mlp1"):
        projector_official_to_minivl({"multi_modal_projector.linear_1.weight": torch.ones(1)})


def test_config_round_trip_with_transformers():
    from transformers import InternVLVisionConfig

    for cfg in (VisionConfig.internvit_300m(), VisionConfig.internvit_6b(), VisionConfig.tiny()):
        hf = InternVLVisionConfig(**cfg.to_transformers_dict())
        back = VisionConfig.from_transformers_dict(hf.to_dict())
        assert back == cfg
    with pytest.raises(ValueError, match="square"):
        VisionConfig.from_transformers_dict({**VisionConfig.tiny().to_transformers_dict(), "image_size": [112, 224]})
