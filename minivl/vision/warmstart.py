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

A cell head can be satisfied by features that only *pooled* over a cell say what it holds,
while the LLM reads one image token at a time: after pixel unshuffle, a token is a 2 x 2
block of patches (28 px), and a shape often straddles several. With ``token_weight > 0`` a
second linear head, :class:`TokenHead`, asks each of those LLM-sized tokens for the class of
the shape that covers it (:func:`token_labels`), so every token learns to name its shape.
:func:`token_probe` measures how well a ViT's tokens do that, whatever it was trained on.

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

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from minivl.config import VisionConfig
from minivl.data.synthetic.common import (
    BACKGROUNDS,
    CELL_NAMES,
    COLOURS,
    SCENE_SIZES,
    SHAPES,
    draw_shape,
    random_scene,
    render_scene,
)
from minivl.projector import pixel_shuffle
from minivl.vision.intern_vit import InternVisionModel
from minivl.vision.transforms import load_image_tiles

NUM_CLASSES = 1 + len(SHAPES) * len(COLOURS)
"""Classes of a cell: 0 = empty, ``1 + kind * len(COLOURS) + colour`` otherwise."""


def cell_label(kind: str, colour: str) -> int:
    """The class of a cell holding a ``colour`` ``kind`` (see :data:`NUM_CLASSES`)."""
    return 1 + SHAPES.index(kind) * len(COLOURS) + COLOURS.index(colour)


def render_scenes(n: int, image_size: int = 112, seed: int = 0,
                  patch_size: int = 14) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random scenes of 1-5 shapes as one tile each.

    Returns pixels ``(n, 3, S, S)`` (normalised as InternVL does), cell labels ``(n, 9)``
    (row-major cells, :func:`cell_label`) and, per ViT patch of ``patch_size`` px, how many of
    its pixels belong to each class ``(n, S/p, S/p, NUM_CLASSES)`` (class 0: background). The
    class map is drawn with the same shapes at the scene's size and resized to the tile like
    the image, nearest-neighbour, so that it lies where the resized shapes lie."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    rng = random.Random(f"vit-warmstart/{seed}")
    grid = image_size // patch_size
    rows = np.arange(image_size) // patch_size
    patch_of_pixel = rows[:, None] * grid + rows[None, :]  # (S, S): pixel (y, x) lies in patch (y // p) * g + x // p
    pixels, labels, counts = [], [], []
    for _ in range(n):
        width, height = rng.choice(SCENE_SIZES)
        shapes = random_scene(rng, width, height, rng.randint(1, 5))
        image = render_scene(width, height, shapes, rng.choice(BACKGROUNDS))
        tile, _ = load_image_tiles(image, image_size=image_size, max_num=1)  # one tile: the scene resized
        label = torch.zeros(len(CELL_NAMES), dtype=torch.long)
        class_map = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(class_map)
        for s in shapes:
            label[CELL_NAMES.index(s.position)] = cell_label(s.kind, s.colour)
            draw_shape(draw, s, fill=cell_label(s.kind, s.colour))
        class_map = np.asarray(class_map.resize((image_size, image_size), Image.NEAREST), dtype=np.int64)
        # count (patch, class) pairs
        pairs = np.bincount((patch_of_pixel * NUM_CLASSES + class_map).ravel(), minlength=grid * grid * NUM_CLASSES)
        counts.append(torch.from_numpy(pairs.reshape(grid, grid, NUM_CLASSES).astype(np.int16)))
        pixels.append(tile[0])
        labels.append(label)
    return torch.stack(pixels), torch.stack(labels), torch.stack(counts)


def token_labels(patch_counts: torch.Tensor, downsample_ratio: float = 0.5, min_fraction: float = 0.1) -> torch.Tensor:
    """The class of each LLM image token: ``patch_counts`` ``(n, g, g, NUM_CLASSES)`` from
    :func:`render_scenes` -> ``(n, T)`` with ``T = (g * downsample_ratio)^2``.

    Patches are grouped by the same :func:`minivl.projector.pixel_shuffle` that merges the
    ViT's patch tokens, so label ``t`` belongs to image token ``t``. A token is labelled with
    the class that covers most of its pixels among the shapes, if shapes cover at least
    ``min_fraction`` of it, else 0 (background)."""
    n, _, _, k = patch_counts.shape
    merged = pixel_shuffle(patch_counts.float(), downsample_ratio)  # (n, t, t, r*r*K), blocks of K
    merged = merged.reshape(n, -1, merged.shape[-1] // k, k).sum(2)  # (n, T, K)
    shape_pixels = merged[..., 1:]
    area = merged.sum(-1)
    covered = shape_pixels.sum(-1) >= min_fraction * area
    return torch.where(covered, shape_pixels.argmax(-1) + 1, torch.zeros_like(covered, dtype=torch.long))


def class_prototypes(dim: int, seed: int = 0) -> torch.Tensor:
    """Fixed target directions for :func:`prototype_loss`: ``(NUM_CLASSES, dim)`` unit rows.

    A shape's row is the sum of a random code for its kind and one for its colour (codes of
    equal expected length, so that neither is louder than the other); the background has a
    code of its own. Each row is centred across its ``dim`` entries, as a LayerNorm centres the
    features it compares with, and scaled to unit length."""
    g = torch.Generator().manual_seed(seed)
    kinds = torch.randn(len(SHAPES), dim, generator=g)
    colours = torch.randn(len(COLOURS), dim, generator=g)
    rows = [torch.randn(dim, generator=g) * math.sqrt(2)]
    rows += [kinds[k] + colours[c] for k in range(len(SHAPES)) for c in range(len(COLOURS))]
    protos = torch.stack(rows)  # row 1 + k * len(COLOURS) + c, as cell_label numbers classes
    protos = protos - protos.mean(-1, keepdim=True)
    return F.normalize(protos, dim=-1)


def prototype_loss(merged: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between each LLM-sized token ``merged`` ``(N, T, D)``, centred across ``D``,
    and the fixed prototype of its class (``labels`` ``(N, T)``, ``prototypes`` from
    :func:`class_prototypes`), averaged over tokens.

    A linear head (:class:`TokenHead`) is satisfied once a class is *decodable* from a token,
    however faint its direction is next to everything else the token carries. This objective
    asks for more: that a token *is* its class's direction, kind and colour equally loud, as
    the exact codes of chapter 15's oracle are."""
    centred = merged - merged.mean(-1, keepdim=True)
    return (1 - F.cosine_similarity(centred, prototypes[labels], dim=-1)).mean()


def between_shares(features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The differentiable core of :func:`class_variance`: for shape tokens ``features`` ``(M, D)``
    with :func:`cell_label` ``labels`` ``(M,)`` > 0, each LayerNorm-ed as the projector does, the
    share of their sum of squares (about the mean token) that lies between kinds, between
    colours and between classes, as 0-d tensors."""
    x = F.layer_norm(features.float(), features.shape[-1:])
    x = x - x.mean(0)
    total = x.pow(2).sum().clamp_min(1e-12)
    y = labels - 1
    shares = {}
    for name, groups, n in (("kind", y // len(COLOURS), len(SHAPES)), ("colour", y % len(COLOURS), len(COLOURS)),
                            ("class", y, len(SHAPES) * len(COLOURS))):
        onehot = F.one_hot(groups, n).to(x.dtype)  # (M, n)
        count = onehot.sum(0)
        means = onehot.T @ x / count.clamp_min(1)[:, None]  # (n, D), a zero row for an absent group
        shares[name] = (count * means.pow(2).sum(-1)).sum() / total
    return shares


def class_variance(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How much of the spread of the shape tokens' ``features`` ``(M, D)`` (labels ``(M,)`` > 0,
    :func:`cell_label` numbering) lies between kinds, between colours and between classes:
    the between-group sum of squares over the total one, each token LayerNorm-ed first as the
    projector does. 1.0 means tokens of a class are identical (the oracle's codes); a linear
    probe can be near perfect at 0.1."""
    if (labels <= 0).any():
        raise ValueError("class_variance takes the tokens on a shape only (labels > 0)")
    return {k: float(v) for k, v in between_shares(features.detach(), labels).items()}


def class_share_loss(merged: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-(log kind share + log colour share) / 2`` over the shape tokens of a batch: ``merged``
    ``(N, T, D)`` LLM-sized tokens, ``labels`` ``(N, T)`` from :func:`token_labels` (background
    tokens, label 0, are left out); the shares are :func:`between_shares`'.

    Like :func:`prototype_loss` it asks that a token's class be most of what it carries, not
    merely decodable. Unlike it, it fixes no direction, and the logarithm weighs each factor
    by how faint it still is: asked for the plain sum of the two shares, a ViT can raise the
    sum fastest through colour, which is in every pixel of a shape, and let kind, which is
    only in its outline, go (chapter 15 reports a run of that variant)."""
    keep = labels > 0
    if not keep.any():
        return merged.sum() * 0.0  # no shape in the batch: nothing to ask, graph kept
    shares = between_shares(merged[keep], labels[keep])
    return -(torch.log(shares["kind"] + 1e-4) + torch.log(shares["colour"] + 1e-4)) / 2


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


class TokenHead(nn.Module):
    """Patch tokens -> one class per LLM image token: the patch grid merged by
    :func:`minivl.projector.pixel_shuffle` (2 x 2 patches per token at ``downsample_ratio``
    0.5, what the MLP projector receives), then a linear classifier."""

    def __init__(self, hidden_size: int, downsample_ratio: float = 0.5) -> None:
        super().__init__()
        self.downsample_ratio = downsample_ratio
        self.classifier = nn.Linear(hidden_size * round(1 / downsample_ratio) ** 2, NUM_CLASSES)

    def merge(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, 1 + P, C) ViT output -> (N, T, 4C) LLM-sized tokens (CLS dropped)."""
        n, tokens, width = hidden.shape
        side = math.isqrt(tokens - 1)
        return pixel_shuffle(hidden[:, 1:].reshape(n, side, side, width), self.downsample_ratio).flatten(1, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.merge(hidden))  # (N, T, NUM_CLASSES)


@torch.no_grad()
def _predict(vit: nn.Module, head: nn.Module, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``head``'s class per position (cell or token) for every image, the ViT in eval mode."""
    was_training = vit.training
    vit.eval()
    pred = torch.cat([head(vit(pixels[i:i + batch_size])).argmax(-1) for i in range(0, len(pixels), batch_size)])
    vit.train(was_training)
    return pred


def _kind_and_colour(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Where a shape is (label > 0): how often the predicted kind, and the colour, are right."""
    shape = labels > 0
    p, y = pred[shape] - 1, labels[shape] - 1
    return {"kind": (p // len(COLOURS) == y // len(COLOURS)).float().mean().item(),
            "colour": (p % len(COLOURS) == y % len(COLOURS)).float().mean().item()}


def cell_metrics(vit: nn.Module, head: CellHead, pixels: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 256) -> dict[str, float]:
    """Per-cell accuracy, and on occupied cells the accuracy of kind and of colour alone."""
    pred = _predict(vit, head, pixels, batch_size)
    return {"cell": (pred == labels).float().mean().item(),
            "occupied": ((pred > 0) == (labels > 0)).float().mean().item(), **_kind_and_colour(pred, labels)}


def token_metrics(vit: nn.Module, head: TokenHead, pixels: torch.Tensor, labels: torch.Tensor,
                  batch_size: int = 256) -> dict[str, float]:
    """Per-token accuracy of ``head`` on :func:`token_labels` ``labels`` ``(N, T)``, and on the
    tokens a shape covers the accuracy of kind and of colour alone."""
    pred = _predict(vit, head, pixels, batch_size)
    return {"token": (pred == labels).float().mean().item(), **_kind_and_colour(pred, labels)}


def token_probe(vit: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eval_pixels: torch.Tensor,
                eval_labels: torch.Tensor, steps: int = 300, lr: float = 1e-2, seed: int = 0) -> dict[str, float]:
    """How plainly ``vit``'s LLM-sized tokens name their shape: a fresh linear :class:`TokenHead`
    fitted (Adam, full batch, ``steps`` steps) on the frozen tokens of ``(pixels, labels)``
    (:func:`token_labels`), scored by :func:`token_metrics` on ``(eval_pixels, eval_labels)``.
    The same probe for any ViT, whatever objective it was warm-started with."""
    torch.manual_seed(seed)
    head = TokenHead(vit.config.hidden_size)
    x, y = merged_tokens(vit, pixels).flatten(0, 1), labels.flatten()  # (N*T, 4C), (N*T,)
    opt = torch.optim.Adam(head.classifier.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(head.classifier(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return token_metrics(vit, head, eval_pixels, eval_labels)


@torch.no_grad()
def merged_tokens(vit: nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``vit``'s LLM-sized tokens of ``pixels`` ``(N, 3, S, S)`` -> ``(N, T, 4C)``: its patch tokens
    merged by :meth:`TokenHead.merge`, the ViT in eval mode and left as it was found."""
    was_training = vit.training
    vit.eval()
    merger = TokenHead(vit.config.hidden_size)
    merged = torch.cat([merger.merge(vit(pixels[i:i + batch_size])) for i in range(0, len(pixels), batch_size)])
    vit.train(was_training)
    return merged


@torch.no_grad()
def token_class_variance(vit: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """:func:`class_variance` of ``vit``'s LLM-sized tokens over the tokens a shape covers
    (``labels`` from :func:`token_labels`), the ViT in eval mode."""
    shape = labels > 0
    return class_variance(merged_tokens(vit, pixels)[shape], labels[shape])


def pretrain_vit(vit: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 64,
                 lr: float = 5e-3, warmup: int = 20, seed: int = 0, progress: bool = True,
                 tokens: torch.Tensor | None = None, token_weight: float = 0.0,
                 prototype_weight: float = 0.0,
                 share_weight: float = 0.0) -> tuple[CellHead, TokenHead | None, list[float]]:
    """Train ``vit`` and a fresh :class:`CellHead` on ``(pixels, labels)`` for ``steps`` AdamW steps
    (cosine schedule, clipping 1.0). With ``token_weight > 0``, a fresh :class:`TokenHead` too,
    on the :func:`token_labels` ``tokens`` ``(N, T)``: the loss is the cells' cross-entropy plus
    ``token_weight`` times the tokens'. With ``prototype_weight > 0`` (and ``tokens``), plus that
    weight times :func:`prototype_loss` on the same tokens, and with ``share_weight > 0`` that
    weight times :func:`class_share_loss`. Returns the cell head, the token head (or ``None``)
    and the loss per step."""
    from tqdm.auto import tqdm

    from minivl.train.trainer import cosine_with_warmup

    if (token_weight or prototype_weight or share_weight) and tokens is None:
        raise ValueError("token_weight, prototype_weight or share_weight > 0 needs the token labels "
                         "(tokens=token_labels(patch_counts))")
    g = torch.Generator().manual_seed(seed)
    head = CellHead(vit.config.hidden_size)
    token_head = TokenHead(vit.config.hidden_size) if token_weight else None
    merger = token_head if token_head is not None else TokenHead(vit.config.hidden_size)  # merge(): no parameters
    merged_width = vit.config.hidden_size * round(1 / merger.downsample_ratio) ** 2
    prototypes = class_prototypes(merged_width, seed) if prototype_weight else None
    params = list(vit.parameters()) + list(head.parameters())
    if token_head is not None:
        params += list(token_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, warmup, steps, 0.0))
    vit.train()
    losses = []
    for _ in tqdm(range(steps), desc="ViT warm start", disable=not progress, dynamic_ncols=True):
        idx = torch.randint(len(pixels), (batch_size,), generator=g)
        hidden = vit(pixels[idx])
        loss = F.cross_entropy(head(hidden).flatten(0, 1), labels[idx].flatten())  # (B*9, K) cells
        if token_head is not None or prototypes is not None or share_weight:
            merged = merger.merge(hidden)  # (B, T, 4C), once for all token objectives
        if token_head is not None:
            loss = loss + token_weight * F.cross_entropy(token_head.classifier(merged).flatten(0, 1),
                                                         tokens[idx].flatten())
        if prototypes is not None:
            loss = loss + prototype_weight * prototype_loss(merged, tokens[idx], prototypes)
        if share_weight:
            loss = loss + share_weight * class_share_loss(merged, tokens[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    vit.eval()
    return head, token_head, losses


def warm_start_vit(config: VisionConfig, steps: int = 900, num_scenes: int = 4096, batch_size: int = 64,
                   lr: float = 5e-3, seed: int = 0, cache: str | Path | None = None,
                   progress: bool = True, num_held_out: int = 512,
                   token_weight: float = 0.0, prototype_weight: float = 0.0,
                   share_weight: float = 0.0) -> tuple[InternVisionModel, dict[str, Any]]:
    """Build an InternViT of ``config`` and pretrain it on ``num_scenes`` rendered scenes (with
    ``token_weight > 0``, the cells' objective plus the tokens', and with ``prototype_weight >
    0`` the prototype pull too, with ``share_weight > 0`` the class-share objective, see
    :func:`pretrain_vit`).

    With ``cache`` (a directory), a ViT saved there by an identical call is loaded instead of
    trained. Returns ``(vit, info)``: the loss curve, the held-out cell metrics of
    :func:`cell_metrics` on ``num_held_out`` other scenes (and of an untrained ViT and head,
    ``chance``), with a token head its :func:`token_metrics` (``held_out_tokens``), the
    :func:`token_class_variance` of the held-out tokens (``held_out_variance``), parameter
    count and seconds.
    """
    from safetensors.torch import load_file, save_file

    key = {"config": dataclasses.asdict(config), "steps": steps, "num_scenes": num_scenes,
           "batch_size": batch_size, "lr": lr, "seed": seed, "num_held_out": num_held_out}
    if token_weight:  # only then: a ViT cached without the token objective stays valid
        key["token_weight"] = token_weight
    if prototype_weight:
        key["prototype_weight"] = prototype_weight
    if share_weight:
        key["share_weight"] = share_weight
    torch.manual_seed(seed)
    vit = InternVisionModel(config)
    if cache is not None:
        cache = Path(cache)
        info_path = cache / "warmstart.json"
        if info_path.exists() and json.loads(info_path.read_text()).get("key") == key:
            vit.load_state_dict(load_file(cache / "model.safetensors"))
            return vit.eval(), json.loads(info_path.read_text())
    start = time.perf_counter()
    pixels, labels, counts = render_scenes(num_scenes, config.image_size, seed, config.patch_size)
    held_pixels, held_labels, held_counts = render_scenes(num_held_out, config.image_size, seed + 10_000,
                                                          config.patch_size)
    render_seconds = time.perf_counter() - start
    head, token_head, losses = pretrain_vit(vit, pixels, labels, steps, batch_size, lr, seed=seed, progress=progress,
                                            tokens=token_labels(counts) if token_weight or prototype_weight
                                            or share_weight else None, token_weight=token_weight,
                                            prototype_weight=prototype_weight, share_weight=share_weight)
    info = {"key": key, "losses": losses, "seconds": time.perf_counter() - start, "render_seconds": render_seconds,
            "parameters": sum(p.numel() for p in vit.parameters()),
            "held_out": cell_metrics(vit, head, held_pixels, held_labels),
            "chance": cell_metrics(InternVisionModel(config), CellHead(config.hidden_size), held_pixels, held_labels),
            "final_loss": float(sum(losses[-10:]) / min(10, len(losses))) if losses else math.nan}
    if token_head is not None:
        info["held_out_tokens"] = token_metrics(vit, token_head, held_pixels, token_labels(held_counts))
    info["held_out_variance"] = token_class_variance(vit, held_pixels, token_labels(held_counts))
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(cache / "model.safetensors"))
        (cache / "warmstart.json").write_text(json.dumps(info))
    return vit, info
