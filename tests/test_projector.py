"""Pixel shuffle (v1/v2), num_image_token and the mlp1 projector, checked against hand values."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from minivl.projector import MLPProjector, extract_feature, num_image_token, pixel_shuffle


def test_pixel_shuffle_v2_hand_values():
    x = torch.arange(32).reshape(1, 4, 4, 2).float()
    out = pixel_shuffle(x, 0.5, version="v2")
    assert out.shape == (1, 2, 2, 8)
    assert out[0, 0, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert out[0, 0, 1].tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    assert out[0, 1, 0].tolist() == [16, 17, 18, 19, 24, 25, 26, 27]
    assert out[0, 1, 1].tolist() == [20, 21, 22, 23, 28, 29, 30, 31]


def test_pixel_shuffle_v1_is_transposed_and_warns():
    x = torch.arange(32).reshape(1, 4, 4, 2).float()
    with pytest.warns(UserWarning, match="v1"):
        v1 = pixel_shuffle(x, 0.5, version="v1")
    assert v1[0, 0, 1].tolist() == [16, 17, 18, 19, 24, 25, 26, 27]
    assert v1[0, 1, 0].tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v2 = pixel_shuffle(x, 0.5)  # v2 is the default and does not warn
    torch.testing.assert_close(v1, v2.transpose(1, 2), rtol=0, atol=0)


def test_pixel_shuffle_closed_form_non_square():
    # out[n, i, j] = cat(x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1])
    x = torch.randn(2, 6, 4, 3)
    out = pixel_shuffle(x)
    assert out.shape == (2, 3, 2, 12)
    for i in range(3):
        for j in range(2):
            expected = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]], -1)
            torch.testing.assert_close(out[:, i, j], expected, rtol=0, atol=0)


def test_pixel_shuffle_quarter_scale_and_errors():
    # s = 1/4: 16 patches of a 4x4 block in row-major order
    x = torch.arange(16).reshape(1, 4, 4, 1).float()
    assert pixel_shuffle(x, 0.25)[0, 0, 0].tolist() == list(range(16))
    with pytest.raises(ValueError, match="not divisible"):
        pixel_shuffle(torch.zeros(1, 3, 3, 2))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        pixel_shuffle(torch.zeros(4, 4, 2))
    with pytest.raises(ValueError, match="version"):
        pixel_shuffle(torch.zeros(1, 4, 4, 2), version="v3")


def test_pixel_shuffle_matches_transformers():
    from transformers.models.internvl.modeling_internvl import InternVLModel

    x = torch.randn(3, 8, 8, 5)
    # the method does not use self
    ref = InternVLModel.pixel_shuffle(None, x, scale_factor=0.5)
    torch.testing.assert_close(pixel_shuffle(x), ref, rtol=0, atol=0)


def test_num_image_token():
    assert num_image_token(448, 14, 0.5) == 256
    assert num_image_token(112, 14, 0.5) == 16
    assert num_image_token(224, 16, 0.5) == 49
    assert num_image_token(448, 14, 0.25) == 64
    assert num_image_token() == 256


def test_mlp_projector_layout_and_math():
    torch.manual_seed(0)
    proj = MLPProjector(vit_hidden_size=8, llm_hidden_size=6)
    assert proj.in_features == 32
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == {
        "0.weight": (32,),
        "0.bias": (32,),
        "1.weight": (6, 32),
        "1.bias": (6,),
        "3.weight": (6, 6),
        "3.bias": (6,),
    }
    assert proj[0].eps == 1e-5  # torch default, not the ViT's 1e-6
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 5, 32) * 3 + 1
    # by hand: LayerNorm with eps 1e-5, Linear, exact erf GELU, Linear
    w0, b0, w1, b1, w3, b3 = (proj.state_dict()[k] for k in ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"])
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    h = (x - mu) / torch.sqrt(var + 1e-5) * w0 + b0
    h = h @ w1.T + b1
    h = 0.5 * h * (1 + torch.erf(h / 2**0.5))
    expected = h @ w3.T + b3
    torch.testing.assert_close(proj(x), expected, rtol=1e-5, atol=1e-5)
    # tanh GELU would differ: make sure the test can see that
    tanh = F.gelu(F.layer_norm(x, (32,), w0, b0, 1e-5) @ w1.T + b1, approximate="tanh") @ w3.T + b3
    assert (tanh - expected).abs().max() > 1e-5


class _FakeViT(torch.nn.Module):
    """Returns fixed hidden states (N, 1 + P, C) so extract_feature can be checked by hand."""

    def __init__(self, states: torch.Tensor) -> None:
        super().__init__()
        self.states = states
        self.calls: list[int] = []

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        self.calls.append(select_layer)
        return self.states


def test_extract_feature_drops_cls_and_merges():
    n, side, c = 2, 4, 3
    states = torch.randn(n, 1 + side * side, c)
    vit = _FakeViT(states)
    out = extract_feature(vit, torch.nn.Identity(), torch.zeros(n, 3, 56, 56), select_layer=-2)
    assert vit.calls == [-2]
    assert out.shape == (n, 4, 4 * c)
    grid = states[:, 1:].reshape(n, side, side, c)
    # merged token 1 is block (row 0, col 1): patches (0,2), (0,3), (1,2), (1,3)
    expected = torch.cat([grid[:, 0, 2], grid[:, 0, 3], grid[:, 1, 2], grid[:, 1, 3]], -1)
    torch.testing.assert_close(out[:, 1], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="square"):
        extract_feature(_FakeViT(torch.randn(1, 1 + 8, c)), torch.nn.Identity(), torch.zeros(1, 3, 28, 56))
