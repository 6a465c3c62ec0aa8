"""Real data sets through `datasets`, mapped to InternVL's JSONL records.

At ``gpu`` scale minivl trains and evaluates on public data sets. They come in a few common
layouts; each mapper here turns one row of such a data set into a record dict of InternVL's
format (``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}, ...]}``),
saving the row's images as PNG files under a local folder (the meta JSON's ``root``):

* :func:`map_llava`: LLaVA-style rows, ``{"id", "image", "conversations"}``;
* :func:`map_cauldron`: the_cauldron-style rows, ``{"images": [PIL], "texts": [{"user",
  "assistant", "source"}]}``;
* :func:`map_mmmu`: MMMU-style multiple choice, ``{"id", "question", "options", "answer",
  "image_1".."image_7"}``.

A mapper has the signature ``mapper(example, index, image_dir) -> record | None`` (``None``
skips the row). :func:`map_dataset` runs one over a ``datasets.Dataset`` or a streaming
``IterableDataset``; :func:`load_hub_dataset` loads a data set (a local file or folder, or a
Hub id when online) and maps it.

Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Mapper = Callable[[dict, int, Path], "dict | None"]

ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}
MMMU_MC_SUFFIX = "Answer with the option's letter from the given choices directly."
MMMU_OPEN_SUFFIX = "Answer the question using a single word or phrase."
MMMU_MAX_IMAGES = 7
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}
_IMAGE_REF = re.compile(r"<image (\d+)>")


def safe_name(text: Any) -> str:
    """A file-name-safe version of an id: anything but letters, digits, ``-``, ``_``, ``.`` becomes ``_``.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return name or "item"


def _as_pil(image: Any, where: str):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and image.get("bytes") is not None:  # an undecoded datasets Image
        return Image.open(io.BytesIO(image["bytes"]))
    if isinstance(image, dict) and image.get("path"):
        return Image.open(image["path"])
    raise TypeError(f"{where}: expected a PIL image (or a datasets image dict), got {type(image).__name__}")


def save_image(image: Any, image_dir: str | os.PathLike, name: str, where: str = "image") -> str:
    """Save an image as ``image_dir/name.png`` and return ``"name.png"`` (relative to ``image_dir``).

    Modes PNG cannot hold (CMYK, YCbCr, float) are converted to RGB first.
    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    pil = _as_pil(image, where)
    if pil.mode not in _PNG_MODES:
        pil = pil.convert("RGB")
    rel = f"{name}.png"
    path = Path(image_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, format="PNG")
    return rel


def _image_labels(n: int) -> str:
    """``"<image>\\n"`` for one image, ``"Image-1: <image>\\nImage-2: <image>\\n..."`` for several (report Fig. 3)."""
    if n == 1:
        return "<image>\n"
    return "".join(f"Image-{k}: <image>\n" for k in range(1, n + 1))


def map_llava(example: dict, index: int, image_dir: str | os.PathLike, *, image_source_dir: str | None = None,
              id_prefix: str = "llava") -> dict:
    """A LLaVA-style row -> record. Roles ``human``/``user`` -> ``human``, ``gpt``/``assistant`` -> ``gpt``.

    ``image`` may be a PIL image (saved as ``<id>.png``), a relative path (kept as it is, or
    copied from ``image_source_dir`` into ``image_dir`` when that is given), a list of either,
    or missing/``None`` for a text-only row. The text, ``<image>`` placeholders included, is
    kept unchanged. The id is the row's ``id``, else ``"{id_prefix}-{index}"``.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    rid = example.get("id")
    rid = f"{id_prefix}-{index}" if rid in (None, "") else str(rid)
    turns = example.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"LLaVA row {index} ({rid}): 'conversations' must be a non-empty list")
    conversations = []
    for turn in turns:
        role = ROLE_ALIASES.get(str(turn.get("from", turn.get("role", ""))).lower())
        value = turn.get("value", turn.get("content"))
        if role is None or value is None:
            raise ValueError(f"LLaVA row {index} ({rid}): cannot read turn {turn!r} "
                             f"(need 'from' in {sorted(ROLE_ALIASES)} and 'value')")
        conversations.append({"from": role, "value": str(value)})
    record: dict[str, Any] = {"id": rid}
    image = example.get("image")
    images = image if isinstance(image, list) else ([] if image in (None, "") else [image])
    paths = []
    for k, img in enumerate(images):
        suffix = "" if len(images) == 1 else f"_{k + 1}"
        if isinstance(img, str):
            if image_source_dir is not None:
                target = Path(image_dir) / img
                target.parent.mkdir(parents=True, exist_ok=True)
                source = Path(image_source_dir) / img
                if not source.is_file():
                    raise FileNotFoundError(f"LLaVA row {index} ({rid}): image {source} not found")
                shutil.copyfile(source, target)
            paths.append(img)
        else:
            paths.append(save_image(img, image_dir, safe_name(rid) + suffix, f"LLaVA row {index} ({rid})"))
    if paths:
        record["image"] = paths[0] if len(paths) == 1 else paths
    record["conversations"] = conversations
    return record


def map_cauldron(example: dict, index: int, image_dir: str | os.PathLike, *, id_prefix: str = "cauldron") -> dict:
    """A the_cauldron-style row -> record with id ``"{id_prefix}-{index}"``.

    Each ``texts`` entry gives one human turn (``user``) and one gpt turn (``assistant``).
    The images are saved as ``{id}_{k}.png`` (k from 1); the first human turn starts with
    ``"<image>\\n"`` for one image, or ``"Image-1: <image>\\nImage-2: <image>\\n..."`` for
    several, InternVL's multi-image layout (report section 3.1).

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    rid = f"{id_prefix}-{index}"
    texts = example.get("texts")
    if not isinstance(texts, list) or not texts:
        raise ValueError(f"the_cauldron row {index}: 'texts' must be a non-empty list of {{user, assistant}}")
    images = example.get("images") or []
    paths = [save_image(img, image_dir, f"{safe_name(rid)}_{k + 1}", f"the_cauldron row {index}")
             for k, img in enumerate(images)]
    conversations = []
    for k, turn in enumerate(texts):
        if "user" not in turn or "assistant" not in turn:
            raise ValueError(f"the_cauldron row {index}: text {k} needs 'user' and 'assistant', got {sorted(turn)}")
        user = str(turn["user"])
        if k == 0 and paths:
            user = _image_labels(len(paths)) + user
        conversations.append({"from": "human", "value": user})
        conversations.append({"from": "gpt", "value": str(turn["assistant"])})
    record: dict[str, Any] = {"id": rid}
    if paths:
        record["image"] = paths[0] if len(paths) == 1 else paths
    record["conversations"] = conversations
    return record


def parse_options(options: Any, where: str = "options") -> list[str]:
    """MMMU's ``options``: a Python-literal string such as ``"['1', '2']"`` (or a list) -> list of str.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    if isinstance(options, (list, tuple)):
        return [str(o) for o in options]
    if options in (None, ""):
        return []
    try:
        value = ast.literal_eval(str(options))
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"{where}: cannot parse {options!r} as a list literal") from err
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return [str(o) for o in value]


def map_mmmu(example: dict, index: int, image_dir: str | os.PathLike) -> dict:
    """An MMMU-style row -> one-turn record: question with options, answer letter.

    The non-empty ``image_1``..``image_7`` are saved as ``{id}_{k}.png`` and renumbered in
    order (``Image-1``, ``Image-2``, ...); the question starts with
    ``"Image-1: <image>\\n..."`` (the ``Image-k`` label is kept for a single image too, so
    that the references resolve), and each ``<image k>`` reference in the question or the
    options becomes ``Image-j``. Options render as ``"A. ..."`` lines followed by the MMMU
    instruction of InternVL's evaluation (:data:`MMMU_MC_SUFFIX`); a row without options is an
    open question (:data:`MMMU_OPEN_SUFFIX`). The gpt turn is the answer (a letter for
    multiple choice). A reference to an image the row does not have raises ``ValueError``.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    rid = str(example.get("id") if example.get("id") not in (None, "") else f"mmmu-{index}")
    where = f"MMMU row {index} ({rid})"
    for key in ("question", "answer"):
        if example.get(key) is None:
            raise ValueError(f"{where}: missing {key!r}")
    renumber: dict[int, int] = {}
    paths = []
    for k in range(1, MMMU_MAX_IMAGES + 1):
        image = example.get(f"image_{k}")
        if image is None:
            continue
        renumber[k] = len(paths) + 1
        paths.append(save_image(image, image_dir, f"{safe_name(rid)}_{k}", where))

    def refs(text: str) -> str:
        def sub(match: re.Match) -> str:
            k = int(match.group(1))
            if k not in renumber:
                raise ValueError(f"{where}: the text refers to <image {k}> but image_{k} is empty")
            return f"Image-{renumber[k]}"

        return _IMAGE_REF.sub(sub, text)

    options = parse_options(example.get("options"), f"{where} options")
    if len(options) > 26:
        raise ValueError(f"{where}: {len(options)} options, more than A-Z")
    lines = ["".join(f"Image-{j}: <image>\n" for j in range(1, len(paths) + 1)) + refs(str(example["question"]))]
    lines += [f"{chr(ord('A') + i)}. {refs(opt)}" for i, opt in enumerate(options)]
    lines.append(MMMU_MC_SUFFIX if options else MMMU_OPEN_SUFFIX)
    record: dict[str, Any] = {"id": rid}
    if paths:
        record["image"] = paths[0] if len(paths) == 1 else paths
    record["conversations"] = [{"from": "human", "value": "\n".join(lines)},
                               {"from": "gpt", "value": str(example["answer"])}]
    return record


def map_dataset(dataset: Iterable[dict], mapper: Mapper, image_dir: str | os.PathLike,
                limit: int | None = None) -> list[dict]:
    """Map every row (the first ``limit`` rows) of a ``Dataset`` / ``IterableDataset`` to records.

    Rows for which the mapper returns ``None`` are skipped. Errors name the row.
    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, example in enumerate(dataset):
        if limit is not None and index >= limit:
            break
        record = mapper(dict(example), index, image_dir)
        if record is not None:
            records.append(record)
    return records


_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow",
                   ".txt": "text"}


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub_dataset(name_or_path: str | os.PathLike, split: str = "train", mapper: Mapper | None = None,
                     streaming: bool = False, *, image_dir: str | os.PathLike | None = None,
                     limit: int | None = None, **load_kwargs):
    """Load a data set with ``datasets`` and, with a ``mapper``, map it to records.

    ``name_or_path`` may be a folder written by ``Dataset.save_to_disk`` (``load_from_disk``),
    any other local folder or a ``.json``/``.jsonl``/``.parquet``/``.csv``/``.arrow`` file
    (``load_dataset``; a single file has one split, ``"train"``), or a Hub id such as
    ``"HuggingFaceM4/the_cauldron"`` (extra keyword arguments, e.g. a config ``name=``, go to
    ``load_dataset``). ``streaming=True`` gives an ``IterableDataset`` (rows are read lazily).

    Without ``mapper`` the data set is returned; with one, the list of records of
    :func:`map_dataset` (``image_dir`` is then required). A Hub id that cannot be loaded,
    offline (``HF_HUB_OFFLINE=1``) or without a network, raises ``RuntimeError`` saying so.

    Explained in chapter 7 (notebooks/07_data_filtering.ipynb).
    """
    import datasets

    if mapper is not None and image_dir is None:
        raise ValueError("load_hub_dataset: pass image_dir= (where the mapped images are saved) with a mapper")
    path = Path(name_or_path).expanduser()
    saved = path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())
    if saved:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"{path}: no split {split!r}; have {sorted(ds)}")
            ds = ds[split]
        if streaming:
            ds = ds.to_iterable_dataset()
    elif path.exists():
        if path.is_dir():
            ds = datasets.load_dataset(str(path), split=split, streaming=streaming, **load_kwargs)
        else:
            builder = _LOCAL_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"{path}: unknown file type {path.suffix!r}; expected one of {sorted(_LOCAL_BUILDERS)}")
            ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, streaming=streaming,
                                       **load_kwargs)
    else:
        name = str(name_or_path)
        try:
            ds = datasets.load_dataset(name, split=split, streaming=streaming, **load_kwargs)
        except Exception as err:  # noqa: BLE001 - rethrown with the reason a reader needs
            if _offline():
                raise RuntimeError(
                    f"cannot load {name!r}: it is not a local file or folder, and the Hugging Face Hub is offline "
                    f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set) with no cached copy. Download it on a "
                    f"machine with a network (datasets.load_dataset({name!r}).save_to_disk(folder)) and pass "
                    f"the folder instead.") from err
            raise RuntimeError(f"cannot load {name!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
                               f"Check the id and your network, or pass a local file or folder.") from err
    if mapper is None:
        return ds
    return map_dataset(ds, mapper, image_dir, limit=limit)
