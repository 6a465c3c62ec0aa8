"""From a conversation record to ``input_ids`` and ``labels`` (official ``preprocess_internvl2_5``).

Three steps, as in InternVL 2.5's training code:

1. **Placeholders.** A video's ``<video>\\n`` becomes one ``Frame-k: <image>`` line per frame;
   a single-image record without ``<image>`` gets ``"<image>\\n"`` in front of its first human
   turn. Each ``<image>`` (in human turns, in order) becomes
   ``<img>`` + ``<IMG_CONTEXT>`` x (``num_image_token`` x tiles of that image) + ``</img>``.
2. **Segments.** One string per turn: ``<|im_start|>system\\n{sys}<|im_end|>\\n``, then
   ``<|im_start|>user\\n{v}<|im_end|>\\n`` / ``<|im_start|>assistant\\n{v}<|im_end|>\\n``.
   Each is tokenized on its own and the pieces are concatenated.
3. **Labels.** Everything is ``-100`` except, in each assistant segment, the content and its
   ``<|im_end|>``: the ``<|im_start|>assistant\\n`` header and the final ``\\n`` are masked.

Where minivl is stricter than the official code (which logs nothing and moves on), it raises:
placeholder counts must equal image counts (:class:`PlaceholderMismatchError`), turns must be
``[system] human gpt human gpt ...`` (:class:`ConversationError`), and an over-long sample is
never cut inside an image span (:class:`SampleTooLongError`, which the caller counts).

Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from minivl.text.template import Template, get_template
from minivl.text.tokenizer import IM_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, token_id

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
IGNORE_TOKEN_ID = -100
NUM_IMAGE_TOKEN = 256  # tokens per 448 px tile after pixel unshuffle: (448 / 14)^2 * 0.5^2
TRUNCATION_POLICIES = ("error", "after_images")

_ROLE_NAMES = {"system": "system", "human": "user", "gpt": "assistant"}


class ConversationError(ValueError):
    """A conversation that is not ``[system] human gpt [human gpt ...]`` with string values."""


class PlaceholderMismatchError(ValueError):
    """The number of ``<image>`` / ``<video>`` placeholders does not match the images given."""


class SampleTooLongError(ValueError):
    """A sample longer than ``max_length`` that cannot be cut without breaking an image span."""


# ---------------------------------------------------------------------------------------
# Placeholders
# ---------------------------------------------------------------------------------------


def image_span(num_tokens: int) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` x ``num_tokens`` + ``</img>``, no separators inside.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    if num_tokens < 1:
        raise ValueError(f"image_span: num_tokens must be >= 1, got {num_tokens}")
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * num_tokens + IMG_END_TOKEN


def multi_image_prefix(num_images: int) -> str:
    """``"Image-1: <image>\\nImage-2: <image>\\n..."``: the numbering InternVL's multi-image data
    and evaluation prompts put before the question, so the text can refer to ``Image-k``.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    if num_images < 1:
        raise ValueError(f"multi_image_prefix: num_images must be >= 1, got {num_images}")
    return "".join(f"Image-{k + 1}: {IMAGE_PLACEHOLDER}\n" for k in range(num_images))


def video_frame_prefix(num_frames: int, style: str = "train") -> str:
    """One line per video frame.

    * ``style="train"`` (official training code and the report): ``"Frame-1: <image>\\n...
      Frame-n: <image>"``, joined by newlines, no trailing newline (the ``\\n`` that followed
      ``<video>`` stays);
    * ``style="chat"`` (the model card's video ``chat()`` example): ``"Frame1: <image>\\n"`` per
      frame, no hyphen, with a trailing newline.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    if num_frames < 1:
        raise ValueError(f"video_frame_prefix: num_frames must be >= 1, got {num_frames}")
    if style == "train":
        return "\n".join(f"Frame-{k + 1}: {IMAGE_PLACEHOLDER}" for k in range(num_frames))
    if style == "chat":
        return "".join(f"Frame{k + 1}: {IMAGE_PLACEHOLDER}\n" for k in range(num_frames))
    raise ValueError(f"video_frame_prefix: style must be 'train' or 'chat', got {style!r}")


def validate_conversations(conversations: Any) -> None:
    """Check the official record format: a non-empty list of ``{"from", "value"}`` turns, an
    optional ``system`` turn first, then ``human`` and ``gpt`` alternating, starting with
    ``human`` and ending with ``gpt``. Raises :class:`ConversationError` naming the turn.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    if not isinstance(conversations, (list, tuple)) or len(conversations) == 0:
        raise ConversationError("conversations: expected a non-empty list of {'from', 'value'} turns, "
                                f"got {conversations!r}")
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"conversations[{i}]: expected a dict with keys 'from' and 'value', got {turn!r}")
        if turn["from"] not in _ROLE_NAMES:
            raise ConversationError(f"conversations[{i}]: unknown role {turn['from']!r}; "
                                    "expected 'system', 'human' or 'gpt'")
        if not isinstance(turn["value"], str):
            raise ConversationError(f"conversations[{i}]['value']: expected a string, got {type(turn['value']).__name__}")
        if turn["from"] == "system" and i != 0:
            raise ConversationError(f"conversations[{i}]: a system turn is only allowed first")
    start = 1 if conversations[0]["from"] == "system" else 0
    turns = conversations[start:]
    if not turns:
        raise ConversationError("conversations: only a system turn; expected human / gpt turns after it")
    for j, turn in enumerate(turns):
        expected = "human" if j % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise ConversationError(f"conversations[{start + j}]: expected a {expected!r} turn (turns alternate "
                                    f"human, gpt, ...), got {turn['from']!r}")
    if turns[-1]["from"] != "gpt":
        raise ConversationError(f"conversations[{len(conversations) - 1}]: the last turn is 'human'; "
                                "a training conversation ends with a 'gpt' answer")


def expand_video_placeholder(conversations: Sequence[dict[str, str]], num_frames: int) -> list[dict[str, str]]:
    """Replace ``<video>\\n`` in the first human turn by ``Frame-k: <image>`` lines (training
    style, :func:`video_frame_prefix`); ``<video>\\n`` is put in front first when missing.

    Returns new turn dicts (the input is not modified). A ``<video>`` left anywhere afterwards
    (e.g. not followed by a newline, or in another turn) raises :class:`PlaceholderMismatchError`.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    convs = [dict(t) for t in conversations]
    first = _first_human(convs)
    if VIDEO_PLACEHOLDER not in convs[first]["value"]:
        convs[first]["value"] = VIDEO_PLACEHOLDER + "\n" + convs[first]["value"]
    convs[first]["value"] = convs[first]["value"].replace(
        VIDEO_PLACEHOLDER + "\n", video_frame_prefix(num_frames) + "\n")
    left = sum(t["value"].count(VIDEO_PLACEHOLDER) for t in convs)
    if left:
        raise PlaceholderMismatchError(f"{left} '<video>' placeholder(s) left after expanding the video: a video "
                                       "record needs exactly one '<video>\\n' (followed by a newline) in its "
                                       "first human turn")
    return convs


def _first_human(convs: Sequence[dict[str, str]]) -> int:
    for i, t in enumerate(convs):
        if t.get("from") == "human":
            return i
    raise ConversationError("conversations: no 'human' turn")


def expand_image_placeholders(
    conversations: Sequence[dict[str, str]],
    num_image_token_list: Sequence[int],
) -> list[dict[str, str]]:
    """Replace the k-th ``<image>`` (over human turns, in order) by an image span of
    ``num_image_token_list[k]`` context tokens (:func:`image_span`).

    The number of ``<image>`` in human turns must equal ``len(num_image_token_list)``, and no
    other turn may contain one; otherwise :class:`PlaceholderMismatchError` names both counts.
    (The official code keeps extra placeholders as literal text; minivl refuses them.)

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    convs = [dict(t) for t in conversations]
    for i, t in enumerate(convs):
        if t["from"] != "human" and IMAGE_PLACEHOLDER in t["value"]:
            raise PlaceholderMismatchError(f"conversations[{i}] ({t['from']}) contains '<image>'; "
                                           "image placeholders belong in human turns")
    found = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
    if found != len(num_image_token_list):
        raise PlaceholderMismatchError(f"{found} '<image>' placeholder(s) in the human turns but "
                                       f"{len(num_image_token_list)} image(s) given")
    k = 0
    for t in convs:
        if t["from"] != "human":
            continue
        # Split on the placeholder and put the k-th span in each gap.
        parts = t["value"].split(IMAGE_PLACEHOLDER)
        value = parts[0]
        for part in parts[1:]:
            value += image_span(int(num_image_token_list[k])) + part
            k += 1
        t["value"] = value
    return convs


# ---------------------------------------------------------------------------------------
# preprocess_internvl2_5
# ---------------------------------------------------------------------------------------


@dataclass
class ConversationInputs:
    """What :func:`preprocess_internvl2_5` returns for one conversation.

    ``input_ids``, ``labels`` and ``attention_mask`` are 1-D ``torch.long`` tensors of the same
    length (no padding: packing and collation pad later). ``segments`` lists ``(role, length)``
    per turn in order (``system``, ``user``, ``assistant``; a BOS counts in the first segment),
    after truncation. ``num_truncated`` is how many tokens ``max_length`` cut off.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    num_image_tokens: int
    num_supervised: int
    num_truncated: int = 0
    segments: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (tensors kept as tensors)."""
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "attention_mask": self.attention_mask,
            "num_image_tokens": self.num_image_tokens,
            "num_supervised": self.num_supervised,
            "num_truncated": self.num_truncated,
            "segments": list(self.segments),
        }


def _adds_bos(tokenizer: Any) -> bool:
    """True for tokenizers that put a BOS in front of every encoding (InternLM2.5 style)."""
    return bool(getattr(tokenizer, "add_bos_token", False)) and getattr(tokenizer, "bos_token_id", None) is not None


def _encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """The ids of each text without special tokens added, in one call: the same ids as one
    call per text, in half the time with a fast tokenizer (one trip into its Rust side)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def conversation_segments(
    conversations: Sequence[dict[str, str]],
    system_message: str | None = None,
    template: str | Template = "internvl2_5",
) -> list[tuple[str, str]]:
    """The ``(role, text)`` segments of a conversation whose placeholders are already expanded:
    the record's own system turn, else ``system_message``, else the template's default, then
    one segment per turn. Values are not stripped (as in the official 2.5 code).
    ``"".join(text for _, text in segments)`` is the template's full rendering.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    t = get_template(template)
    turns = list(conversations)
    if turns and turns[0]["from"] == "system":
        system_message, turns = turns[0]["value"], turns[1:]
    segments = [("system", t.system_prompt(system_message))]
    for turn in turns:
        role = _ROLE_NAMES[turn["from"]]
        if role == "system":
            raise ConversationError("conversations: a system turn is only allowed first")
        segments.append((role, t.role_prefix(role) + turn["value"] + t.sep))
    return segments


def preprocess_internvl2_5(
    conversations: Sequence[dict[str, str]],
    tokenizer: Any,
    num_patches_list: Sequence[int] = (),
    *,
    num_image_token: int = NUM_IMAGE_TOKEN,
    num_frames: int | None = None,
    system_message: str | None = None,
    max_length: int | None = None,
    truncation: str = "error",
) -> ConversationInputs:
    """Tokenize one conversation and mask its labels, token for token as InternVL 2.5 does.

    * ``conversations``: the official record format ``[{"from": "system"|"human"|"gpt",
      "value": str}, ...]`` (checked by :func:`validate_conversations`);
    * ``num_patches_list``: tiles per image (thumbnail included), in placeholder order; empty
      for text-only data. With exactly one image and no ``<image>`` in any human turn,
      ``"<image>\\n"`` is put in front of the first human turn (single-image records);
    * ``num_frames``: for a video record, the number of frames; ``<video>\\n`` becomes
      ``Frame-k: <image>`` lines and ``num_patches_list`` defaults to one tile per frame;
    * ``num_image_token``: context tokens per tile (256 for 448 px tiles, 16 for minivl's
      tiny 112 px config);
    * ``system_message``: replaces the template's default when the record has no system turn;
    * ``max_length`` (``None``: no limit) with ``truncation``:

      - ``"error"`` (default): a longer sample raises :class:`SampleTooLongError`; the
        caller skips it and counts the skip;
      - ``"after_images"``: cut the tokens after ``max_length`` when the cut falls after the
        last ``</img>``; a cut inside or before an image span, or one that leaves no
        supervised token, still raises :class:`SampleTooLongError`.

    Only assistant content and its ``<|im_end|>`` are supervised; a result with no supervised
    token raises (a silently zero loss is never returned). BOS tokenizers (InternLM2.5) get a
    single BOS at position 0, masked.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"preprocess_internvl2_5: truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
    validate_conversations(conversations)
    convs = [dict(t) for t in conversations]
    num_patches = [int(p) for p in num_patches_list]
    if any(p < 1 for p in num_patches):
        raise ValueError(f"preprocess_internvl2_5: every entry of num_patches_list must be >= 1, got {num_patches}")

    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"preprocess_internvl2_5: num_frames must be >= 1, got {num_frames}")
        if not num_patches:
            num_patches = [1] * num_frames  # one tile per frame, no thumbnail
        elif len(num_patches) != num_frames:
            raise PlaceholderMismatchError(f"num_frames={num_frames} but num_patches_list has {len(num_patches)} entries")
        convs = expand_video_placeholder(convs, num_frames)
    elif any(VIDEO_PLACEHOLDER in t["value"] for t in convs):
        raise PlaceholderMismatchError("'<video>' in the conversation but num_frames is not given")

    if len(num_patches) == 1 and not any(IMAGE_PLACEHOLDER in t["value"] for t in convs if t["from"] == "human"):
        first = _first_human(convs)
        convs[first]["value"] = IMAGE_PLACEHOLDER + "\n" + convs[first]["value"]
    convs = expand_image_placeholders(convs, [num_image_token * p for p in num_patches])

    # Tokenize segment by segment (as the official code does; one batched call), then mask.
    roles_texts = conversation_segments(convs, system_message)
    header, *encoded = _encode_many(tokenizer, [get_template("internvl2_5").roles[1]] + [t for _, t in roles_texts])
    header_len = len(header)
    ids: list[int] = []
    labels: list[int] = []
    segments: list[tuple[str, int]] = []
    if _adds_bos(tokenizer):
        ids.append(int(tokenizer.bos_token_id))
        labels.append(IGNORE_TOKEN_ID)
    for (role, _), seg in zip(roles_texts, encoded):
        if role == "assistant":
            # (len,) ids -> labels: mask '<|im_start|>assistant\n' and the final '\n'.
            seg_labels = [IGNORE_TOKEN_ID] * header_len + seg[header_len:-1] + [IGNORE_TOKEN_ID]
        else:
            seg_labels = [IGNORE_TOKEN_ID] * len(seg)
        start = len(ids) if segments else 0  # a BOS counts in the first segment
        ids.extend(seg)
        labels.extend(seg_labels)
        segments.append((role, len(ids) - start))

    context_id = token_id(tokenizer, IMG_CONTEXT_TOKEN)
    num_truncated = 0
    if max_length is not None and len(ids) > max_length:
        if truncation == "error":
            raise SampleTooLongError(f"sample has {len(ids)} tokens > max_length={max_length} "
                                     f"({sum(i == context_id for i in ids)} of them image tokens)")
        end_id = token_id(tokenizer, IMG_END_TOKEN)
        last_img_end = max((i for i, t in enumerate(ids) if t == end_id), default=-1)
        if last_img_end >= max_length:
            raise SampleTooLongError(f"sample has {len(ids)} tokens > max_length={max_length} and its last image "
                                     f"span ends at token {last_img_end}: cutting would break an image")
        num_truncated = len(ids) - max_length
        ids, labels = ids[:max_length], labels[:max_length]
        segments = _cut_segments(segments, max_length)

    num_supervised = sum(label != IGNORE_TOKEN_ID for label in labels)
    if num_supervised == 0:
        if num_truncated:
            raise SampleTooLongError(f"no supervised token left after truncation to max_length={max_length}")
        raise ConversationError("no supervised token: every assistant turn is empty")
    input_ids = torch.tensor(ids, dtype=torch.long)
    return ConversationInputs(
        input_ids=input_ids,
        labels=torch.tensor(labels, dtype=torch.long),
        attention_mask=torch.ones_like(input_ids),
        num_image_tokens=int((input_ids == context_id).sum()),
        num_supervised=int(num_supervised),
        num_truncated=num_truncated,
        segments=segments,
    )


def _cut_segments(segments: list[tuple[str, int]], max_length: int) -> list[tuple[str, int]]:
    out, total = [], 0
    for role, n in segments:
        if total >= max_length:
            break
        out.append((role, min(n, max_length - total)))
        total += n
    return out


# ---------------------------------------------------------------------------------------
# Inference prompt (official chat())
# ---------------------------------------------------------------------------------------


def build_generation_prompt(
    question: str,
    history: Sequence[tuple[str, str]] | None = None,
    num_patches_list: Sequence[int] | None = None,
    *,
    num_image_token: int = NUM_IMAGE_TOKEN,
    template: str | Template = "internvl2_5",
    system_message: str | None = None,
) -> str:
    """The prompt InternVL's ``chat()`` builds before generating, with images expanded.

    * with images (``num_patches_list`` non-empty), no ``history`` and no ``<image>`` in the
      question, ``"<image>\\n"`` is put in front of the question;
    * the template renders the system prompt, the ``(question, answer)`` pairs of
      ``history``, the question, and the bare assistant prefix (the generation prompt);
    * the k-th ``<image>`` of the whole prompt (history first) becomes an image span of
      ``num_image_token * num_patches_list[k]`` context tokens. The counts must match
      (:class:`PlaceholderMismatchError`; ``chat()`` itself does not check).

    Generation stops at ``get_template(template).stop_token`` (``<|im_end|>``); see
    :func:`parse_response`.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    t = get_template(template)
    patches = [int(p) for p in (num_patches_list or [])]
    if patches and history is None and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    messages: list[tuple[str, str | None]] = []
    for old_question, old_answer in history or []:
        messages += [("user", old_question), ("assistant", old_answer)]
    messages += [("user", question), ("assistant", None)]
    query = t.render(messages, system_message)
    found = query.count(IMAGE_PLACEHOLDER)
    if found != len(patches):
        raise PlaceholderMismatchError(f"{found} '<image>' placeholder(s) in the prompt (history included) but "
                                       f"{len(patches)} image(s) in num_patches_list")
    for p in patches:
        query = query.replace(IMAGE_PLACEHOLDER, image_span(num_image_token * p), 1)
    return query


def parse_response(text: str, template: str | Template = "internvl2_5") -> str:
    """The answer in generated text: everything before the first stop token, stripped
    (as ``chat()`` does with ``response.split(sep.strip())[0].strip()``).

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    return text.split(get_template(template).stop_token)[0].strip()


# ---------------------------------------------------------------------------------------
# Looking at the result
# ---------------------------------------------------------------------------------------


def token_rows(inputs: ConversationInputs, tokenizer: Any, collapse_image: bool = True) -> list[dict[str, Any]]:
    """One row per token of ``inputs``: ``piece`` (readable text: spaces as ``␣``, newlines as
    ``\\n``), ``role`` (system / user / assistant), ``supervised`` (label != -100) and
    ``count``. With ``collapse_image``, each run of ``<IMG_CONTEXT>`` is one row with its count.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    ids = inputs.input_ids.tolist()
    labels = inputs.labels.tolist()
    roles = [role for role, n in inputs.segments for _ in range(n)]
    if len(roles) != len(ids):
        raise ValueError(f"token_rows: segments cover {len(roles)} tokens but input_ids has {len(ids)}")
    context_id = token_id(tokenizer, IMG_CONTEXT_TOKEN)
    rows: list[dict[str, Any]] = []
    for tid, label, role in zip(ids, labels, roles):
        if collapse_image and tid == context_id and rows and rows[-1]["id"] == context_id:
            rows[-1]["count"] += 1
            continue
        piece = tokenizer.decode([tid]).replace(" ", "␣").replace("\n", "\\n")
        rows.append({"id": tid, "piece": piece, "role": role, "supervised": label != IGNORE_TOKEN_ID, "count": 1})
    return rows


def format_token_rows(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text rendering of :func:`token_rows`: one line per segment, pieces separated by
    ``|``, supervised pieces in ``«»``, image runs as ``<IMG_CONTEXT>×n``.

    Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
    """
    lines: list[str] = []
    current, pieces = None, []
    for row in rows:
        if row["role"] != current or (row["piece"] == IM_START_TOKEN and pieces):
            if pieces:
                lines.append(f"{current:>9}: " + "|".join(pieces))
            current, pieces = row["role"], []
        piece = row["piece"] + (f"×{row['count']}" if row["count"] > 1 else "")
        pieces.append(f"«{piece}»" if row["supervised"] else piece)
    if pieces:
        lines.append(f"{current:>9}: " + "|".join(pieces))
    return "\n".join(lines)
