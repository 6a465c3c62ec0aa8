"""Stage 2 alone, from the quickstart's warm starts, on a few tasks, over seeds and LLM depths.

A quick way to compare stage-2 recipes at cpu scale without running the whole quickstart:
it reuses (or builds) the quickstart workspace under ``--out`` (suite, tokenizer, warm-started
LLM and ViT), then, for each LLM depth and seed, builds a fresh MiniVL, trains only stage 2
on ``--tasks`` and scores the held-out ``shape_qa`` split per question type (count, colour,
position). The seed sets the stage's data order and the new projector. LLM depths other
than LLM-S's get their own warm start (``llm_S<depth>`` under ``--out``), 128 wide like S.

    MINIVL_SCALE=cpu python scripts/stage2_probe.py --seeds 0 1 2 --llm-layers 2 4

Single runs differ by several points from seed to seed at this size; compare means. Under
each row it splits the count questions by what they count (every shape, a named colour, a
named kind; :func:`minivl.eval.suite.count_question_group`): counting a named colour or kind
needs the question's word to pick image tokens, as colour questions do.

``--oracle-vision`` asks whether the eyes or the brain limit the model: every caption and
shape_qa image of the workspace is repainted as its 3 x 3 scene cells filled with flat grey
codes (empty, or one of the 16 kind x colour classes), and the ViT + projector are replaced
by an exact reader of those codes, a learned embedding per code plus one per cell. The
image tokens then say perfectly what is in each cell; what is left to learn is the LLM's
part. It needs 84 px tiles (one token per cell) and a workspace of its own:

    MINIVL_SCALE=cpu python scripts/stage2_probe.py --oracle-vision --out runs/oracle --tasks shape_qa

Add ``--through-projector`` to feed the oracle's vectors through the MLP projector, as real
ViT features are, and see whether the projector path keeps what the tokens say;
``--projector-init-scale`` changes how loud the fresh projector starts, and
``--oracle-kind-noise`` makes the oracle misread shape kinds, to ask how good the eyes must be.
``--oracle-class-share`` makes its tokens as faint as a ViT's without a misreading (a random
vector per token, fixed per tile, holding the rest of the spread), ``--oracle-frozen-codes``
keeps its vectors at their random start, as fixed as a warm-started ViT's features, and
``--oracle-factorised-codes`` starts each class's vector as its kind's plus its colour's.

``--vit-warm-steps``, ``--vit-warm-lr``, ``--vit-token-weight``, ``--vit-prototype-weight``,
``--vit-share-weight`` and ``--vision-layers`` change the ViT warm start (its length, its peak
lr, the weights of its per-image-token objectives, see ``minivl.vision.warmstart``, and its
depth); the workspace's ViT is retrained, so give such a run its own ``--out``.

``--untied-embeddings`` and ``--frozen-warm-embeddings`` change what the LLM warm start does
to the words (see ``minivl.train.warmstart.word_similarity``): the LLM gets its own output
matrix, or keeps its input embeddings at their random start while the rest of it learns the
suite's text; each variant is warm-started once and cached under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from minivl.data.synthetic.common import CELL_NAMES, COLOURS, SHAPES
from minivl.eval.suite import count_question_group, evaluate_suite
from minivl.quickstart import RECIPES, build_model, prepare, train_stage
from minivl.scale import get_scale
from minivl.train.warmstart import LLM_SIZES, suite_conversations, warm_start_llm
from minivl.vision.transforms import IMAGENET_MEAN, IMAGENET_STD
from minivl.vision.warmstart import NUM_CLASSES, cell_label

ORACLE_TILE = 84  # 6 x 6 patches of 14 px -> 3 x 3 image tokens after pixel unshuffle: one per scene cell
ORACLE_EMPTY, ORACLE_STEP = 8, 14  # grey level of an empty cell, and the step per class (class 16 -> 232)


def paint_oracle_scenes(data_dir: str | Path, tasks=("caption", "shape_qa"), splits=("train", "val", "test")) -> int:
    """Repaint every scene image of ``tasks`` under ``data_dir`` (a generated suite) as its 3 x 3
    cells, each a flat grey of level ``ORACLE_EMPTY + ORACLE_STEP * class`` (class: 0 empty,
    else :func:`minivl.vision.warmstart.cell_label` of the cell's shape). Records without a
    scene in their meta (faulty copies) keep their image. Returns the number of images painted."""
    data_dir, painted = Path(data_dir), 0
    for split in splits:
        for task in tasks:
            path = data_dir / "annotations" / split / f"{task}.jsonl"
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                record = json.loads(line)
                meta = record.get("meta", {})
                if "shapes" not in meta or not isinstance(record.get("image"), str):
                    continue
                width, height = meta["width"], meta["height"]
                image = Image.new("RGB", (width, height), (ORACLE_EMPTY,) * 3)
                for shape in meta["shapes"]:
                    row, col = divmod(CELL_NAMES.index(shape["position"]), 3)
                    level = ORACLE_EMPTY + ORACLE_STEP * cell_label(shape["kind"], shape["colour"])
                    image.paste((level,) * 3, (col * width // 3, row * height // 3,
                                                (col + 1) * width // 3, (row + 1) * height // 3))
                image.save(data_dir / "images" / split / task / record["image"])
                painted += 1
    return painted


def tile_seed(tile: torch.Tensor, draw: int) -> int:
    """A seed from a tile's pixels (32 bits of their SHA-1, a different part per ``draw``): the
    same tile, pixel for pixel, always gives the same seed, so it is misread the same way."""
    digest = hashlib.sha1(tile.detach().float().cpu().numpy().tobytes()).hexdigest()
    return int(digest[8 * draw:8 * draw + 8], 16)


class OracleVision(nn.Module):
    """84 px tiles of painted scenes -> 9 image tokens: each cell's class read back from its
    mean grey level, then a learned embedding of the class plus a learned embedding of the cell.

    With ``kind_noise`` p, each occupied cell's *kind* is misread as one of the other kinds with
    probability p (its colour is kept), as a ViT that tells colours apart perfectly but kinds
    only most of the time would. The same tile, pixel for pixel, is misread the same way every
    time (a hash of its pixels seeds the draw); an augmented copy is another draw.

    With ``class_share`` below 1, each token is the class's vector plus a random one drawn the
    same way, scaled so that the class's vectors hold about ``class_share`` of the tokens'
    spread, as :func:`minivl.vision.warmstart.class_variance` measures it on a ViT's tokens: the
    oracle's tokens are then as faint as a ViT's while never misreading. The scale follows the
    class vectors' size without a gradient, so training cannot make the classes louder."""

    def __init__(self, hidden_size: int, kind_noise: float = 0.0, class_share: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= kind_noise <= 1.0:
            raise ValueError(f"kind_noise is a probability, got {kind_noise}")
        if not 0.0 < class_share <= 1.0:
            raise ValueError(f"class_share is a share of the spread in (0, 1], got {class_share}")
        self.class_share = class_share
        self.classes = nn.Embedding(NUM_CLASSES, hidden_size)
        self.cells = nn.Parameter(torch.randn(9, hidden_size) * 0.02)
        self.kind_noise = kind_noise

    @staticmethod
    def read_classes(pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised tiles (N, 3, 84, 84) -> the class of each cell (N, 9), row-major."""
        n, _, side, _ = pixel_values.shape
        if side != ORACLE_TILE:
            raise ValueError(f"the oracle reads {ORACLE_TILE} px tiles, got {side} px (use --image-size {ORACLE_TILE})")
        grey = (pixel_values[:, 0].float() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255  # red channel, 0-255
        cell = side // 3
        means = grey.reshape(n, 3, cell, 3, cell).mean((2, 4)).flatten(1)  # (N, 3, 28, 3, 28) -> (N, 9)
        return ((means - ORACLE_EMPTY) / ORACLE_STEP).round().clamp(0, NUM_CLASSES - 1).long()

    def misread_kinds(self, pixel_values: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``classes`` (N, 9) with each occupied cell's kind replaced, with probability
        ``kind_noise``, by another kind drawn uniformly; colour and empty cells are kept."""
        n_colours = len(COLOURS)
        out = classes.clone()
        for i, tile in enumerate(pixel_values):
            g = torch.Generator().manual_seed(tile_seed(tile, 0))
            flip = (torch.rand(9, generator=g) < self.kind_noise) & (classes[i] > 0)
            kind, colour = (classes[i] - 1) // n_colours, (classes[i] - 1) % n_colours
            other = (kind + torch.randint(1, len(SHAPES), (9,), generator=g)) % len(SHAPES)
            out[i] = torch.where(flip, 1 + other * n_colours + colour, classes[i])
        return out

    def tile_noise(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """A standard normal vector per token, ``(N, 9, H)``, the same every time for the same tile."""
        out = []
        for tile in pixel_values:
            g = torch.Generator().manual_seed(tile_seed(tile, 1))
            out.append(torch.randn(9, self.classes.embedding_dim, generator=g))
        return torch.stack(out).to(pixel_values.device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        classes = self.read_classes(pixel_values)
        if self.kind_noise:
            classes = self.misread_kinds(pixel_values, classes)
        tokens = self.classes(classes) + self.cells  # (N, 9, H)
        if self.class_share < 1.0:
            # the spread of the class vectors around their mean, per entry, without a gradient
            spread = (self.classes.weight - self.classes.weight.mean(0)).detach().pow(2).mean().sqrt()
            scale = spread * math.sqrt((1 - self.class_share) / self.class_share)
            tokens = tokens + scale * self.tile_noise(pixel_values).to(tokens.dtype)
        return tokens


COUNTED = {"all": "every shape", "colour": "a named colour", "kind": "a named kind"}


def counting_by_what(by_group: dict) -> dict[str, float]:
    """Accuracy on count questions by what they count (``"all"``, ``"colour"``, ``"kind"``),
    from a ``by_group`` keyed by :func:`minivl.eval.suite.count_question_group`: counting a
    named colour or kind needs the lookup that colour questions need, counting every shape
    does not."""
    totals: dict[str, list[float]] = {}
    for (what, _), (score, n) in by_group.items():
        right_n = totals.setdefault(what, [0.0, 0])
        right_n[0] += score * n
        right_n[1] += n
    return {what: totals[what][0] / totals[what][1] for what in COUNTED if what in totals and totals[what][1]}


def attach_oracle_vision(model, through_projector: bool = False, kind_noise: float = 0.0,
                         class_share: float = 1.0, frozen_codes: bool = False,
                         factorised_codes: bool = False) -> None:
    """Make ``model`` read its image tokens with an :class:`OracleVision` (registered under the
    projector, so stage 2 trains it at the projector's learning rate). With
    ``through_projector`` the oracle's vectors are as wide as the ViT's output after pixel
    unshuffle and go through the model's MLP projector, as real ViT features do: the probe
    then tells whether the projector path, rather than the ViT, loses what the tokens say.
    ``kind_noise`` makes the oracle misread kinds, ``class_share`` < 1 its tokens faint (see
    :class:`OracleVision`). With ``frozen_codes`` the oracle's class and cell vectors keep
    their random start: stage 2 cannot shape them to suit the LLM, only the projector after them. With ``factorised_codes`` a class's vector starts as the sum
    of a random vector for its kind and one for its colour (each entry about N(0, 1), as
    nn.Embedding starts), so that the shapes of one kind share a direction."""
    projector = model.mlp1
    width = projector[0].normalized_shape[0] if through_projector else model.config.llm["hidden_size"]
    projector.add_module("oracle", OracleVision(width, kind_noise=kind_noise, class_share=class_share))
    if factorised_codes:
        table = projector.oracle.classes.weight
        kinds, colours = torch.randn(len(SHAPES), table.shape[1]), torch.randn(len(COLOURS), table.shape[1])
        with torch.no_grad():
            for k in range(len(SHAPES)):
                for c in range(len(COLOURS)):
                    table[1 + k * len(COLOURS) + c] = (kinds[k] + colours[c]) / math.sqrt(2)
    if frozen_codes:  # buffers, not parameters: a stage's freezing rules cannot thaw them
        oracle = projector.oracle
        classes, cells = oracle.classes.weight.detach(), oracle.cells.detach()
        del oracle.classes.weight, oracle.cells
        oracle.classes.register_buffer("weight", classes)
        oracle.register_buffer("cells", cells)
    dtype = projector[1].weight.dtype
    # the projector's own layers (LayerNorm, Linear, GELU, Linear): all but the oracle, added last
    layers = nn.Sequential(*list(projector)[:-1])

    def extract_feature(pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = projector.oracle(pixel_values.to(dtype))
        return layers(tokens) if through_projector else tokens

    model.extract_feature = extract_feature


def llm_of_depth(ws, layers: int, tie_word_embeddings: bool = True, train_embeddings: bool = True):
    """The workspace's LLM-S, or an LLM-S-wide model with ``layers`` layers (and, if asked,
    untied embeddings or input embeddings kept at their random start) warm-started the same way."""
    hidden, depth, heads, kv, inter = LLM_SIZES["S"]
    variant = ("" if tie_word_embeddings else "_untied") + ("" if train_embeddings else "_frozen_embeddings")
    if layers == depth and not variant:
        return "S", ws.llm
    size = "S" if layers == depth else f"S{layers}"
    LLM_SIZES[size] = (hidden, layers, heads, kv, inter)  # registered for this process only
    r = ws.recipe
    llm, _ = warm_start_llm(ws.tokenizer, suite_conversations(ws.train_meta), size, steps=r.warm_steps, seed=r.seed,
                            cache=ws.out / f"llm_{size}{variant}", progress=False,
                            tie_word_embeddings=tie_word_embeddings, train_embeddings=train_embeddings)
    return size + variant, llm


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="quickstart workspace (built if missing)")
    parser.add_argument("--tasks", nargs="+", default=["caption", "shape_qa"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=None, help="peak lr (default: the recipe's stage-2 lr)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--llm-layers", type=int, nargs="+", default=[LLM_SIZES["S"][1]])
    parser.add_argument("--image-size", type=int, default=None,
                        help="tile side in px (default: the recipe's); another size retrains the workspace's ViT, "
                             "so give it its own --out")
    parser.add_argument("--vision-layers", type=int, default=None,
                        help="the ViT's depth (default: the recipe's); another depth warm-starts a ViT of its own")
    parser.add_argument("--vit-warm-steps", type=int, default=None,
                        help="the ViT warm start's steps (default: the recipe's); another value retrains the "
                             "workspace's ViT")
    parser.add_argument("--vit-warm-lr", type=float, default=None,
                        help="the ViT warm start's peak lr (default: the recipe's); another value retrains the "
                             "workspace's ViT")
    parser.add_argument("--vit-token-weight", type=float, default=None,
                        help="weight of the ViT warm start's per-image-token objective (default: the recipe's)")
    parser.add_argument("--vit-prototype-weight", type=float, default=None,
                        help="weight of the ViT warm start's prototype objective, which asks each image token "
                             "to point along its class's fixed code (default: the recipe's)")
    parser.add_argument("--vit-share-weight", type=float, default=None,
                        help="weight of the ViT warm start's class-share objective, which asks that kind and "
                             "colour be most of each image token's spread (default: the recipe's)")
    parser.add_argument("--vision-lr-scale", type=float, default=None,
                        help="the ViT's lr in stage 2 as a multiple of the stage's (default: the recipe's)")
    parser.add_argument("--projector-lr-scale", type=float, default=None,
                        help="the projector's lr over the stage's (with --oracle-vision, the oracle's codes' too)")
    parser.add_argument("--projector-init-scale", type=float, default=None,
                        help="multiply the fresh projector's last Linear by this (default: the recipe's)")
    parser.add_argument("--oracle-vision", action="store_true",
                        help="repaint the scenes under --out and read them exactly (see above); needs its own --out")
    parser.add_argument("--through-projector", action="store_true",
                        help="with --oracle-vision: feed the oracle's vectors through the MLP projector")
    parser.add_argument("--oracle-kind-noise", type=float, default=0.0,
                        help="with --oracle-vision: misread each occupied cell's kind with this probability")
    parser.add_argument("--oracle-class-share", type=float, default=1.0,
                        help="with --oracle-vision: add a random vector to each token so that its class holds "
                             "this share of the tokens' spread (a ViT's share: minivl.vision.warmstart.class_variance)")
    parser.add_argument("--oracle-frozen-codes", action="store_true",
                        help="with --oracle-vision: keep the oracle's class and cell vectors at their random start")
    parser.add_argument("--oracle-factorised-codes", action="store_true",
                        help="with --oracle-vision: start each class's vector as its kind's plus its colour's")
    parser.add_argument("--untied-embeddings", action="store_true",
                        help="warm-start the LLM with its own output matrix instead of tied embeddings")
    parser.add_argument("--frozen-warm-embeddings", action="store_true",
                        help="keep the LLM's input embeddings at their random start during its warm start "
                             "(stage 2 trains them)")
    parser.add_argument("--per-task", type=int, default=None, help="held-out questions (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = get_scale()
    recipe = RECIPES[scale]
    oracle_options = {"--through-projector": args.through_projector, "--oracle-kind-noise": args.oracle_kind_noise,
                      "--oracle-class-share": args.oracle_class_share != 1.0,
                      "--oracle-frozen-codes": args.oracle_frozen_codes,
                      "--oracle-factorised-codes": args.oracle_factorised_codes}
    for flag, given in oracle_options.items():
        if given and not args.oracle_vision:
            parser.error(f"{flag} needs --oracle-vision")
    if args.oracle_vision:
        if Path(args.out).resolve() == Path(parser.get_default("out")).resolve():
            parser.error("--oracle-vision repaints the workspace's images: give it its own --out")
        if args.image_size not in (None, ORACLE_TILE):
            parser.error(f"--oracle-vision reads {ORACLE_TILE} px tiles (one token per scene cell), not {args.image_size}")
        args.image_size = ORACLE_TILE
    overrides = {"image_size": args.image_size, "projector_init_scale": args.projector_init_scale,
                 "vit_warm_lr": args.vit_warm_lr, "vit_warm_steps": args.vit_warm_steps,
                 "vit_token_weight": args.vit_token_weight, "vit_prototype_weight": args.vit_prototype_weight,
                 "vit_share_weight": args.vit_share_weight, "vision_lr_scale": args.vision_lr_scale,
                 "projector_lr_scale": args.projector_lr_scale,
                 "vision_layers": args.vision_layers}
    recipe = dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    ws = prepare(args.out, scale, recipe, progress=False)
    if args.oracle_vision:
        print(f"oracle vision: {paint_oracle_scenes(Path(args.out) / 'data')} scene images repainted")
    if args.lr is None:
        args.lr = next(lr for name, _, lr in recipe.stages if name == "stage2")
    rows = []
    print(f"\nstage 2 only, {args.steps} steps at lr {args.lr:g} on {' + '.join(args.tasks)}; "
          f"{recipe.image_size} px tiles{', oracle vision' if args.oracle_vision else ''}"
          f"{f' misreading {args.oracle_kind_noise:.0%} of kinds' if args.oracle_kind_noise else ''}"
          f"{f', classes {args.oracle_class_share:.0%} of the spread' if args.oracle_class_share < 1 else ''}"
          f"{', frozen' if args.oracle_frozen_codes else ''}"
          f"{' factorised' if args.oracle_factorised_codes else ''}"
          f"{' codes' if args.oracle_frozen_codes or args.oracle_factorised_codes else ''}"
          f"{' through the projector' if args.through_projector else ''}; projector's last layer at "
          f"{recipe.projector_init_scale:g}x its default init; held-out shape_qa ({scale} scale)")
    print(f"{'LLM':<36}{'seed':>5}{'seconds':>9}{'shape_qa':>10}   by question type")
    for layers in args.llm_layers:
        size, llm = llm_of_depth(ws, layers, tie_word_embeddings=not args.untied_embeddings,
                                 train_embeddings=not args.frozen_warm_embeddings)
        for seed in args.seeds:
            run_ws = dataclasses.replace(ws, recipe=dataclasses.replace(ws.recipe, seed=seed))
            model = build_model(run_ws, language_model=copy.deepcopy(llm))
            if args.oracle_vision:
                attach_oracle_vision(model, through_projector=args.through_projector,
                                     kind_noise=args.oracle_kind_noise, class_share=args.oracle_class_share,
                                     frozen_codes=args.oracle_frozen_codes,
                                     factorised_codes=args.oracle_factorised_codes)
            start = time.perf_counter()
            train_stage(run_ws, model, "stage2", args.steps, args.lr, progress=False, names=args.tasks)
            seconds = time.perf_counter() - start
            scores = evaluate_suite(model, ws.tokenizer, ws.test_meta, tasks=["shape_qa"], per_task=args.per_task,
                                    details=True, group_by=count_question_group)
            by_type = {q: v for q, (v, _) in scores["tasks"]["shape_qa"].by_type.items()}
            row = {"llm": f"{size} ({layers} layers)", "seed": seed, "seconds": seconds,
                   "shape_qa": scores["shape_qa"], "by_type": by_type,
                   "counting": counting_by_what(scores["tasks"]["shape_qa"].by_group)}
            rows.append(row)
            print(f"{row['llm']:<36}{seed:>5}{seconds:>9.0f}{row['shape_qa']:>10.1%}   "
                  + ", ".join(f"{q} {v:.0%}" for q, v in by_type.items()), flush=True)
            if row["counting"]:
                print(f"{'':<60}count questions: " + ", ".join(
                    f"{COUNTED[what]} {v:.0%}" for what, v in row["counting"].items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
