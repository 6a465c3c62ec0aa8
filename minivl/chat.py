"""Talking to a trained model: ``minivl chat`` and grounding boxes drawn on the image.

Explained in chapter 14 (notebooks/14_inference_and_grounding.ipynb).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

REF_BOX = re.compile(r"(?:<ref>(.*?)</ref>)?\s*(?:<box>)?\s*(\[\[[\d\s,.\[\]]+\]\])\s*(?:</box>)?")
_NUM4 = re.compile(r"\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]")


def parse_grounding(text: str, width: int, height: int) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Every ``<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>`` in ``text`` as (label, pixel box).

    Coordinates are InternVL's 0-1000 integers, scaled to ``width`` x ``height``; a box
    without a ``<ref>`` gets the label of the previous one (or ``""``).
    """
    out, label = [], ""
    for match in REF_BOX.finditer(text):
        label = match.group(1) if match.group(1) is not None else label
        for nums in _NUM4.findall(match.group(2)):
            x1, y1, x2, y2 = (float(v) for v in nums)
            out.append((label, (x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height)))
    return out


def draw_boxes(image: Image.Image, response: str, colour: str = "red") -> Image.Image:
    """A copy of ``image`` with every box of a grounding ``response`` drawn and labelled."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for label, (x1, y1, x2, y2) in parse_grounding(response, *canvas.size):
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=max(1, canvas.width // 150))
        if label:
            draw.text((x1 + 2, max(0, y1 - 12)), label, fill=colour)
    return canvas


def load_for_chat(model_dir: str | Path):
    """A checkpoint directory (any of the three layouts) and the tokenizer beside it."""
    from minivl.model import MiniVL
    from minivl.text.tokenizer import load_tokenizer

    return MiniVL.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)


def chat_command(model_dir: str | Path, images: Sequence[str | Path], question: str | None,
                 max_num: int = 12, max_new_tokens: int = 256, stream: bool = True,
                 draw: str | Path | None = None, questions: Iterable[str] | None = None) -> list[str]:
    """``minivl chat``: answer ``question`` about ``images`` (several become ``Image-k``), streaming
    the answer to stdout. Without a question, every line of ``questions`` (default: stdin) is
    one turn of a multi-turn conversation. With ``draw``, boxes of the last answer are drawn
    on the first image and saved there.
    """
    import torch
    from transformers import TextStreamer

    from minivl.text.prompt import multi_image_prefix
    from minivl.vision.transforms import load_image, load_image_tiles

    model, tok = load_for_chat(model_dir)
    size = model.config.vision.image_size
    pixel_values, patches = (load_image_tiles([str(p) for p in images], image_size=size, max_num=max_num)
                             if images else (None, None))
    prefix = multi_image_prefix(len(images)) if len(images) > 1 else ""
    config: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    if stream:
        config["streamer"] = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    turns = [question] if question else (questions if questions is not None else (line.strip() for line in sys.stdin))
    history: list[tuple[str, str]] | None = None
    answers = []
    for i, turn in enumerate(t for t in turns if t):
        text = (prefix + turn) if i == 0 and prefix else turn
        with torch.no_grad():
            answer, history = model.chat(tok, pixel_values, text, config, history=history, return_history=True,
                                         num_patches_list=patches)
        if not stream:
            print(answer)
        answers.append(answer)
    if draw and images and answers:
        draw_boxes(load_image(images[0]), answers[-1]).save(draw)
        print(f"boxes drawn on {draw}")
    return answers


def eval_command(model_dir: str | Path, meta: str | Path, tasks: Sequence[str] | None = None,
                 per_task: int | None = None, max_num: int | None = None, out: str | Path | None = None) -> dict:
    """``minivl eval --bench synthetic``: score a checkpoint on a split of the synthetic suite and
    write ``results.json`` and ``results.md`` to ``out``."""
    import json

    from minivl.eval.suite import evaluate_suite

    model, tok = load_for_chat(model_dir)
    result = evaluate_suite(model, tok, meta, tasks=tasks, per_task=per_task, max_num=max_num, progress=True,
                            details=True)
    rows = result.pop("tasks")
    lines = ["| task | metric | score | n | unparseable |", "|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.metric} | {r.score:.1%} | {r.n} | {r.unparseable} |" for r in rows.values()]
    lines.append(f"| all | mean | {result['all']:.1%} | {sum(r.n for r in rows.values())} | "
                 f"{sum(r.unparseable for r in rows.values())} |")
    table = "\n".join(lines)
    print(table)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"model": str(model_dir), "meta": str(meta), "scores": result,
                   "tasks": {t: {"metric": r.metric, "score": r.score, "n": r.n, "unparseable": r.unparseable,
                                 "examples": r.examples} for t, r in rows.items()}}
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        (out / "results.md").write_text(table + "\n")
    return result
