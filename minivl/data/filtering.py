"""The InternVL 2.5 data filtering pipeline: repetition detection, heuristic rules, LLM scoring.

InternVL 2.5 (report section 4.3) found that "even a small fraction of anomalous samples ...
numbering only a few thousand" sends a model into repetitive loops at inference, so its
supervised data goes through three filters:

1. **Repetition detection.** The only filtering code in the InternVL repository is an n-gram
   checker on the assistant (``gpt``) turns: 10-grams, threshold 0.4
   (:func:`calculate_ngram_repetition`, :class:`RepetitionFilter`).
2. **Heuristic rules.** Abnormal lengths, long runs of zeros, many duplicate lines, ...
   (:class:`HeuristicFilter`). The report reviews every flagged sample by hand, because rules
   have false positives.
3. **LLM-based quality scoring** (text data only in the report): an LLM rates each sample
   0-10 and samples below 7 are dropped (:class:`ChatJudgeScorer`). At ``cpu`` scale, a small
   reference LM trained on clean text scores the perplexity of each answer instead
   (:class:`PerplexityScorer`).

Filters work on plain record dicts in InternVL's JSONL format
(``{"id", "image"?, "video"?, "conversations": [{"from", "value"}, ...]}``).
:func:`run_filters` chains them into a pipeline and returns the kept records and a
:class:`FilterReport`; :func:`score_filters` measures precision and recall of each filter on
records that carry a ``"fault"`` label, such as those made by :func:`inject_faults`.

Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

FAULT_KINDS = ("repetition", "truncated", "garbage", "placeholder_mismatch", "empty")
"""The fault labels that :func:`inject_faults` writes into the ``"fault"`` key of a record."""

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
ROLE_NAMES = {"system": "System", "human": "User", "gpt": "Assistant"}


# ---------------------------------------------------------------------------------------------
# Record helpers
# ---------------------------------------------------------------------------------------------


def _conversations(record: dict) -> list[dict]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ValueError(f"record {record.get('id')!r} has no 'conversations' list")
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"record {record.get('id')!r}: every turn needs 'from' and 'value', got {turn!r}")
    return turns


def assistant_turns(record: dict) -> list[str]:
    """The text of every assistant (``"gpt"``) turn of a record, in order.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    return [str(t["value"]) for t in _conversations(record) if t["from"] == "gpt"]


def num_images(record: dict) -> int:
    """Number of images of a record: 0 without ``"image"``, 1 for a path, ``len`` for a list.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    image = record.get("image")
    if image is None:
        return 0
    if isinstance(image, str):
        return 1
    if isinstance(image, (list, tuple)):
        return len(image)
    raise ValueError(f"record {record.get('id')!r}: 'image' must be a path or a list of paths, got {type(image)}")


def _snippet(record: dict, width: int = 90) -> str:
    answers = [a for a in assistant_turns(record)] if isinstance(record.get("conversations"), list) else []
    text = " | ".join(answers) if answers else ""
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------
# 1. n-gram repetition
# ---------------------------------------------------------------------------------------------


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """All n-grams of the whitespace-separated words of ``text`` (``len(words) - n + 1`` of them).

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = text.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def calculate_ngram_repetition(text: str, n: int = 10) -> float:
    """InternVL's repetition ratio: distinct repeated n-grams / all n-grams.

    Words are whitespace-separated tokens; the text has ``T = len(words) - n + 1`` n-grams
    (counted with multiplicity). The ratio is the number of *distinct* n-grams that occur more
    than once, divided by ``T`` (0 when ``T <= 0``). This is the rule of ``dataset.py`` in
    InternVL's ``internvl_chat`` (its call site is commented out there), used with ``n=10`` and
    "repetitive when the ratio is above 0.4".

    Because the numerator counts each repeated n-gram once, the ratio *falls* as a loop goes on:
    a passage of ``L`` words repeated ``k`` times scores about ``1 / k``. The rule therefore
    catches an answer pasted twice (ratio close to 0.5) but not a short sentence looping ten
    times (ratio near 0.1); :func:`duplicate_ngram_fraction` does not have this blind spot.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    grams = word_ngrams(text, n)
    if not grams:
        return 0.0
    counts = Counter(grams)
    repeated = sum(1 for c in counts.values() if c > 1)
    return repeated / len(grams)


def duplicate_ngram_fraction(text: str, n: int = 10) -> float:
    """Fraction of n-gram occurrences that repeat an earlier one: ``1 - distinct / total``.

    0 for text without repeated n-grams; close to 1 for a long loop. Unlike InternVL's ratio
    (:func:`calculate_ngram_repetition`) it grows monotonically with the length of a loop.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    grams = word_ngrams(text, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def ngram_repetition_ratio(text: str, n: int = 10, mode: str = "internvl") -> float:
    """The repetition ratio of ``text``: ``mode="internvl"`` or ``mode="duplicate"``.

    See :func:`calculate_ngram_repetition` and :func:`duplicate_ngram_fraction`.
    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    if mode == "internvl":
        return calculate_ngram_repetition(text, n)
    if mode == "duplicate":
        return duplicate_ngram_fraction(text, n)
    raise ValueError(f"unknown repetition mode {mode!r}; expected 'internvl' or 'duplicate'")


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """Why a filter removes a record: the filter, the rule inside it, and a human-readable detail.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    filter: str
    rule: str
    detail: str


class Filter(Protocol):
    """What :func:`run_filters` needs from a filter: a ``name`` and ``apply``.

    ``apply(records)`` returns one entry per record: a :class:`Flag` to remove it, ``None`` to
    keep it. Filters see the whole batch so that scorers can batch and pick quantile thresholds.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    name: str

    def apply(self, records: Sequence[dict]) -> list[Flag | None]: ...


class RepetitionFilter:
    """Flag records whose assistant turns repeat n-grams (InternVL: 10-grams, ratio > 0.4).

    ``mode="internvl"`` uses InternVL's ratio (:func:`calculate_ngram_repetition`),
    ``mode="duplicate"`` the fraction of repeated n-gram occurrences
    (:func:`duplicate_ngram_fraction`). A record is flagged when *any* assistant turn has a
    ratio strictly above ``threshold``, as in InternVL's ``check_conversations_repetition``.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    def __init__(self, n: int = 10, threshold: float = 0.4, mode: str = "internvl", name: str | None = None):
        ngram_repetition_ratio("", n, mode)  # validates n and mode
        self.n, self.threshold, self.mode = n, threshold, mode
        self.name = name or ("repetition" if mode == "internvl" else f"repetition_{mode}")

    def check(self, record: dict) -> Flag | None:
        """The :class:`Flag` of one record, or ``None`` when it passes."""
        for k, answer in enumerate(assistant_turns(record)):
            ratio = ngram_repetition_ratio(answer, self.n, self.mode)
            if ratio > self.threshold:
                return Flag(self.name, f"{self.n}-gram",
                            f"assistant turn {k}: {self.mode} ratio {ratio:.2f} > {self.threshold}")
        return None

    def apply(self, records: Sequence[dict]) -> list[Flag | None]:
        return [self.check(r) for r in records]


@dataclass
class HeuristicSettings:
    """Thresholds of the heuristic rules (see :class:`HeuristicFilter`).

    The defaults flag what no clean sample of the synthetic suite contains; real data sets may
    need looser values (a long document transcription is not abnormal).

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    min_answer_chars: int = 1
    max_answer_words: int = 1500
    max_sentence_words: int = 120
    min_words_for_terminal: int = 8
    terminal_chars: str = ".!?)]}>\"'`*%。！？"
    max_duplicate_lines: int = 3
    max_char_run: int = 24
    max_zero_run: int = 12
    implicit_single_placeholder: bool = True


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?。！？])\s+|\n+")
_ZERO_RUN = re.compile(r"0(?:[ ,.]?0)*")


def rule_empty_answer(record: dict, s: HeuristicSettings) -> str | None:
    """No assistant turn, or an assistant turn that is empty after stripping whitespace.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    answers = assistant_turns(record)
    if not answers:
        return "no assistant turn"
    for k, a in enumerate(answers):
        if not a.strip():
            return f"assistant turn {k} is empty ({a!r})"
    return None


def rule_placeholder_mismatch(record: dict, s: HeuristicSettings) -> str | None:
    """``<image>`` count differs from the number of images (``<video>``: one per video record).

    Placeholders are counted over all turns. InternVL prepends ``<image>\\n`` to the first turn
    of a single-image record that has none (and ``<video>\\n`` for video), so zero placeholders
    is accepted there when ``implicit_single_placeholder`` is on.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    turns = _conversations(record)
    n_img_tags = sum(str(t["value"]).count(IMAGE_PLACEHOLDER) for t in turns)
    n_vid_tags = sum(str(t["value"]).count(VIDEO_PLACEHOLDER) for t in turns)
    allowed_zero = s.implicit_single_placeholder
    if record.get("video") is not None:
        if n_img_tags:
            return f"video record has {n_img_tags} {IMAGE_PLACEHOLDER} placeholder(s)"
        if n_vid_tags != 1 and not (n_vid_tags == 0 and allowed_zero):
            return f"{n_vid_tags} {VIDEO_PLACEHOLDER} placeholders for 1 video"
        return None
    if n_vid_tags:
        return f"{n_vid_tags} {VIDEO_PLACEHOLDER} placeholder(s) in a record without 'video'"
    n = num_images(record)
    if n == 1 and n_img_tags == 0 and allowed_zero:
        return None
    if n_img_tags != n:
        return f"{n_img_tags} {IMAGE_PLACEHOLDER} placeholders for {n} image(s)"
    return None


def rule_abnormal_length(record: dict, s: HeuristicSettings) -> str | None:
    """An answer shorter than ``min_answer_chars``, longer than ``max_answer_words``, or a sentence
    longer than ``max_sentence_words`` (the report's "sentences of abnormal length").

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    for k, a in enumerate(assistant_turns(record)):
        if len(a.strip()) < s.min_answer_chars:
            return f"assistant turn {k}: {len(a.strip())} chars < {s.min_answer_chars}"
        words = len(a.split())
        if words > s.max_answer_words:
            return f"assistant turn {k}: {words} words > {s.max_answer_words}"
        longest = max((len(x.split()) for x in _SENTENCE_SPLIT.split(a)), default=0)
        if longest > s.max_sentence_words:
            return f"assistant turn {k}: a sentence of {longest} words > {s.max_sentence_words}"
    return None


def rule_unterminated(record: dict, s: HeuristicSettings) -> str | None:
    """The last answer has at least ``min_words_for_terminal`` words but no final punctuation:
    the typical trace of a sample cut at a length limit. Short answers ("blue", "3") pass.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    answers = assistant_turns(record)
    if not answers:
        return None
    last = answers[-1].rstrip()
    if len(last.split()) >= s.min_words_for_terminal and last[-1] not in s.terminal_chars:
        return f"last answer ends with {last[-12:]!r}"
    return None


def rule_repeated_lines(record: dict, s: HeuristicSettings) -> str | None:
    """At least ``max_duplicate_lines`` non-empty lines that repeat an earlier line of the same answer.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    for k, a in enumerate(assistant_turns(record)):
        seen: set[str] = set()
        duplicates = 0
        for line in a.splitlines():
            line = line.strip()
            if not line:
                continue
            if line in seen:
                duplicates += 1
            seen.add(line)
        if duplicates >= s.max_duplicate_lines:
            return f"assistant turn {k}: {duplicates} duplicate lines >= {s.max_duplicate_lines}"
    return None


def longest_char_run(text: str) -> tuple[str, int]:
    """The non-whitespace character with the longest run of consecutive copies, and that length.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    best_char, best, prev, run = "", 0, None, 0
    for ch in text:
        run = run + 1 if ch == prev else 1
        prev = ch
        if run > best and not ch.isspace():
            best_char, best = ch, run
    return best_char, best


def longest_zero_run(text: str) -> int:
    """Most zeros in one sequence of zeros, allowing one space, comma or dot between them.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    return max((m.group().count("0") for m in _ZERO_RUN.finditer(text)), default=0)


def rule_zero_run(record: dict, s: HeuristicSettings) -> str | None:
    """A sequence of at least ``max_zero_run`` zeros (the report's "excessively long sequences of zeros").

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    for k, a in enumerate(assistant_turns(record)):
        zeros = longest_zero_run(a)
        if zeros >= s.max_zero_run:
            return f"assistant turn {k}: {zeros} zeros in a row >= {s.max_zero_run}"
    return None


def rule_char_run(record: dict, s: HeuristicSettings) -> str | None:
    """One character repeated at least ``max_char_run`` times in a row.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    for k, a in enumerate(assistant_turns(record)):
        ch, run = longest_char_run(a)
        if run >= s.max_char_run:
            return f"assistant turn {k}: {ch!r} x {run} >= {s.max_char_run}"
    return None


HEURISTIC_RULES: tuple[tuple[str, Callable[[dict, HeuristicSettings], str | None]], ...] = (
    ("empty_answer", rule_empty_answer),
    ("placeholder_mismatch", rule_placeholder_mismatch),
    ("abnormal_length", rule_abnormal_length),
    ("zero_run", rule_zero_run),
    ("char_run", rule_char_run),
    ("repeated_lines", rule_repeated_lines),
    ("unterminated", rule_unterminated),
)
"""The heuristic rules in the order they are tried; the first that fires names the flag."""


class HeuristicFilter:
    """Rule-based filter: the first rule of ``rules`` that fires flags the record.

    ``rules`` defaults to :data:`HEURISTIC_RULES`; pass a subset (or your own
    ``(name, fn(record, settings) -> detail | None)`` pairs) to change it.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    def __init__(self, settings: HeuristicSettings | None = None,
                 rules: Sequence[tuple[str, Callable[[dict, HeuristicSettings], str | None]]] | None = None,
                 name: str = "heuristic"):
        self.settings = settings or HeuristicSettings()
        self.rules = tuple(HEURISTIC_RULES if rules is None else rules)
        self.name = name

    def check(self, record: dict) -> Flag | None:
        """The :class:`Flag` of the first rule that fires, or ``None``."""
        for rule_name, rule in self.rules:
            detail = rule(record, self.settings)
            if detail is not None:
                return Flag(self.name, rule_name, detail)
        return None

    def apply(self, records: Sequence[dict]) -> list[Flag | None]:
        return [self.check(r) for r in records]


# ---------------------------------------------------------------------------------------------
# 3. LLM-based quality scoring
# ---------------------------------------------------------------------------------------------


class Scorer(Protocol):
    """A quality scorer: ``score(records)`` gives one float per record, or ``None`` when it cannot.

    ``higher_is_better`` says which way the score points; ``missing_rule`` names the flag of
    records without a score.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    higher_is_better: bool
    missing_rule: str

    def score(self, records: Sequence[dict]) -> list[float | None]: ...


def plain_segments(record: dict) -> list[tuple[str, bool]]:
    """A conversation as ``(text, is_answer)`` segments: ``"User: "``, question, ``"\\n"``,
    ``"Assistant: "``, answer (``is_answer=True``), ``"\\n"``, ...

    The layout the :class:`PerplexityScorer` scores by default; the reference LM of
    :func:`train_reference_lm` is trained on the same layout.
    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    segments: list[tuple[str, bool]] = []
    for turn in _conversations(record):
        role = turn["from"]
        if role not in ROLE_NAMES:
            raise ValueError(f"record {record.get('id')!r}: unknown role {role!r}; expected one of {list(ROLE_NAMES)}")
        segments.append((f"{ROLE_NAMES[role]}: ", False))
        segments.append((str(turn["value"]), role == "gpt"))
        segments.append(("\n", False))
    return segments


class PerplexityScorer:
    """Mean negative log-likelihood of the assistant tokens given everything before them.

    Wraps any transformers causal LM and its tokenizer. Each record becomes the token ids of
    ``segments(record)`` (each segment tokenized on its own, without special tokens, then
    concatenated after the tokenizer's BOS token if it has one); the score is the mean NLL
    (nats per token) over the tokens of the answer segments. ``exp(score)`` is the answer's
    perplexity. Lower is better. Records with no answer token left after truncation to
    ``max_length`` score ``None`` (flag ``"unscorable"``).

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    higher_is_better = False
    missing_rule = "unscorable"

    def __init__(self, model, tokenizer, *, max_length: int = 512, batch_size: int = 8, device: str | None = None,
                 segments: Callable[[dict], list[tuple[str, bool]]] = plain_segments):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.segments = max_length, batch_size, segments
        self.device = device or str(next(model.parameters()).device)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)

    def encode(self, record: dict) -> tuple[list[int], list[bool]]:
        """Token ids of a record and, per token, whether it belongs to an answer."""
        ids: list[int] = []
        is_answer: list[bool] = []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None:
            ids.append(int(bos))
            is_answer.append(False)
        for text, answer in self.segments(record):
            if not text:
                continue
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids.extend(piece)
            is_answer.extend([answer] * len(piece))
        return ids[: self.max_length], is_answer[: self.max_length]

    def score(self, records: Sequence[dict]) -> list[float | None]:
        """Mean NLL of the answer tokens of each record (``None`` when there are none)."""
        import torch

        encoded = [self.encode(r) for r in records]
        # batch records of similar length together (less padding), then restore the input order
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        scores: list[float | None] = [None] * len(encoded)
        self.model.eval()
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = [encoded[i] for i in rows]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            target = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, (ids, answer) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[row, : len(ids)] = 1
                target[row, : len(ids)] = torch.tensor(answer, dtype=torch.bool)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention.to(self.device)).logits.float().cpu()
            # token t is predicted from position t - 1: (B, T, V) -> (B, T-1, V) against ids (B, T-1)
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1, 1) -> (B, T-1)
            mask = target[:, 1:]
            for row, i in enumerate(rows):
                n = int(mask[row].sum())
                scores[i] = float(nll[row][mask[row]].sum() / n) if n else None
        return scores


JUDGE_PROMPT = (
    "You are checking training data for a helpful assistant. Rate the quality of the "
    "assistant's replies in the conversation below on a scale from 0 to 10: 0 means "
    "useless (wrong, garbled, repetitive, cut off or empty), 10 means correct, clear and "
    "complete. Reply with the score only, in the form \"Score: N\".\n\n"
    "Conversation:\n{conversation}\n"
)
"""The default prompt of :class:`ChatJudgeScorer` (``{conversation}`` is filled in)."""

_NUMBER = r"(\d+(?:\.\d+)?)"
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def parse_judge_score(reply: str, low: float = 0.0, high: float = 10.0) -> float | None:
    """Read a 0-10 score from a judge's reply; ``None`` when it is missing, ambiguous or out of range.

    Tried in order: ``"score: 7"`` / ``"score of 7"`` / ``"Score: **7**"``; ``"7/10"`` or
    ``"7 out of 10"``; a reply that is only a number (or a number word, "seven"); otherwise
    the reply's numbers must all be the same single value.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    if not isinstance(reply, str):
        return None
    text = reply.strip().lower()
    patterns = (
        r"score\s*(?:is|of|=|:)?\s*[*_`\"']*\s*" + _NUMBER,
        r"rating\s*(?:is|of|=|:)?\s*[*_`\"']*\s*" + _NUMBER,
        _NUMBER + r"\s*(?:/|out of)\s*10(?!\.?\d)",
        r"^\W*" + _NUMBER + r"\W*$",
    )
    value: float | None = None
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            value = float(match.group(1))
            break
    if value is None:
        words = re.findall(r"[a-z]+", text)
        if len(words) == 1 and words[0] in _NUMBER_WORDS and not re.search(r"\d", text):
            value = float(_NUMBER_WORDS[words[0]])
    if value is None:
        # whole numbers only: not part of a longer number, a sentence's final dot allowed
        numbers = {float(x) for x in re.findall(r"(?<![\d.])" + _NUMBER + r"(?!\.?\d)", text)}
        if len(numbers) == 1:
            value = numbers.pop()
    if value is None or not (low <= value <= high):
        return None
    return value


def render_conversation(record: dict, max_chars: int = 4000) -> str:
    """A record's turns as ``"User: ..."`` / ``"Assistant: ..."`` lines, cut to ``max_chars``.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    text = "".join(t for t, _ in plain_segments(record)).rstrip("\n")
    return text if len(text) <= max_chars else text[:max_chars] + " [...]"


class ChatJudgeScorer:
    """LLM-as-judge quality score 0-10 (InternVL 2.5: keep samples scoring at least 7).

    ``chat_fn(prompt) -> reply`` is any chat LLM (see :meth:`from_model` for a transformers
    model); ``prompt`` is a template with ``{conversation}``. Replies go through
    :func:`parse_judge_score`; a reply without a readable score gives ``None`` and the record
    is flagged ``"unparseable"``. The raw replies of the last call are kept in ``last_replies``.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    higher_is_better = True
    missing_rule = "unparseable"

    def __init__(self, chat_fn: Callable[[str], str], prompt: str = JUDGE_PROMPT, max_chars: int = 4000):
        if "{conversation}" not in prompt:
            raise ValueError("the judge prompt must contain '{conversation}'")
        self.chat_fn, self.prompt, self.max_chars = chat_fn, prompt, max_chars
        self.last_replies: list[str] = []

    def prompt_for(self, record: dict) -> str:
        """The judge prompt for one record."""
        return self.prompt.replace("{conversation}", render_conversation(record, self.max_chars))

    def score(self, records: Sequence[dict]) -> list[float | None]:
        self.last_replies = [self.chat_fn(self.prompt_for(r)) for r in records]
        return [parse_judge_score(reply) for reply in self.last_replies]

    @classmethod
    def from_model(cls, model, tokenizer, *, max_new_tokens: int = 16, prompt: str = JUDGE_PROMPT,
                   **kwargs) -> ChatJudgeScorer:
        """A judge on a transformers chat model: chat template, greedy decoding, new tokens only."""
        import torch

        def chat_fn(text: str) -> str:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
            ids = {k: v.to(model.device) for k, v in ids.items()}
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            # (1, prompt + new) -> (new,)
            return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

        return cls(chat_fn, prompt=prompt, **kwargs)


def quantile_threshold(scores: Iterable[float | None], q: float) -> float:
    """The ``q``-quantile (linear interpolation) of the scores that are not ``None``/NaN.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    import numpy as np

    values = [s for s in scores if s is not None and not math.isnan(s)]
    if not values:
        raise ValueError("no scores to take a quantile of")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    return float(np.quantile(np.asarray(values, dtype=float), q))


class QualityFilter:
    """Flag records whose score is on the wrong side of a threshold.

    Give exactly one of ``threshold`` (a value: e.g. 7 for a 0-10 judge, which removes scores
    below 7) or ``remove_fraction`` (remove that fraction of the worst-scored records of the
    batch: the threshold is the ``1 - remove_fraction`` quantile of the scores when lower is
    better, the ``remove_fraction`` quantile when higher is better). Records the scorer cannot
    score are flagged with the scorer's ``missing_rule``. ``scores`` and ``threshold_used``
    hold the numbers of the last call.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    def __init__(self, scorer: Scorer, *, threshold: float | None = None, remove_fraction: float | None = None,
                 name: str = "quality"):
        if (threshold is None) == (remove_fraction is None):
            raise ValueError("give exactly one of threshold= or remove_fraction=")
        self.scorer, self.threshold, self.remove_fraction, self.name = scorer, threshold, remove_fraction, name
        self.scores: list[float | None] = []
        self.threshold_used: float | None = None

    def apply(self, records: Sequence[dict]) -> list[Flag | None]:
        scores = self.scorer.score(records)
        if len(scores) != len(records):
            raise ValueError(f"scorer returned {len(scores)} scores for {len(records)} records")
        self.scores = scores
        better_high = self.scorer.higher_is_better
        if self.threshold is not None:
            cut = float(self.threshold)
        else:
            q = self.remove_fraction if better_high else 1.0 - self.remove_fraction
            cut = quantile_threshold(scores, q)
        self.threshold_used = cut
        flags: list[Flag | None] = []
        for s in scores:
            if s is None or math.isnan(s):
                flags.append(Flag(self.name, self.scorer.missing_rule, "no score"))
            elif better_high and s < cut:
                flags.append(Flag(self.name, "low_score", f"score {s:.2f} < {cut:.2f}"))
            elif not better_high and s > cut:
                flags.append(Flag(self.name, "high_nll", f"score {s:.2f} > {cut:.2f}"))
            else:
                flags.append(None)
        return flags


# ---------------------------------------------------------------------------------------------
# Pipeline and report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """One removed record: its position in the input, id, flag, and the start of its answers.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    index: int
    id: Any
    flag: Flag
    snippet: str


@dataclass
class FilterReport:
    """What :func:`run_filters` removed, by filter and rule, with timings and examples.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    total: int
    kept: int
    filters: list[str]
    removals: list[Removal] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return len(self.removals)

    def counts(self) -> dict[str, int]:
        """Removed records per filter (every filter listed, 0 included)."""
        out = {name: 0 for name in self.filters}
        for r in self.removals:
            out[r.flag.filter] += 1
        return out

    def rule_counts(self) -> dict[tuple[str, str], int]:
        """Removed records per ``(filter, rule)``, in order of first appearance."""
        return dict(Counter((r.flag.filter, r.flag.rule) for r in self.removals))

    def examples(self, filter: str, rule: str | None = None, k: int = 3) -> list[Removal]:
        """The first ``k`` removals of a filter (and rule)."""
        return [r for r in self.removals if r.flag.filter == filter and (rule is None or r.flag.rule == rule)][:k]

    def _rows(self) -> list[tuple[str, str, int, str]]:
        rows = []
        for (f, rule), n in self.rule_counts().items():
            example = self.examples(f, rule, 1)[0]
            rows.append((f, rule, n, f"{example.id}: {example.flag.detail} | {example.snippet}"))
        return rows

    def to_text(self, examples: int = 2) -> str:
        """A plain-text summary: totals, per-filter counts and timings, per-rule counts and examples."""
        lines = [f"{self.total} records -> {self.kept} kept, {self.removed} removed "
                 f"({100.0 * self.removed / max(self.total, 1):.1f} %)"]
        for name in self.filters:
            n, seen, sec = self.counts()[name], self.seen.get(name, 0), self.seconds.get(name, 0.0)
            lines.append(f"  {name:<22} removed {n:>5} of {seen:>5} seen   {sec:8.3f} s")
            for (f, rule), count in self.rule_counts().items():
                if f != name:
                    continue
                lines.append(f"    {rule:<20} {count:>5}")
                for ex in self.examples(f, rule, examples):
                    lines.append(f"      - {ex.id}: {ex.flag.detail} | {ex.snippet}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A Markdown table: filter, rule, count and one example per rule."""
        out = [f"**{self.total} records, {self.kept} kept, {self.removed} removed.**", "",
               "| filter | rule | removed | example |", "|---|---|---:|---|"]
        for f, rule, n, example in self._rows():
            out.append(f"| {f} | {rule} | {n} | {_md_cell(example)} |")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()


def _md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no pipes, no raw HTML (``<image>`` stays visible)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "/")


def run_filters(records: Sequence[dict], filters: Sequence[Filter]) -> tuple[list[dict], FilterReport]:
    """Apply ``filters`` in order; each sees only the records the previous ones kept.

    Cheap filters go first so that the expensive LLM scorer sees fewer records, as in a real
    pipeline. Returns the kept records (same objects, same order) and a :class:`FilterReport`
    that attributes each removal to the first filter that flagged it.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    names = [f.name for f in filters]
    if len(set(names)) != len(names):
        raise ValueError(f"filter names must be unique, got {names}")
    alive = list(range(len(records)))
    report = FilterReport(total=len(records), kept=0, filters=names)
    for flt in filters:
        batch = [records[i] for i in alive]
        t0 = time.perf_counter()
        flags = flt.apply(batch) if batch else []
        report.seconds[flt.name] = time.perf_counter() - t0
        report.seen[flt.name] = len(batch)
        if len(flags) != len(batch):
            raise ValueError(f"filter {flt.name!r} returned {len(flags)} flags for {len(batch)} records")
        survivors = []
        for i, flag in zip(alive, flags):
            if flag is None:
                survivors.append(i)
            else:
                report.removals.append(Removal(i, records[i].get("id"), flag, _snippet(records[i])))
        alive = survivors
    report.kept = len(alive)
    return [records[i] for i in alive], report


def filter_meta(meta: str | os.PathLike, out: str | os.PathLike,
                filters: Sequence[Filter] | None = None) -> tuple[Path, dict[str, FilterReport]]:
    """Run ``filters`` over every data set of a meta JSON file and write the kept records.

    Each entry's JSONL goes through :func:`run_filters`; the kept lines are written to
    ``<out folder>/annotations/<out stem>/<name>.jsonl`` and a new meta file ``out`` points at
    them (same knobs, ``length`` updated, image roots rewritten relative to ``out``'s folder).
    ``filters`` defaults to the cheap, model-free part of the pipeline: the heuristic rules and
    the duplicate n-gram check. A line that is not a JSON object is dropped and counted under
    the ``unreadable`` filter of that entry's report, never silently.

    Returns ``(out, {name: FilterReport})``. Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    from minivl.data.records import DatasetMeta, read_meta, write_meta

    filters = list(filters) if filters is not None else [HeuristicFilter(), RepetitionFilter(mode="duplicate")]
    out = Path(out)
    entries = read_meta(meta, allow_unknown_keys=True)
    folder = out.parent / "annotations" / out.stem
    folder.mkdir(parents=True, exist_ok=True)
    reports: dict[str, FilterReport] = {}
    kept_entries: dict[str, DatasetMeta] = {}
    for name, entry in entries.items():
        records, unreadable = [], []
        with open(entry.annotation_path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    record = exc
                if isinstance(record, dict):
                    records.append(record)
                else:
                    unreadable.append(Removal(line_no - 1, f"line {line_no}",
                                              Flag("unreadable", "not_a_json_object", str(record)[:80]), ""))
        kept, report = run_filters(records, filters)
        report.filters.insert(0, "unreadable")
        report.removals[:0] = unreadable
        report.total += len(unreadable)
        report.seen["unreadable"] = report.total
        reports[name] = report
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        root = os.path.relpath(entry.root_path.resolve(), out.parent.resolve())
        kept_entries[name] = DatasetMeta(name=name, root=root, annotation=str(path.relative_to(out.parent)),
                                         data_augment=entry.data_augment, max_dynamic_patch=entry.max_dynamic_patch,
                                         repeat_time=entry.repeat_time, length=len(kept), extra=entry.extra)
    write_meta(out, kept_entries)
    return out, reports


@dataclass
class FilterScore:
    """Precision and recall of one filter against the ``fault`` labels.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    filter: str
    flagged: int
    tp: int
    fp: int
    fn: int
    seconds_per_1000: float
    recall_by_fault: dict[str, float]

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")


@dataclass
class FilterEvaluation:
    """The result of :func:`score_filters`: one :class:`FilterScore` per filter plus their union.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """

    rows: list[FilterScore]
    faults: dict[str, int]
    total: int

    def __getitem__(self, name: str) -> FilterScore:
        for row in self.rows:
            if row.filter == name:
                return row
        raise KeyError(f"no filter named {name!r}; have {[r.filter for r in self.rows]}")

    def to_markdown(self) -> str:
        """A Markdown table: precision, recall, recall per fault kind, time per 1000 records."""
        kinds = list(self.faults)
        head = "| filter | flagged | precision | recall | " + " | ".join(f"recall {k}" for k in kinds) + " | s / 1000 |"
        out = [f"**{self.total} records, {sum(self.faults.values())} faulty "
               f"({', '.join(f'{k}: {n}' for k, n in self.faults.items())}).**", "", head,
               "|---|---:|---:|---:|" + "---:|" * len(kinds) + "---:|"]
        for r in self.rows:
            per = " | ".join(f"{r.recall_by_fault.get(k, float('nan')):.2f}" for k in kinds)
            out.append(f"| {r.filter} | {r.flagged} | {r.precision:.2f} | {r.recall:.2f} | {per} | "
                       f"{r.seconds_per_1000:.3f} |")
        return "\n".join(out)

    def to_text(self) -> str:
        """The same table in fixed-width text."""
        kinds = list(self.faults)
        out = [f"{'filter':<22}{'flagged':>8}{'prec':>7}{'recall':>7}" + "".join(f"{k[:11]:>12}" for k in kinds)
               + f"{'s/1000':>9}"]
        for r in self.rows:
            out.append(f"{r.filter:<22}{r.flagged:>8}{r.precision:>7.2f}{r.recall:>7.2f}"
                       + "".join(f"{r.recall_by_fault.get(k, float('nan')):>12.2f}" for k in kinds)
                       + f"{r.seconds_per_1000:>9.3f}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()


def _fault(record: dict) -> str | None:
    fault = record.get("fault")
    return None if fault in (None, "") else str(fault)


def score_filters(records: Sequence[dict], filters: Sequence[Filter], *, union_name: str = "all (union)"
                  ) -> FilterEvaluation:
    """Run each filter on *all* records independently and score it against the ``fault`` labels.

    A record is a positive when its ``"fault"`` is set (not ``None``); a filter's flag is a
    prediction. Precision = TP / flagged, recall = TP / positives, plus the recall on each
    fault kind and the time per 1000 records. A last row scores the union of all filters.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    if not any("fault" in r for r in records):
        raise ValueError("score_filters needs records with a 'fault' key (None for clean ones); none has one")
    truth = [_fault(r) for r in records]
    kinds = Counter(t for t in truth if t is not None)
    faults = {k: kinds[k] for k in FAULT_KINDS if k in kinds}
    faults.update({k: n for k, n in kinds.items() if k not in faults})

    def make_row(name: str, flagged: list[bool], seconds: float) -> FilterScore:
        tp = sum(f and t is not None for f, t in zip(flagged, truth))
        fp = sum(f and t is None for f, t in zip(flagged, truth))
        fn = sum((not f) and t is not None for f, t in zip(flagged, truth))
        by_fault = {k: sum(f for f, t in zip(flagged, truth) if t == k) / n for k, n in faults.items()}
        return FilterScore(name, sum(flagged), tp, fp, fn, 1000.0 * seconds / max(len(records), 1), by_fault)

    rows, union, total_seconds = [], [False] * len(records), 0.0
    for flt in filters:
        t0 = time.perf_counter()
        flags = flt.apply(list(records))
        seconds = time.perf_counter() - t0
        total_seconds += seconds
        flagged = [f is not None for f in flags]
        union = [a or b for a, b in zip(union, flagged)]
        rows.append(make_row(flt.name, flagged, seconds))
    if len(filters) > 1:
        rows.append(make_row(union_name, union, total_seconds))
    return FilterEvaluation(rows, faults, len(records))


# ---------------------------------------------------------------------------------------------
# Fault injection (the test bed of chapter 7)
# ---------------------------------------------------------------------------------------------


def _last_gpt(turns: list[dict]) -> dict | None:
    for turn in reversed(turns):
        if turn["from"] == "gpt":
            return turn
    return None


def _first_human(turns: list[dict]) -> dict | None:
    for turn in turns:
        if turn["from"] == "human":
            return turn
    return None


def _make_repetition(rec: dict, rng: random.Random) -> bool:
    turn = _last_gpt(rec["conversations"])
    words = str(turn["value"]).split()
    if not words:
        return False
    if len(words) >= 30 and rng.random() < 0.5:
        turn["value"] = f"{turn['value']} {turn['value']}"  # the whole answer pasted twice
        return True
    span = rng.randint(3, 12)
    tail = " ".join(words[-span:])
    copies = max(rng.randint(4, 10), math.ceil(40 / len(words[-span:])))  # a loop of >= 40 words
    sep = rng.choice([" ", "\n"])
    turn["value"] = str(turn["value"]) + sep + sep.join([tail] * copies)
    return True


def _make_truncated(rec: dict, rng: random.Random) -> bool:
    turn = _last_gpt(rec["conversations"])
    text = str(turn["value"]).rstrip()
    if len(text) < 12:
        return False
    cut = rng.randint(int(0.3 * len(text)), int(0.8 * len(text)))
    turn["value"] = text[:cut].rstrip()
    return bool(turn["value"])


def _make_garbage(rec: dict, rng: random.Random) -> bool:
    turn = _last_gpt(rec["conversations"])
    n_words = max(3, len(str(turn["value"]).split()))
    letters = string.ascii_lowercase
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(n_words)]
    turn["value"] = " ".join(words) + "."
    return True


def _make_placeholder_mismatch(rec: dict, rng: random.Random) -> bool:
    turns = rec["conversations"]
    human = _first_human(turns)
    if human is None:
        return False
    value = str(human["value"])
    if rec.get("video") is not None:
        human["value"] = f"{IMAGE_PLACEHOLDER}\n{value}"  # an image tag in a video record
        return True
    n = num_images(rec)
    tags = sum(str(t["value"]).count(IMAGE_PLACEHOLDER) for t in turns)
    if n >= 2 and tags > 0:
        for t in turns:  # drop the last placeholder: one image without a place in the text
            v = str(t["value"])
            if IMAGE_PLACEHOLDER in v:
                k = v.rfind(IMAGE_PLACEHOLDER)
                last = (t, k)
        t, k = last
        t["value"] = str(t["value"])[:k] + str(t["value"])[k + len(IMAGE_PLACEHOLDER):]
        return True
    # text-only or single-image record: one placeholder too many
    human["value"] = f"{IMAGE_PLACEHOLDER}\n" * (2 if n == 1 and tags == 0 else 1) + value
    return True


def _make_empty(rec: dict, rng: random.Random) -> bool:
    turn = _last_gpt(rec["conversations"])
    turn["value"] = rng.choice(["", " ", "\n"])
    return True


_INJECTORS: dict[str, Callable[[dict, random.Random], bool]] = {
    "repetition": _make_repetition,
    "truncated": _make_truncated,
    "garbage": _make_garbage,
    "placeholder_mismatch": _make_placeholder_mismatch,
    "empty": _make_empty,
}


def inject_faults(records: Sequence[dict], rate: float = 0.2, seed: int = 0,
                  kinds: Sequence[str] = FAULT_KINDS) -> list[dict]:
    """Deep copies of ``records`` where a fraction ``rate`` is broken on purpose, with a ``"fault"`` label.

    ``round(rate * len(records))`` records, chosen with ``seed``, each get one fault kind
    (the kinds take turns, in a seeded order, so they are balanced); the others get
    ``"fault": None``. The faults, on the last assistant answer unless said otherwise:

    * ``repetition``: a loop of the answer's last 3-12 words (at least 40 words, joined by spaces
      or newlines), or for answers of 30+ words, half of the time, the whole answer twice;
    * ``truncated``: the answer cut at 30-80 % of its characters (answers of 12+ characters);
    * ``garbage``: random lowercase "words", as many as the answer had;
    * ``placeholder_mismatch``: one ``<image>`` too many (text-only / single image), one too few
      (multi-image), or an ``<image>`` in a video record;
    * ``empty``: the answer replaced by ``""``, ``" "`` or ``"\\n"``.

    A kind that does not apply to a record (a record without an assistant turn, an answer too
    short to truncate) passes to the next kind. Records must have an assistant turn.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    for k in kinds:
        if k not in _INJECTORS:
            raise ValueError(f"unknown fault kind {k!r}; expected some of {FAULT_KINDS}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    rng = random.Random(seed)
    out = [copy.deepcopy(dict(r)) for r in records]
    for r in out:
        if _last_gpt(_conversations(r)) is None:
            raise ValueError(f"record {r.get('id')!r} has no assistant turn to break")
        r["fault"] = None
    chosen = rng.sample(range(len(out)), round(rate * len(out)))
    order = list(kinds)
    rng.shuffle(order)
    for j, i in enumerate(chosen):
        for step in range(len(order)):
            kind = order[(j + step) % len(order)]
            trial = copy.deepcopy(out[i])
            if _INJECTORS[kind](trial, rng):
                trial["fault"] = kind
                out[i] = trial
                break
    return out


# ---------------------------------------------------------------------------------------------
# A reference LM for perplexity scoring at cpu scale
# ---------------------------------------------------------------------------------------------


def train_reference_lm(records: Sequence[dict], *, steps: int = 200, vocab_size: int = 512, hidden_size: int = 64,
                       num_layers: int = 2, max_length: int = 192, batch_size: int = 16, lr: float = 3e-3,
                       seed: int = 0, segments: Callable[[dict], list[tuple[str, bool]]] = plain_segments):
    """Train a byte-level BPE tokenizer and a tiny ``Qwen2ForCausalLM`` on clean records.

    The stand-in for the report's Qwen2.5 scorer at ``cpu`` scale: an LM that has only seen
    clean answers finds garbage and broken answers unlikely, so its perplexity separates them.
    The loss covers every token of the ``segments`` layout (questions too: more text to learn
    from). Returns ``(model, tokenizer, losses)``; the model is in eval mode.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    texts = ["".join(t for t, _ in segments(r)) for r in records]
    if not texts:
        raise ValueError("train_reference_lm needs at least one record")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_length, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config)
    scorer = PerplexityScorer(model, tokenizer, max_length=max_length, segments=segments)
    encoded = [scorer.encode(r)[0] + [tokenizer.eos_token_id] for r in records]
    encoded = [ids[:max_length] for ids in encoded]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = random.Random(seed)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        batch = [encoded[generator.randrange(len(encoded))] for _ in range(batch_size)]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        for group in optimizer.param_groups:  # linear decay to 10 %
            group["lr"] = lr * (1.0 - 0.9 * step / max(steps - 1, 1))
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, tokenizer, losses
