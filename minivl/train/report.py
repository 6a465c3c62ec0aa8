"""Tables, curves and measurements that describe a training run (chapters 10-12).

* :func:`stage_rows` / :func:`format_rows`: the stage presets side by side (official sizes
  and the cpu-scale ``tiny`` values), read from :mod:`minivl.train.stages`, never retyped;
* :func:`trainable_rows`: trainable and total parameters per tower, as the trainer sets them;
* :func:`lr_curve`: the learning rate of every optimizer step of a stage;
* :func:`smooth`, :func:`plot_losses`, :func:`plot_accuracy_bars`: loss curves and per-task bars;
* :func:`heldout_task_losses`: next-token loss per task on the held-out split, optionally with
  the images replaced by blank tiles, which measures how much the model uses its images
  (more sensitive than greedy accuracy while a tiny model is still learning);
* :func:`packed_make_loader`, :func:`train_packed`: one stage (any
  :class:`~minivl.train.stages.StageConfig`, LoRA variants included) on packed rows of a
  quickstart workspace.

Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb) and chapter 12
(notebooks/12_stage2_instruction_tuning.ipynb).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minivl.train.stages import StageConfig, get_stage
from minivl.train.trainer import cosine_with_warmup, trainable_parameters

STAGE_COLUMNS = ("stage", "size", "trains", "lr", "weight_decay", "warmup", "max_steps", "drop_path",
                 "grad_accum", "max_packed_tokens", "num_images_expected")


def trains(stage: StageConfig) -> str:
    """What a stage trains, in words: ``"mlp1"``, ``"ViT + mlp1"``, ``"ViT + mlp1 + LLM"``,
    ``"LoRA r16 on LLM"`` ...

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    parts = [name for name, flag in (("ViT", stage.train_vision), ("mlp1", stage.train_projector),
                                     ("LLM", stage.train_llm)) if flag]
    if stage.lora is not None:
        tower = "LLM" if stage.lora.target == "llm" else "ViT"
        parts.append(f"LoRA r{stage.lora.r} on {tower}")
    return " + ".join(parts)


def stage_rows(stages: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per ``(preset name, model size)``, e.g. ``[("stage1", "1b"), ("stage1", "tiny")]``,
    with the columns of :data:`STAGE_COLUMNS` read from :func:`minivl.train.stages.get_stage`.

    ``warmup`` is ``"N steps"`` or ``"ratio r"`` as the preset states it.

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    rows = []
    for name, size in stages:
        cfg = get_stage(name, size)
        warmup = f"{cfg.warmup_steps} steps" if cfg.warmup_steps else f"ratio {cfg.warmup_ratio:g}"
        rows.append({"stage": name, "size": size, "trains": trains(cfg), "lr": cfg.lr,
                     "weight_decay": cfg.weight_decay, "warmup": warmup, "max_steps": cfg.max_steps,
                     "drop_path": cfg.drop_path_rate, "grad_accum": cfg.grad_accum,
                     "max_packed_tokens": cfg.max_packed_tokens, "num_images_expected": cfg.num_images_expected})
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an aligned plain-text table (header, rule, one line per row).

    Numbers are right-aligned (integers with thousands separators, floats with ``:g``), text
    is left-aligned. A row missing a requested column is an error naming both.

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    if not rows:
        raise ValueError("format_rows: no rows")
    columns = list(columns or rows[0].keys())
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise KeyError(f"format_rows: row {i} has no column {missing}; it has {list(row)}")
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    numeric = [all(isinstance(row[c], (int, float)) and not isinstance(row[c], bool) for row in rows) for c in columns]
    widths = [max(len(c), *(len(r[j]) for r in cells)) for j, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def trainable_rows(model: nn.Module) -> list[dict[str, Any]]:
    """Trainable / total parameters of ``vision``, ``projector``, ``llm`` and ``all``, with the
    trainable share in percent, from :func:`minivl.train.trainer.trainable_parameters`.

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    counts = trainable_parameters(model)
    rows = []
    for part, key in (("vision", "vision"), ("projector", "projector"), ("llm", "llm"), ("all", "")):
        trainable = counts[f"{key}_trainable" if key else "trainable"]
        total = counts[f"{key}_total" if key else "total"]
        rows.append({"tower": part, "trainable": trainable, "total": total,
                     "trainable_%": round(100.0 * trainable / total, 2) if total else 0.0})
    return rows


def lr_curve(stage: StageConfig, steps: int | None = None) -> list[float]:
    """The learning rate of optimizer steps 1 .. ``steps`` (default ``stage.max_steps``).

    Entry ``s`` is what step ``s + 1`` uses: ``lr * cosine_with_warmup(s, ...)``, exactly as
    the trainer's ``LambdaLR`` schedule (linear warm-up, then cosine to ``min_lr_ratio * lr``).

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    n = stage.max_steps if steps is None else steps
    return [stage.lr * cosine_with_warmup(s, stage.num_warmup_steps, stage.max_steps, stage.min_lr_ratio)
            for s in range(n)]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: entry ``i`` is the mean of ``values[max(0, i - window + 1) : i + 1]``.

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    if window < 1:
        raise ValueError(f"smooth: window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _losses(curve: Sequence[float] | Sequence[Mapping[str, Any]]) -> list[float]:
    return [float(r["loss"]) if isinstance(r, Mapping) else float(r) for r in curve]


def plot_losses(curves: Mapping[str, Sequence[float] | Sequence[Mapping[str, Any]]], ax=None, window: int = 1,
                title: str = "training loss", offsets: Mapping[str, int] | None = None, **style: Any):
    """Loss per optimizer step for each named curve (a list of losses or of trainer log rows),
    smoothed with :func:`smooth` when ``window > 1``; ``offsets[name]`` shifts a curve's x axis
    (to draw stages end to end). Returns the axes.

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    for name, curve in curves.items():
        losses = smooth(_losses(curve), window)
        start = (offsets or {}).get(name, 0)
        ax.plot(range(start + 1, start + len(losses) + 1), losses, label=name, **style)
    label = "loss" if window == 1 else f"loss (mean of last {window} steps)"
    ax.set(xlabel="optimizer step", ylabel=label, title=title)
    ax.legend()
    return ax


def plot_accuracy_bars(table: Mapping[str, Mapping[str, float]], baseline: Mapping[str, float] | None = None,
                       ax=None, title: str = "held-out accuracy"):
    """Grouped bars: one group per task, one bar per row of ``table`` (``{run: {task: score}}``);
    ``baseline`` (e.g. the majority answer) drawn as a black tick per task. Returns the axes.

    Explained in chapter 12 (notebooks/12_stage2_instruction_tuning.ipynb).
    """
    import matplotlib.pyplot as plt

    runs = list(table)
    tasks = [t for t in table[runs[0]] if t != "all"]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        ax.bar([j + i * width for j in range(len(tasks))], [table[run][t] for t in tasks], width, label=run)
    centers = [j + width * (len(runs) - 1) / 2 for j in range(len(tasks))]
    if baseline:
        xs = [c for c, t in zip(centers, tasks) if t in baseline]
        ys = [baseline[t] for t in tasks if t in baseline]
        ax.scatter(xs, ys, marker="_", s=600, color="black", label="majority answer", zorder=3)
    ax.set_xticks(centers, tasks, rotation=20)
    ax.set(ylabel="score", ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    return ax


# ----------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------

def samples_loss(model: nn.Module, samples: Sequence[dict[str, Any]], pad_token_id: int, batch_size: int = 8,
                 blank_images: bool = False) -> float:
    """Mean next-token cross-entropy over the supervised (answer) tokens of ``samples``
    (built by :class:`minivl.data.dataset.SupervisedDataset`), right-padded in batches of
    ``batch_size`` (one sample per row, so no packing effects), without gradients.

    With ``blank_images`` every tile is replaced by zeros, i.e. a uniform image of the
    normalisation mean colour: ``loss(blank) - loss(real)`` is how much the images help the
    model predict the answers. The model is put back in its previous mode.

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    from minivl.data.packing import padded_collate_fn
    from minivl.train.loss import shifted_cross_entropy

    if not samples or batch_size < 1:
        raise ValueError(f"samples_loss: need samples and batch_size >= 1, got {len(samples)} and {batch_size}")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(samples), batch_size):
            batch = padded_collate_fn(list(samples[start:start + batch_size]), pad_token_id=pad_token_id)
            pixels = torch.zeros_like(batch["pixel_values"]) if blank_images else batch["pixel_values"]
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], pixel_values=pixels,
                               attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                               image_flags=batch["image_flags"]).logits
            ce = shifted_cross_entropy(logits, batch["labels"].to(logits.device))  # (B, L-1), 0 where ignored
            total += float(ce.sum())
            count += int((batch["labels"][:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("samples_loss: the samples have no supervised tokens")
    return total / count


def heldout_task_losses(model: nn.Module, tokenizer: Any, meta: str | Path, tasks: Sequence[str],
                        per_task: int = 16, batch_size: int = 8, blank_images: bool = False,
                        max_dynamic_patch: int = 6, num_frames: int = 4) -> dict[str, float]:
    """:func:`samples_loss` of the first ``per_task`` samples of each task of ``meta`` (the
    held-out split, built without augmentation), one number per task.

    Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    from minivl.data.dataset import DataConfig, build_datasets

    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    cfg = DataConfig(image_size=model.config.vision.image_size, num_image_token=model.num_image_token,
                     max_dynamic_patch=max_dynamic_patch, max_length=None, min_num_frame=num_frames,
                     max_num_frame=num_frames)
    out = {}
    for task, ds in zip(tasks, build_datasets(meta, tokenizer, cfg, train=False, names=list(tasks))):
        samples = [s for s in (ds[i] for i in range(min(per_task, len(ds)))) if s is not None]
        if not samples:
            raise ValueError(f"heldout_task_losses: no usable sample in task {task!r} of {meta} (skips: {dict(ds.skips)})")
        out[task] = samples_loss(model, samples, tokenizer.pad_token_id, batch_size, blank_images)
    return out


# ----------------------------------------------------------------------------------------
# Training a stage variant on the workspace's packed rows
# ----------------------------------------------------------------------------------------

# a workspace's suite is generated at smoke or cpu scale (at most a few thousand records a data
# set): every sample's token ids fit in memory, so each is tokenized once (DataConfig)
_TOKEN_CACHE_SIZE = 100_000


def packed_make_loader(ws: Any, model: nn.Module, loss_reduction: str = "square",
                       names: Sequence[str] | None = None, token_cache_size: int = _TOKEN_CACHE_SIZE,
                       num_workers: int = 0):
    """``make_loader(epoch)`` over packed rows of the workspace's training mixture (or of the
    data sets ``names`` only): rows of ``ws.recipe.max_packed_tokens`` tokens, at most
    ``ws.recipe.num_images_expected`` tiles, InternVL's per-sample loss weights. This is the
    data path of :func:`minivl.quickstart.train_stage`.

    ``token_cache_size`` is :class:`~minivl.data.dataset.DataConfig`'s (0: tokenize every draw);
    ``num_workers`` DataLoader processes pack the rows ahead (see
    :func:`~minivl.train.trainer.packed_loader`; one worker gives the very rows of none).
    ``ws`` is a :class:`minivl.quickstart.Workspace`. Explained in chapter 10
    (notebooks/10_stage1_mlp_warmup.ipynb).
    """
    from minivl.data.dataset import DataConfig, build_datasets
    from minivl.data.packing import PackedDataset, packed_collate_fn
    from minivl.train.trainer import packed_loader

    r, tok = ws.recipe, ws.tokenizer
    data_cfg = DataConfig(image_size=model.config.vision.image_size, num_image_token=model.num_image_token,
                          max_dynamic_patch=r.max_dynamic_patch, max_length=r.max_packed_tokens,
                          min_num_frame=4, max_num_frame=8, token_cache_size=token_cache_size)
    datasets = build_datasets(ws.train_meta, tok, data_cfg, seed=r.seed, names=names)
    packed = PackedDataset(datasets, max_packed_tokens=r.max_packed_tokens, num_images_expected=r.num_images_expected,
                           seed=r.seed, img_start_token_id=tok.convert_tokens_to_ids("<img>"),
                           img_end_token_id=tok.convert_tokens_to_ids("</img>"), pad_token_id=tok.pad_token_id)
    return packed_loader(packed, functools.partial(packed_collate_fn, loss_reduction=loss_reduction),
                         num_workers=num_workers)


def train_packed(ws: Any, model: nn.Module, stage: StageConfig, output_dir: str | Path | None = None,
                 progress: bool = True, names: Sequence[str] | None = None, **train_kwargs: Any):
    """Train ``model`` with ``stage`` on :func:`packed_make_loader` rows of the workspace.

    The same data path as :func:`minivl.quickstart.train_stage`, but for any
    :class:`~minivl.train.stages.StageConfig`, so LoRA variants (``stage.lora``) and custom
    stages run too. Extra keyword arguments (``stop_after``, ``resume``, ``eval_fn``) go to
    :func:`minivl.train.trainer.train` (``resume`` defaults to ``False`` here). Returns its
    :class:`~minivl.train.trainer.TrainResult`.

    Explained in chapter 12 (notebooks/12_stage2_instruction_tuning.ipynb).
    """
    from minivl.train.trainer import train

    return train(model, packed_make_loader(ws, model, stage.loss_reduction, names), stage, output_dir=output_dir,
                 progress=progress, **{"resume": False, **train_kwargs})
