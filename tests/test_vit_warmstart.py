"""The cpu-scale ViT warm start: labels re-derived from pixels, it learns, it caches."""

from __future__ import annotations

import numpy as np
import torch

from minivl.config import VisionConfig
from minivl.data.synthetic.common import COLOURS, PALETTE, SHAPES
from minivl.vision.transforms import IMAGENET_MEAN, IMAGENET_STD
from minivl.vision.warmstart import NUM_CLASSES, CellHead, cell_label, render_scenes, warm_start_vit

SMALL = VisionConfig.tiny(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def test_cell_labels_are_distinct_and_in_range():
    labels = {cell_label(k, c) for k in SHAPES for c in COLOURS}
    assert labels == set(range(1, NUM_CLASSES))


def test_rendered_labels_match_the_pixels():
    """Each occupied cell's colour is the most common palette colour inside that cell; an
    empty cell holds no palette colour at all."""
    pixels, labels = render_scenes(24, image_size=112, seed=3)
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
