"""Back-ends of ``minivl chat`` and ``minivl eval``, and grounding boxes drawn on an image.

* :func:`chat_command`: load a checkpoint, tile one or several images, and answer a question
  (or one question per line, as a multi-turn conversation), streaming the answer to stdout
  with a transformers ``TextStreamer``. Several images are numbered ``Image-1: <image>``,
  ``Image-2: <image>``, ... in the first turn, as in InternVL's multi-image data.
* :func:`draw_boxes`: every ``<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>`` of a
  grounding answer, read in InternVL's 0-1000 coordinates, scaled to the image and drawn
  with its label (one colour per phrase).
* :func:`eval_command`: load a checkpoint and a benchmark (:mod:`minivl.eval.benchmarks`),
  run the harness (:func:`minivl.eval.bench.evaluate`), print the Markdown table and write
  the result files.

Explained in chapter 14 (notebooks/14_inference_and_grounding.ipynb) for chat and grounding,
and chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb) for evaluation.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from PIL import Image, ImageDraw

#: Box colours, one per referring phrase, in order (cycled).
BOX_COLOURS = ((230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (70, 240, 240))

_REF_BOX = re.compile(r"(?:<ref>(.*?)</ref>)?\s*<box>(.*?)</box>", re.S)
_QUAD = re.compile(r"\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")


def parse_grounding(text: str) -> list[tuple[str, list[float]]]:
    """Every box of a grounding answer as ``(phrase, [x1, y1, x2, y2])`` in 0-1000 coordinates.

    Reads each ``<ref>phrase</ref><box>[[...], [...]]</box>`` (a phrase may own several
    boxes); a ``<box>`` without a ``<ref>`` gets the phrase ``""``. When the text has no
    ``<box>`` tag at all, bare ``[[x1, y1, x2, y2]]`` boxes are read instead (label ``""``).

    >>> parse_grounding("<ref>cat</ref><box>[[10, 20, 30, 40]]</box>")
    [('cat', [10.0, 20.0, 30.0, 40.0])]

    Explained in chapter 14 (notebooks/14_inference_and_grounding.ipynb).
    """
    out: list[tuple[str, list[float]]] = []
    matches = list(_REF_BOX.finditer(text))
    if not matches:
        for group in re.findall(r"\[\[.*?\]\]", text, flags=re.S):
            out += [("", [float(v) for v in quad]) for quad in _QUAD.findall(group)]
        return out
    for match in matches:
        label = (match.group(1) or "").strip()
        out += [(label, [float(v) for v in quad]) for quad in _QUAD.findall(match.group(2))]
    return out


def to_pixels(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A 0-1000 box ``[x1, y1, x2, y2]`` in pixels of a ``width`` x ``height`` image.

    Explained in chapter 14 (notebooks/14_inference_and_grounding.ipynb).
    """
    x1, y1, x2, y2 = box
    return (x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height)


def draw_boxes(image: Image.Image, response_text: str, line_width: int | None = None) -> Image.Image:
    """A copy of ``image`` (RGB) with every box of ``response_text`` drawn and labelled.

    Boxes come from :func:`parse_grounding` (0-1000 coordinates scaled to the image size);
    each distinct phrase gets the next colour of :data:`BOX_COLOURS`; the phrase is written
    on a filled tag above the box's top-left corner (below it when the box touches the top).
    Coordinates are clamped to the image and put in order, so ``x2 < x1`` still draws.
    ``line_width`` defaults to ``max(1, min(width, height) // 100)``.

    Explained in chapter 14 (notebooks/14_inference_and_grounding.ipynb).
    """
    canvas = image.convert("RGB")  # convert() returns a new image (a copy when already RGB)
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = line_width or max(1, min(width, height) // 100)
    colours: dict[str, tuple[int, int, int]] = {}
    for label, box in parse_grounding(response_text):
        colour = colours.setdefault(label, BOX_COLOURS[len(colours) % len(BOX_COLOURS)])
        x1, y1, x2, y2 = to_pixels(box, width, height)
        x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
        y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        if label:
            left, top, right, bottom = draw.textbbox((0, 0), label)
            tag_w, tag_h = right - left + 4, bottom - top + 4
            ty = y1 - tag_h if y1 - tag_h >= 0 else y1 + line
            draw.rectangle([x1, ty, x1 + tag_w, ty + tag_h], fill=colour)
            draw.text((x1 + 2 - left, ty + 2 - top), label, fill=(255, 255, 255))
    return canvas


# ---------------------------------------------------------------------------------------
# minivl chat


def load_model(model_dir: str | Path, dtype: Any = None):
    """``(model, tokenizer)`` from a checkpoint directory (minivl, official or transformers
    layout) with the tokenizer saved beside the weights; the model is in eval mode.

    Explained in chapter 14 (notebooks/14_inference_and_grounding.ipynb).
    """
    from minivl.model import MiniVL
    from minivl.text.tokenizer import load_tokenizer

    return MiniVL.from_pretrained(model_dir, dtype=dtype).eval(), load_tokenizer(model_dir)


def _streamer(tokenizer: Any, out: IO[str]):
    from transformers import TextStreamer

    class _WriteStreamer(TextStreamer):
        """A ``TextStreamer`` that writes to ``out`` instead of ``print``."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return _WriteStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def chat_command(model_dir: str | Path | None, images: Sequence[str | Path], question: str | None,
                 max_num: int = 12, stream: bool = True, *, max_new_tokens: int = 256,
                 questions: Iterable[str] | None = None, draw: str | Path | None = None,
                 do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
                 out: IO[str] | None = None, model: Any = None, tokenizer: Any = None) -> list[str]:
    """``minivl chat --model DIR --image FILE [--image FILE2 ...] "question"``; returns the answers.

    Each image is tiled with up to ``max_num`` tiles (plus its thumbnail), as the model
    card's multi-image example does; several images are announced as ``Image-1: <image>``
    ... lines in front of the first question. Without ``question``, each non-empty line of
    ``questions`` (default: stdin) is one turn, and every turn sees the history. The answer
    is streamed to ``out`` (default stdout) token by token when ``stream``, else printed
    whole. With ``draw``, the boxes of the last answer are drawn on the first image
    (:func:`draw_boxes`) and saved to that file. Greedy by default; ``do_sample`` samples at
    ``temperature`` / ``top_p``. ``model`` and ``tokenizer`` may be passed instead of
    ``model_dir``.

    Explained in chapter 14 (notebooks/14_inference_and_grounding.ipynb).
    """
    import torch

    from minivl.text.prompt import multi_image_prefix
    from minivl.vision.transforms import load_image, load_image_tiles

    out = out if out is not None else sys.stdout
    if model is None or tokenizer is None:
        if model_dir is None:
            raise ValueError("chat_command: pass model_dir, or both model= and tokenizer=")
        model, tokenizer = load_model(model_dir)
    model.eval()
    size = model.config.vision.image_size
    pixels, patches = [], []
    for path in images:
        pv, n = load_image_tiles(path, image_size=size, max_num=max_num)
        pixels.append(pv)
        patches += n
    pixel_values = torch.cat(pixels).to(model.device, model.dtype) if pixels else None  # (tiles, 3, S, S)
    prefix = "" if not images else ("<image>\n" if len(images) == 1 else multi_image_prefix(len(images)))

    config: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        config.update(temperature=temperature, top_p=top_p)
    if stream:
        config["streamer"] = _streamer(tokenizer, out)
    if question:
        turns: Iterable[str] = [question]
    else:
        turns = questions if questions is not None else sys.stdin
    history: list[tuple[str, str]] | None = None
    answers: list[str] = []
    for turn in turns:
        turn = turn.strip()
        if not turn:
            continue
        text = prefix + turn if history is None else turn
        with torch.no_grad():
            answer, history = model.chat(tokenizer, pixel_values, text, config, history=history,
                                         return_history=True, num_patches_list=patches or None)
        if not stream:
            out.write(answer + "\n")
        answers.append(answer)
    if draw is not None:
        if not images:
            raise ValueError("chat_command: draw= needs an image to draw on")
        if answers:
            draw_boxes(load_image(images[0]), answers[-1]).save(draw)
            out.write(f"boxes drawn on {draw}\n")
    return answers


# ---------------------------------------------------------------------------------------
# minivl eval


def eval_command(model_dir: str | Path | None, bench: str, data: str | Path, split: str | None = None,
                 mode: str = "direct", k: int = 1, out: str | Path | None = None, *,
                 tasks: Sequence[str] | None = None, limit: int | None = None, max_num: int | None = None,
                 batch_size: int = 8, temperature: float = 0.6, top_p: float = 0.95,
                 max_new_tokens: int | None = None, progress: bool = True, model: Any = None,
                 tokenizer: Any = None, stdout: IO[str] | None = None) -> dict[str, Any]:
    """``minivl eval --model DIR --bench NAME --data PATH [--mode cot] [--k 5] [--out DIR]``.

    ``bench`` is ``"synthetic"`` (``data`` = the split's meta JSON, e.g. ``data/synth/test.json``)
    or ``mmmu`` / ``chartqa`` / ``docvqa`` / ``ai2d`` (``data`` = a data set saved with
    ``save_to_disk``, a parquet file, or a Hub id when online; ``split`` defaults to the
    benchmark's evaluation split). ``tasks`` picks synthetic tasks; ``limit`` keeps the first
    items (per task for the synthetic suite); ``max_num`` overrides the tile budgets. The
    harness (:func:`minivl.eval.bench.evaluate`) runs with ``mode`` and ``k`` votes; the
    Markdown table is printed and, with ``out``, ``predictions.jsonl``, ``results.json`` and
    ``results.md`` are written there. Returns the results dict.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    from minivl.eval.bench import MiniVLRunner, evaluate
    from minivl.eval.benchmarks import load_benchmark
    from minivl.eval.metrics import results_markdown

    stdout = stdout if stdout is not None else sys.stdout
    items = load_benchmark(bench, data, split=split, limit=limit, max_num=max_num, tasks=tasks)
    if model is None or tokenizer is None:
        if model_dir is None:
            raise ValueError("eval_command: pass model_dir, or both model= and tokenizer=")
        model, tokenizer = load_model(model_dir)
    runner = MiniVLRunner(model, tokenizer, max_num=max_num)
    results = evaluate(runner, items, mode=mode, k=k, temperature=temperature, top_p=top_p, batch_size=batch_size,
                       out_dir=out, progress=progress, max_new_tokens=max_new_tokens)
    settings = results["settings"]
    stdout.write(f"{bench} ({data}): mode={settings['mode']} k={settings['k']}\n")
    stdout.write(results_markdown(results))
    if out is not None:
        stdout.write(f"results written to {out}\n")
    return results
