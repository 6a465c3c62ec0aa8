"""InternVL's special tokens, a small byte-level BPE for the cpu scale, and real tokenizers.

InternVL adds nine tokens to the LLM's vocabulary (official ``train/constants.py``): the image
span ``<img>`` ... ``</img>`` filled with ``<IMG_CONTEXT>`` tokens (one per visual token; the
model swaps their embeddings for the projector's outputs), and the grounding markers ``<ref>``,
``</ref>``, ``<box>``, ``</box>``, ``<quad>``, ``</quad>``. The chat format adds ``<|im_start|>``
and ``<|im_end|>`` (ChatML), and ``<|endoftext|>`` pads.

At the cpu scale we train our own byte-level BPE in about a second, with these tokens first
so that their ids are small and stable (``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ...).
At the gpu scale the checkpoint's own tokenizer is loaded with :func:`load_tokenizer`. Either
way, the image-token id is *read from the tokenizer* with :func:`image_token_id`, never
hard-coded.

Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
REF_START_TOKEN = "<ref>"
REF_END_TOKEN = "</ref>"
BOX_START_TOKEN = "<box>"
BOX_END_TOKEN = "</box>"
QUAD_START_TOKEN = "<quad>"
QUAD_END_TOKEN = "</quad>"

# The nine tokens InternVL's fine-tuning script adds to an LLM tokenizer, in the order it adds
# them (so a Qwen2.5 tokenizer of 151665 entries gets <img> 151665, </img> 151666,
# <IMG_CONTEXT> 151667, ...).
INTERNVL_TOKENS: tuple[str, ...] = (
    IMG_START_TOKEN,
    IMG_END_TOKEN,
    IMG_CONTEXT_TOKEN,
    QUAD_START_TOKEN,
    QUAD_END_TOKEN,
    REF_START_TOKEN,
    REF_END_TOKEN,
    BOX_START_TOKEN,
    BOX_END_TOKEN,
)

# Order of the special tokens in a tokenizer trained by :func:`train_tokenizer`: the position
# in this tuple is the token id.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    IM_START_TOKEN,
    IM_END_TOKEN,
    IMG_START_TOKEN,
    IMG_END_TOKEN,
    IMG_CONTEXT_TOKEN,
    QUAD_START_TOKEN,
    QUAD_END_TOKEN,
    REF_START_TOKEN,
    REF_END_TOKEN,
    BOX_START_TOKEN,
    BOX_END_TOKEN,
)

DEFAULT_VOCAB_SIZE = 2000

_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink")
_SHAPES = ("circle", "square", "triangle", "diamond", "star", "line")
_PLACES = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right")
_QUESTIONS = (
    "Describe the image.",
    "What is in this picture?",
    "How many {shape}s are there?",
    "What colour is the {shape}?",
    "Where is the {colour} {shape}?",
    "Which image has the most shapes?",
    "In which direction does the {colour} {shape} move?",
    "What is written in the image?",
    "Answer with the option's letter from the given choices directly.",
)


def default_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """A small, seeded English corpus in the style of the synthetic suite.

    It covers what the tiny models will read and write: captions and questions about
    coloured shapes, numbers and digits, punctuation, grounding answers
    (``<ref>...</ref><box>[[x1, y1, x2, y2]]</box>``), ``Image-k`` / ``Frame-k`` labels,
    multiple-choice options, and dialogues rendered with the ``internvl2_5`` template (so that
    BPE learns merges for the role names and the default system prompt). ``n`` is the number
    of generated lines.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    # Imported here: template.py imports this module's constants.
    from minivl.text.template import get_template

    template = get_template("internvl2_5")
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n):
        colour, shape, place = rng.choice(_COLOURS), rng.choice(_SHAPES), rng.choice(_PLACES)
        count = rng.randint(0, 12)
        kind = i % 6
        if kind == 0:
            lines.append(f"There {'is' if count == 1 else 'are'} {count} {colour} {shape}{'' if count == 1 else 's'} "
                         f"at the {place} of the image.")
        elif kind == 1:  # a whole rendered dialogue, so "system", "user", "assistant" get merged
            question = rng.choice(_QUESTIONS).format(colour=colour, shape=shape)
            lines.append(template.render([("user", question), ("assistant", f"The answer is {count}.")]))
        elif kind == 2:
            box = sorted(rng.sample(range(0, 1001), 2)) + sorted(rng.sample(range(0, 1001), 2))
            x1, x2, y1, y2 = box
            lines.append(f"Please provide the bounding box coordinate of the region this sentence describes: "
                         f"<ref>the {colour} {shape}</ref><box>[[{x1}, {y1}, {x2}, {y2}]]</box>")
        elif kind == 3:
            k = rng.randint(2, 4)
            labels = "".join(f"Image-{j + 1}: <image>\n" for j in range(k))
            lines.append(f"{labels}Which image contains a {colour} {shape}? Image-{rng.randint(1, k)}")
        elif kind == 4:
            frames = "\n".join(f"Frame-{j + 1}: <image>" for j in range(rng.randint(2, 6)))
            lines.append(f"{frames}\nThe {colour} {shape} moves to the {rng.choice(('left', 'right', 'top', 'bottom'))}.")
        else:
            options = [rng.randint(0, 20) for _ in range(4)]
            lines.append("Question: how many shapes are there? Options: "
                         + " ".join(f"{letter}. {v}" for letter, v in zip("ABCD", options))
                         + f"; Answer: \\boxed{{{rng.choice('ABCD')}}} (100%)!")
    lines.extend([template.system_message] * 20)
    return lines


def _build_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int):
    """Train the raw ``tokenizers.Tokenizer`` (byte-level BPE, digits split one by one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Digits are split one by one (as Qwen2 does), so box coordinates 0-1000 use 10 digit
    # tokens rather than hundreds of number tokens a tiny model would have to learn.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..11, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_frequency: int = 2,
    template: str = "internvl2_5",
) -> Any:
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer.

    * special tokens :data:`SPECIAL_TOKENS` get ids 0..11 in that order (``<|endoftext|>`` = 0,
      ``<|im_start|>`` = 1, ``<|im_end|>`` = 2, ``<img>`` = 3, ``</img>`` = 4,
      ``<IMG_CONTEXT>`` = 5, ...); they are never split and never merged with text;
    * ``eos_token`` is ``<|im_end|>`` (generation stops there, as in InternVL's ``chat()``),
      ``pad_token`` is ``<|endoftext|>``, there is no BOS (like Qwen2.5);
    * the chat template renders exactly what the ``template`` conversation template renders
      (:func:`minivl.text.template.chat_template_jinja`);
    * the image tokens are also registered under the names transformers' ``InternVLProcessor``
      looks for (``start_image_token``, ``end_image_token``, ``context_image_token``).

    ``texts`` defaults to :func:`default_corpus`. The vocabulary can end up smaller than
    ``vocab_size`` when the corpus runs out of pairs to merge. Save it with
    ``tok.save_pretrained(path)`` and reload it with :func:`load_tokenizer` or
    ``AutoTokenizer.from_pretrained(path)``.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    from transformers import PreTrainedTokenizerFast

    from minivl.text.template import chat_template_jinja, get_template

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"train_tokenizer: vocab_size must be >= {len(SPECIAL_TOKENS) + 256} "
                         f"(special tokens + 256 bytes), got {vocab_size}")
    if texts is None:
        texts = default_corpus()
    raw = _build_bpe(texts, vocab_size, min_frequency)
    for i, token in enumerate(SPECIAL_TOKENS):
        if raw.token_to_id(token) != i:  # the trainer puts special tokens first, in order
            raise RuntimeError(f"train_tokenizer: {token!r} got id {raw.token_to_id(token)}, expected {i}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=IM_END_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={
            "start_image_token": IMG_START_TOKEN,
            "end_image_token": IMG_END_TOKEN,
            "context_image_token": IMG_CONTEXT_TOKEN,
        },
    )
    tok.chat_template = chat_template_jinja(get_template(template))
    return tok


def train_chat_tokenizer(texts: Iterable[str], vocab_size: int, template: str = "internvl2_5", **kwargs: Any) -> Any:
    """:func:`train_tokenizer` on ``texts`` plus the chat template's own text (system prompt and
    role prefixes) repeated 50 times, so that BPE merges it into a few tokens: every sample
    pays for it, and a role name such as ``assistant`` would otherwise cost several tokens."""
    from minivl.text.template import get_template

    tpl = get_template(template)
    return train_tokenizer(list(texts) + [tpl.system_prompt() + "".join(tpl.roles)] * 50, vocab_size=vocab_size,
                           template=template, **kwargs)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary (every token and its id): caches of models trained with
    one tokenizer key on it, so that a retrained tokenizer of the same size never loads them."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return hashlib.sha256(vocab.encode("utf-8")).hexdigest()[:16]


def load_tokenizer(path: str | os.PathLike, *, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """Load a tokenizer directory: one saved by :func:`train_tokenizer`, or a real checkpoint's.

    Released InternVL 2.5 checkpoints ship their tokenizer beside the weights (Qwen2.5 or
    InternLM2.5 style) with the InternVL tokens already added. InternLM2.5 tokenizers are
    custom code: pass ``trust_remote_code=True`` for them. A raw LLM tokenizer lacks the
    InternVL tokens: add them with :func:`add_internvl_tokens` (then resize the embeddings).

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"load_tokenizer: {path} is not a directory")
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                   "vocab.json")):
        raise FileNotFoundError(f"load_tokenizer: no tokenizer files (tokenizer.json, tokenizer_config.json, "
                                f"tokenizer.model, vocab.json) in {path}")
    if "config" not in kwargs and _model_type(path) == "minivl":
        # AutoTokenizer reads config.json to learn the model type, and transformers does not
        # know minivl's: it would warn on every load. The tokenizer's own files name its class.
        from transformers import PretrainedConfig

        kwargs["config"] = PretrainedConfig()
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)


def _model_type(path: Path) -> str | None:
    """``model_type`` of the ``config.json`` in ``path``, or None (no file, unreadable)."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def add_internvl_tokens(tokenizer: Any) -> int:
    """Add InternVL's nine tokens (:data:`INTERNVL_TOKENS`) as special tokens, as the official
    fine-tuning script does when it starts from a raw LLM. Returns how many were new: when it
    is more than 0, resize the LLM's embeddings to ``len(tokenizer)``.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    return tokenizer.add_tokens(list(INTERNVL_TOKENS), special_tokens=True)


def token_id(tokenizer: Any, token: str) -> int:
    """The id of the single token ``token``; a clear error when the tokenizer lacks it or
    would split it into several pieces.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    # one lookup, not get_vocab(): that builds the whole vocabulary as a dict on every call
    # (about 0.1 s at Qwen2.5's vocabulary size, benchmarks/token_lookup.py), and the data
    # path asks for two ids per sample
    tid = tokenizer.convert_tokens_to_ids(token)
    unk_id, unk = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    if tid is None or (unk_id is not None and tid == unk_id and token != unk):
        raise KeyError(f"tokenizer {name!r} has no {token!r} token; add InternVL's tokens with "
                       f"minivl.text.tokenizer.add_internvl_tokens(tokenizer) (and resize the embeddings)")
    tid = int(tid)
    ids = tokenizer.encode(token, add_special_tokens=False)
    if list(ids) != [tid]:
        raise ValueError(f"tokenizer {name!r} has {token!r} (id {tid}) in its vocabulary, but encodes the text "
                         f"{token!r} as {list(ids)}: it must be an added (special) token")
    return tid


def image_token_id(tokenizer: Any) -> int:
    """The id of ``<IMG_CONTEXT>``, read from ``tokenizer`` (or from a tokenizer directory).

    The model replaces the embeddings at exactly these positions with visual tokens, so the
    id must come from the tokenizer the data was encoded with, never from a constant.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return token_id(tokenizer, IMG_CONTEXT_TOKEN)
