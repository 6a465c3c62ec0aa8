"""InternVL's data formats: the meta JSON and the JSONL conversation records.

A training mixture is described by one **meta JSON** file, one entry per data set::

    {"caption": {"root": "images/train/caption", "annotation": "annotations/train/caption.jsonl",
                 "data_augment": true, "max_dynamic_patch": 6, "repeat_time": 1, "length": 1000}}

and each data set is a **JSONL** file with one conversation per line, of four kinds:

* text: ``{"id", "conversations": [...]}`` with no ``image`` key;
* single image: ``"image": "rel/path.png"`` (optional ``width``, ``height``), one ``<image>``
  (InternVL prepends ``"<image>\\n"`` to the first turn when the text has none);
* multi-image: ``"image": [paths]`` (optional ``width_list``, ``height_list``), exactly one
  ``<image>`` per image in the human turns;
* video: ``"video": "rel/folder_or_file"`` with one ``<video>`` in the first human turn.

``conversations`` alternate ``human`` / ``gpt`` after an optional leading ``system`` turn.

Relative paths: InternVL joins ``root`` with each image path and resolves relative roots against
the working directory. minivl resolves a relative ``root`` and ``annotation`` against the folder
of the meta file instead, so a generated suite can be moved or copied as one folder.

``repeat_time`` follows InternVL's fine-tuning script: ``r < 1`` keeps the **first**
``int(len * r)`` records; ``r >= 1`` must be a whole number and repeats the list ``r`` times
(a fractional ``r > 1`` such as 1.5 is rejected with an error rather than silently truncated).

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
ROLES = ("system", "human", "gpt")
RECORD_KINDS = ("text", "image", "multi_image", "video")

# Keys of one meta entry that InternVL's training scripts read (the optional ones included).
META_REQUIRED_KEYS = ("root", "annotation")
META_OPTIONAL_KEYS = (
    "data_augment",
    "max_dynamic_patch",
    "min_dynamic_patch",
    "repeat_time",
    "length",
    "min_num_frame",
    "max_num_frame",
    "sampling_method",
)
# Keys of one record that have a meaning in the format; any other key (``meta``, ``fault``, ...)
# is kept in ``Record.extra`` and written back unchanged.
RECORD_KEYS = ("id", "image", "video", "width", "height", "width_list", "height_list", "conversations")


class MetaError(ValueError):
    """A meta JSON file (or one of its entries) is malformed. The message names file and key."""


class RecordError(ValueError):
    """A JSONL record is malformed.

    ``file`` and ``line`` (1-based) locate it, ``reason`` is a short code used to count skips in
    lenient mode (``invalid_json``, ``not_object``, ``bad_conversations``, ``bad_turn``,
    ``bad_role``, ``bad_order``, ``no_answer``, ``bad_image``, ``bad_video``, ``bad_size``,
    ``placeholder_count``, ``bad_id``), ``detail`` says what is wrong.
    """

    def __init__(self, file: str | os.PathLike | None, line: int | None, reason: str, detail: str):
        self.file = str(file) if file is not None else "<record>"
        self.line = line
        self.reason = reason
        self.detail = detail
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: {reason}: {detail}")


# --------------------------------------------------------------------------------------------
# meta JSON
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetMeta:
    """One entry of a meta JSON file (InternVL's per-data-set knobs).

    ``root`` and ``annotation`` are stored as written; :attr:`annotation_path` and
    :meth:`image_path` resolve them against ``base_dir`` (the meta file's folder).

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """

    name: str
    root: str
    annotation: str
    data_augment: bool = False
    max_dynamic_patch: int | None = None
    repeat_time: float = 1
    length: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None

    @property
    def annotation_path(self) -> Path:
        """The JSONL file, resolved against :attr:`base_dir` when relative."""
        return _resolve(self.base_dir, self.annotation)

    @property
    def root_path(self) -> Path:
        """The image root folder, resolved against :attr:`base_dir` when relative."""
        return _resolve(self.base_dir, self.root)

    def image_path(self, rel: str) -> Path:
        """Where an image (or video folder) of a record lies: ``root / rel``."""
        return self.root_path / rel

    def to_dict(self) -> dict[str, Any]:
        """The entry as it appears in the meta JSON (``name`` is the key, not a field)."""
        out: dict[str, Any] = {"root": self.root, "annotation": self.annotation, "data_augment": self.data_augment}
        if self.max_dynamic_patch is not None:
            out["max_dynamic_patch"] = self.max_dynamic_patch
        out["repeat_time"] = self.repeat_time
        if self.length is not None:
            out["length"] = self.length
        out.update(self.extra)
        return out

    def read_records(self, strict: bool = True) -> tuple[list[Record], Counter]:
        """Read this data set's JSONL and apply ``repeat_time`` (see :func:`apply_repeat_time`).

        Returns ``(records, skipped)`` as :func:`read_records` does.
        """
        records, skipped = read_records(self.annotation_path, strict=strict)
        return apply_repeat_time(records, self.repeat_time, where=f"meta entry {self.name!r}"), skipped


def _resolve(base: Path | None, p: str) -> Path:
    path = Path(p)
    if path.is_absolute() or base is None:
        return path
    return base / path


def _meta_error(file: str, name: str | None, key: str | None, msg: str) -> MetaError:
    where = file
    if name is not None:
        where += f": entry {name!r}"
    if key is not None:
        where += f", key {key!r}"
    return MetaError(f"{where}: {msg}")


def parse_meta(
    data: Any, *, file: str = "<meta>", base_dir: Path | None = None, allow_unknown_keys: bool = False
) -> dict[str, DatasetMeta]:
    """Validate a decoded meta JSON object and return ``{name: DatasetMeta}`` in file order.

    Unknown keys in an entry raise :class:`MetaError` (a misspelt ``repeat_times`` would
    otherwise be ignored silently) unless ``allow_unknown_keys``; they are then kept in
    ``DatasetMeta.extra``.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    if not isinstance(data, dict) or not data:
        raise _meta_error(file, None, None, "expected a non-empty JSON object {name: entry}")
    out: dict[str, DatasetMeta] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise _meta_error(file, name, None, f"entry must be an object, got {type(entry).__name__}")
        for key in META_REQUIRED_KEYS:
            if key not in entry:
                raise _meta_error(file, name, key, "missing required key")
            if not isinstance(entry[key], str):
                raise _meta_error(file, name, key, f"must be a string, got {entry[key]!r}")
        if not entry["annotation"].endswith(".jsonl"):
            raise _meta_error(file, name, "annotation", f"must end in .jsonl, got {entry['annotation']!r}")
        unknown = [k for k in entry if k not in META_REQUIRED_KEYS + META_OPTIONAL_KEYS]
        if unknown and not allow_unknown_keys:
            raise _meta_error(
                file, name, unknown[0], f"unknown key (known: {', '.join(META_REQUIRED_KEYS + META_OPTIONAL_KEYS)})"
            )
        augment = entry.get("data_augment", False)
        if not isinstance(augment, bool):
            raise _meta_error(file, name, "data_augment", f"must be true or false, got {augment!r}")
        mdp = entry.get("max_dynamic_patch")
        if mdp is not None and (isinstance(mdp, bool) or not isinstance(mdp, int) or mdp < 1):
            raise _meta_error(file, name, "max_dynamic_patch", f"must be an integer >= 1, got {mdp!r}")
        repeat = entry.get("repeat_time", 1)
        try:
            check_repeat_time(repeat)
        except ValueError as exc:
            raise _meta_error(file, name, "repeat_time", str(exc)) from None
        length = entry.get("length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
            raise _meta_error(file, name, "length", f"must be an integer >= 0, got {length!r}")
        extra = {k: v for k, v in entry.items() if k not in ("root", "annotation", "data_augment",
                                                             "max_dynamic_patch", "repeat_time", "length")}
        out[name] = DatasetMeta(
            name=name, root=entry["root"], annotation=entry["annotation"], data_augment=augment,
            max_dynamic_patch=mdp, repeat_time=repeat, length=length, extra=extra, base_dir=base_dir,
        )
    return out


def read_meta(path: str | os.PathLike, *, allow_unknown_keys: bool = False) -> dict[str, DatasetMeta]:
    """Read and validate a meta JSON file; relative paths resolve against its folder.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MetaError(f"{path}: not valid JSON ({exc})") from None
    return parse_meta(data, file=str(path), base_dir=path.parent, allow_unknown_keys=allow_unknown_keys)


def write_meta(path: str | os.PathLike, metas: dict[str, DatasetMeta] | Iterable[DatasetMeta]) -> Path:
    """Write a meta JSON file (indent 2, keys in the order of :meth:`DatasetMeta.to_dict`)."""
    path = Path(path)
    items = metas.values() if isinstance(metas, dict) else metas
    data = {m.name: m.to_dict() for m in items}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def check_repeat_time(r: Any) -> float:
    """Validate a ``repeat_time``: a number > 0, and a whole number when it is >= 1."""
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
        raise ValueError(f"repeat_time must be a number > 0, got {r!r}")
    if r > 1 and not float(r).is_integer():
        raise ValueError(
            f"repeat_time {r!r} > 1 must be a whole number (InternVL repeats the list int(r) times; "
            "write e.g. 2 instead of 1.5, or split the data set)"
        )
    return float(r)


def apply_repeat_time(items: Sequence[Any], r: float, *, where: str = "repeat_time") -> list[Any]:
    """InternVL's ``repeat_time``: ``r < 1`` keeps the first ``int(len(items) * r)`` items,
    ``r >= 1`` (a whole number) repeats the list ``r`` times. No shuffling happens here.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    try:
        r = check_repeat_time(r)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if r < 1:
        return list(items[: int(len(items) * r)])
    return list(items) * int(r)


# --------------------------------------------------------------------------------------------
# JSONL records
# --------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One conversation record (one JSONL line).

    ``kind`` is ``text``, ``image``, ``multi_image`` or ``video``; ``images`` is always a list
    (empty for text and video). ``extra`` keeps every other key (``meta``, ``fault``, ``clip``,
    ...) so that :meth:`to_dict` writes the line back unchanged. ``source`` is ``(file, line)``
    when the record was read from a file.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """

    conversations: list[dict[str, str]]
    kind: str = "text"
    id: str | int | None = None
    images: list[str] = field(default_factory=list)
    video: str | None = None
    width_list: list[int] | None = None
    height_list: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: tuple[str, int] | None = None

    @property
    def system(self) -> str | None:
        """The leading system turn's text, or None."""
        if self.conversations and self.conversations[0]["from"] == "system":
            return self.conversations[0]["value"]
        return None

    @property
    def turns(self) -> list[dict[str, str]]:
        """The human / gpt turns (the system turn removed)."""
        return self.conversations[1:] if self.system is not None else list(self.conversations)

    @property
    def num_images(self) -> int:
        """Number of image files (0 for text and video)."""
        return len(self.images)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON object, in InternVL's key layout."""
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.kind == "image":
            out["image"] = self.images[0]
            if self.width_list is not None:
                out["width"] = self.width_list[0]
            if self.height_list is not None:
                out["height"] = self.height_list[0]
        elif self.kind == "multi_image":
            out["image"] = list(self.images)
            if self.width_list is not None:
                out["width_list"] = list(self.width_list)
            if self.height_list is not None:
                out["height_list"] = list(self.height_list)
        elif self.kind == "video":
            out["video"] = self.video
        out["conversations"] = [{"from": t["from"], "value": t["value"]} for t in self.conversations]
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        """One JSONL line (no trailing newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _size_list(obj: dict, key: str, n: int, file, line) -> list[int] | None:
    if key not in obj:
        return None
    value = obj[key]
    values = value if isinstance(value, list) else [value]
    if len(values) != n or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
        raise RecordError(file, line, "bad_size", f"{key!r} must give {n} positive integer(s), got {value!r}")
    return values


def parse_record(obj: Any, *, file: str | os.PathLike | None = None, line: int | None = None) -> Record:
    """Validate one decoded JSONL object and return a :class:`Record`.

    Checks: the conversation structure (optional leading system turn, then human / gpt
    alternating, starting with human and ending with gpt, string values), the media keys
    (``image`` string or non-empty list of strings, ``video`` string, not both, size lists of the
    right length) and the placeholders (text: no ``<image>``/``<video>``; single image: at most
    one ``<image>``; multi-image: exactly one ``<image>`` per image; video: one ``<video>``, in the
    first human turn; ``<image>`` only in human turns). Raises :class:`RecordError`.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    if not isinstance(obj, dict):
        raise RecordError(file, line, "not_object", f"expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise RecordError(file, line, "bad_id", f"'id' must be a string or integer, got {rid!r}")

    conv = obj.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError(file, line, "bad_conversations", "'conversations' must be a non-empty list")
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            raise RecordError(file, line, "bad_turn", f"turn {i} must be an object with exactly 'from' and 'value'")
        if not isinstance(turn["value"], str):
            raise RecordError(file, line, "bad_turn", f"turn {i}: 'value' must be a string")
        if turn["from"] not in ROLES:
            raise RecordError(file, line, "bad_role", f"turn {i}: unknown role {turn['from']!r} (expected {ROLES})")
    start = 1 if conv[0]["from"] == "system" else 0
    for i, turn in enumerate(conv[start:], start):
        expected = "human" if (i - start) % 2 == 0 else "gpt"
        if turn["from"] != expected:
            where = "only the first turn may be 'system'" if turn["from"] == "system" else "human/gpt must alternate"
            raise RecordError(file, line, "bad_order", f"turn {i} is {turn['from']!r}, expected {expected!r} ({where})")
    if len(conv) - start < 2 or conv[-1]["from"] != "gpt":
        raise RecordError(file, line, "no_answer", "the conversation must end with a 'gpt' turn")

    has_image, has_video = "image" in obj, "video" in obj
    if has_image and has_video:
        raise RecordError(file, line, "bad_video", "a record has either 'image' or 'video', not both")
    human_text = [t["value"] for t in conv if t["from"] == "human"]
    n_img = sum(v.count(IMAGE_PLACEHOLDER) for v in human_text)
    n_vid = sum(t["value"].count(VIDEO_PLACEHOLDER) for t in conv)
    for i, turn in enumerate(conv):
        if turn["from"] != "human" and IMAGE_PLACEHOLDER in turn["value"]:
            raise RecordError(file, line, "placeholder_count", f"turn {i} ({turn['from']}) contains {IMAGE_PLACEHOLDER}")

    width_list = height_list = None
    images: list[str] = []
    video = None
    if has_image:
        image = obj["image"]
        if isinstance(image, str):
            if not image:
                raise RecordError(file, line, "bad_image", "'image' is an empty string")
            kind, images = "image", [image]
            if n_img > 1:
                raise RecordError(file, line, "placeholder_count", f"one image but {n_img} {IMAGE_PLACEHOLDER} placeholders")
            width_list = _size_list(obj, "width", 1, file, line)
            height_list = _size_list(obj, "height", 1, file, line)
            if "width_list" in obj or "height_list" in obj:
                raise RecordError(file, line, "bad_size", "a single-image record uses 'width'/'height', not *_list")
        elif isinstance(image, list) and image and all(isinstance(p, str) and p for p in image):
            kind, images = "multi_image", list(image)
            if n_img != len(images):
                raise RecordError(
                    file, line, "placeholder_count",
                    f"{len(images)} images but {n_img} {IMAGE_PLACEHOLDER} placeholders in the human turns",
                )
            width_list = _size_list(obj, "width_list", len(images), file, line)
            height_list = _size_list(obj, "height_list", len(images), file, line)
        else:
            raise RecordError(file, line, "bad_image", f"'image' must be a path or a non-empty list of paths, got {image!r}")
        if n_vid:
            raise RecordError(file, line, "placeholder_count", f"an image record contains {VIDEO_PLACEHOLDER}")
    elif has_video:
        video = obj["video"]
        if not isinstance(video, str) or not video:
            raise RecordError(file, line, "bad_video", f"'video' must be a non-empty path, got {video!r}")
        kind = "video"
        first_human = conv[start]["value"]
        if n_vid != 1 or first_human.count(VIDEO_PLACEHOLDER) != 1:
            raise RecordError(file, line, "placeholder_count", f"a video record needs exactly one {VIDEO_PLACEHOLDER}, in the first human turn")
        if n_img:
            raise RecordError(file, line, "placeholder_count", f"a video record contains {IMAGE_PLACEHOLDER}")
    else:
        kind = "text"
        if n_img or n_vid:
            raise RecordError(file, line, "placeholder_count", "a text-only record contains an image/video placeholder")
        for key in ("width", "height", "width_list", "height_list"):
            if key in obj:
                raise RecordError(file, line, "bad_size", f"a text-only record has {key!r}")

    extra = {k: v for k, v in obj.items() if k not in RECORD_KEYS}
    source = (str(file), line) if file is not None and line is not None else None
    return Record(
        conversations=[{"from": t["from"], "value": t["value"]} for t in conv], kind=kind, id=rid,
        images=images, video=video, width_list=width_list, height_list=height_list, extra=extra, source=source,
    )


def read_records(path: str | os.PathLike, *, strict: bool = True) -> tuple[list[Record], Counter]:
    """Read a JSONL file of conversation records.

    ``strict=True`` raises :class:`RecordError` (file, line, reason) at the first malformed
    line; ``strict=False`` skips malformed lines and counts them by reason. Blank lines are
    ignored. Returns ``(records, skipped)`` where ``skipped`` is a ``Counter`` of reasons
    (always empty in strict mode).

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    records: list[Record] = []
    skipped: Counter = Counter()
    with path.open(encoding="utf-8") as fh:
        for lineno, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise RecordError(path, lineno, "invalid_json", str(exc)) from None
                records.append(parse_record(obj, file=path, line=lineno))
            except RecordError as err:
                if strict:
                    raise
                skipped[err.reason] += 1
    return records, skipped


def write_records(path: str | os.PathLike, records: Iterable[Record | dict]) -> Path:
    """Write records (``Record`` objects or plain dicts) as JSONL, one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            obj = rec.to_dict() if isinstance(rec, Record) else rec
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path
