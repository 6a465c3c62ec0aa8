"""From InternVL records to model inputs: tiles, tokens, labels, with every skip counted.

One :class:`SupervisedDataset` per entry of a meta JSON (InternVL's ``LazySupervisedDataset``):
a record becomes

* ``pixel_values`` ``(tiles, 3, S, S)``: single image -> :func:`dynamic_preprocess` with the
  entry's ``max_dynamic_patch``; multi-image -> ``max(1, max_num // n)`` tiles per image, each
  with its thumbnail; video -> one tile per sampled frame; text -> one dummy tile with
  ``image_flags`` 0 (the official trick that keeps the ViT in every step's graph);
* ``input_ids`` / ``labels`` from :func:`minivl.text.preprocess_internvl2_5` (only assistant
  tokens supervised, ``<image>`` expanded to ``<img><IMG_CONTEXT>*n</img>``);
* JPEG re-encoding per tile when the entry says ``data_augment`` (training only).

A record that cannot become a sample (missing or corrupt image, too long, placeholder count
that does not match its images, malformed conversation) is **skipped and counted by reason**
(:attr:`SupervisedDataset.skips`): ``__getitem__`` returns ``None`` and the collate functions
and the packed dataset drop it with a count. Nothing disappears silently.

:func:`build_datasets` reads a meta JSON into one data set per entry (``repeat_time``
applied); :class:`MixtureDataset` concatenates them for map-style training.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import functools
import logging
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from minivl.data.records import DatasetMeta, Record, RecordError, read_meta
from minivl.text.prompt import (
    ConversationError,
    PlaceholderMismatchError,
    SampleTooLongError,
    preprocess_internvl2_5,
)
from minivl.vision.tiling import get_frame_indices
from minivl.vision.transforms import ImageLoadError, load_image_tiles, load_video_tiles

logger = logging.getLogger(__name__)

SKIP_REASONS = ("missing_file", "corrupt_image", "too_long", "placeholder_mismatch", "bad_conversation")
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


@dataclass
class DataConfig:
    """How records become samples (InternVL's data arguments).

    ``num_image_token`` is the number of LLM tokens per tile (256 for 448/14/0.5, 16 for the
    tiny 112/14/0.5 model). ``max_dynamic_patch`` is the default tile budget; a meta entry's
    own ``max_dynamic_patch`` wins. Videos use between ``min_num_frame`` and
    ``max_num_frame`` frames (8-32 in InternVL 2.5), sampled at random in training and at
    interval midpoints otherwise.

    ``token_cache_size`` keeps the token ids and labels of up to that many samples per data set
    (0: none). They depend only on the record and its tiles per image (and frames), so a cached
    sample is identical to a rebuilt one. At cpu scale, where the whole suite fits in a few MB,
    it takes a fifth off a packed batch's data time from the second epoch on
    (``benchmarks/token_cache.py``: 36.1 -> 28.7 ms). Off by default: a large corpus would fill
    memory (in every loader worker).
    """

    image_size: int = 448
    num_image_token: int = 256
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    max_length: int | None = 16384
    truncation: str = "error"
    min_num_frame: int = 8
    max_num_frame: int = 32
    system_message: str | None = None
    dummy_tile_for_text: bool = True
    token_cache_size: int = 0


@functools.lru_cache(maxsize=8)
def _blank_tiles(n: int, size: int) -> torch.Tensor:
    """Shared read-only dummy tiles (allocating and filling a fresh one per text sample is slow
    when torch uses several threads); collation copies them."""
    return torch.zeros((n, 3, size, size))


class SupervisedDataset(Dataset):
    """One data set of a meta file: record ``i`` -> a sample dict, or ``None`` when skipped.

    ``train`` turns on JPEG augmentation (when the entry's ``data_augment`` is set) and random
    frame sampling; ``seed`` and ``epoch`` make both reproducible (the random draws depend on
    ``(seed, epoch, index)`` only, not on the order samples are read).
    """

    def __init__(self, meta: DatasetMeta, tokenizer: Any, config: DataConfig, *, train: bool = True, seed: int = 0,
                 strict_records: bool = False, records: Sequence[Record] | None = None) -> None:
        self.meta = meta
        self.tokenizer = tokenizer
        self.config = config
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.skips: Counter[str] = Counter()
        self.skip_examples: dict[str, str] = {}
        if records is None:
            records, bad = meta.read_records(strict=strict_records)
            for reason, n in bad.items():  # malformed JSONL lines, counted once at load time
                self.skips[f"record_{reason}"] += n
        self.records = list(records)
        # (record index, tiles per image, frames) -> (input_ids, labels, attention_mask)
        self._token_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def max_num(self) -> int:
        return self.meta.max_dynamic_patch or self.config.max_dynamic_patch

    def _rng(self, index: int) -> random.Random:
        # a stable hash (Python's hash() of a str changes between processes)
        return random.Random(zlib.crc32(f"{self.seed}/{self.epoch}/{self.meta.name}/{index}".encode()))

    def _skip(self, reason: str, record: Record, detail: str) -> None:
        self.skips[reason] += 1
        where = f"{record.source[0]}:{record.source[1]}" if record.source else f"{self.meta.name} id={record.id}"
        self.skip_examples.setdefault(reason, f"{where}: {detail}")
        logger.warning("skipped %s (%s): %s", where, reason, detail)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        try:
            return self.build(record, self._rng(index), index)
        except FileNotFoundError as e:
            self._skip("missing_file", record, str(e))
        except ImageLoadError as e:
            self._skip("corrupt_image", record, str(e))
        except SampleTooLongError as e:
            self._skip("too_long", record, str(e))
        except PlaceholderMismatchError as e:
            self._skip("placeholder_mismatch", record, str(e))
        except (ConversationError, RecordError) as e:
            self._skip("bad_conversation", record, str(e))
        return None

    def build(self, record: Record, rng: random.Random, index: int | None = None) -> dict[str, Any]:
        """Turn one record into a sample; raises on bad input (``__getitem__`` counts it).
        ``index`` (the record's) lets ``config.token_cache_size`` reuse its token ids."""
        cfg = self.config
        augment = self.train and self.meta.data_augment
        num_frames = None
        if record.kind in ("image", "multi_image"):
            paths = [self._existing(self.meta.image_path(p)) for p in record.images]
            pixel_values, num_patches = load_image_tiles(
                paths if record.kind == "multi_image" else paths[0], image_size=cfg.image_size,
                max_num=self.max_num, min_num=cfg.min_dynamic_patch, use_thumbnail=cfg.use_thumbnail,
                augment=augment, rng=rng)
        elif record.kind == "video":
            frames = self._video_frames(self._existing(self.meta.image_path(record.video)), rng)
            pixel_values, num_patches = load_video_tiles(frames, image_size=cfg.image_size, augment=augment, rng=rng)
            num_frames = len(frames)
        else:
            num_patches = []
            pixel_values = _blank_tiles(1 if cfg.dummy_tile_for_text else 0, cfg.image_size)
        key = (index, tuple(num_patches), num_frames) if index is not None and cfg.token_cache_size else None
        tokens = self._token_cache.get(key) if key is not None else None
        if tokens is None:
            inputs = preprocess_internvl2_5(
                record.conversations, self.tokenizer, num_patches, num_image_token=cfg.num_image_token,
                num_frames=num_frames, system_message=cfg.system_message, max_length=cfg.max_length,
                truncation=cfg.truncation)
            tokens = (inputs.input_ids, inputs.labels, inputs.attention_mask)
            if key is not None and len(self._token_cache) < cfg.token_cache_size:
                self._token_cache[key] = tokens
        if key is not None:  # the sample's own copies: whoever receives it may write to them
            tokens = tuple(t.clone() for t in tokens)
        input_ids, labels, attention_mask = tokens
        flag = 0 if record.kind == "text" else 1
        length = input_ids.numel()
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "position_ids": torch.arange(length),
            "pixel_values": pixel_values,
            "image_flags": torch.full((pixel_values.shape[0],), flag, dtype=torch.long),
            "num_patches_list": list(num_patches),
            "kind": record.kind,
            "id": record.id,
        }

    @staticmethod
    def _existing(path: Path) -> Path:
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        return path

    def _video_frames(self, path: Path, rng: random.Random) -> list[Path]:
        """Frames of a video folder (sorted image files), sampled as InternVL does."""
        if not path.is_dir():
            raise ImageLoadError(str(path), "videos are folders of frame images in minivl (decoders are optional)")
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
        if not frames:
            raise ImageLoadError(str(path), "video folder holds no frame images")
        cfg = self.config
        if self.train:
            n = rng.randint(cfg.min_num_frame, cfg.max_num_frame)
            indices = get_frame_indices(n, len(frames), sample="rand", rng=rng)
        else:
            indices = get_frame_indices(min(cfg.max_num_frame, len(frames)), len(frames), sample="middle")
        return [frames[i] for i in indices]

    def length_estimates(self) -> list[int]:
        """Each record's length as InternVL's ``--group_by_length`` estimates it, without building
        a sample: a record's own ``length`` field when it has one; otherwise the token count of
        its turns joined by newlines (``"\\n".join(values)``, special tokens as the tokenizer
        adds them). InternVL caches those counts by the *character* length of the joined text
        and stores, under that key, the count plus ``num_image_token * (max_dynamic_patch +
        use_thumbnail)``: the first record of a character length gets its bare token count, and
        every later record of the same character length gets the first one's count plus the
        image allowance, images or not. minivl reproduces that, so that the groups are
        InternVL's; the values only order records, they are never a sample's true length.

        Explained in chapter 12 (notebooks/12_stage2_instruction_tuning.ipynb).
        """
        cfg = self.config
        allowance = cfg.num_image_token * (self.max_num + int(cfg.use_thumbnail))
        by_chars: dict[int, int] = {}
        lengths = []
        for record in self.records:
            if "length" in record.extra:
                lengths.append(int(record.extra["length"]))
                continue
            text = "\n".join(turn["value"] for turn in record.conversations)
            if len(text) in by_chars:
                lengths.append(by_chars[len(text)])
            else:
                n = len(self.tokenizer(text)["input_ids"])
                by_chars[len(text)] = n + allowance
                lengths.append(n)
        return lengths

    def scan(self) -> Counter[str]:
        """Build every sample once and return the skip counts by reason (a data report)."""
        for i in range(len(self)):
            self[i]
        return Counter(self.skips)


def build_datasets(meta_path: str | Path, tokenizer: Any, config: DataConfig, *, train: bool = True,
                   seed: int = 0, names: Sequence[str] | None = None,
                   strict_records: bool = False) -> list[SupervisedDataset]:
    """One :class:`SupervisedDataset` per entry of the meta JSON (``repeat_time`` applied).

    ``names`` keeps only those entries, in that order (a clear error for an unknown name).
    """
    metas = read_meta(meta_path)
    if names is not None:
        unknown = [n for n in names if n not in metas]
        if unknown:
            raise KeyError(f"{meta_path}: no data set named {unknown}; it has {sorted(metas)}")
        metas = {n: metas[n] for n in names}
    return [SupervisedDataset(m, tokenizer, config, train=train, seed=seed, strict_records=strict_records)
            for m in metas.values()]


class MixtureDataset(Dataset):
    """Several data sets end to end (sizes after repeats set their share of the mixture)."""

    def __init__(self, datasets: Sequence[SupervisedDataset]) -> None:
        if not datasets:
            raise ValueError("MixtureDataset: no data sets")
        self.datasets = list(datasets)
        self.offsets = [0]
        for d in self.datasets:
            self.offsets.append(self.offsets[-1] + len(d))

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(data set number, index inside it) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        lo, hi = 0, len(self.datasets)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.offsets[mid] <= index else (lo, mid)
        return lo, index - self.offsets[lo]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        d, i = self.locate(index)
        sample = self.datasets[d][i]
        if sample is not None:
            sample["dataset"] = self.datasets[d].meta.name
        return sample

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    @property
    def skips(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for d in self.datasets:
            total.update(d.skips)
        return total

    def length_estimates(self) -> list[int]:
        """:meth:`SupervisedDataset.length_estimates` of every data set, end to end (the
        indices of the mixture)."""
        return [n for d in self.datasets for n in d.length_estimates()]

    def weights(self) -> list[float]:
        """Each data set's share of the mixture: its length (after repeats) over the total."""
        return [len(d) / len(self) for d in self.datasets]


def skip_report(datasets: Sequence[SupervisedDataset]) -> str:
    """A table of skipped samples per data set and reason, with one example each."""
    lines = [f"{'data set':<16} {'samples':>8} {'skipped':>8}  reasons"]
    for d in datasets:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(d.skips.items())) or "-"
        lines.append(f"{d.meta.name:<16} {len(d):>8} {sum(d.skips.values()):>8}  {reasons}")
        for example in (e for _, e in sorted(d.skip_examples.items())):
            lines.append(f"{'':<16} {'':>8} {'':>8}    e.g. {example[:120]}")
    return "\n".join(lines)


def drop_skipped(samples: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The samples of a batch that were not skipped (the skips are already counted)."""
    return [s for s in samples if s is not None]


def conversation_texts(meta_path: str | Path, include_system: bool = False) -> list[str]:
    """Every turn of every record of a meta JSON as plain text (placeholders removed).

    The corpus the cpu-scale tokenizer and LLM warm start are trained on.
    """
    texts = []
    for meta in read_meta(meta_path).values():
        records, _ = meta.read_records(strict=False)
        for record in records:
            for turn in record.conversations:
                if turn["from"] == "system" and not include_system:
                    continue
                text = turn["value"].replace("<image>", "").replace("<video>", "").strip()
                if text:
                    texts.append(text)
    return texts
