"""A pretrained InternViT for the cpu scale: a tiny ViT warmed up on rendered shape scenes.

InternVL 2.5 never trains its vision encoder from scratch: stage 1 starts from a pretrained
InternViT (InternViT-300M / 6B, contrastively pretrained and refined in earlier InternVL
releases) and only the MLP projector learns. A randomly initialised ViT breaks that recipe
at any scale: stage 1 then aligns noise, and the model answers from the question alone for
tens of thousands of samples before it starts to look (chapter 10 shows that plateau).

Nothing pretrained at a size a CPU can train is reachable offline, so minivl pretrains its
own stand-in, the way the first ViTs were pretrained: supervised classification. The task
is dense and cheap. A scene is the synthetic suite's 3 x 3 grid of cells (``scenes.py``);
the ViT's patch tokens are average-pooled into the 3 x 3 cells and a linear head says what
each cell holds: nothing, or one of the 4 kinds x 4 colours (17 classes). Scenes are
rendered in memory from their own seed, never read from the suite, so no test image is
ever seen. The head is thrown away; the ViT's patch tokens keep "what is where", which is
what the projector and the LLM need to read.

:func:`warm_start_vit` caches the result (``cache`` directory) so chapters reuse it, as
:func:`minivl.train.warmstart.warm_start_llm` does for the LLM.

Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minivl.config import VisionConfig
from minivl.data.synthetic.common import (
    BACKGROUNDS,
    CELL_NAMES,
    COLOURS,
    SCENE_SIZES,
    SHAPES,
    random_scene,
    render_scene,
)
from minivl.vision.intern_vit import InternVisionModel
from minivl.vision.transforms import load_image_tiles

NUM_CLASSES = 1 + len(SHAPES) * len(COLOURS)
"""Classes of a cell: 0 = empty, ``1 + kind * len(COLOURS) + colour`` otherwise."""


def cell_label(kind: str, colour: str) -> int:
    """The class of a cell holding a ``colour`` ``kind`` (see :data:`NUM_CLASSES`)."""
    return 1 + SHAPES.index(kind) * len(COLOURS) + COLOURS.index(colour)


def render_scenes(n: int, image_size: int = 112, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random scenes of 1-5 shapes as one tile each: pixels ``(n, 3, S, S)`` (normalised as
    InternVL does) and cell labels ``(n, 9)`` (row-major cells, :func:`cell_label`)."""
    rng = random.Random(f"vit-warmstart/{seed}")
    pixels, labels = [], []
    for _ in range(n):
        width, height = rng.choice(SCENE_SIZES)
        shapes = random_scene(rng, width, height, rng.randint(1, 5))
        image = render_scene(width, height, shapes, rng.choice(BACKGROUNDS))
        tile, _ = load_image_tiles(image, image_size=image_size, max_num=1)  # one tile: the scene resized
        label = torch.zeros(len(CELL_NAMES), dtype=torch.long)
        for s in shapes:
            label[CELL_NAMES.index(s.position)] = cell_label(s.kind, s.colour)
        pixels.append(tile[0])
        labels.append(label)
    return torch.stack(pixels), torch.stack(labels)


class CellHead(nn.Module):
    """Patch tokens -> 3 x 3 cell logits: average-pool the token grid into the cells, then a
    linear classifier shared by the cells."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, NUM_CLASSES)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        n, tokens, width = hidden.shape  # (N, 1 + P, C), CLS first
        side = math.isqrt(tokens - 1)
        grid = hidden[:, 1:].reshape(n, side, side, width).permute(0, 3, 1, 2)  # (N, C, side, side)
        cells = F.adaptive_avg_pool2d(grid, 3).flatten(2).transpose(1, 2)  # (N, C, 3, 3) -> (N, 9, C)
        return self.classifier(cells)  # (N, 9, NUM_CLASSES)


@torch.no_grad()
def cell_metrics(vit: nn.Module, head: CellHead, pixels: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 256) -> dict[str, float]:
    """Per-cell accuracy, and on occupied cells the accuracy of kind and of colour alone."""
    was_training = vit.training
    vit.eval()
    pred = torch.cat([head(vit(pixels[i:i + batch_size])).argmax(-1) for i in range(0, len(pixels), batch_size)])
    vit.train(was_training)
    occupied = labels > 0
    p, y = pred[occupied] - 1, labels[occupied] - 1
    return {"cell": (pred == labels).float().mean().item(),
            "occupied": ((pred > 0) == occupied).float().mean().item(),
            "kind": (p // len(COLOURS) == y // len(COLOURS)).float().mean().item(),
            "colour": (p % len(COLOURS) == y % len(COLOURS)).float().mean().item()}


def pretrain_vit(vit: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 64,
                 lr: float = 5e-3, warmup: int = 20, seed: int = 0, progress: bool = True) -> tuple[CellHead, list[float]]:
    """Train ``vit`` and a fresh :class:`CellHead` on ``(pixels, labels)`` for ``steps`` AdamW steps
    (cosine schedule, clipping 1.0). Returns the head and the loss per step."""
    from tqdm.auto import tqdm

    from minivl.train.trainer import cosine_with_warmup

    g = torch.Generator().manual_seed(seed)
    head = CellHead(vit.config.hidden_size)
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, warmup, steps, 0.0))
    vit.train()
    losses = []
    for _ in tqdm(range(steps), desc="ViT warm start", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(len(pixels), (batch_size,), generator=g)
        logits = head(vit(pixels[idx]))  # (B, 9, NUM_CLASSES)
        loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    vit.eval()
    return head, losses


def warm_start_vit(config: VisionConfig, steps: int = 900, num_scenes: int = 4096, batch_size: int = 64,
                   lr: float = 5e-3, seed: int = 0, cache: str | Path | None = None,
                   progress: bool = True, num_held_out: int = 512) -> tuple[InternVisionModel, dict[str, Any]]:
    """Build an InternViT of ``config`` and pretrain it on ``num_scenes`` rendered scenes.

    With ``cache`` (a directory), a ViT saved there by an identical call is loaded instead of
    trained. Returns ``(vit, info)``: the loss curve, the held-out cell metrics of
    :func:`cell_metrics` on ``num_held_out`` other scenes (and of an untrained ViT and head,
    ``chance``), parameter count and seconds.
    """
    from safetensors.torch import load_file, save_file

    key = {"config": dataclasses.asdict(config), "steps": steps, "num_scenes": num_scenes,
           "batch_size": batch_size, "lr": lr, "seed": seed, "num_held_out": num_held_out}
    torch.manual_seed(seed)
    vit = InternVisionModel(config)
    if cache is not None:
        cache = Path(cache)
        info_path = cache / "warmstart.json"
        if info_path.exists() and json.loads(info_path.read_text()).get("key") == key:
            vit.load_state_dict(load_file(cache / "model.safetensors"))
            return vit.eval(), json.loads(info_path.read_text())
    start = time.perf_counter()
    pixels, labels = render_scenes(num_scenes, config.image_size, seed)
    held_out = render_scenes(num_held_out, config.image_size, seed + 10_000)
    render_seconds = time.perf_counter() - start
    head, losses = pretrain_vit(vit, pixels, labels, steps, batch_size, lr, seed=seed, progress=progress)
    info = {"key": key, "losses": losses, "seconds": time.perf_counter() - start, "render_seconds": render_seconds,
            "parameters": sum(p.numel() for p in vit.parameters()),
            "held_out": cell_metrics(vit, head, *held_out),
            "chance": cell_metrics(InternVisionModel(config), CellHead(config.hidden_size), *held_out),
            "final_loss": float(sum(losses[-10:]) / min(10, len(losses))) if losses else math.nan}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(cache / "model.safetensors"))
        (cache / "warmstart.json").write_text(json.dumps(info))
    return vit, info
