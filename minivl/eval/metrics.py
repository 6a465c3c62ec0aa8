"""Scores for InternVL's benchmarks, and result tables.

* :func:`mc_accuracy`: multiple choice, the extracted letter equals the gold letter
  (an unparseable ``None`` is wrong).
* :func:`exact_match`: normalised string equality (:func:`minivl.eval.extract.normalize_answer`).
* :func:`relaxed_correctness`: ChartQA's "relaxed accuracy". A number within 5% of the gold
  number (relative to the gold, inclusive) is right; anything else needs an exact,
  case-insensitive string match. A trailing ``%`` divides by 100; a gold of 0 falls back to
  the string match (no relative error exists).
* :func:`anls`: DocVQA's Average Normalised Levenshtein Similarity. For each gold answer,
  ``1 - levenshtein(pred, gold) / max(len(pred), len(gold))`` on lower-cased, space-collapsed
  strings; the best gold counts, and a similarity below 0.5 scores 0 (a similarity of
  exactly 0.5 is kept, as in the official DocVQA / InfographicVQA scorer).
* :func:`parse_box` and :func:`box_iou`: RefCOCO. InternVL's evaluator reads the **first**
  match of ``\\[*\\[(.*?),(.*?),(.*?),(.*?)\\]\\]*``; when the four numbers sum to 4 or more
  they are taken as 0-1000 and divided by 1000, else as 0-1 already; x is then scaled by
  the image width and y by the height. A hit is IoU >= 0.5 (:func:`grounding_accuracy`).
* :func:`summarize` and :func:`write_results`: per-task and overall scores with the count
  of unparseable answers, as JSON and a Markdown table.

All scores are fractions in [0, 1]; tables print them as percentages.

Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``); the
grounding part in chapter 14 (``notebooks/14_inference_and_grounding.ipynb``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from minivl.eval.extract import normalize_answer

# ---------------------------------------------------------------------------------------
# Multiple choice and exact match


def mc_accuracy(predictions: Sequence[str | None], golds: Sequence[str]) -> float:
    """Fraction of predictions equal to the gold letter; ``None`` (unparseable) is wrong.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    _check_lengths(predictions, golds)
    return sum(p is not None and p == g for p, g in zip(predictions, golds)) / len(golds)


def exact_match(prediction: str | None, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (any of a list).

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if prediction is None:
        return 0.0
    golds = [gold] if isinstance(gold, str) else list(gold)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


# ---------------------------------------------------------------------------------------
# ChartQA relaxed accuracy


def _to_float(text: str) -> float | None:
    text = text.strip()
    try:
        if text.endswith("%"):
            return float(text[:-1].strip()) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(
    prediction: str | None, gold: str | Sequence[str], tolerance: float = 0.05
) -> float:
    """ChartQA relaxed accuracy of one answer: 1.0 or 0.0 (best over a list of golds).

    Numbers: right when ``|pred - gold| <= tolerance * |gold|``. The comparison allows a
    relative slack of 1e-9 so that a difference of exactly 5% counts whatever its binary
    rounding (``1.05`` vs ``1`` is 5.0000000000000044% in floating point). Non-numbers, or a
    gold of 0: case-insensitive equality of the stripped strings.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if prediction is None:
        return 0.0
    golds = [gold] if isinstance(gold, str) else list(gold)
    best = 0.0
    for g in golds:
        p_num, g_num = _to_float(prediction), _to_float(g)
        if p_num is not None and g_num:  # g_num == 0 has no relative error: string match
            ok = abs(p_num - g_num) <= tolerance * abs(g_num) * (1 + 1e-9)
        else:
            ok = prediction.strip().lower() == g.strip().lower()
        best = max(best, float(ok))
    return best


# ---------------------------------------------------------------------------------------
# DocVQA ANLS


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1).

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str | None, golds: str | Sequence[str], threshold: float = 0.5) -> float:
    """ANLS of one answer: the best ``1 - NL`` over the golds, 0 when below ``threshold``.

    ``NL = levenshtein(p, g) / max(len(p), len(g))`` on lower-cased, stripped strings with
    runs of spaces collapsed. Average this over questions for the DocVQA score.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if prediction is None:
        return 0.0
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("anls needs at least one gold answer")
    pred = " ".join(prediction.strip().lower().split())
    best = 0.0
    for g in golds:
        gold = " ".join(g.strip().lower().split())
        length = max(len(pred), len(gold))
        similarity = 1.0 if length == 0 else 1.0 - levenshtein(pred, gold) / length
        best = max(best, similarity)
    return best if best >= threshold else 0.0


# ---------------------------------------------------------------------------------------
# Grounding: <box>[[x1, y1, x2, y2]]</box> and IoU

#: InternVL's RefCOCO box pattern (``eval/refcoco/evaluate_grounding.py``); the first match counts.
BOX_PATTERN = re.compile(r"\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*")


def box_numbers(text: str) -> list[float] | None:
    """The four numbers of the first ``[[x1, y1, x2, y2]]`` in ``text`` (InternVL's pattern),
    or ``None`` when there is no match or a field is not a number."""
    match = BOX_PATTERN.search(text)
    if match is None:
        return None
    try:
        return [float(v) for v in match.groups()]
    except ValueError:
        return None


def parse_box(text: str, width: float, height: float) -> tuple[float, float, float, float] | None:
    """Read the first box in ``text`` and return it in pixels ``(x1, y1, x2, y2)``.

    Follows InternVL's evaluator: numbers summing to >= 4 are 0-1000 coordinates (divided by
    1000), smaller ones are already 0-1; then x is scaled by ``width`` and y by ``height``.
    Returns ``None`` when there is no match or a field is not a number (InternVL scores that
    as a zero box, a miss; minivl scores it as a miss too and counts it as unparseable).

    Explained in chapter 14 (``notebooks/14_inference_and_grounding.ipynb``).
    """
    values = box_numbers(text)
    if values is None:
        return None
    if sum(values) >= 4:
        values = [v / 1000 for v in values]
    x1, y1, x2, y2 = values
    return (x1 * width, y1 * height, x2 * width, y2 * height)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (areas without a +1).

    Explained in chapter 14 (``notebooks/14_inference_and_grounding.ipynb``).
    """
    if len(a) != 4 or len(b) != 4:
        raise ValueError(f"boxes must have 4 numbers (x1, y1, x2, y2), got {len(a)} and {len(b)}")
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def grounding_hit(text: str, gold_box: Sequence[float], width: float, height: float,
                  threshold: float = 0.5) -> float:
    """1.0 when the first box in ``text`` has IoU >= ``threshold`` with ``gold_box`` (pixels).

    Explained in chapter 14 (``notebooks/14_inference_and_grounding.ipynb``).
    """
    box = parse_box(text, width, height)
    return float(box is not None and box_iou(box, gold_box) >= threshold)


def grounding_accuracy(texts: Sequence[str], gold_boxes: Sequence[Sequence[float]],
                       sizes: Sequence[tuple[float, float]], threshold: float = 0.5) -> float:
    """RefCOCO Precision@1 (IoU@0.5): the mean of :func:`grounding_hit`; ``sizes`` are ``(W, H)``.

    Explained in chapter 14 (``notebooks/14_inference_and_grounding.ipynb``).
    """
    _check_lengths(texts, gold_boxes)
    _check_lengths(texts, sizes)
    hits = [grounding_hit(t, g, w, h, threshold) for t, g, (w, h) in zip(texts, gold_boxes, sizes)]
    return sum(hits) / len(hits)


# ---------------------------------------------------------------------------------------
# Summaries and result files


def summarize(records: Iterable[Mapping]) -> dict:
    """Per-task and overall scores from one record per scored question.

    Each record needs ``task`` (str) and ``score`` (a number in [0, 1], e.g. 1.0 / 0.0 for a
    hit, or an ANLS value) and may carry ``parsed`` (bool, default True) and ``tokens``
    (generated tokens). Returns::

        {"tasks": {task: {"n", "score", "unparseable", "tokens"}},
         "overall": {"n", "score", "micro_score", "unparseable", "tokens"}}

    ``overall.score`` is the mean of the task scores (each benchmark weighs the same, as in
    the report's averages); ``micro_score`` is the mean over all questions. Tasks keep the
    order of their first record.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    tasks: dict[str, dict] = {}
    for index, record in enumerate(records):
        for key in ("task", "score"):
            if key not in record:
                raise KeyError(f"summarize: record {index} has no {key!r} key (keys: {sorted(record)})")
        score = float(record["score"])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"summarize: record {index} has score {score}, expected a value in [0, 1]")
        entry = tasks.setdefault(str(record["task"]), {"n": 0, "total": 0.0, "unparseable": 0, "tokens": 0})
        entry["n"] += 1
        entry["total"] += score
        entry["unparseable"] += int(not record.get("parsed", True))
        entry["tokens"] += int(record.get("tokens", 0))
    if not tasks:
        raise ValueError("summarize: no records")
    out_tasks = {
        name: {"n": e["n"], "score": e["total"] / e["n"], "unparseable": e["unparseable"],
               "tokens": e["tokens"]}
        for name, e in tasks.items()
    }
    n = sum(e["n"] for e in tasks.values())
    overall = {
        "n": n,
        "score": sum(t["score"] for t in out_tasks.values()) / len(out_tasks),
        "micro_score": sum(e["total"] for e in tasks.values()) / n,
        "unparseable": sum(e["unparseable"] for e in tasks.values()),
        "tokens": sum(e["tokens"] for e in tasks.values()),
    }
    return {"tasks": out_tasks, "overall": overall}


def results_markdown(results: Mapping) -> str:
    """A Markdown table of :func:`summarize`'s output (scores as percentages, 1 decimal).

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    for key in ("tasks", "overall"):
        if key not in results:
            raise KeyError(f"results_markdown: results have no {key!r} key; pass the output of summarize()")
    lines = ["| task | n | score (%) | unparseable |", "|---|---:|---:|---:|"]
    for name, t in results["tasks"].items():
        lines.append(f"| {name} | {t['n']} | {100 * t['score']:.1f} | {t['unparseable']} |")
    o = results["overall"]
    lines.append(f"| **overall** | {o['n']} | {100 * o['score']:.1f} | {o['unparseable']} |")
    return "\n".join(lines) + "\n"


def write_results(results: Mapping, out_dir: str | Path, name: str = "results") -> tuple[Path, Path]:
    """Write ``results`` as ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; return both paths.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    markdown = results_markdown(results)
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path


def _check_lengths(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} predictions vs {len(b)} references")
    if len(a) == 0:
        raise ValueError("no predictions to score")
