"""The cpu-scale ViT warm start: labels re-derived from pixels, it learns, it caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minivl.config import VisionConfig
from minivl.data.synthetic.common import COLOURS, PALETTE, SHAPES
from minivl.vision.transforms import IMAGENET_MEAN, IMAGENET_STD
from minivl.vision.warmstart import (
    NUM_CLASSES,
    CellHead,
    TokenHead,
    cell_label,
    class_prototypes,
    class_share_loss,
    class_variance,
    prototype_loss,
    render_scenes,
    token_labels,
    token_probe,
    warm_start_vit,
)

SMALL = VisionConfig.tiny(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def test_cell_labels_are_distinct_and_in_range():
    labels = {cell_label(k, c) for k in SHAPES for c in COLOURS}
    assert labels == set(range(1, NUM_CLASSES))


def test_rendered_labels_match_the_pixels():
    """Each occupied cell's colour is the most common palette colour inside that cell; an
    empty cell holds no palette colour at all."""
    pixels, labels, _ = render_scenes(24, image_size=112, seed=3)
    assert pixels.shape == (24, 3, 112, 112) and labels.shape == (24, 9)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = ((pixels * std + mean) * 255).round().permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    palette = np.array([PALETTE[c] for c in COLOURS], dtype=float)  # (4, 3)
    for image, label in zip(rgb, labels.tolist()):
        for cell in range(9):
            row, col = divmod(cell, 3)
            # the central part of the cell (resizing blurs the borders between cells)
            patch = image[row * 37 + 4:(row + 1) * 37 - 4, col * 37 + 4:(col + 1) * 37 - 4].reshape(-1, 3)
            nearest = np.abs(patch[:, None, :] - palette[None]).sum(-1)  # (P, 4)
            close = nearest.min(1) < 40
            if label[cell] == 0:
                assert close.sum() == 0
            else:
                votes = np.bincount(nearest[close].argmin(1), minlength=len(COLOURS))
                assert votes.argmax() == (label[cell] - 1) % len(COLOURS)


def test_cell_head_pools_the_patch_grid_into_nine_cells():
    head = CellHead(8)
    hidden = torch.randn(2, 1 + 64, 8)
    assert head(hidden).shape == (2, 9, NUM_CLASSES)
    # the CLS token (index 0) does not reach the cells
    changed = hidden.clone()
    changed[:, 0] += 100
    torch.testing.assert_close(head(changed), head(hidden))


def test_warm_start_learns_and_caches(tmp_path):
    vit, info = warm_start_vit(SMALL, steps=60, num_scenes=256, batch_size=32, lr=5e-3, cache=tmp_path,
                               progress=False, num_held_out=128)
    losses = info["losses"]
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    # held-out scenes: telling empty from occupied cells is well above an untrained ViT + head
    assert info["held_out"]["occupied"] > info["chance"]["occupied"] + 0.1
    again, info2 = warm_start_vit(SMALL, steps=60, num_scenes=256, batch_size=32, lr=5e-3, cache=tmp_path,
                                  progress=False, num_held_out=128)
    assert info2["losses"] == losses  # loaded, not retrained
    for a, b in zip(vit.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_patch_counts_cover_every_pixel_and_lie_on_the_shapes():
    """Each patch's class counts sum to its 14 x 14 pixels; the shape classes counted in an
    image are exactly its cells' labels; and a patch that one class fills entirely shows that
    class's palette colour in the image (the class map is aligned with the resized image)."""
    pixels, labels, counts = render_scenes(16, image_size=112, seed=5)
    assert counts.shape == (16, 8, 8, NUM_CLASSES)
    assert (counts.sum(-1) == 14 * 14).all()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = ((pixels * std + mean) * 255).permute(0, 2, 3, 1)  # (N, H, W, 3)
    full = 0
    for image, count, label in zip(rgb, counts, labels):
        shape_classes = {int(k) for k in torch.nonzero(count[..., 1:].sum((0, 1))).flatten() + 1}
        assert shape_classes == {int(c) for c in label if c > 0}  # every shape drawn, nothing else
        for row, col, cls in torch.nonzero(count[..., 1:] == 14 * 14).tolist():
            colour = PALETTE[COLOURS[cls % len(COLOURS)]]  # class cls + 1 -> colour index cls % 4
            patch = image[row * 14 + 2:(row + 1) * 14 - 2, col * 14 + 2:(col + 1) * 14 - 2]
            assert (patch.reshape(-1, 3).mean(0) - torch.tensor(colour, dtype=torch.float)).abs().max() < 20
            full += 1
    assert full > 0  # the check above ran


def test_token_labels_follow_pixel_shuffle_blocks():
    """Hand-built counts: token t is the 2 x 2 patch block that pixel_shuffle merges into
    token t (row-major), labelled by the shape class covering most of it, or 0 when shapes
    cover less than min_fraction of it."""
    counts = torch.zeros(1, 4, 4, NUM_CLASSES)
    counts[..., 0] = 196  # background everywhere
    counts[0, 0, 2, 0], counts[0, 0, 2, 5] = 96, 100  # token 1 (top right): class 5 on one patch
    counts[0, 3, 0, 0], counts[0, 3, 0, 7] = 186, 10  # token 2 (bottom left): class 7, 10 of 784 px
    counts[0, 2, 2, 0], counts[0, 2, 2, 3] = 0, 196  # token 3 (bottom right): class 3 on one patch ...
    counts[0, 3, 3, 0], counts[0, 3, 3, 9] = 0, 150  # ... and class 9 on another, with fewer pixels
    counts[0, 3, 3, 12] = 46
    labels = token_labels(counts)
    assert labels.tolist() == [[0, 5, 0, 3]]
    assert token_labels(counts, min_fraction=0.01).tolist() == [[0, 5, 7, 3]]


def test_token_head_reads_one_token_per_pixel_shuffle_block():
    head = TokenHead(8)
    hidden = torch.randn(2, 1 + 64, 8)
    assert head(hidden).shape == (2, 16, NUM_CLASSES)
    changed = hidden.clone()
    changed[:, 1 + 8 * 2 + 3] += 100  # patch (row 2, col 3) -> token (1, 1) = index 5 only
    diff = (head(changed) - head(hidden)).abs().sum(-1)
    assert diff[:, 5].min() > 0 and torch.count_nonzero(diff[:, [i for i in range(16) if i != 5]]) == 0


def test_token_objective_trains_a_token_head_and_the_probe_scores_any_vit(tmp_path):
    vit, info = warm_start_vit(SMALL, steps=60, num_scenes=256, batch_size=32, lr=1e-2, cache=tmp_path,
                               progress=False, num_held_out=128, token_weight=1.0)
    tokens = info["held_out_tokens"]
    assert set(tokens) == {"token", "kind", "colour"} and all(0 <= v <= 1 for v in tokens.values())
    assert tokens["colour"] > 0.4  # four colours: chance is 0.25
    # the token weight is part of the cache key: the plain objective retrains
    _, plain = warm_start_vit(SMALL, steps=60, num_scenes=256, batch_size=32, lr=1e-2, cache=tmp_path,
                              progress=False, num_held_out=128)
    assert "held_out_tokens" not in plain and plain["losses"] != info["losses"]
    train, held = render_scenes(128, SMALL.image_size, seed=1), render_scenes(64, SMALL.image_size, seed=2)
    probe = token_probe(vit, train[0], token_labels(train[2]), held[0], token_labels(held[2]), steps=100)
    assert probe["colour"] > 0.4


def test_class_prototypes_share_kind_and_colour_codes_equally():
    protos = class_prototypes(4096, seed=3)
    assert protos.shape == (NUM_CLASSES, 4096)
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(NUM_CLASSES))
    torch.testing.assert_close(protos.mean(-1), torch.zeros(NUM_CLASSES), atol=1e-6, rtol=0)
    assert torch.equal(protos, class_prototypes(4096, seed=3)) and not torch.equal(protos, class_prototypes(4096, seed=4))
    cos = protos @ protos.T
    red_circle, blue_circle = cell_label("circle", "red"), cell_label("circle", "blue")
    red_square, blue_square = cell_label("square", "red"), cell_label("square", "blue")
    # (k + c1) . (k + c2) / |k + c|^2 -> 1/2 for random codes of equal length, 0 with nothing shared
    assert abs(cos[red_circle, blue_circle] - 0.5) < 0.05  # same kind
    assert abs(cos[red_circle, red_square] - 0.5) < 0.05  # same colour
    assert abs(cos[red_circle, blue_square]) < 0.05
    assert abs(cos[0, red_circle]) < 0.05  # background shares nothing


def test_prototype_loss_is_zero_on_the_prototypes_whatever_their_offset_and_scale():
    protos = class_prototypes(64)
    labels = torch.tensor([[0, 1, 5], [16, 3, 3]])
    assert prototype_loss(3.0 * protos[labels] + 7.0, labels, protos).item() < 1e-6
    assert abs(prototype_loss(-protos[labels], labels, protos).item() - 2.0) < 1e-5
    shuffled = torch.tensor([[1, 5, 0], [3, 16, 1]])
    assert prototype_loss(protos[shuffled], labels, protos).item() > 0.5


def test_class_variance_splits_the_spread_between_kind_and_colour():
    # every class twice (a balanced design), so group means of the other factor cancel
    labels = torch.tensor([cell_label(k, c) for k in SHAPES for c in COLOURS] * 2)
    kind, colour = (labels - 1) // len(COLOURS), (labels - 1) % len(COLOURS)
    by_kind = torch.eye(8)[kind]  # a token that is its kind's one-hot
    v = class_variance(by_kind, labels)
    assert abs(v["kind"] - 1) < 1e-5 and abs(v["class"] - 1) < 1e-5 and v["colour"] < 1e-5
    by_colour = torch.eye(8)[colour + 4]
    v = class_variance(by_colour, labels)
    assert abs(v["colour"] - 1) < 1e-5 and v["kind"] < 1e-5
    noise = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0))
    v = class_variance(by_kind + 100 * noise, labels)  # the class is drowned: a small share
    assert v["kind"] < 0.5 and v["kind"] <= v["class"]  # classes split kinds further: never less between them


def test_prototype_objective_is_part_of_the_cache_key_and_reports_the_variance_split(tmp_path):
    _, info = warm_start_vit(SMALL, steps=20, num_scenes=128, batch_size=32, lr=1e-2, cache=tmp_path,
                             progress=False, num_held_out=64, token_weight=1.0, prototype_weight=1.0)
    assert info["key"]["prototype_weight"] == 1.0
    assert set(info["held_out_variance"]) == {"kind", "colour", "class"}
    assert all(0 <= v <= 1 for v in info["held_out_variance"].values())
    _, plain = warm_start_vit(SMALL, steps=20, num_scenes=128, batch_size=32, lr=1e-2, cache=tmp_path,
                              progress=False, num_held_out=64, token_weight=1.0)
    assert "prototype_weight" not in plain["key"] and plain["losses"] != info["losses"]


def test_class_share_loss_is_the_mean_negative_log_of_the_kind_and_colour_shares():
    """On tokens that are a kind code plus a colour code (a balanced design: every class
    twice) the two shares are set by the codes' lengths: with a kind code of length a and a
    colour code of length b (orthogonal one-hots) the centred, LayerNorm-ed tokens split
    a^2 : b^2 between the factors, so the shares are a^2 / (a^2 + b^2) and b^2 / (a^2 + b^2)."""
    labels = torch.tensor([cell_label(k, c) for k in SHAPES for c in COLOURS] * 2)
    kind, colour = (labels - 1) // len(COLOURS), (labels - 1) % len(COLOURS)
    a, b = 2.0, 1.0
    tokens = a * torch.eye(8)[kind] + b * torch.eye(8)[colour + 4]
    v = class_variance(tokens, labels)
    assert abs(v["kind"] - 0.8) < 1e-5 and abs(v["colour"] - 0.2) < 1e-5 and abs(v["class"] - 1) < 1e-5
    expected = -(np.log(0.8 + 1e-4) + np.log(0.2 + 1e-4)) / 2
    # background tokens (label 0) are left out, whatever they hold
    merged = torch.cat([tokens, 50 * torch.randn(5, 8, generator=torch.Generator().manual_seed(0))]).unsqueeze(0)
    with_background = torch.cat([labels, torch.zeros(5, dtype=torch.long)]).unsqueeze(0)
    assert abs(class_share_loss(merged, with_background).item() - expected) < 1e-4
    # equal shares are cheaper than the same total split unevenly: the log weighs the fainter factor
    even = torch.eye(8)[kind] + torch.eye(8)[colour + 4]
    assert class_share_loss(even[None], labels[None]).item() < expected


def test_class_share_loss_has_gradients_and_survives_a_batch_without_shapes():
    merged = torch.randn(2, 16, 8, requires_grad=True)
    labels = torch.randint(1, NUM_CLASSES, (2, 16), generator=torch.Generator().manual_seed(0))
    class_share_loss(merged, labels).backward()
    assert merged.grad is not None and merged.grad.abs().sum() > 0
    empty = torch.randn(1, 4, 8, requires_grad=True)
    loss = class_share_loss(empty, torch.zeros(1, 4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and empty.grad is not None


def test_share_objective_is_part_of_the_cache_key_and_raises_the_class_share(tmp_path):
    """A few dozen steps at smoke size already move the held-out class share up against the
    same warm start without the objective."""
    kw = dict(steps=60, num_scenes=256, batch_size=32, lr=1e-2, progress=False, num_held_out=64, token_weight=1.0)
    _, shared = warm_start_vit(SMALL, cache=tmp_path / "a", share_weight=1.0, **kw)
    _, plain = warm_start_vit(SMALL, cache=tmp_path / "b", **kw)
    assert shared["key"]["share_weight"] == 1.0 and "share_weight" not in plain["key"]
    assert shared["held_out_variance"]["class"] > plain["held_out_variance"]["class"]


def test_class_variance_refuses_background_tokens():
    with pytest.raises(ValueError, match="labels > 0"):
        class_variance(torch.randn(3, 8), torch.tensor([1, 0, 2]))
