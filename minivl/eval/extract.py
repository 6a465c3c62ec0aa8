"""Reading the answer out of a model's response, with a record of which rule found it.

Multiple choice (:func:`extract_choice`). The rules run in this order and the first that
yields a valid option letter wins:

1. ``boxed``: the content of the **last** balanced ``\\boxed{...}`` (nested braces are
   matched, so ``\\boxed{\\text{B}}`` works). The content is resolved as a *slot* (below).
2. ``answer_line``: the text after the **last** ``Answer:`` (any case, so ``Final answer:``
   counts too), up to the end of that line, resolved as a slot.
3. ``letter``: exactly one distinct option letter standing alone as a capital (``B``,
   ``(B)``, ``B.``, ``The answer is B``). A letter glued to other letters or digits
   (``Bob``, ``A1``) is not a token. A response that is nothing but one letter may be lower
   case (``b``).
4. ``option_text``: the response equals one option's text, or contains exactly one option's
   text as whole words (case-insensitive). When several options match and one's text
   contains the others (``cat`` inside ``black cat``), the longest wins.
5. ``article_letter``: the English article. A capital ``A`` (or ``I``) that opens a
   sentence and is followed by a lower-case word (``A cat sits ...``, ``I think ...``) is
   most likely not an option, unless that word is one that follows an option letter
   (``A or B``, ``A is correct``). Rule 3 ignores article-like letters; they are used only
   here, when the response has no other standalone letter and no option text matched (so
   ``A cat sat. The answer is B`` gives ``B``, and ``A cat.`` with no option "cat" gives
   ``A``).
6. ``judge``: an optional callable ``judge(response, options) -> letter | None`` (an LLM
   judge, as VLMEvalKit uses), asked only when every rule above failed. Its answer must be
   a valid letter or it is ignored.
7. ``none``: unparseable. The answer is ``None``; minivl never picks a random option (the
   MMMU and VLMEvalKit scorers do), so an unparseable answer is counted, not hidden.

A *slot* (the inside of ``\\boxed{}`` or an ``Answer:`` line) is resolved by: a lone
letter in any case (``B``, ``(b)``, ``B.``); a letter followed by a delimiter and text
(``B. foo``, ``(B) foo``, ``B: foo``); an option's text; a single letter token (rule 3).
A slot that resolves to nothing passes control to the next rule. A slot holding a lone
letter that is not an option (``\\boxed{E}`` for options A-D) ends the search: the model
committed to a non-option, and reading another letter out of its reasoning would be a guess
(only the judge is still asked).

Open answers (:func:`extract_open`): the last ``\\boxed{}`` content, else the last
``Answer:`` line, else the whole response; then :func:`normalize_answer` (strip, lower
case, drop a trailing period and LaTeX text wrappers).

Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from minivl.eval.prompts import Options, option_dict

#: The rule names an :class:`Extraction` may carry, in the order they are tried.
RULES = ("boxed", "answer_line", "letter", "option_text", "article_letter", "judge", "none")

Judge = Callable[[str, Mapping[str, str]], "str | None"]


@dataclass(frozen=True)
class Extraction:
    """An extracted answer and the rule that found it.

    ``answer`` is an option letter (multiple choice), a normalised string (open), or
    ``None`` when unparseable. ``rule`` is one of :data:`RULES` (``"raw"`` for an open answer
    taken from the whole response); ``span`` is the piece of text the rule read.
    """

    answer: str | None
    rule: str
    span: str = ""

    @property
    def parsed(self) -> bool:
        """True when an answer was found."""
        return self.answer is not None


# ---------------------------------------------------------------------------------------
# Low-level readers


_BOXED_RE = re.compile(r"\\boxed\s*\{")
_LATEX_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|boxed)\s*\{([^{}]*)\}")
_ANSWER_RE = re.compile(r"answer\s*:", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """The content of the last balanced ``\\boxed{...}`` in ``text``, or ``None``.

    Braces are counted, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. An unbalanced
    last box (a response cut off by ``max_new_tokens``) is skipped for the one before it.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def last_answer_line(text: str) -> str | None:
    """The text after the last ``Answer:`` (case-insensitive) up to the end of its line.

    When nothing follows on that line, the next non-empty line is taken (``Answer:\\nB``).
    Returns ``None`` when there is no ``Answer:`` or nothing after it.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    matches = list(_ANSWER_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    for line in rest.split("\n"):
        if line.strip():
            return line.strip()
    return None


def strip_latex(text: str) -> str:
    """Remove ``\\text{}``-style wrappers (repeatedly, for nesting), ``$`` and ``**``; strip.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    previous = None
    while previous != text:
        previous, text = text, _LATEX_WRAPPER_RE.sub(r"\1", text)
    return text.replace("$", "").replace("**", "").strip()


def normalize_answer(text: str) -> str:
    """Normalise a short open answer: LaTeX wrappers off, strip, lower case, collapse spaces,
    drop one trailing period.

    >>> normalize_answer("  The Red Ball. ")
    'the red ball'

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    text = " ".join(strip_latex(text).lower().split())
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


# Words that follow an option letter rather than the article: "A or B", "A is correct".
_LETTER_FOLLOWERS = frozenset({"or", "and", "nor", "vs", "versus", "is", "was", "seems", "fits", "matches"})
# A capital letter that is not glued to another letter or digit.
_LETTER_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")


def _letter_tokens(text: str, letters: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Valid option letters standing alone in ``text``: (strong, article-like), in order."""
    strong, weak = [], []
    for match in _LETTER_TOKEN_RE.finditer(text):
        letter = match.group(1)
        if letter not in letters:
            continue
        before, after = text[: match.start()], text[match.end():]
        opener = before.rstrip(" \t\"'*_>#-")
        next_word = re.match(r" +([a-z]+)", after)
        is_article = (
            letter in ("A", "I")
            and next_word is not None
            and next_word.group(1) not in _LETTER_FOLLOWERS
            and (opener == "" or opener[-1] in ".!?\n")
        )
        (weak if is_article else strong).append(letter)
    return strong, weak


def _unique(items: list[str]) -> str | None:
    distinct = set(items)
    return items[0] if len(distinct) == 1 else None


def _norm_text(text: str) -> str:
    return " ".join(strip_latex(text).lower().split()).strip(" .")


def _match_option_text(text: str, letters: Mapping[str, str]) -> str | None:
    """Rule 4: the response equals one option's text or contains exactly one (whole words)."""
    response = _norm_text(text)
    if not response:
        return None
    texts = {letter: _norm_text(option) for letter, option in letters.items()}
    equal = [letter for letter, option in texts.items() if option and option == response]
    if len(equal) == 1:
        return equal[0]
    found = [
        letter for letter, option in texts.items()
        if option and re.search(r"(?<!\w)" + re.escape(option) + r"(?!\w)", response)
    ]
    # Keep only maximal matches: "cat" is dropped when "black cat" also matched.
    found = [
        letter for letter in found
        if not any(other != letter and texts[letter] != texts[other] and texts[letter] in texts[other]
                   for other in found)
    ]
    return found[0] if len(found) == 1 else None


_NOT_AN_OPTION = ""  # a slot holding a lone letter that is not among the options


def _resolve_slot(slot: str, letters: Mapping[str, str]) -> str | None:
    """Map the content of a ``\\boxed{}`` or an ``Answer:`` line to an option letter,
    :data:`_NOT_AN_OPTION` for a lone letter outside the options, or ``None``."""
    slot = strip_latex(slot).strip(" \"'`")
    lone = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:]?", slot)
    if lone:
        return lone.group(1).upper() if lone.group(1).upper() in letters else _NOT_AN_OPTION
    lead = re.match(r"[(\[]\s*([A-Za-z])\s*[)\]]|([A-Za-z])\s*[.):]\s+\S", slot)
    if lead:
        letter = (lead.group(1) or lead.group(2)).upper()
        if letter in letters:
            return letter
    by_text = _match_option_text(slot, letters)
    if by_text is not None:
        return by_text
    strong, _ = _letter_tokens(slot, letters)
    return _unique(strong)


# ---------------------------------------------------------------------------------------
# Public extraction


def extract_choice(response: str, options: Options, judge: Judge | None = None) -> Extraction:
    """Extract a multiple-choice answer (an option letter) from ``response``.

    ``options`` is a list of option texts (letters A, B, ... in order) or a
    ``{letter: text}`` mapping. The rules and their order are in this module's docstring.
    ``judge`` is called as ``judge(response, {letter: text})`` only when every rule failed.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    letters = option_dict(options)

    for rule, slot in (("boxed", last_boxed(response)), ("answer_line", last_answer_line(response))):
        if slot is None:
            continue
        letter = _resolve_slot(slot, letters)
        if letter == _NOT_AN_OPTION:
            # The model committed to a letter that is not an option (``\\boxed{E}`` with
            # options A-D): reading a letter out of its reasoning instead would be a guess.
            return _ask_judge(response, letters, judge)
        if letter is not None:
            return Extraction(letter, rule, slot)

    bare = re.sub(r"[\s.()\[\],:;!*#{}'\"]", "", response)
    if len(bare) == 1 and bare.upper() in letters:
        return Extraction(bare.upper(), "letter", response.strip())
    strong, weak = _letter_tokens(response, letters)
    letter = _unique(strong)
    if letter is not None:
        return Extraction(letter, "letter", letter)

    letter = _match_option_text(response, letters)
    if letter is not None:
        return Extraction(letter, "option_text", letters[letter])

    # Article-like letters only count when the response has no other letter at all.
    letter = _unique(weak) if not strong else None
    if letter is not None:
        return Extraction(letter, "article_letter", letter)
    return _ask_judge(response, letters, judge)


def _ask_judge(response: str, letters: Mapping[str, str], judge: Judge | None) -> Extraction:
    """Rule 6 then 7: the judge's verdict when it is a valid letter, else unparseable."""
    if judge is not None:
        verdict = judge(response, dict(letters))
        if isinstance(verdict, str) and verdict.strip().upper() in letters:
            return Extraction(verdict.strip().upper(), "judge", verdict)
    return Extraction(None, "none", "")


def extract_open(response: str) -> Extraction:
    """Extract a short open answer: last ``\\boxed{}``, else last ``Answer:`` line, else the
    whole response, normalised by :func:`normalize_answer`. Empty gives ``None``.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    for rule, span in (("boxed", last_boxed(response)), ("answer_line", last_answer_line(response)),
                       ("raw", response)):
        if span is not None and normalize_answer(span):
            return Extraction(normalize_answer(span), rule, span)
    return Extraction(None, "none", "")


def extract_answer(response: str, options: Options | None = None, judge: Judge | None = None) -> Extraction:
    """:func:`extract_choice` when ``options`` are given, else :func:`extract_open`.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if options:
        return extract_choice(response, options, judge=judge)
    if judge is not None:
        raise ValueError("a judge is only used for multiple-choice extraction (pass options)")
    return extract_open(response)
