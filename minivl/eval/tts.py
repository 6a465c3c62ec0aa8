"""Test-time scaling on the synthetic ``reasoning`` task: direct vs CoT vs CoT + majority voting.

InternVL 2.5's report (section 5.1.2, Fig. 9) gets +3.7 points on MMMU from a chain-of-thought
prompt, and says CoT "can be further combined with majority voting" (InternVL2-Llama3-76B:
62.7 -> 65.3). It gives no k and no temperature. minivl runs the same experiment on the
synthetic multiple-choice task, end to end:

1. :func:`reasoning_questions` turns ``reasoning`` records (each instance has a ``cot`` and a
   ``direct`` record) into one :class:`MCQuestion` per instance, with the prompt of the wanted
   mode: the suite's own trained sentence (``prompt_style="trained"``, what a small model
   knows) or the report's Fig. 9 / InternVL direct sentence (``prompt_style="report"``).
2. :func:`sample_chains` asks the model for ``k`` answers per question through
   :meth:`minivl.model.MiniVL.batch_chat`. Chain 0 is greedy (as in VLMEvalKit's Best-of-N;
   it makes maj@1 the greedy CoT answer); chains 1..k-1 are sampled at ``temperature`` /
   ``top_p``. To keep a small model's CPU busy, the sampled chains of a batch of questions
   go through one ``batch_chat`` call (the questions repeated, chain after chain;
   ``chains_per_call`` caps how many chains share a call). Before the call whose first chain
   is j, for question batch b, the global torch seed is set to ``seed + 1_000_000 * j + b``,
   so a run reproduces; with ``chains_per_call=1`` the first k chains of a run with more
   chains are also exactly the chains of a run with k. The maj@k curve is one run, read at
   several k. At ``temperature=0`` every chain is the greedy one (computed once).
3. :func:`test_time_scaling` extracts a letter from every chain
   (:func:`minivl.eval.extract.extract_choice`), votes over the first k chains
   (:func:`minivl.eval.vote.accuracy_vs_k`: plurality, ``None`` never votes, ties go to the
   earliest chain) and reports maj@k and pass@k for k = 1, 3, 5, 9 with their generated-token
   cost, next to greedy direct and greedy CoT accuracy.

Token counts: a chain's cost is the number of tokens the model generated for it, the stop
token included (a chain cut by ``max_new_tokens`` costs ``max_new_tokens``). They are read
during generation by a :class:`TokenCounter` passed as the ``streamer`` (transformers hands
every new token of every row to it), because :meth:`MiniVL.batch_chat` returns only text and
re-tokenizing decoded text does not give back the sampled tokens (a random model's bytes can
decode to text that re-tokenizes into twice as many pieces).

Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minivl.data.records import DatasetMeta, Record, read_meta
from minivl.eval.extract import extract_choice
from minivl.eval.prompts import build_prompt, format_options
from minivl.eval.vote import accuracy_vs_k

#: The sentences the synthetic suite trains the model with (``minivl.data.synthetic.reasoning``).
TRAINED_SUFFIX = {
    "cot": "Think step by step, then give the final answer on the last line as 'Answer: \\boxed{LETTER}'.",
    "direct": "Answer with the option's letter from the given choices directly.",
}
PROMPT_STYLES = ("trained", "report")
MODES = ("cot", "direct")


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question: ``id`` (the instance), the full user turn ``prompt``
    (``<image>\\n`` + question + ``A. ...`` lines + instruction), ``options`` as
    ``{letter: text}``, the ``gold`` letter and the ``image`` path."""

    id: str
    prompt: str
    options: dict[str, str]
    gold: str
    image: Path


@dataclass
class Chains:
    """What :func:`sample_chains` returns: per question (same order as ``questions``), the
    response of each chain (``texts[i][j]``) and its generated-token count."""

    questions: list[MCQuestion]
    texts: list[list[str]]
    token_counts: list[list[int]]
    settings: dict[str, Any] = field(default_factory=dict)


def _reasoning_meta(meta: DatasetMeta | str | os.PathLike) -> DatasetMeta:
    if isinstance(meta, DatasetMeta):
        return meta
    metas = read_meta(meta)
    if "reasoning" not in metas:
        raise KeyError(f"{meta}: no 'reasoning' entry in this meta file (entries: {sorted(metas)})")
    return metas["reasoning"]


def _split_question(record: Record) -> str:
    """The question sentence(s) of a reasoning record: the human turn without ``<image>``,
    the ``A. ...`` option lines and the instruction line."""
    human = next((t["value"] for t in record.conversations if t["from"] == "human"), None)
    if human is None:
        raise ValueError(f"reasoning record {record.id}: no human turn")
    lines = [line for line in human.replace("<image>", "").split("\n")]
    first_option = next((i for i, line in enumerate(lines) if line.startswith("A. ")), None)
    if first_option is None:
        raise ValueError(f"reasoning record {record.id}: no 'A. ...' option line in the question {human!r}")
    question = "\n".join(line for line in lines[:first_option] if line.strip())
    if not question:
        raise ValueError(f"reasoning record {record.id}: empty question before the options")
    return question


def reasoning_questions(records: Sequence[Record] | None, meta: DatasetMeta | str | os.PathLike,
                        mode: str = "cot", prompt_style: str = "trained", limit: int | None = None) -> list[MCQuestion]:
    """One :class:`MCQuestion` per reasoning instance, prompted for ``mode`` (``"cot"`` or ``"direct"``).

    ``records`` are ``reasoning`` records (both variants may be mixed; an instance is kept
    once, at its first record); ``None`` reads all records of ``meta``. ``meta`` is the task's
    :class:`~minivl.data.records.DatasetMeta` or a meta JSON file with a ``reasoning`` entry
    (it resolves the image paths). The prompt is ``<image>\\n`` + question + options +
    :data:`TRAINED_SUFFIX` (``prompt_style="trained"``: for a ``cot`` record and
    ``mode="cot"`` this is the record's own human turn), or
    :func:`minivl.eval.prompts.build_prompt` (``"report"``: InternVL's direct sentence or the
    report's Fig. 9 CoT prompt). ``limit`` keeps the first instances.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
    task = _reasoning_meta(meta)
    if records is None:
        records = task.read_records(strict=False)[0]
    questions: list[MCQuestion] = []
    seen: set[str] = set()
    for record in records:
        info = record.extra.get("meta")
        if not isinstance(info, dict) or "options" not in info or "answer_letter" not in info:
            raise KeyError(f"record {record.id}: 'meta' needs 'options' and 'answer_letter' "
                           f"(is this a reasoning record?)")
        instance = str(info.get("instance", record.id))
        if instance in seen:
            continue
        if len(record.images) != 1:
            raise ValueError(f"record {record.id}: a reasoning record has one image, got {record.images}")
        seen.add(instance)
        options = {chr(ord("A") + i): str(text) for i, text in enumerate(info["options"])}
        if info["answer_letter"] not in options:
            raise ValueError(f"record {record.id}: answer_letter {info['answer_letter']!r} not in {sorted(options)}")
        question = _split_question(record)
        if prompt_style == "trained":
            body = f"{question}\n{format_options(options)}\n{TRAINED_SUFFIX[mode]}"
        else:
            body = build_prompt(question, options, mode=mode, kind="mc")
        questions.append(MCQuestion(instance, "<image>\n" + body, options, info["answer_letter"],
                                    task.image_path(record.images[0])))
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise ValueError("reasoning_questions: no records")
    return questions


class TokenCounter:
    """A transformers streamer that counts the tokens generated for each row of a batch.

    ``generate`` calls ``put`` once with the prompt ids (2-D, ignored), then once per decoding
    step with the new token of every row (1-D). A row's count is the number of steps up to
    and including its first ``eos_token_id`` (after it, ``generate`` only pads that row), or
    all steps when it never stopped.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = int(eos_token_id)
        self.steps: list[list[int]] = []

    def put(self, value) -> None:
        """Record one decoding step (a 1-D tensor of one token per row); skip the prompt."""
        if value.dim() == 1:
            self.steps.append([int(v) for v in value.tolist()])

    def end(self) -> None:
        """Nothing to flush."""

    def counts(self, batch: int) -> list[int]:
        """Generated tokens per row (``batch`` rows); raises if nothing was streamed."""
        if not self.steps:
            raise RuntimeError("TokenCounter saw no generated tokens: the model did not pass "
                               "generation_config['streamer'] to generate(); pass count_tokens= instead")
        out = []
        for row in range(batch):
            tokens = [step[row] for step in self.steps]
            out.append(tokens.index(self.eos_token_id) + 1 if self.eos_token_id in tokens else len(tokens))
        return out


def _stop_token_id(model, tokenizer: Any) -> int:
    from minivl.text.template import get_template
    from minivl.text.tokenizer import token_id

    return token_id(tokenizer, get_template(model.config.template).stop_token)


def _chat_round(model, tokenizer: Any, pixel_values, prompts: list[str], patches: list[int], reps: int,
                config: dict[str, Any], eos: int | None,
                count_tokens: Callable[[str], int] | None) -> tuple[list[str], list[int]]:
    """One ``batch_chat`` call asking every prompt ``reps`` times (chain-major: all prompts
    once, then all again, ...); returns the texts and their generated-token counts."""
    import torch

    config = dict(config)
    counter = None
    if eos is not None:
        counter = config["streamer"] = TokenCounter(eos)
    n = len(prompts)
    with torch.no_grad():
        answers = list(model.batch_chat(
            tokenizer, torch.cat([pixel_values] * reps) if reps > 1 else pixel_values,  # (reps*tiles, 3, S, S)
            prompts * reps, config, num_patches_list=patches * reps, image_counts=[1] * (n * reps)))
    if len(answers) != n * reps:
        raise ValueError(f"batch_chat returned {len(answers)} answers for {n * reps} questions")
    if counter is not None:
        used = counter.counts(n * reps)
    else:
        assert count_tokens is not None
        used = [count_tokens(a) for a in answers]
    return answers, [int(u) for u in used]


def sample_chains(model, tokenizer, records: Sequence[Record] | None, meta: DatasetMeta | str | os.PathLike, k: int,
                  temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 128, batch_size: int = 8,
                  seed: int = 0, mode: str = "cot", prompt_style: str = "trained", greedy_first: bool = True,
                  max_num: int | None = None, limit: int | None = None,
                  count_tokens: Callable[[str], int] | None = None, chains_per_call: int | None = None,
                  progress: bool = False) -> Chains:
    """Sample ``k`` answers to each reasoning question (chain-of-thought by default).

    Chain 0 is greedy when ``greedy_first`` (default), the others are sampled with
    ``do_sample=True, temperature, top_p``; ``temperature=0`` makes every chain greedy.
    Questions go in batches of ``batch_size``; the sampled chains of a batch share
    ``batch_chat`` calls of at most ``chains_per_call`` chains (default: all in one call), and
    before the call whose first chain is j, for batch b, ``torch.manual_seed(seed + 1_000_000
    * j + b)``. Images are tiled with ``max_num`` (default: the task's ``max_dynamic_patch``,
    else 6).
    A chain's cost is its generated tokens, stop token included, counted by a
    :class:`TokenCounter` streamer; ``count_tokens(text)`` replaces that count (for a model
    that does not stream). Questions come from :func:`reasoning_questions` (``mode``, ``prompt_style``,
    ``limit``).

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    import torch
    from tqdm.auto import tqdm

    from minivl.vision.transforms import load_image_tiles

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chains_per_call is not None and chains_per_call < 1:
        raise ValueError(f"chains_per_call must be >= 1, got {chains_per_call}")
    task = _reasoning_meta(meta)
    questions = reasoning_questions(records, task, mode=mode, prompt_style=prompt_style, limit=limit)
    eos = None if count_tokens is not None else _stop_token_id(model, tokenizer)
    budget = max_num or task.max_dynamic_patch or 6
    image_size = model.config.vision.image_size
    dtype, device = getattr(model, "dtype", None), getattr(model, "device", None)

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    texts: list[list[str]] = []
    counts: list[list[int]] = []
    bar = tqdm(total=len(questions) * k, desc=f"{mode} chains (k={k})", disable=not progress)
    try:
        for b, start in enumerate(range(0, len(questions), batch_size)):
            chunk = questions[start:start + batch_size]
            pixels, patches = [], []
            for q in chunk:
                pv, n = load_image_tiles(q.image, image_size=image_size, max_num=budget)  # (tiles, 3, S, S)
                pixels.append(pv)
                patches += n
            pixel_values = torch.cat(pixels)  # (sum of tiles, 3, S, S)
            if dtype is not None or device is not None:
                pixel_values = pixel_values.to(device=device, dtype=dtype)
            prompts = [q.prompt for q in chunk]
            n = len(chunk)
            greedy_config = {"max_new_tokens": max_new_tokens, "do_sample": False}
            sample_config = {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": temperature,
                             "top_p": top_p}
            greedy_chains = [j for j in range(k) if temperature == 0 or (greedy_first and j == 0)]
            sampled_chains = [j for j in range(k) if j not in greedy_chains]
            by_chain: dict[int, tuple[list[str], list[int]]] = {}
            if greedy_chains:
                torch.manual_seed(seed + 1_000_000 * greedy_chains[0] + b)
                answers, used = _chat_round(model, tokenizer, pixel_values, prompts, patches, 1, greedy_config, eos,
                                            count_tokens)  # greedy decoding is deterministic: computed once
                for j in greedy_chains:
                    by_chain[j] = (answers, used)
                bar.update(n * len(greedy_chains))
            step = chains_per_call or max(1, len(sampled_chains))
            for start_chain in range(0, len(sampled_chains), step):
                group = sampled_chains[start_chain:start_chain + step]
                torch.manual_seed(seed + 1_000_000 * group[0] + b)
                answers, used = _chat_round(model, tokenizer, pixel_values, prompts, patches, len(group), sample_config,
                                            eos, count_tokens)
                for g, j in enumerate(group):  # answers are chain-major: chain group[g] is slice g
                    by_chain[j] = (answers[g * n:(g + 1) * n], used[g * n:(g + 1) * n])
                bar.update(n * len(group))
            texts += [[by_chain[j][0][i] for j in range(k)] for i in range(n)]
            counts += [[by_chain[j][1][i] for j in range(k)] for i in range(n)]
    finally:
        bar.close()
        if hasattr(model, "train"):
            model.train(was_training)
    settings = {"k": k, "mode": mode, "prompt_style": prompt_style, "temperature": temperature, "top_p": top_p,
                "greedy_first": greedy_first, "max_new_tokens": max_new_tokens, "seed": seed,
                "batch_size": batch_size, "max_num": budget}
    return Chains(questions, texts, counts, settings)


def score_chains(chains: Chains, ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """Extract a letter from every chain and score maj@k for each k in ``ks``.

    Returns ``answers`` (``[question][chain]`` letters or ``None``), ``rules`` (the extraction
    rule of each chain), ``rows`` (:func:`minivl.eval.vote.accuracy_vs_k` with tokens) and
    ``chain_accuracy`` (the accuracy of each chain position on its own).

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    extractions = [[extract_choice(t, q.options) for t in row] for q, row in zip(chains.questions, chains.texts)]
    answers = [[e.answer for e in row] for row in extractions]
    gold = [q.gold for q in chains.questions]
    rows = accuracy_vs_k(answers, gold, ks=ks, token_counts=chains.token_counts)
    n_chains = len(answers[0])
    chain_accuracy = [sum(a[j] == g for a, g in zip(answers, gold)) / len(gold) for j in range(n_chains)]
    return {"answers": answers, "rules": [[e.rule for e in row] for row in extractions], "rows": rows,
            "chain_accuracy": chain_accuracy}


def test_time_scaling(model, tokenizer, records: Sequence[Record] | None, meta: DatasetMeta | str | os.PathLike,
                      ks: Sequence[int] = (1, 3, 5, 9), temperature: float = 0.7, top_p: float = 0.95,
                      max_new_tokens: int = 128, direct_max_new_tokens: int = 8, batch_size: int = 8, seed: int = 0,
                      prompt_style: str = "trained", max_num: int | None = None, limit: int | None = None,
                      count_tokens: Callable[[str], int] | None = None, progress: bool = False) -> dict[str, Any]:
    """Greedy direct, greedy CoT and CoT + majority voting (maj@k) on the reasoning questions.

    Samples ``max(ks)`` CoT chains per question (:func:`sample_chains`, chain 0 greedy) and one
    greedy direct answer, extracts letters, votes over the first k chains for each k. Returns::

        {"direct":     {"accuracy", "tokens", "tokens_per_question", "unparseable"},
         "cot_greedy": {... the same, from chain 0},
         "vote":       [{"k", "accuracy", "pass_at_k", "unparseable", "ties", "tokens",
                         "tokens_per_question"}, ...],   # one row per k
         "sampled_chain_accuracy": mean accuracy of one sampled chain (chains 1..n-1),
         "settings": {...}, "direct_chains": Chains, "cot_chains": Chains,
         "cot_answers": [[letter | None, ...], ...]}

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    common = dict(batch_size=batch_size, seed=seed, prompt_style=prompt_style, max_num=max_num, limit=limit,
                  count_tokens=count_tokens, progress=progress)
    direct = sample_chains(model, tokenizer, records, meta, 1, temperature=0.0, top_p=1.0,
                           max_new_tokens=direct_max_new_tokens, mode="direct", **common)
    cot = sample_chains(model, tokenizer, records, meta, ks[-1], temperature=temperature, top_p=top_p,
                        max_new_tokens=max_new_tokens, mode="cot", greedy_first=True, **common)
    if [q.id for q in direct.questions] != [q.id for q in cot.questions]:
        raise RuntimeError("direct and CoT questions differ; this is a bug in reasoning_questions")
    direct_scores = score_chains(direct, ks=(1,))
    cot_scores = score_chains(cot, ks=ks)

    def single(row: dict) -> dict:
        return {key: row[key] for key in ("accuracy", "tokens", "tokens_per_question", "unparseable")}

    sampled = cot_scores["chain_accuracy"][1:]
    return {
        "direct": single(direct_scores["rows"][0]),
        "cot_greedy": single(cot_scores["rows"][0] if ks[0] == 1 else score_chains(cot, ks=(1,))["rows"][0]),
        "vote": cot_scores["rows"],
        "sampled_chain_accuracy": sum(sampled) / len(sampled) if sampled else None,
        "settings": {**cot.settings, "ks": ks, "n_questions": len(cot.questions),
                     "direct_max_new_tokens": direct_max_new_tokens},
        "direct_chains": direct,
        "cot_chains": cot,
        "cot_answers": cot_scores["answers"],
    }


test_time_scaling.__test__ = False  # a library function, not a pytest test


def tts_markdown(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`test_time_scaling`'s result: one row per method.

    Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
    """
    lines = ["| method | accuracy (%) | pass@k (%) | tokens / question | unparseable |", "|---|---:|---:|---:|---:|"]
    for name, key in (("direct (greedy)", "direct"), ("CoT (greedy)", "cot_greedy")):
        r = result[key]
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} | | {r['tokens_per_question']:.1f} | {r['unparseable']} |")
    for r in result["vote"]:
        lines.append(f"| CoT maj@{r['k']} | {100 * r['accuracy']:.1f} | {100 * r['pass_at_k']:.1f} | "
                     f"{r['tokens_per_question']:.1f} | {r['unparseable']} |")
    return "\n".join(lines) + "\n"
