"""Looking inside the packed dataset: a step-by-step trace, occupancy and padding statistics.

These helpers do not pack anything themselves. :class:`TracedPackedDataset` *is*
:class:`minivl.data.packing.PackedDataset` (same select / search / pack / maintain code); it
only writes down, after every sample, where the sample went, which packs left and why, and
what the buffer list holds. The other functions measure packs and padded batches:

* :func:`occupancy` - tokens, tiles and samples per pack, and how full packs are on average;
* :func:`padding_utilisation` - real tokens over padded slots for batches of samples;
* :func:`stand_in_sample` - a weightless sample of given sizes (packing only reads sizes);
* :func:`unpack` - the samples of a pack again, one dict each (for the packed-equals-unpacked check).

Explained in chapter 8 (notebooks/08_packing.ipynb).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from minivl.data.packing import PackedDataset, cu_seqlens_from_data_index

REASONS = ("tokens == T", "tiles == K", "too many buffers", "flush")
"""Why a pack leaves the buffer list, in the order the maintain step checks them."""


@dataclass
class BufferView:
    """A buffer (or a pack that left) as the trace shows it: its samples and their sizes."""

    labels: list[int]
    sizes: list[int]  # tokens of each sample (or split piece)
    tiles: int
    reason: str = ""  # why it left (one of REASONS); "" for a buffer still open

    @property
    def tokens(self) -> int:
        return sum(self.sizes)


@dataclass
class TraceStep:
    """What happened to one sample: its size, where it went, what left, what stayed."""

    sample: int  # the sample's label (see TracedPackedDataset.label_of)
    tokens: int
    tiles: int
    placed: str  # "buffer i" (i = position in the list before the search), "new buffer", or "skipped: why"
    yielded: list[BufferView] = field(default_factory=list)  # packs that left at this step
    buffers: list[BufferView] = field(default_factory=list)  # the buffer list after the step


class TracedPackedDataset(PackedDataset):
    """:class:`PackedDataset` that records a :class:`TraceStep` per sample in :attr:`trace`.

    A sample is named by ``label_of(sample_input_ids)``; the default reads the first token, so
    a toy stream whose tokens all equal the sample's number gives readable traces. Packs left
    at the end of the stream are recorded in :attr:`flushed`. Iterating resets both.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """

    def __init__(self, sources: Sequence[Any], *args: Any, label_of=None, **kwargs: Any) -> None:
        super().__init__([_Recording(s, self) for s in sources], *args, **kwargs)
        self.label_of = label_of or (lambda ids: int(torch.as_tensor(ids).reshape(-1)[0]))
        self.trace: list[TraceStep] = []
        self.flushed: list[BufferView] = []
        self._stage = "flush"
        self._current: TraceStep | None = None
        self._last_raw: Any = None
        self._buffers_ref: list | None = None
        self._searched: Any = None

    def _view(self, buf, reason: str = "") -> BufferView:
        return BufferView([self.label_of(s.input_ids) for s in buf.samples], [s.num_tokens for s in buf.samples],
                          buf.num_tiles, reason)

    def _snapshot(self, buffers) -> list[BufferView]:
        return [self._view(b) for b in buffers or []]

    def _raw_step(self, placed: str) -> TraceStep:
        """A step for the sample last read from a source (its raw dict may be None)."""
        raw = self._last_raw
        if not isinstance(raw, dict):
            return TraceStep(-1, 0, 0, placed)
        ids = torch.as_tensor(raw["input_ids"]).reshape(-1)
        return TraceStep(self.label_of(ids), int(ids.numel()), int(torch.as_tensor(raw["pixel_values"]).shape[0]), placed)

    def _open(self, sample, placed: str) -> None:
        if self._current is None:
            self._current = TraceStep(self.label_of(sample.input_ids), sample.num_tokens, sample.num_tiles, placed)
        else:  # a split sample: several pieces, or a piece after a skipped one
            self._current.placed += f"; {placed}"

    def _find_buffer(self, buffers, sample):
        self._buffers_ref = buffers
        before = list(buffers)
        found = super()._find_buffer(buffers, sample)
        self._searched = sample
        where = "new buffer" if found is None else f"buffer {next(i for i, b in enumerate(before) if b is found)}"
        self._open(sample, where)
        return found

    def _skip(self, reason: str, detail: str) -> None:
        super()._skip(reason, detail)
        if reason == "source_skipped":  # the loop goes on to the next sample at once
            step = self._raw_step(f"skipped: {reason}")
            step.buffers = self._snapshot(self._buffers_ref)
            self.trace.append(step)
        elif self._current is None:
            self._current = self._raw_step(f"skipped: {reason}")
        else:
            self._current.placed += f"; skipped: {reason}"

    def _place(self, buffers, buf) -> Iterator[dict[str, Any]]:
        self._buffers_ref = buffers
        if buf.samples[-1] is not self._searched:  # a split piece skips the search: its own buffer
            if self._current is None:
                self._current = self._raw_step("split -> new buffers")
            elif "split" not in self._current.placed:
                self._current.placed += "; split -> new buffers"
        self._stage = "place"
        yield from super()._place(buffers, buf)
        self._stage = "flush"

    def _yield_ready(self, buffers) -> Iterator[dict[str, Any]]:
        self._stage = "ready"
        yield from super()._yield_ready(buffers)
        self._stage = "flush"
        step = self._current or TraceStep(-1, 0, 0, "skipped")
        step.buffers = self._snapshot(buffers)
        self.trace.append(step)
        self._current = None

    def _finalize(self, buf) -> dict[str, Any]:
        if self._stage == "place":
            reason = "tokens == T"
        elif self._stage == "ready":
            reason = "tiles == K" if buf.num_tiles == self.num_images_expected else "too many buffers"
        else:
            reason = "flush"
        record = self._view(buf, reason)
        if reason == "flush":
            self.flushed.append(record)
        else:
            if self._current is None:  # cannot happen in the loop; keep the record anyway
                self._current = TraceStep(-1, 0, 0, "")
            self._current.yielded.append(record)
        return super()._finalize(buf)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.trace, self.flushed, self._current, self._stage = [], [], None, "flush"
        self._buffers_ref = self._searched = None
        yield from super().__iter__()


class _Recording:
    """A source that tells its :class:`TracedPackedDataset` which raw sample was read last."""

    def __init__(self, source: Any, owner: TracedPackedDataset) -> None:
        self.source, self.owner = source, owner

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        raw = self.source[index]
        self.owner._last_raw = raw
        return raw

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)


def format_trace(trace: Sequence[TraceStep], flushed: Sequence[BufferView] = ()) -> str:
    """The trace as a text table: one line per sample, buffers as ``[labels] tokens t/tiles i``.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    def show(views: Sequence[BufferView]) -> str:
        return " ".join(f"[{','.join(map(str, v.labels))}] {v.tokens}t/{v.tiles}i"
                        + (f" ({v.reason})" if v.reason else "") for v in views) or "-"

    lines = [f"{'step':>4} {'sample':>6} {'tok':>4} {'til':>4}  {'placed':<24} {'yielded (reason)':<34} buffers after"]
    for k, s in enumerate(trace):
        lines.append(f"{k:>4} {s.sample:>6} {s.tokens:>4} {s.tiles:>4}  {s.placed:<24} {show(s.yielded):<34} "
                     f"{show(s.buffers)}")
    if flushed:
        lines.append(f"{'end':>4} {'':>6} {'':>4} {'':>4}  {'':<24} {show(flushed)}")
    return "\n".join(lines)


def plot_trace(trace: Sequence[TraceStep], max_tokens: int, flushed: Sequence[BufferView] = (), ax=None):
    """Draw the buffer list after every step (one row per step, each bar is T tokens wide).

    Each buffer is a bar of ``max_tokens`` slots split into its samples (coloured by label);
    packs that left at that step are drawn on the right in grey with their reason.
    Returns the axes.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    import matplotlib.pyplot as plt

    rows = len(trace) + (1 if flushed else 0)
    n_open = max([len(s.buffers) for s in trace] + [1])
    n_out = max([len(s.yielded) for s in trace] + [len(flushed), 1])
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 * (n_open + n_out) + 1.5, 0.4 * rows + 0.9))
    cmap = plt.get_cmap("tab20")
    pitch = 1.15  # bar width 1.0 plus a gap
    split_x = n_open * pitch + 0.1

    def bar(x0: float, y: float, view: BufferView, grey: bool) -> None:
        x = x0
        for label, n in zip(view.labels, view.sizes):
            w = n / max_tokens
            colour = "0.82" if grey else cmap(label % 20)
            ax.add_patch(plt.Rectangle((x, y - 0.32), w, 0.64, fc=colour, ec="white", lw=0.8))
            if w > 0.07:
                ax.text(x + w / 2, y, str(label), ha="center", va="center", fontsize=7)
            x += w
        ax.add_patch(plt.Rectangle((x0, y - 0.32), 1.0, 0.64, fill=False, ec="0.3", lw=0.8))
        note = f"{view.tokens}t/{view.tiles}i" + (f"  {view.reason}" if view.reason else "")
        ax.text(x0, y + 0.34, note, ha="left", va="bottom", fontsize=5.5, color="0.25")

    steps = [(f"{k}: skip {s.sample}" if s.placed.startswith("skipped") else f"{k}: +{s.sample}", s.buffers, s.yielded)
             for k, s in enumerate(trace)]
    if flushed:
        steps.append(("end", [], list(flushed)))
    for k, (label, buffers, yielded) in enumerate(steps):
        y = -k
        ax.text(-0.1, y, label, ha="right", va="center", fontsize=8)
        for i, view in enumerate(buffers):
            bar(i * pitch, y, view, grey=False)
        for j, view in enumerate(yielded):
            bar(split_x + 0.2 + j * pitch, y, view, grey=True)
    ax.axvline(split_x, color="0.5", lw=0.8, ls="--")
    ax.set_xlim(-0.9, split_x + 0.3 + n_out * pitch)
    ax.set_ylim(-rows + 0.5, 0.95)
    ax.axis("off")
    ax.set_title(f"buffer list after each sample (left) and packs yielded (right, grey); a bar is T = {max_tokens} tokens",
                 fontsize=9)
    return ax


def stand_in_sample(label: int, tokens: int, tiles: int, supervised: int | None = None) -> dict[str, torch.Tensor]:
    """A sample with the sizes of a real one and none of its weight, for packing experiments.

    Every token is ``label`` (so traces can name it), tiles are ``(tiles, 3, 1, 1)`` zeros with
    ``image_flags`` 1; the last ``supervised`` labels (default: all but the first) are kept,
    the rest are -100. Packing only looks at the sizes, so stand-ins give the packs real
    samples would.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if tokens < 1 or tiles < 0:
        raise ValueError(f"stand_in_sample: needs tokens >= 1 and tiles >= 0, got {tokens}, {tiles}")
    ids = torch.full((tokens,), int(label), dtype=torch.long)
    labels = ids.clone()
    keep = tokens - 1 if supervised is None else min(int(supervised), tokens)
    labels[: tokens - keep] = -100
    return {"input_ids": ids, "labels": labels, "pixel_values": torch.zeros(tiles, 3, 1, 1),
            "image_flags": torch.ones(tiles, dtype=torch.long)}


def occupancy(packs: Sequence[dict[str, Any]], max_tokens: int, max_tiles: int) -> dict[str, Any]:
    """How full packs are: per-pack ``tokens``, ``tiles``, ``samples`` arrays and their means.

    ``token_fill`` = real tokens / (packs x T) and ``tile_fill`` = real tiles / (packs x K)
    (strict-mode padding is not counted as real). ``limited_by`` counts the packs that left
    at exactly T tokens, at exactly K tiles, or with room on both (buffer overflow or flush).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if not packs:
        raise ValueError("occupancy: no packs")
    tokens = np.array([p["statistics"]["num_tokens"] for p in packs])
    tiles = np.array([p["statistics"]["num_tiles"] for p in packs])
    samples = np.array([p["statistics"]["num_samples"] for p in packs])
    return {
        "packs": len(packs),
        "tokens": tokens,
        "tiles": tiles,
        "samples": samples,
        "token_fill": float(tokens.sum() / (len(packs) * max_tokens)),
        "tile_fill": float(tiles.sum() / (len(packs) * max_tiles)),
        "samples_per_pack": float(samples.mean()),
        "limited_by": {
            "tokens": int((tokens == max_tokens).sum()),
            "tiles": int(((tiles == max_tiles) & (tokens < max_tokens)).sum()),
            "neither": int(((tokens < max_tokens) & (tiles < max_tiles)).sum()),
        },
    }


def padding_utilisation(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> dict[str, float]:
    """Real tokens over padded slots when each batch of indices is right-padded to its longest.

    Returns ``real``, ``slots`` (sum over batches of size x longest), ``padding`` and
    ``utilisation`` = real / slots (1.0 for a batch of equal lengths).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if not batches:
        raise ValueError("padding_utilisation: no batches")
    real = slots = 0
    for batch in batches:
        if not batch:
            raise ValueError("padding_utilisation: empty batch")
        sizes = [int(lengths[i]) for i in batch]
        real += sum(sizes)
        slots += len(sizes) * max(sizes)
    return {"real": real, "slots": slots, "padding": slots - real, "utilisation": real / slots}


def unpack(pack: dict[str, Any], image_token_id: int, num_image_token: int) -> list[dict[str, torch.Tensor]]:
    """Split a pack (from :class:`PackedDataset`) back into its samples.

    Tokens are cut at the ``data_index`` boundaries; tiles with ``image_flags`` 0 (dummy or
    padding) are dropped and the real tiles handed out in order, ``#<IMG_CONTEXT> /
    num_image_token`` to each sample. Strict-mode padding is dropped. Each sample dict has
    ``input_ids``, ``labels``, ``position_ids`` (L,), ``pixel_values`` (tiles, 3, S, S) (None
    for a sample without image tokens) and ``image_flags`` (tiles,).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    cu = cu_seqlens_from_data_index(pack["data_index"]).tolist()
    real_tiles = pack["pixel_values"][pack["image_flags"] != 0]  # (n_real, 3, S, S)
    samples, next_tile = [], 0
    for start, end in zip(cu[:-1], cu[1:]):
        if int(pack["data_index"][start]) < 0:  # strict-mode padding segment
            continue
        ids = pack["input_ids"][start:end]
        n_ctx = int((ids == image_token_id).sum())
        if n_ctx % num_image_token:
            raise ValueError(f"unpack: a sample has {n_ctx} <IMG_CONTEXT> tokens, not a multiple of {num_image_token}")
        n_tiles = n_ctx // num_image_token
        if next_tile + n_tiles > real_tiles.shape[0]:
            raise ValueError(f"unpack: the samples need more than the pack's {real_tiles.shape[0]} real tiles")
        tiles = real_tiles[next_tile: next_tile + n_tiles]
        next_tile += n_tiles
        samples.append({
            "input_ids": ids,
            "labels": pack["labels"][start:end],
            "position_ids": pack["position_ids"][start:end],
            "pixel_values": tiles if n_tiles else None,
            "image_flags": torch.ones(n_tiles, dtype=torch.long),
        })
    if next_tile != real_tiles.shape[0]:
        raise ValueError(f"unpack: {real_tiles.shape[0] - next_tile} real tiles left over after the last sample")
    return samples
