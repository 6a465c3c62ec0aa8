"""InternVL's packed dataset: select, search, pack, maintain (InternVL 2.5 report, section 4.3).

Samples of very different lengths (a one-line answer about a one-tile image next to a long
document with twelve tiles) waste compute when padded into a batch. InternVL instead packs
several samples into one row of at most ``T = max_packed_tokens`` tokens and
``K = num_images_expected`` tiles, and isolates them in attention with ``cu_seqlens``.

The loop, run independently in every DataLoader worker of every rank:

1. **select**: draw a dataset with probability ``len_i / sum_j len_j`` (after repeats),
   using ``np.random.default_rng(global_worker_id)``; take its next sample;
2. **search**: scan the buffers, kept sorted by tile count (most first), and take the first
   one where the sample still fits (``tiles <= K`` and ``tokens <= T``);
3. **pack**: append the sample to that buffer (or start a new one); positions restart at 0
   for every sample and ``data_index`` numbers the samples of a pack;
4. **maintain**: a sample longer than T is split (never inside ``<img>...</img>``); a buffer
   with exactly T tokens, or at the front with exactly K tiles, is yielded; while there are
   more than ``max_buffer_size`` buffers the front one is yielded; at the end all are flushed.

Nothing is dropped silently: a sample (or split piece) with more than K tiles, a piece that
cannot be cut under T, or a piece with almost no supervised label is logged and counted in
:attr:`PackedDataset.skip_counts` and in the next pack's ``statistics``.

A *source* is any sequence of sample dicts (``__len__`` and ``__getitem__``: a list, a
map-style ``torch.utils.data.Dataset``). A sample holds ``input_ids`` (L,), ``labels`` (L,),
``pixel_values`` (tiles, 3, S, S) (0 tiles, or one dummy tile with ``image_flags`` 0, for
text-only samples), ``image_flags`` (tiles,) and optionally ``position_ids`` (L,).

Explained in chapter 8 (notebooks/08_packing.ipynb).
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from minivl.train.loss import IGNORE_INDEX, token_loss_weights

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("input_ids", "labels", "pixel_values", "image_flags")


@runtime_checkable
class SampleSource(Protocol):
    """What :class:`PackedDataset` reads from: a sized, indexable collection of sample dicts."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]: ...


@dataclass
class _Sample:
    """One sample (or split piece) ready to pack."""

    input_ids: torch.Tensor  # (L,)
    labels: torch.Tensor  # (L,)
    position_ids: torch.Tensor  # (L,)
    pixel_values: torch.Tensor  # (tiles, 3, S, S)
    image_flags: torch.Tensor  # (tiles,)
    source: int  # dataset index

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_tiles(self) -> int:
        return int(self.pixel_values.shape[0])


@dataclass
class _Buffer:
    samples: list[_Sample] = field(default_factory=list)
    num_tokens: int = 0
    num_tiles: int = 0

    def add(self, sample: _Sample) -> None:
        self.samples.append(sample)
        self.num_tokens += sample.num_tokens
        self.num_tiles += sample.num_tiles


def _as_sample(raw: dict[str, Any], source: int, where: str) -> _Sample:
    """Check a raw sample dict and turn it into a :class:`_Sample`; fail loudly naming the key."""
    if not isinstance(raw, dict):
        raise TypeError(f"{where}: a sample must be a dict of tensors, got {type(raw).__name__}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise KeyError(f"{where}: sample has no {key!r} (keys: {sorted(raw)})")
    input_ids = torch.as_tensor(raw["input_ids"]).long().reshape(-1)
    labels = torch.as_tensor(raw["labels"]).long().reshape(-1)
    if labels.shape != input_ids.shape:
        raise ValueError(f"{where}: 'labels' has {labels.numel()} tokens, 'input_ids' has {input_ids.numel()}")
    if input_ids.numel() == 0:
        raise ValueError(f"{where}: 'input_ids' is empty")
    if raw.get("position_ids") is not None:
        position_ids = torch.as_tensor(raw["position_ids"]).long().reshape(-1)
        if position_ids.shape != input_ids.shape:
            raise ValueError(f"{where}: 'position_ids' has {position_ids.numel()} entries, expected {input_ids.numel()}")
    else:
        position_ids = torch.arange(input_ids.numel())
    pixel_values = torch.as_tensor(raw["pixel_values"])
    if pixel_values.dim() != 4:
        raise ValueError(f"{where}: 'pixel_values' must be (tiles, 3, S, S), got shape {tuple(pixel_values.shape)}")
    image_flags = torch.as_tensor(raw["image_flags"]).long().reshape(-1)
    if image_flags.numel() != pixel_values.shape[0]:
        raise ValueError(f"{where}: 'image_flags' has {image_flags.numel()} entries for {pixel_values.shape[0]} tiles")
    return _Sample(input_ids, labels, position_ids, pixel_values, image_flags, source)


def _apply_repeat(n: int, repeat_time: float, where: str) -> list[int]:
    """InternVL's ``repeat_time``: < 1 keeps the first ``int(n r)`` items, an integer > 1 repeats."""
    if repeat_time <= 0:
        raise ValueError(f"{where}: repeat_time must be > 0, got {repeat_time}")
    if repeat_time < 1:
        return list(range(int(n * repeat_time)))
    if repeat_time != int(repeat_time):
        raise ValueError(f"{where}: repeat_time > 1 must be an integer, got {repeat_time}")
    return list(range(n)) * int(repeat_time)


class PackedDataset(IterableDataset):
    """InternVL's packed dataset over several sources (one per dataset of the meta file).

    Args:
        sources: sequences of sample dicts (see :class:`SampleSource`).
        max_packed_tokens: ``T``, the most tokens per pack (16384 in every 2.5 stage).
        num_images_expected: ``K``, the most tiles per pack (48 in 2.5; tiles, not images).
        max_buffer_size: buffers kept open before the one with most tiles is yielded (20).
        strict_mode: pad every pack to exactly K tiles (zero tiles, ``image_flags`` 0) and
            T tokens (``pad_token_id``, labels ignored, ``data_index`` -1). False in 2.5.
        repeat_times: per-source ``repeat_time`` (default 1 each).
        shuffle: shuffle each source's (repeated) order with ``default_rng(source index)``.
        seed: None reproduces InternVL's seeding (``default_rng(global_worker_id)`` for the
            dataset choice, ``default_rng(source index)`` for the shuffle); an int mixes in.
        img_start_token_id / img_end_token_id: ids of ``<img>`` and ``</img>``; a sample
            longer than T is split only between image blocks.
        pad_token_id: token used for strict-mode padding.
        min_active_ratio: a split piece is kept only if more than this fraction of its
            labels is supervised (InternVL's ``check_valid``: 1/256).
        rank / world_size: default to ``torch.distributed`` when it is initialised, else 0 / 1.

    Every pack is a dict: ``input_ids``, ``labels``, ``position_ids``, ``data_index``,
    ``type_ids`` (L,); ``pixel_values`` (tiles, 3, S, S), ``image_flags`` (tiles,);
    ``statistics`` (``num_samples``, ``num_tokens``, ``num_padding_tokens``, ``num_tiles``,
    ``num_padding_tiles``, ``num_skipped``: samples or pieces skipped since the previous pack
    of this worker).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """

    def __init__(
        self,
        sources: Sequence[SampleSource],
        max_packed_tokens: int = 16384,
        num_images_expected: int = 48,
        max_buffer_size: int = 20,
        strict_mode: bool = False,
        repeat_times: Sequence[float] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        img_start_token_id: int | None = None,
        img_end_token_id: int | None = None,
        pad_token_id: int = 0,
        min_active_ratio: float = 1 / 256,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if len(sources) == 0:
            raise ValueError("PackedDataset: no sources")
        for i, src in enumerate(sources):
            if not (hasattr(src, "__len__") and hasattr(src, "__getitem__")):
                raise TypeError(f"PackedDataset: source {i} ({type(src).__name__}) needs __len__ and __getitem__")
        if max_packed_tokens < 1 or num_images_expected < 1 or max_buffer_size < 0:
            # K = 0 would yield every text-only sample alone (a buffer of 0 tiles is "full")
            raise ValueError("PackedDataset: needs max_packed_tokens >= 1, num_images_expected >= 1, "
                             f"max_buffer_size >= 0; got {max_packed_tokens}, {num_images_expected}, {max_buffer_size}")
        self.sources = list(sources)
        self.max_packed_tokens = int(max_packed_tokens)
        self.num_images_expected = int(num_images_expected)
        self.max_buffer_size = int(max_buffer_size)
        self.strict_mode = bool(strict_mode)
        self.repeat_times = list(repeat_times) if repeat_times is not None else [1] * len(self.sources)
        if len(self.repeat_times) != len(self.sources):
            raise ValueError(f"PackedDataset: {len(self.repeat_times)} repeat_times for {len(self.sources)} sources")
        self.shuffle = shuffle
        self.seed = seed
        self.img_start_token_id = img_start_token_id
        self.img_end_token_id = img_end_token_id
        self.pad_token_id = int(pad_token_id)
        self.min_active_ratio = float(min_active_ratio)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip_counts: Counter[str] = Counter()
        self._pending_skips = 0
        self._tile_shape: tuple[int, ...] | None = None

    # ----------------------------------------------------------------- bookkeeping
    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle and selection streams for a new pass (same epoch -> same packs)."""
        self.epoch = int(epoch)

    def _rng(self, *key: int) -> np.random.Generator:
        """``default_rng(key)`` as InternVL seeds it, with ``seed`` and ``epoch`` mixed in when set."""
        entropy = list(key) + ([self.seed] if self.seed is not None else []) + ([self.epoch] if self.epoch else [])
        return np.random.default_rng(entropy)  # default_rng([k]) == default_rng(k)

    def _skip(self, reason: str, detail: str) -> None:
        self.skip_counts[reason] += 1
        self._pending_skips += 1
        logger.error("PackedDataset skipped %s: %s", reason, detail)

    def _worker(self) -> tuple[int, int]:
        """(global worker id, total workers) = (rank * workers_per_rank + worker id, world * workers)."""
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world = dist.get_world_size() if world is None else world
            else:
                rank = 0 if rank is None else rank
                world = 1 if world is None else world
        info = get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker_id, world * workers

    def shard_indices(self, source: int, global_worker_id: int, num_workers: int) -> list[int]:
        """Indices of ``sources[source]`` read by one worker: repeat, shuffle, ``[id::num_workers]``."""
        order = _apply_repeat(len(self.sources[source]), self.repeat_times[source], f"source {source}")
        if self.shuffle:
            self._rng(source).shuffle(order)
        return order[global_worker_id::num_workers]

    # ----------------------------------------------------------------- splitting
    def _image_blocks(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """(start, end) token positions (inclusive) of every ``<img>...</img>`` block."""
        if self.img_start_token_id is None or self.img_end_token_id is None:
            return []
        starts = (ids == self.img_start_token_id).nonzero().flatten().tolist()
        ends = (ids == self.img_end_token_id).nonzero().flatten().tolist()
        if len(starts) != len(ends) or any(e <= s for s, e in zip(starts, ends)):
            raise ValueError(f"unbalanced <img>/</img> tokens at {starts} / {ends}")
        return list(zip(starts, ends))

    def _split(self, sample: _Sample) -> list[_Sample]:
        """Cut a sample longer than T into pieces of at most T tokens, never inside an image block.

        A cut at T that falls inside a block moves back to the block's ``<img>``. Each block's
        tiles go with it: one tile per block when the counts match, else in proportion to the
        block's ``<IMG_CONTEXT>`` tokens (every tile gives the same number). Pieces keep their
        original position ids (attention is isolated per piece, so only differences matter).
        """
        T = self.max_packed_tokens
        blocks = self._image_blocks(sample.input_ids)
        real = int((sample.image_flags != 0).sum())
        if real and not blocks:
            self._skip("too_long_without_image_markers",
                       f"{sample.num_tokens} tokens > {T} with {real} image tiles but no <img>/</img> ids to cut safely")
            return []
        if blocks:
            if real == len(blocks):
                tiles_per_block = [1] * len(blocks)
            else:
                ctx = [e - s - 1 for s, e in blocks]
                if real == 0 or sum(ctx) % real or any(c % (sum(ctx) // real) for c in ctx):
                    self._skip("too_long_unsplittable", f"cannot assign {real} tiles to image blocks of {ctx} tokens")
                    return []
                per_tile = sum(ctx) // real
                tiles_per_block = [c // per_tile for c in ctx]
            real_rows = (sample.image_flags != 0).nonzero().flatten()
            dummy_rows = (sample.image_flags == 0).nonzero().flatten()
            block_rows = torch.split(real_rows, tiles_per_block)
        starts = [s for s, _ in blocks]
        pieces: list[_Sample] = []
        lo = 0
        n = sample.num_tokens
        while lo < n:
            hi = min(lo + T, n)
            if hi < n:
                # a cut at hi separates tokens hi-1 and hi; move it back if it lands inside a block
                for s, e in blocks:
                    if s < hi <= e:
                        hi = s
                        break
                if hi <= lo:
                    self._skip("image_block_longer_than_max_tokens",
                               f"an <img> block at token {lo} does not fit in {T} tokens; {n - lo} tokens skipped")
                    break
            first = bisect.bisect_left(starts, lo)
            last = bisect.bisect_left(starts, hi)
            rows = [block_rows[j] for j in range(first, last)] if blocks else []
            if lo == 0 and blocks:
                rows = [dummy_rows] + rows
            rows_t = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
            if not blocks:  # no image: every (dummy) tile stays with the first piece
                rows_t = torch.arange(sample.num_tiles) if lo == 0 else torch.zeros(0, dtype=torch.long)
            piece = _Sample(
                sample.input_ids[lo:hi], sample.labels[lo:hi], sample.position_ids[lo:hi],
                sample.pixel_values[rows_t], sample.image_flags[rows_t], sample.source,
            )
            active = int((piece.labels != IGNORE_INDEX).sum())
            if active > piece.num_tokens * self.min_active_ratio:
                pieces.append(piece)
            else:
                self._skip("split_piece_without_labels", f"tokens {lo}:{hi} have {active} supervised labels")
            lo = hi
        return pieces

    # ----------------------------------------------------------------- the loop
    def _find_buffer(self, buffers: list[_Buffer], sample: _Sample) -> _Buffer | None:
        """First buffer (most tiles first) where the sample fits in K tiles and T tokens; popped."""
        for i, buf in enumerate(buffers):
            if (buf.num_tiles + sample.num_tiles <= self.num_images_expected
                    and buf.num_tokens + sample.num_tokens <= self.max_packed_tokens):
                return buffers.pop(i)
        return None

    @staticmethod
    def _insert(buffers: list[_Buffer], buf: _Buffer) -> None:
        """Insert before the first buffer with fewer tiles (stable: after equal tile counts)."""
        i = 0
        while i < len(buffers) and buffers[i].num_tiles >= buf.num_tiles:
            i += 1
        buffers.insert(i, buf)

    def _place(self, buffers: list[_Buffer], buf: _Buffer) -> Iterator[dict[str, Any]]:
        """Maintain: yield a buffer of exactly T tokens, else keep it in sorted order."""
        if buf.num_tokens == self.max_packed_tokens:
            yield self._finalize(buf)
        else:
            self._insert(buffers, buf)

    def _yield_ready(self, buffers: list[_Buffer]) -> Iterator[dict[str, Any]]:
        """Yield front buffers with exactly K tiles, then the front while there are too many."""
        while buffers and buffers[0].num_tiles == self.num_images_expected:
            yield self._finalize(buffers.pop(0))
        while len(buffers) > self.max_buffer_size:
            yield self._finalize(buffers.pop(0))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        gid, nworkers = self._worker()
        n_src = len(self.sources)
        shards = [self.shard_indices(i, gid, nworkers) for i in range(n_src)]
        cursors = [0] * n_src
        remaining = np.array([len(s) for s in shards], dtype=np.float64)
        # weights = len after repeats / total, over the sources this worker still reads
        lengths = np.array([len(_apply_repeat(len(s), r, "")) for s, r in zip(self.sources, self.repeat_times)],
                           dtype=np.float64)
        alive = remaining > 0
        rng = self._rng(gid)
        buffers: list[_Buffer] = []
        while alive.any():
            # 1. select
            p = np.where(alive, lengths, 0.0)
            if p.sum() == 0:  # every live source has length 0 after repeat: pick uniformly
                p = alive.astype(np.float64)
            src = int(rng.choice(n_src, p=p / p.sum()))
            index = shards[src][cursors[src]]
            cursors[src] += 1
            if cursors[src] >= len(shards[src]):
                alive[src] = False  # weights renormalise over the live sources
            raw = self.sources[src][index]
            if raw is None:  # the source skipped it (bad image, too long, ...) and counted why
                self._skip("source_skipped", f"source {src} sample {index}")
                continue
            sample = _as_sample(raw, src, f"source {src} sample {index}")
            if self._tile_shape is None and sample.num_tiles:
                self._tile_shape = tuple(sample.pixel_values.shape[1:])

            pieces = [sample]
            was_split = sample.num_tokens > self.max_packed_tokens
            if was_split:
                self.skip_counts["split"] += 1
                logger.warning("PackedDataset: source %d sample %d has %d tokens > %d; splitting",
                               src, index, sample.num_tokens, self.max_packed_tokens)
                pieces = self._split(sample)
            for piece in pieces:
                if piece.num_tiles > self.num_images_expected:
                    self._skip("too_many_tiles", f"source {src} sample {index}: {piece.num_tiles} tiles > "
                                                 f"{self.num_images_expected}")
                    continue
                # 2. search, 3. pack (split pieces start their own buffer, as InternVL's do)
                buf = None if was_split else self._find_buffer(buffers, piece)
                if buf is None:
                    buf = _Buffer()
                buf.add(piece)
                # 4. maintain
                yield from self._place(buffers, buf)
            yield from self._yield_ready(buffers)
        while buffers:  # flush front to back
            yield self._finalize(buffers.pop(0))
        if self._pending_skips:
            logger.error("PackedDataset: %d samples skipped after the last pack (%s)",
                         self._pending_skips, dict(self.skip_counts))

    # ----------------------------------------------------------------- output
    def _finalize(self, buf: _Buffer) -> dict[str, Any]:
        """Concatenate a buffer into one pack (and pad it in strict mode)."""
        samples = buf.samples
        lengths = torch.tensor([s.num_tokens for s in samples])
        tiles = [s.pixel_values for s in samples if s.num_tiles]
        if tiles:
            pixel_values = torch.cat(tiles)  # concat over tiles: (sum tiles, 3, S, S)
        else:
            shape = self._tile_shape or (3, 1, 1)
            pixel_values = torch.zeros((0, *shape))
        pack = {
            "input_ids": torch.cat([s.input_ids for s in samples]),
            "labels": torch.cat([s.labels for s in samples]),
            "position_ids": torch.cat([s.position_ids for s in samples]),
            "data_index": torch.repeat_interleave(torch.arange(len(samples)), lengths),
            "type_ids": torch.repeat_interleave(torch.tensor([s.source for s in samples]), lengths),
            "pixel_values": pixel_values,
            "image_flags": torch.cat([s.image_flags for s in samples]),
        }
        pad_tokens = pad_tiles = 0
        if self.strict_mode:
            pad_tiles = self.num_images_expected - buf.num_tiles
            if pad_tiles:
                if self._tile_shape is None and pixel_values.shape[0] == 0:
                    raise ValueError("strict_mode: no sample with tiles seen yet, cannot infer the tile shape")
                shape = tuple(pixel_values.shape[1:]) if pixel_values.shape[0] else self._tile_shape
                pack["pixel_values"] = torch.cat([pixel_values, torch.zeros((pad_tiles, *shape), dtype=pixel_values.dtype)])
                pack["image_flags"] = torch.cat([pack["image_flags"], torch.zeros(pad_tiles, dtype=torch.long)])
            pad_tokens = self.max_packed_tokens - buf.num_tokens
            if pad_tokens:
                fills = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "position_ids": 0,
                         "data_index": -1, "type_ids": -1}
                for key, value in fills.items():
                    pack[key] = torch.cat([pack[key], torch.full((pad_tokens,), value, dtype=torch.long)])
        pack["statistics"] = {
            "num_samples": len(samples),
            "num_tokens": buf.num_tokens,
            "num_padding_tokens": pad_tokens,
            "num_tiles": buf.num_tiles,
            "num_padding_tiles": pad_tiles,
            "num_skipped": self._pending_skips,
        }
        self._pending_skips = 0
        return pack


# --------------------------------------------------------------------- collation
def cu_seqlens_from_data_index(data_index: torch.Tensor) -> torch.Tensor:
    """``[0, n1, n1+n2, ..., L]`` (int32) from a per-token sample index (-1 = padding, at the end).

    Padding, if any, becomes one extra segment, as InternVL's collator does in strict mode.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    idx = data_index.reshape(-1).long()
    real = idx[idx >= 0]
    if real.numel() and (real.diff() < 0).any():
        raise ValueError("data_index must be non-decreasing")
    counts = torch.bincount(real) if real.numel() else torch.zeros(0, dtype=torch.long)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    if int(cu[-1]) < idx.numel():
        cu = torch.cat([cu, torch.tensor([idx.numel()])])
    return cu.to(torch.int32)


def packed_collate_fn(batch: list[dict[str, Any]] | dict[str, Any], loss_reduction: str = "square") -> dict[str, Any]:
    """Collate one pack into a batch of one row (InternVL trains packed with micro-batch 1).

    Returns ``input_ids``, ``labels``, ``position_ids``, ``data_index``, ``loss_weight``
    (1, L); ``cu_seqlens`` (n_segments + 1,) int32 and ``max_seqlen``; ``pixel_values``,
    ``image_flags``; ``statistics``. The first label of every sample is ignored: it has no
    previous token inside its own sample (for InternVL data it is a system token, already
    ignored). ``loss_weight`` is ``len2weight(n_i, loss_reduction)`` on sample i's supervised
    tokens and 0 elsewhere. Use ``functools.partial`` to pick ``loss_reduction``.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if isinstance(batch, list):
        if len(batch) != 1:
            raise ValueError(f"packed_collate_fn: packed batches hold one pack (batch_size=1), got {len(batch)}")
        batch = batch[0]
    labels = batch["labels"].clone()
    cu_seqlens = cu_seqlens_from_data_index(batch["data_index"])
    starts = cu_seqlens[:-1].long()
    labels[starts] = IGNORE_INDEX  # nothing inside a sample predicts its first token
    loss_weight = token_loss_weights(labels, loss_reduction, data_index=batch["data_index"])
    return {
        "input_ids": batch["input_ids"].unsqueeze(0),  # (L,) -> (1, L)
        "labels": labels.unsqueeze(0),  # (L,) -> (1, L)
        "position_ids": batch["position_ids"].unsqueeze(0),  # (L,) -> (1, L)
        "data_index": batch["data_index"].unsqueeze(0),  # (L,) -> (1, L)
        "loss_weight": loss_weight.unsqueeze(0),  # (L,) -> (1, L)
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0,
        "pixel_values": batch["pixel_values"],
        "image_flags": batch["image_flags"],
        "statistics": dict(batch["statistics"]),
    }


def padded_collate_fn(samples: list[dict[str, Any]], pad_token_id: int = 0, loss_reduction: str = "token") -> dict[str, Any]:
    """The naive alternative: right-pad samples into a (B, L_max) batch.

    Returns ``input_ids`` (padded with ``pad_token_id``), ``labels`` (-100), ``attention_mask``,
    ``position_ids`` (``cumsum(mask) - 1``, padding set to 1 as InternVL does), ``loss_weight``
    (per row, as :func:`packed_collate_fn`), concatenated ``pixel_values`` / ``image_flags``,
    and ``statistics`` with the padding-token count.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if not samples:
        raise ValueError("padded_collate_fn: empty batch")
    checked = [_as_sample(s, 0, f"batch item {i}") for i, s in enumerate(samples)]
    width = max(s.num_tokens for s in checked)
    B = len(checked)
    input_ids = torch.full((B, width), pad_token_id, dtype=torch.long)
    labels = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for i, s in enumerate(checked):
        input_ids[i, : s.num_tokens] = s.input_ids
        labels[i, : s.num_tokens] = s.labels
        mask[i, : s.num_tokens] = 1
    position_ids = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)
    tiles = [s.pixel_values for s in checked if s.num_tiles]
    num_tokens = int(mask.sum())
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": mask,
        "position_ids": position_ids,
        "loss_weight": token_loss_weights(labels, loss_reduction),
        "pixel_values": torch.cat(tiles) if tiles else torch.zeros((0, 3, 1, 1)),
        "image_flags": torch.cat([s.image_flags for s in checked]),
        "statistics": {
            "num_samples": B,
            "num_tokens": num_tokens,
            "num_padding_tokens": B * width - num_tokens,
            "num_tiles": sum(s.num_tiles for s in checked),
            "num_padding_tiles": 0,
        },
    }


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 50
) -> list[list[int]]:
    """Batches of indices of similar length (the usual alternative to packing).

    Shuffle all indices with ``default_rng(seed)``, cut them into mega-batches of
    ``batch_size * mega_batch_mult``, sort each mega-batch by length (longest first) and cut it
    into batches. Every index appears exactly once; the last batch may be smaller.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if batch_size < 1 or mega_batch_mult < 1:
        raise ValueError("length_grouped_batches: batch_size and mega_batch_mult must be >= 1")
    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    mega = batch_size * mega_batch_mult
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        group = sorted(order[start: start + mega], key=lambda i: -lengths[i])
        batches.extend(group[j: j + batch_size] for j in range(0, len(group), batch_size))
    return batches


def balance_by_length(indices: Sequence[int], lengths: Sequence[float], num_chunks: int) -> list[list[int]]:
    """Deal ``indices`` into ``num_chunks`` chunks of equal size and similar total length.

    Each index, in the order given, goes to the chunk whose total length is smallest among
    those not yet full (ties: the lowest chunk number). When the indices do not divide evenly,
    they are dealt round robin instead (chunk ``c`` gets ``indices[c::num_chunks]``). This is
    how the length-grouped sampler of InternVL's fine-tuning (LLaVA's) gives every rank and
    every accumulation step a similar amount of work.

    Explained in chapter 12 (notebooks/12_stage2_instruction_tuning.ipynb).
    """
    if num_chunks < 1:
        raise ValueError(f"balance_by_length: num_chunks must be >= 1, got {num_chunks}")
    indices = list(indices)
    if len(indices) % num_chunks:
        return [indices[c::num_chunks] for c in range(num_chunks)]
    size = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for i in indices:
        c = min(range(num_chunks), key=lambda k: (totals[k], k))
        chunks[c].append(i)
        totals[c] = float("inf") if len(chunks[c]) == size else totals[c] + lengths[i]
    return chunks


def internvl_length_grouped_order(lengths: Sequence[float], batch_size: int, num_chunks: int,
                                  generator: torch.Generator | None = None) -> list[int]:
    """The sample order of InternVL's ``--group_by_length`` (its fine-tuning scripts).

    A random permutation (``torch.randperm`` with ``generator``) is cut into mega-batches of
    ``batch_size * num_chunks`` indices; each is sorted by length, longest first, and dealt by
    :func:`balance_by_length` into ``num_chunks`` batches of ``batch_size``; the batches are
    concatenated. InternVL passes ``num_chunks = world_size * gradient_accumulation_steps``,
    so one mega-batch is exactly one optimizer step over all ranks and micro-batches: the step
    draws its samples at random, as a plain shuffle would, and deals them so that every rank
    and micro-batch gets a similar total length (the longest ones spread out, each batch
    longest first). With one rank and no accumulation it only sorts each batch. A permutation
    of ``range(len(lengths))``. (:func:`length_grouped_batches` is the other kind of grouping:
    larger mega-batches cut into batches of *similar* lengths, to pad less.)

    Explained in chapter 12 (notebooks/12_stage2_instruction_tuning.ipynb).
    """
    if batch_size < 1:
        raise ValueError(f"internvl_length_grouped_order: batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * num_chunks
    out: list[int] = []
    for start in range(0, len(order), mega):
        group = sorted(order[start: start + mega], key=lambda i: lengths[i], reverse=True)
        for chunk in balance_by_length(group, lengths, num_chunks):
            out.extend(chunk)
    return out
