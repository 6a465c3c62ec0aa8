"""Can a ViT of the quickstart's size read the small_text task's glyphs? A direct test, no LLM.

small_text stays at 0 % in the quickstart, with one tile and with dynamic tiling alike. This
script asks whether the eyes are the limit: it trains the ViT alone, with the most direct
supervision there is, to read. Tiles are drawn the way dynamic tiling shows the task to the
model (a 112 px piece of the light-grey canvas, dark DejaVu Sans capitals and digits at the
task's 9 px, strings cut where the tile ends), and a linear head on each LLM image token
(2 x 2 patches merged by :func:`minivl.projector.pixel_shuffle`, what the projector receives)
says which characters have their centre in that token (multi-label, binary cross-entropy,
positives weighted by ``--pos-weight``). It reports, on held-out tiles, the share of the
characters present that the head finds (recall) and of those it names that are there
(precision), and threshold-free, the share whose token ranks them among its top m logits
when it holds m characters (``top_m``, next to what a random ranking scores); a token that
reads every one of its characters and nothing else counts in ``token_exact``.

    MINIVL_SCALE=cpu python scripts/text_reading_probe.py                 # the quickstart's ViT, 9 px
    MINIVL_SCALE=cpu python scripts/text_reading_probe.py --font-size 20  # glyphs as large as a patch

Characters are random strings of the task's alphabet (capitals without J or Q, digits),
never its words or numbers; tiles come from their own seed.

``--words`` asks an easier question, the task's own: which of small_text's 110 answers (its 20
words and the numbers 10-99) is printed on the tile? A max over the ViT's patch tokens feeds a
linear classifier, and it reports held-out accuracy (chance: 1 in 110). ``--canvas 448`` prints
the answer on small_text's whole 448 px canvas instead and squeezes it into one tile, as the
model sees the task without dynamic tiling, so the two runs measure what tiling buys the eyes:

    MINIVL_SCALE=cpu python scripts/text_reading_probe.py --words --font-size 20 --steps 1200 --tiles 16384
    MINIVL_SCALE=cpu python scripts/text_reading_probe.py --words --font-size 20 --steps 1200 --tiles 16384 --canvas 448
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from minivl.data.synthetic.common import font
from minivl.data.synthetic.small_text import WORDS
from minivl.quickstart import RECIPES, Recipe, vision_config
from minivl.train.trainer import cosine_with_warmup
from minivl.vision.intern_vit import InternVisionModel
from minivl.vision.transforms import load_image_tiles
from minivl.vision.warmstart import TokenHead

ALPHABET = "ABCDEFGHIKLMNOPRSTUVWXYZ0123456789"


def render_text_tiles(n: int, image_size: int, font_size: int, seed: int,
                      token_px: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` tiles ``(n, 3, S, S)`` (normalised as the model's tiles are) and, per LLM image
    token (row-major, ``token_px`` px square), which characters have their centre in it
    ``(n, T, len(ALPHABET))``. 0-3 strings of 1-5 characters per tile, on a canvas larger than
    the tile so that strings are cut at its edges."""
    rng = random.Random(f"text-reading-probe/{seed}")
    f = font(font_size)
    margin = 2 * font_size
    side = image_size + 2 * margin
    grid = image_size // token_px
    pixels, labels = [], []
    for _ in range(n):
        shade, ink = rng.randint(235, 255), rng.randint(0, 60)
        canvas = Image.new("RGB", (side, side), (shade,) * 3)
        draw = ImageDraw.Draw(canvas)
        label = torch.zeros(grid * grid, len(ALPHABET))
        for _ in range(rng.randint(0, 3)):
            text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 5)))
            left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
            x, y = rng.randint(-left, side - right), rng.randint(-top, side - bottom)
            draw.text((x, y), text, font=f, fill=(ink,) * 3)
            cy = y + (top + bottom) / 2 - margin
            for i, ch in enumerate(text):
                cx = x + (f.getlength(text[:i]) + f.getlength(text[:i + 1])) / 2 - margin
                if 0 <= cx < image_size and 0 <= cy < image_size:
                    label[int(cy // token_px) * grid + int(cx // token_px), ALPHABET.index(ch)] = 1
        tile = canvas.crop((margin, margin, margin + image_size, margin + image_size))
        pixels.append(load_image_tiles(tile, image_size=image_size, max_num=1)[0][0])
        labels.append(label)
    return torch.stack(pixels), torch.stack(labels)


ANSWERS = (*WORDS, *(str(n) for n in range(10, 100)))  # small_text's answers: a word or a number 10-99


def render_word_tiles(n: int, image_size: int, font_size: int, seed: int,
                      canvas: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` tiles ``(n, 3, S, S)`` (normalised) each showing one of :data:`ANSWERS` in full, and
    its index ``(n,)``. The answer is printed on a ``canvas`` px square (default: the tile
    itself) at a random place, as small_text prints it, and the canvas is resized to one tile."""
    rng = random.Random(f"text-reading-probe/words/{seed}")
    f = font(font_size)
    side = canvas or image_size
    pixels, labels = [], []
    for _ in range(n):
        label = rng.randrange(len(ANSWERS))
        text = ANSWERS[label]
        shade, ink = rng.randint(235, 255), rng.randint(0, 60)
        image = Image.new("RGB", (side, side), (shade,) * 3)
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
        if right - left > side - 4 or bottom - top > side - 4:
            raise ValueError(f"{text!r} at {font_size} px does not fit a {side} px canvas")
        x, y = rng.randint(2 - left, side - 2 - right), rng.randint(2 - top, side - 2 - bottom)
        draw.text((x, y), text, font=f, fill=(ink,) * 3)
        pixels.append(load_image_tiles(image, image_size=image_size, max_num=1)[0][0])
        labels.append(label)
    return torch.stack(pixels), torch.tensor(labels)


class WordHead(nn.Module):
    """ViT output ``(N, 1 + P, C)`` -> one logit per answer: the max over the patch tokens (the
    answer sits anywhere on the tile), then a linear classifier over :data:`ANSWERS`."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, len(ANSWERS))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(hidden[:, 1:].amax(1))


@torch.no_grad()
def word_accuracy(vit: nn.Module, head: WordHead, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    vit.eval()
    logits = torch.cat([head(vit(pixels[i:i + 256])) for i in range(0, len(pixels), 256)])
    vit.train()
    return (logits.argmax(-1) == labels).float().mean().item()


class ReadHead(TokenHead):
    """ViT output ``(N, 1 + P, C)`` -> per LLM image token, one logit per character: the ViT
    warm start's :class:`~minivl.vision.warmstart.TokenHead` (the same merge of 2 x 2 patches)
    with a classifier over :data:`ALPHABET` instead of the shape classes."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size)
        self.classifier = nn.Linear(self.classifier.in_features, len(ALPHABET))


@torch.no_grad()
def reading_metrics(vit: nn.Module, head: ReadHead, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    vit.eval()
    logits = torch.cat([head(vit(pixels[i:i + 256])) for i in range(0, len(pixels), 256)])
    vit.train()
    present, found = labels.bool(), logits > 0
    hits = (found & present).sum().item()
    inked = present.any(-1)
    # threshold-free: on each token with characters, are its m highest logits its m characters?
    m = present.sum(-1, keepdim=True)
    rank = logits.argsort(-1, descending=True).argsort(-1)  # 0 = highest logit
    in_top = (present & (rank < m)).sum().item()
    # a random ranking puts a character of a token with m of them in its top m with chance
    # m / len(ALPHABET)
    chance = (m * m).sum().item() / max(1, m.sum().item()) / len(ALPHABET)
    return {"recall": hits / max(1, present.sum().item()), "precision": hits / max(1, found.sum().item()),
            "top_m": in_top / max(1, present.sum().item()), "top_m_chance": chance,
            "token_exact": (found == present).all(-1)[inked].float().mean().item()}


def main() -> None:
    recipe: Recipe = RECIPES["cpu"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--font-size", type=int, default=9, help="px (default: small_text's 9)")
    parser.add_argument("--width", type=int, default=recipe.vision_width, help="ViT width (default: the recipe's)")
    parser.add_argument("--layers", type=int, default=recipe.vision_layers, help="ViT depth (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--pos-weight", type=float, default=5.0)
    parser.add_argument("--tiles", type=int, default=8192, help="training tiles (held out: 512 others)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--words", action="store_true", help="name the whole answer printed on the tile (see above)")
    parser.add_argument("--canvas", type=int, default=None,
                        help="with --words: print on a canvas this many px wide and squeeze it into one tile "
                             "(small_text's is 448; default: the tile itself)")
    args = parser.parse_args()
    if args.canvas is not None and not args.words:
        parser.error("--canvas needs --words")

    config = vision_config(Recipe(vision_width=args.width, vision_layers=args.layers))
    start = time.perf_counter()
    if args.words:
        pixels, labels = render_word_tiles(args.tiles, config.image_size, args.font_size, args.seed, args.canvas)
        held_pixels, held_labels = render_word_tiles(512, config.image_size, args.font_size, args.seed + 10_000,
                                                     args.canvas)
        where = f"printed on a {args.canvas} px canvas squeezed into the tile" if args.canvas else "printed on the tile"
        print(f"{args.tiles} tiles of {config.image_size} px, one of {len(ANSWERS)} answers each at "
              f"{args.font_size} px, {where}; rendered in {time.perf_counter() - start:.0f} s")
    else:
        pixels, labels = render_text_tiles(args.tiles, config.image_size, args.font_size, args.seed)
        held_pixels, held_labels = render_text_tiles(512, config.image_size, args.font_size, args.seed + 10_000)
        print(f"{args.tiles} tiles of {config.image_size} px, {labels.sum().item() / args.tiles:.1f} characters "
              f"each at {args.font_size} px; rendered in {time.perf_counter() - start:.0f} s")
    torch.manual_seed(args.seed)
    vit = InternVisionModel(config)
    head = WordHead(config.hidden_size) if args.words else ReadHead(config.hidden_size)
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, 20, args.steps, 0.0))
    g = torch.Generator().manual_seed(args.seed)
    pos_weight = torch.tensor(args.pos_weight)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(pixels), (args.batch_size,), generator=g)
        if args.words:
            loss = F.cross_entropy(head(vit(pixels[idx])), labels[idx])
        else:
            loss = F.binary_cross_entropy_with_logits(head(vit(pixels[idx])), labels[idx], pos_weight=pos_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        report = step % (args.steps // 4) == 0 or step == args.steps
        if report and args.words:
            print(f"step {step}: loss {loss.item():.4f}; answers named rightly: held out "
                  f"{word_accuracy(vit, head, held_pixels, held_labels):.1%}, training tiles "
                  f"{word_accuracy(vit, head, pixels[:512], labels[:512]):.1%} (by chance {1 / len(ANSWERS):.1%})",
                  flush=True)
        elif report:
            m = reading_metrics(vit, head, held_pixels, held_labels)
            print(f"step {step}: loss {loss.item():.4f}; held out: characters found {m['recall']:.1%}, "
                  f"named rightly {m['precision']:.1%}, among its token's top guesses {m['top_m']:.1%} "
                  f"(by chance {m['top_m_chance']:.1%}), "
                  f"tokens read exactly {m['token_exact']:.1%}", flush=True)
    print(f"ViT {args.width} wide x {args.layers} layers ({sum(p.numel() for p in vit.parameters()):,} parameters), "
          f"{args.steps} steps in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
