"""The benchmark harness: prompts -> batched generation -> extraction -> scores -> result files.

:func:`evaluate` takes a *runner* (anything with the :class:`Runner` method below) and a list
of :class:`~minivl.eval.benchmarks.EvalItem`, and for each batch of items:

1. builds the prompt (:func:`build_item_prompt`): image placeholders in front
   (``<image>\\n``, ``Image-k: <image>`` lines, or ``Frame-k: <image>`` lines for a video),
   then the item's trained prompt or the report's direct / CoT prompt
   (:func:`minivl.eval.prompts.build_prompt`);
2. asks the runner for ``k`` responses per item. Sample 0 is greedy; with ``k > 1`` the other
   ``k - 1`` are sampled at ``temperature`` / ``top_p`` (VLMEvalKit's Best-of-N setting,
   T = 0.6 and top_p = 0.95, is the default; the report publishes none);
3. extracts an answer from each response (:func:`extract_item_answer`): an option letter, a
   normalised short answer, or the first box;
4. votes (:func:`minivl.eval.vote.majority_vote`: plurality, ``None`` never votes, ties go to
   the earliest sample, so k = 1 is the greedy answer) and scores the winner with the item's
   metric (:func:`score_answer`);
5. counts an item whose samples all failed to parse as ``unparseable`` (scored 0, never a
   random guess).

Results are :func:`minivl.eval.metrics.summarize`'s per-task and overall table, plus, when
``k > 1``, the greedy score and pass@k of each task. With ``out_dir`` it writes
``predictions.jsonl`` (one line per item: prompt, responses, answers, vote, score),
``results.json`` and ``results.md``.

:class:`MiniVLRunner` implements the runner on :class:`minivl.model.MiniVL`.

Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from minivl.eval.benchmarks import EvalItem
from minivl.eval.extract import extract_choice, extract_open, normalize_answer
from minivl.eval.metrics import (
    anls,
    box_iou,
    box_numbers,
    exact_match,
    parse_box,
    relaxed_correctness,
    summarize,
    write_results,
)
from minivl.eval.prompts import build_prompt
from minivl.eval.vote import majority_vote


@dataclass(frozen=True)
class Generation:
    """One response: its text and the number of tokens generated for it (stop token included)."""

    text: str
    num_tokens: int


class Runner(Protocol):
    """What :func:`evaluate` needs from a model: responses for a batch of items.

    ``generate`` returns, for each item, ``num_samples`` :class:`Generation` objects.
    """

    def generate(self, items: Sequence[EvalItem], prompts: Sequence[str], *, do_sample: bool, temperature: float,
                 top_p: float, max_new_tokens: int, num_samples: int) -> list[list[Generation]]:
        ...


# ---------------------------------------------------------------------------------------
# Prompts


def image_prefix(item: EvalItem) -> str:
    """The placeholders in front of an item's question: none, ``<image>\\n``, ``Image-k: <image>``
    lines (several images) or ``Frame-k: <image>`` lines and a newline (video).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    from minivl.text.prompt import multi_image_prefix, video_frame_prefix

    n = len(item.images)
    if n == 0:
        return ""
    if item.video:
        return video_frame_prefix(n) + "\n"
    return "<image>\n" if n == 1 else multi_image_prefix(n)


def build_item_prompt(item: EvalItem, mode: str = "direct") -> str:
    """The full user turn for ``item`` in ``mode`` (``"direct"`` or ``"cot"``).

    :func:`image_prefix` + the item's stored prompt for that mode when it has one, else the
    grounding question as it is, else :func:`minivl.eval.prompts.build_prompt` (question,
    ``A. ...`` options, direct or CoT sentence).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    if mode not in ("direct", "cot"):
        raise ValueError(f"mode must be 'direct' or 'cot', got {mode!r}")
    if mode in item.prompts:
        body = item.prompts[mode]
    elif item.kind == "grounding":
        body = item.question
    else:
        body = build_prompt(item.question, item.options if item.kind == "mc" else None, mode=mode,
                            kind=item.kind, hint=item.hint)
    return image_prefix(item) + body


# ---------------------------------------------------------------------------------------
# Extraction and scoring


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def open_match(prediction: str | None, golds: str | Sequence[str]) -> float:
    """Score of an MMMU open answer: 1.0 when the normalised prediction equals a normalised gold,
    or when both are numbers equal after rounding to 2 decimals (``3.14159`` = ``3.14``).

    A simpler, stricter form of MMMU's ``eval_open`` (which also accepts a gold string that
    appears anywhere in the response): minivl extracts the short answer first.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    if prediction is None:
        return 0.0
    golds = [golds] if isinstance(golds, str) else list(golds)
    pred = normalize_answer(prediction)
    pred_num = _number(pred)
    for gold in golds:
        gold = normalize_answer(gold)
        if pred == gold:
            return 1.0
        gold_num = _number(gold)
        if pred_num is not None and gold_num is not None and round(pred_num, 2) == round(gold_num, 2):
            return 1.0
    return 0.0


def extract_item_answer(item: EvalItem, response: str) -> str | None:
    """The answer a response gives to ``item``, or ``None`` when unparseable.

    ``choice``: the option letter (:func:`minivl.eval.extract.extract_choice`);
    ``iou@0.5``: the first ``[[x1, y1, x2, y2]]`` rewritten as ``"[[x1, y1, x2, y2]]"`` (so that
    equal boxes vote together); other metrics: the normalised short answer
    (:func:`minivl.eval.extract.extract_open`).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    if item.metric == "choice":
        return extract_choice(response, item.options or []).answer
    if item.metric == "iou@0.5":
        values = box_numbers(response)
        return None if values is None else "[[" + ", ".join(f"{v:g}" for v in values) + "]]"
    return extract_open(response).answer


def score_answer(item: EvalItem, answer: str | None) -> float:
    """Score in [0, 1] of an extracted ``answer`` (``None`` scores 0) with the item's metric.

    ``choice``: letter equality; ``exact``: :func:`~minivl.eval.metrics.exact_match`;
    ``relaxed``: :func:`~minivl.eval.metrics.relaxed_correctness`; ``anls``:
    :func:`~minivl.eval.metrics.anls`; ``open``: :func:`open_match`; ``iou@0.5``: 1 when the
    box's IoU with the gold box (both read by :func:`~minivl.eval.metrics.parse_box` and scaled
    to ``item.image_size``) is at least 0.5.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    if answer is None:
        return 0.0
    if item.metric == "choice":
        return float(answer == item.gold)
    if item.metric == "exact":
        return exact_match(answer, item.answers)
    if item.metric == "relaxed":
        return relaxed_correctness(answer, item.answers)
    if item.metric == "anls":
        return anls(answer, item.answers)
    if item.metric == "open":
        return open_match(answer, item.answers)
    width, height = item.image_size  # type: ignore[misc]
    box, gold = parse_box(answer, width, height), parse_box(item.gold, width, height)
    if gold is None:
        raise ValueError(f"item {item.id}: cannot read a box from the gold answer {item.gold!r}")
    return float(box is not None and box_iou(box, gold) >= 0.5)


# ---------------------------------------------------------------------------------------
# The harness


def _batches(items: Sequence[EvalItem], size: int):
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _check_generations(out: Any, n_items: int, n_samples: int) -> list[list[Generation]]:
    if not isinstance(out, list) or len(out) != n_items:
        raise ValueError(f"runner.generate returned {type(out).__name__} of length "
                         f"{len(out) if hasattr(out, '__len__') else '?'}, expected a list of {n_items} lists")
    for i, samples in enumerate(out):
        if len(samples) != n_samples or not all(isinstance(g, Generation) for g in samples):
            raise ValueError(f"runner.generate: item {i} got {len(samples)} responses, expected {n_samples} "
                             f"Generation objects")
    return out


def evaluate(runner: Runner, items: Sequence[EvalItem], mode: str = "direct", k: int = 1, temperature: float = 0.6,
             top_p: float = 0.95, batch_size: int = 8, out_dir: str | Path | None = None, progress: bool = True,
             max_new_tokens: int | None = None, cot_max_new_tokens: int = 1024) -> dict[str, Any]:
    """Score ``runner`` on ``items``; return the results (and write them when ``out_dir`` is given).

    ``mode`` picks the prompts (``"direct"`` or ``"cot"``); ``k`` is the number of responses
    per item (sample 0 greedy, the rest sampled at ``temperature`` / ``top_p``) that vote.
    ``max_new_tokens`` defaults to the largest ``item.max_new_tokens`` of the batch in direct
    mode and to ``cot_max_new_tokens`` in CoT mode.

    Returns ``{"tasks", "overall"}`` of :func:`minivl.eval.metrics.summarize` (score,
    unparseable count and generated tokens per task; with ``k > 1`` also ``greedy_score`` and
    ``pass_at_k``), ``"settings"`` and ``"predictions"`` (one dict per item, as written to
    ``predictions.jsonl``).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    from tqdm.auto import tqdm

    if mode not in ("direct", "cot"):
        raise ValueError(f"mode must be 'direct' or 'cot', got {mode!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > 1 and temperature <= 0:
        raise ValueError("k > 1 needs temperature > 0: greedy samples would all be the same response")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(items)
    if not items:
        raise ValueError("evaluate: no items")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("evaluate: item ids must be unique")

    predictions: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc=f"eval ({mode}, k={k})", disable=not progress)
    for batch in _batches(items, batch_size):
        prompts = [build_item_prompt(item, mode) for item in batch]
        budget = max_new_tokens or (cot_max_new_tokens if mode == "cot" else max(i.max_new_tokens for i in batch))
        samples = _check_generations(
            runner.generate(batch, prompts, do_sample=False, temperature=0.0, top_p=1.0, max_new_tokens=budget,
                            num_samples=1), len(batch), 1)
        if k > 1:
            sampled = _check_generations(
                runner.generate(batch, prompts, do_sample=True, temperature=temperature, top_p=top_p,
                                max_new_tokens=budget, num_samples=k - 1), len(batch), k - 1)
            samples = [first + rest for first, rest in zip(samples, sampled)]
        for item, prompt, generations in zip(batch, prompts, samples):
            predictions.append(_score_item(item, prompt, generations))
        bar.update(len(batch))
    bar.close()

    results: dict[str, Any] = summarize(predictions)
    if k > 1:
        for name, entry in results["tasks"].items():
            rows = [p for p in predictions if p["task"] == name]
            entry["greedy_score"] = sum(p["greedy_score"] for p in rows) / len(rows)
            entry["pass_at_k"] = sum(p["best_score"] for p in rows) / len(rows)
        for key in ("greedy_score", "pass_at_k"):  # the mean over tasks, as overall.score
            results["overall"][key] = sum(t[key] for t in results["tasks"].values()) / len(results["tasks"])
    results["settings"] = {"mode": mode, "k": k, "temperature": temperature if k > 1 else 0.0,
                           "top_p": top_p if k > 1 else 1.0, "n_items": len(items)}
    if out_dir is not None:
        write_evaluation(results, predictions, out_dir)
    results["predictions"] = predictions
    return results


def _score_item(item: EvalItem, prompt: str, generations: Sequence[Generation]) -> dict[str, Any]:
    answers = [extract_item_answer(item, g.text) for g in generations]
    vote = majority_vote(answers)
    scores = [score_answer(item, a) for a in answers]
    return {
        "id": item.id, "task": item.task, "metric": item.metric, "prompt": prompt,
        "responses": [g.text for g in generations], "answers": answers, "answer": vote.answer,
        "gold": item.answers, "score": score_answer(item, vote.answer), "parsed": vote.answer is not None,
        "tokens": sum(g.num_tokens for g in generations), "votes": vote.votes, "tie": vote.tie,
        "greedy_score": scores[0], "best_score": max(scores),
    }


def write_evaluation(results: dict[str, Any], predictions: Sequence[dict[str, Any]],
                     out_dir: str | Path) -> dict[str, Path]:
    """Write ``predictions.jsonl``, ``results.json`` and ``results.md`` to ``out_dir``; return their paths.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.jsonl"
    with pred_path.open("w", encoding="utf-8") as fh:
        for row in predictions:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    json_path, md_path = write_results({k: v for k, v in results.items() if k != "predictions"}, out)
    return {"predictions": pred_path, "results": json_path, "markdown": md_path}


# ---------------------------------------------------------------------------------------
# The runner for MiniVL


def item_pixels(item: EvalItem, image_size: int, max_num: int | None = None):
    """``(pixel_values, num_patches_list)`` of an item's images (``(None, [])`` without images).

    A video gives one tile per frame (:func:`~minivl.vision.transforms.load_video_tiles`).
    Images are tiled with ``item.tiles_per_image`` each when set (the first one upscaled 2x,
    bilinear, when ``item.upscale_first``), else together by
    :func:`~minivl.vision.transforms.load_image_tiles` with ``max_num`` (default ``item.max_num``).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    import torch
    from PIL import Image

    from minivl.vision.transforms import load_image, load_image_tiles, load_video_tiles

    if not item.images:
        return None, []
    if item.video:
        return load_video_tiles(item.images, image_size=image_size)
    budget = max_num or item.max_num
    images = list(item.images)
    if item.upscale_first:
        first = load_image(images[0])
        images[0] = first.resize((first.width * 2, first.height * 2), Image.BILINEAR)
    if item.tiles_per_image is None:
        return load_image_tiles(images if len(images) > 1 else images[0], image_size=image_size, max_num=budget)
    pixels, patches = [], []
    for image, tiles in zip(images, item.tiles_per_image):
        pv, n = load_image_tiles(image, image_size=image_size, max_num=min(tiles, budget))
        pixels.append(pv)
        patches += n
    return torch.cat(pixels), patches  # (sum of tiles, 3, S, S)


class MiniVLRunner:
    """:class:`Runner` on a :class:`minivl.model.MiniVL` and its tokenizer.

    Each batch is one left-padded ``generate`` call with the prompts built as
    :meth:`MiniVL.batch_chat` builds them (template, image spans); ``num_samples`` responses
    per item come from ``num_return_sequences``. ``max_num`` overrides every item's tile
    budget; ``image_size`` defaults to the model's.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """

    def __init__(self, model, tokenizer, image_size: int | None = None, max_num: int | None = None,
                 device: Any = None, system_message: str | None = None) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.tokenizer = tokenizer
        self.image_size = image_size or model.config.vision.image_size
        self.max_num = max_num
        self.system_message = system_message

    def generate(self, items: Sequence[EvalItem], prompts: Sequence[str], *, do_sample: bool, temperature: float,
                 top_p: float, max_new_tokens: int, num_samples: int) -> list[list[Generation]]:
        """``num_samples`` :class:`Generation` per item (see :class:`Runner`)."""
        import torch

        from minivl.model import tokenize_left_padded
        from minivl.text.template import get_template
        from minivl.text.tokenizer import token_id

        model, tok = self.model, self.tokenizer
        model._check_tokenizer(tok)  # the tokenizer's <IMG_CONTEXT> must be the model's image token
        pixels, queries = [], []
        for item, prompt in zip(items, prompts):
            pv, patches = item_pixels(item, self.image_size, self.max_num)
            if pv is not None:
                pixels.append(pv)
            if prompt.count("<image>") != len(patches):
                raise ValueError(f"item {item.id}: {prompt.count('<image>')} <image> placeholders for "
                                 f"{len(patches)} images")
            queries.append(model.expand_image_placeholders(model.build_chat_prompt(prompt, None, self.system_message),
                                                           patches))
        inputs = tokenize_left_padded(tok, queries)
        stop = token_id(tok, get_template(model.config.template).stop_token)
        config: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "eos_token_id": stop,
                                  "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else stop,
                                  "num_return_sequences": num_samples}
        if do_sample:
            config.update(temperature=temperature, top_p=top_p)
        pixel_values = torch.cat(pixels).to(model.device, model.dtype) if pixels else None  # (tiles, 3, S, S)
        with torch.no_grad():
            output = model.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                                    attention_mask=inputs["attention_mask"], **config)
        rows = output.tolist()  # (len(items) * num_samples, new), the samples of one item adjacent
        out: list[list[Generation]] = []
        for i in range(len(items)):
            generations = []
            for row in rows[i * num_samples:(i + 1) * num_samples]:
                end = row.index(stop) if stop in row else len(row)
                text = tok.decode(row[:end], skip_special_tokens=True).strip()
                generations.append(Generation(text, min(end + 1, len(row))))
            out.append(generations)
        return out

