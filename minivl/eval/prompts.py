"""The prompts InternVL 2.5 is evaluated with: direct answers, chain of thought, grounding.

Three families of text end a benchmark question:

* **Direct answer.** InternVL's own MMMU script (``eval/mmmu/evaluate_mmmu.py``) and
  VLMEvalKit append one fixed sentence: :data:`MC_DIRECT_PROMPT` for multiple choice and
  :data:`OPEN_DIRECT_PROMPT` for open questions. The options sit between the question and
  that sentence, one per line, as ``A. text``::

      <question>
      A. <option 1>
      B. <option 2>
      Answer with the option's letter from the given choices directly.

* **Chain of thought** (report Fig. 9 (a) and (b), VLMEvalKit's ``USE_COT=1``). The direct
  sentence is removed and the CoT instruction is appended on a new line. It asks for a last
  line ``Answer: \\boxed{...}``, which :mod:`minivl.eval.extract` reads back.
  VLMEvalKit gives MMMU's open questions the *multiple-choice* CoT text (its "MCQ" dataset
  type covers the whole of MMMU); minivl gives open questions the open-ended text (b), which
  is what the report's figure shows for open answers.

* **Grounding** (RefCOCO): :data:`GROUNDING_PROMPT` asks for
  ``<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>`` with coordinates in 0-1000, read back by
  :func:`minivl.eval.metrics.parse_box`.

Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

#: Direct-answer suffix for multiple-choice questions (InternVL ``evaluate_mmmu.py``, VLMEvalKit).
MC_DIRECT_PROMPT = "Answer with the option's letter from the given choices directly."

#: Direct-answer suffix for open questions (InternVL ``evaluate_mmmu.py`` and its short-answer VQA sets).
OPEN_DIRECT_PROMPT = "Answer the question using a single word or phrase."

# The tail shared by both CoT prompts of the report's Fig. 9.
_COT_TAIL = (
    "If you are uncertain or the problem is too complex, make a reasoned guess based on the "
    "information provided. Avoid repeating steps indefinitely\u2014provide your best guess even "
    "if unsure. Think step by step logically, considering all relevant information before answering."
)

#: The report's multiple-choice CoT prompt (Fig. 9 (a)), verbatim (the dash is an em dash).
MC_COT_PROMPT = (
    "Answer the preceding multiple choice question. The last line of your response should "
    "follow this format: 'Answer: \\boxed{$LETTER}' (without quotes), where LETTER is one of "
    "the options. " + _COT_TAIL
)

#: The report's open-ended CoT prompt (Fig. 9 (b)), verbatim.
OPEN_COT_PROMPT = (
    "Answer the preceding question. The last line of your response should follow this format: "
    "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion "
    "based on the reasoning provided. " + _COT_TAIL
)

#: RefCOCO grounding prompt (InternVL ``eval/refcoco/evaluate_grounding.py``); ``{}`` is the phrase.
GROUNDING_PROMPT = (
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
)

OPTION_LETTERS = string.ascii_uppercase

Options = Sequence[str] | Mapping[str, str]


def option_dict(options: Options) -> dict[str, str]:
    """Return ``{"A": text, "B": text, ...}`` from a list of option texts or a letter mapping.

    A list gets the letters A, B, C, ... in order; each text is stripped, as InternVL's MMMU
    script does. A mapping must use single capital letters as keys. Raises ``ValueError`` on
    an empty option set, more than 26 options, or a bad key.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if isinstance(options, str):
        raise TypeError("options must be a list of option texts or a {letter: text} mapping, not a str")
    if isinstance(options, Mapping):
        out = {}
        for key, text in options.items():
            if not (isinstance(key, str) and len(key) == 1 and key in OPTION_LETTERS):
                raise ValueError(f"option keys must be single capital letters A-Z, got {key!r}")
            out[key] = str(text).strip()
    else:
        if len(options) > len(OPTION_LETTERS):
            raise ValueError(f"at most {len(OPTION_LETTERS)} options are supported, got {len(options)}")
        out = {OPTION_LETTERS[i]: str(text).strip() for i, text in enumerate(options)}
    if not out:
        raise ValueError("a multiple-choice question needs at least one option")
    return out


def format_options(options: Options) -> str:
    """Render options one per line as ``A. text`` (InternVL / VLMEvalKit layout).

    >>> format_options(["red", "blue"])
    'A. red\\nB. blue'

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    return "\n".join(f"{letter}. {text}" for letter, text in option_dict(options).items())


def build_prompt(
    question: str,
    options: Options | None = None,
    mode: str = "direct",
    kind: str | None = None,
    hint: str | None = None,
) -> str:
    """Build the full question text a model is asked, in InternVL's evaluation layout.

    ``kind`` is ``"mc"`` (multiple choice) or ``"open"``; by default it is ``"mc"`` when
    ``options`` are given and ``"open"`` otherwise. ``mode`` is ``"direct"`` or ``"cot"``.
    The result is ``[hint\\n]question[\\nA. ...\\nB. ...]\\n<suffix>`` where the suffix is
    :data:`MC_DIRECT_PROMPT`, :data:`OPEN_DIRECT_PROMPT`, :data:`MC_COT_PROMPT` or
    :data:`OPEN_COT_PROMPT`. Image placeholders are not added here (that is the template's job).

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if mode not in ("direct", "cot"):
        raise ValueError(f"mode must be 'direct' or 'cot', got {mode!r}")
    if kind is None:
        kind = "mc" if options else "open"
    if kind not in ("mc", "open"):
        raise ValueError(f"kind must be 'mc' or 'open', got {kind!r}")
    if kind == "mc" and not options:
        raise ValueError("kind='mc' needs options")
    if kind == "open" and options:
        raise ValueError("kind='open' takes no options; pass kind='mc' for a multiple-choice question")

    text = question.strip()
    if hint:
        text = hint.strip() + "\n" + text
    if kind == "mc":
        text += "\n" + format_options(options)  # type: ignore[arg-type]
    suffix = {
        ("direct", "mc"): MC_DIRECT_PROMPT,
        ("direct", "open"): OPEN_DIRECT_PROMPT,
        ("cot", "mc"): MC_COT_PROMPT,
        ("cot", "open"): OPEN_COT_PROMPT,
    }[(mode, kind)]
    return text + "\n" + suffix


def build_grounding_prompt(phrase: str) -> str:
    """The RefCOCO question for a referring phrase: :data:`GROUNDING_PROMPT` filled in.

    Explained in chapter 14 (``notebooks/14_inference_and_grounding.ipynb``).
    """
    if not phrase.strip():
        raise ValueError("the referring phrase is empty")
    return GROUNDING_PROMPT.format(phrase.strip())
