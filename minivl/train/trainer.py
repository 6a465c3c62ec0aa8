"""One training loop for every stage, on Accelerate: a CPU today, many GPUs tomorrow.

The loop is written out step by step so it can be read next to the paper:

1. freeze what the stage does not train, wrap LoRA adapters if asked, set drop path;
2. AdamW over the trainable parameters, cosine schedule with warm-up;
3. for each optimizer step, take ``grad_accum`` micro-batches, compute one *global* loss
   denominator over all of them (and over all ranks), back-propagate each micro-batch's
   ``sum(w * CE) / W`` (square averaging stays exact, chapter 9), clip to 1.0, step;
4. log loss, learning rate, tokens/s; evaluate and save every N steps.

A checkpoint holds model, optimizer, scheduler, RNG states and the data position, so a run
that stops and resumes produces the same loss curve as one that never stopped.

Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb); multi-GPU in chapter 13.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minivl.data.packing import internvl_length_grouped_order
from minivl.train.loss import global_loss_denominator, token_loss_weights
from minivl.train.stages import LORA_TARGETS, StageConfig, check_num_workers

# Keys a batch may carry that are not model inputs.
_NON_MODEL_KEYS = {"labels", "loss_weight", "statistics", "data_index", "sample_ids"}


# ----------------------------------------------------------------------------------------
# What trains
# ----------------------------------------------------------------------------------------

def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The three towers of an InternVL-style model: ``vision``, ``projector``, ``llm``."""
    names = {"vision": "vision_model", "projector": "mlp1", "llm": "language_model"}
    parts = {}
    for part, attr in names.items():
        module = getattr(model, attr, None)
        if not isinstance(module, nn.Module):
            raise AttributeError(f"{type(model).__name__} has no {attr!r} module (the {part} tower)")
        parts[part] = module
    return parts


def apply_stage_freezing(model: nn.Module, stage: StageConfig) -> dict[str, int]:
    """Set ``requires_grad`` per tower as the stage says; return trainable parameter counts.

    As in InternVL, a frozen ViT is not put in eval mode: its drop path stays active.
    LoRA adapters (if any) stay trainable whatever their tower's flag says.
    """
    flags = {"vision": stage.train_vision, "projector": stage.train_projector, "llm": stage.train_llm}
    for part, module in model_parts(model).items():
        for name, p in module.named_parameters():
            p.requires_grad_(flags[part] or "lora_" in name)
    return trainable_parameters(model)


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts per tower (and overall)."""
    counts: dict[str, int] = {}
    for part, module in model_parts(model).items():
        counts[f"{part}_trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
        counts[f"{part}_total"] = sum(p.numel() for p in module.parameters())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Drop path rising linearly from 0 (first ViT layer) to ``rate`` (last), as InternViT."""
    vision = model_parts(model)["vision"]
    layers = [m for m in vision.modules() if hasattr(m, "drop_path_rate")]
    n = len(layers)
    for i, layer in enumerate(layers):
        layer.drop_path_rate = rate * i / (n - 1) if n > 1 else 0.0


def add_lora(model: nn.Module, spec) -> nn.Module:
    """Wrap the LLM (or the ViT) with PEFT LoRA adapters on InternVL's official target modules."""
    from peft import LoraConfig, get_peft_model

    parts = model_parts(model)
    if spec.target == "vision":
        targets, attr = LORA_TARGETS["vision"], "vision_model"
    else:
        model_type = getattr(parts["llm"].config, "model_type", "llama")
        targets, attr = LORA_TARGETS.get(model_type, LORA_TARGETS["llama"]), "language_model"
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets)
    setattr(model, attr, get_peft_model(getattr(model, attr), config))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights (``merge_and_unload``) on both towers."""
    for attr in ("vision_model", "language_model"):
        module = getattr(model, attr)
        if hasattr(module, "merge_and_unload"):
            setattr(model, attr, module.merge_and_unload())
    return model


# ----------------------------------------------------------------------------------------
# Optimizer and schedule
# ----------------------------------------------------------------------------------------

def build_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    """AdamW over every trainable parameter in one group, as InternVL's DeepSpeed config does
    (weight decay also reaches biases and norms there).

    With ``stage.vision_lr_scale != 1`` the ViT's parameters (``vision_model.*``) get their own
    group at ``lr * vision_lr_scale`` (a lower learning rate for a pretrained vision tower, as
    LLaVA-OneVision does; InternVL's presets keep 1), and with ``stage.projector_lr_scale != 1``
    the projector's (``mlp1.*``) at ``lr * projector_lr_scale``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"stage {stage.name!r}: no trainable parameters")
    kwargs = {"betas": stage.betas, "eps": 1e-8, "weight_decay": stage.weight_decay}
    scales = {"vision_model": stage.vision_lr_scale, "mlp1": stage.projector_lr_scale}
    scales = {tower: scale for tower, scale in scales.items() if scale != 1.0}
    if not scales:
        return torch.optim.AdamW([p for _, p in named], lr=stage.lr, **kwargs)

    def tower(name: str) -> str | None:
        return next((t for t in scales if name.split(".")[0] == t or f".{t}." in name), None)

    groups = [{"params": [p for n, p in named if tower(n) is None], "lr": stage.lr}]
    groups += [{"params": [p for n, p in named if tower(n) == t], "lr": stage.lr * scale} for t, scale in scales.items()]
    return torch.optim.AdamW([g for g in groups if g["params"]], **kwargs)


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier of optimizer step ``step + 1``: linear warm-up from 0 to 1, then
    cosine down to ``min_ratio``.

    The same numbers as HF's ``cosine`` schedule, which InternVL's training scripts use
    (``get_cosine_schedule_with_warmup``, and ``get_cosine_with_min_lr_schedule_with_warmup``
    for ``min_ratio > 0``): ``step / warmup`` while warming up, so the very first step runs at
    lr 0 (it only fills AdamW's moments), as it does in InternVL's runs. Past ``total`` the
    multiplier stays at ``min_ratio`` (HF's would climb back up the cosine).
    """
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, total, floor = stage.num_warmup_steps, stage.max_steps, stage.min_lr_ratio
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, warmup, total, floor))


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a run produced: per-step log rows, evaluation rows and where things were written."""

    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str | None = None
    seconds: float = 0.0
    steps: int = 0

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.history]


def _mixed_precision(stage: StageConfig) -> str:
    if stage.mixed_precision != "auto":
        return stage.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _micro_batches(make_loader: Callable[[int], Iterable[dict]], start_epoch: int,
                   skip: int) -> Iterator[tuple[int, dict]]:
    """Endless stream of (epoch, batch); re-creates the loader per epoch, skipping ``skip``
    batches of the first epoch (the data position of a resumed run)."""
    epoch = start_epoch
    while True:
        n = 0
        for i, batch in enumerate(make_loader(epoch)):
            n += 1
            if epoch == start_epoch and i < skip:
                continue
            yield epoch, batch
        if n == 0:
            raise ValueError("the training data yielded no batches")
        epoch, skip = epoch + 1, 0


def _move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loss_weight(batch: dict, mode: str) -> torch.Tensor:
    """Per-token loss weights: the batch's own (packed rows carry them) or, for padded rows,
    one sample per row with ``len2weight`` of its supervised-token count."""
    if "loss_weight" in batch:
        return batch["loss_weight"]
    return token_loss_weights(batch["labels"], mode)


def train(
    model: nn.Module,
    make_loader: Callable[[int], Iterable[dict]],
    stage: StageConfig,
    output_dir: str | Path | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator=None,
) -> TrainResult:
    """Train ``model`` for ``stage.max_steps`` optimizer steps.

    ``make_loader(epoch)`` returns an iterable of batches for that epoch (deterministic for a
    given epoch, so a resumed run sees the same data). ``eval_fn(model)`` returns metrics,
    called every ``stage.eval_every`` steps and at the end. With ``output_dir``, log rows go
    to ``log.jsonl`` and ``log.csv`` and checkpoints to ``checkpoint-<step>/`` every
    ``stage.save_every`` steps; ``resume`` continues from the newest checkpoint there.
    ``stop_after`` ends the run early after that many steps (used to test resuming).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    _seed_everything(stage.seed)
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=_mixed_precision(stage), cpu=not torch.cuda.is_available())
    if stage.lora is not None:
        add_lora(model, stage.lora)
    apply_stage_freezing(model, stage)
    set_drop_path(model, stage.drop_path_rate)
    _set_gradient_checkpointing(model, stage.gradient_checkpointing)

    optimizer = build_optimizer(model, stage)
    scheduler = build_scheduler(optimizer, stage)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    out = Path(output_dir) if output_dir else None
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0}
    result = TrainResult(output_dir=str(out) if out else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt = latest_checkpoint(out) if resume else None
        if ckpt is not None:
            accelerator.load_state(str(ckpt))
            state = json.loads((ckpt / "trainer_state.json").read_text())
            result.history = [r for r in _read_jsonl(out / "log.jsonl") if r.get("step", 0) <= state["step"]]
            if accelerator.is_main_process:
                rewrite_log(out, result.history)  # drop rows logged after the checkpoint
            accelerator.print(f"resumed from {ckpt.name} (step {state['step']})")

    stream = _micro_batches(make_loader, state["epoch"], state["batches_in_epoch"])
    last_epoch = state["epoch"]
    end = stage.max_steps if stop_after is None else min(stage.max_steps, stop_after)
    bar = tqdm(total=stage.max_steps, initial=state["step"], disable=not progress or not accelerator.is_main_process,
               desc=stage.name, dynamic_ncols=True)
    start = time.perf_counter()
    model.train()
    while state["step"] < end:
        t0 = time.perf_counter()
        micro = []
        for _ in range(stage.grad_accum):
            epoch, batch = next(stream)
            if epoch != last_epoch:
                state["epoch"], state["batches_in_epoch"], last_epoch = epoch, 0, epoch
            state["batches_in_epoch"] += 1
            micro.append(_move(batch, accelerator.device))
        weights = [_loss_weight(b, stage.loss_reduction) for b in micro]
        denominator = global_loss_denominator(weights)  # one W for all micro-batches and ranks
        total_loss, tokens = 0.0, 0
        for i, (batch, w) in enumerate(zip(micro, weights)):
            inputs = {k: v for k, v in batch.items() if k not in _NON_MODEL_KEYS}
            sync = accelerator.no_sync(model) if i < len(micro) - 1 else _nullcontext()
            with sync, accelerator.autocast():
                # logits only where a label is supervised: the same loss without the (L, V) tensor
                loss = model(**inputs, labels=batch["labels"], loss_weight=w, loss_denominator=denominator,
                             supervised_logits_only=True).loss
            accelerator.backward(loss)
            total_loss += loss.item()
            tokens += int(batch["input_ids"].numel())
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), stage.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        dt = time.perf_counter() - t0
        row = {"step": state["step"], "loss": total_loss, "lr": scheduler.get_last_lr()[0],
               "grad_norm": float(grad_norm), "tokens": tokens, "tokens_per_s": tokens / dt, "epoch": state["epoch"]}
        result.history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss:.4f}", tok_s=f"{tokens / dt:.0f}")
        if out is not None and accelerator.is_main_process:
            _append_log(out, row)
        if eval_fn is not None and stage.eval_every and state["step"] % stage.eval_every == 0:
            result.evals.append({"step": state["step"], **_evaluate(model, eval_fn, accelerator)})
        if out is not None and stage.save_every and state["step"] % stage.save_every == 0:
            save_checkpoint(accelerator, out, state)
    bar.close()
    if eval_fn is not None and (not result.evals or result.evals[-1]["step"] != state["step"]):
        result.evals.append({"step": state["step"], **_evaluate(model, eval_fn, accelerator)})
    result.seconds = time.perf_counter() - start
    result.steps = state["step"]
    return result


def _evaluate(model: nn.Module, eval_fn, accelerator) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = eval_fn(accelerator.unwrap_model(model))
    model.train(was_training)
    return metrics


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute activations in backward in both towers (InternVL keeps it on for the ViT)."""
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(vision=enabled, llm=enabled)
    elif enabled:
        raise TypeError(f"{type(model).__name__} has no gradient_checkpointing_enable()")


# ----------------------------------------------------------------------------------------
# Checkpoints and logs
# ----------------------------------------------------------------------------------------

def save_checkpoint(accelerator, output_dir: Path, state: dict) -> Path:
    """Model, optimizer, scheduler and RNG states (Accelerate) plus the data position."""
    path = Path(output_dir) / f"checkpoint-{state['step']}"
    accelerator.save_state(str(path), safe_serialization=True)
    if accelerator.is_main_process:
        (path / "trainer_state.json").write_text(json.dumps(state))
    accelerator.wait_for_everyone()
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-<step>`` directory with the highest step that has a trainer state."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def _append_log(out: Path, row: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = out / "log.csv"
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rewrite_log(output_dir: str | Path, history: list[dict]) -> None:
    """Replace ``log.jsonl``/``log.csv`` with ``history`` (used after a resume)."""
    out = Path(output_dir)
    for name in ("log.jsonl", "log.csv"):
        if (out / name).exists():
            os.remove(out / name)
    for row in history:
        _append_log(out, row)


# ----------------------------------------------------------------------------------------
# Data loaders with a data position
# ----------------------------------------------------------------------------------------

def map_loader(dataset, batch_size: int, collate_fn: Callable, seed: int = 0, shuffle: bool = True,
               rank: int | None = None, world_size: int | None = None,
               num_workers: int = 0, lengths: Sequence[float] | None = None,
               grad_accum: int = 1) -> Callable[[int], Iterator[dict]]:
    """``make_loader(epoch)`` for a map-style data set: a seeded permutation per epoch, cut into
    global batches of ``batch_size * world_size``; rank r takes the r-th slice of each, so R
    processes see exactly the batches one process with an R times larger batch would.

    With ``lengths`` (one per sample, e.g. ``MixtureDataset.length_estimates()``), the order is
    InternVL's ``--group_by_length`` one instead of a plain permutation
    (:func:`minivl.data.packing.internvl_length_grouped_order` with ``world_size * grad_accum``
    chunks): each optimizer step's samples are drawn at random, then dealt so that every rank
    and accumulation step gets a similar total length.

    Samples the data set skipped (``None``) are dropped from their batch; a batch with nothing
    left is skipped as a whole (both counted by the data set). With ``num_workers > 0``,
    that many DataLoader processes build the batches ahead, in the same order: the batches
    are the same as with ``num_workers=0``, and the skips the workers count are added to the
    data set's counters here.
    """
    if rank is None or world_size is None:
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if initialised else 0
        world_size = dist.get_world_size() if initialised else 1
    global_batch = batch_size * world_size
    if len(dataset) < global_batch:
        raise ValueError(f"the data set has {len(dataset)} samples, fewer than one global batch of {global_batch}")
    check_num_workers(num_workers)
    if lengths is not None and len(lengths) != len(dataset):
        raise ValueError(f"map_loader: {len(lengths)} lengths for a data set of {len(dataset)} samples")
    if grad_accum < 1:
        raise ValueError(f"map_loader: grad_accum must be >= 1, got {grad_accum}")

    collate_kept = functools.partial(_collate_kept, collate_fn)

    def make_loader(epoch: int) -> Iterator[dict]:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed + epoch)
        if not shuffle:
            order = list(range(len(dataset)))
        elif lengths is not None:
            order = internvl_length_grouped_order(lengths, batch_size, world_size * grad_accum, generator)
        else:
            order = torch.randperm(len(dataset), generator=generator).tolist()
        batches = [order[start + rank * batch_size: start + (rank + 1) * batch_size]
                   for start in range(0, len(order) - global_batch + 1, global_batch)]
        if num_workers == 0:
            for mine in batches:
                batch = collate_kept([dataset[i] for i in mine])
                if batch is not None:
                    yield batch
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                            collate_fn=_WorkerCollate(collate_kept, dataset))
        yield from _merge_worker_skips(loader, dataset)

    return make_loader


def packed_loader(packed_dataset, collate_fn: Callable, num_workers: int = 0) -> Callable[[int], Iterator[dict]]:
    """``make_loader(epoch)`` for a :class:`minivl.data.packing.PackedDataset` (one pack per batch;
    the packed data set shards by rank and worker itself).

    With ``num_workers > 0`` (InternVL's ``dataloader_num_workers``: 8 in its pre-training
    scripts, 4 in fine-tuning), that many DataLoader processes pack and collate rows ahead of
    the training step; worker w of rank r reads shard ``r * num_workers + w`` of every data
    set, as in InternVL, so the rows differ from ``num_workers=0`` (one worker gives the same
    rows). The skips the workers count are added to the data sets' counters here. On a 2-core
    CPU a worker only takes a core from the model: keep 0 there.
    """
    check_num_workers(num_workers)

    def make_loader(epoch: int) -> Iterator[dict]:
        packed_dataset.set_epoch(epoch)
        for source in packed_dataset.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)
        if num_workers == 0:
            for pack in packed_dataset:
                yield collate_fn([pack])
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(packed_dataset, batch_size=None, num_workers=num_workers,
                            collate_fn=_WorkerCollate(functools.partial(_collate_one, collate_fn), packed_dataset))
        yield from _merge_worker_skips(loader, packed_dataset)

    return make_loader


def _collate_kept(collate_fn: Callable, samples: list) -> dict | None:
    """``collate_fn`` of the samples that were not skipped, or None when none is left."""
    kept = [s for s in samples if s is not None]
    return collate_fn(kept) if kept else None


def _collate_one(collate_fn: Callable, pack: dict) -> dict:
    return collate_fn([pack])


def _skip_ledgers(dataset) -> list[tuple[Any, dict | None]]:
    """The ``(Counter, examples)`` pairs in which a data pipeline counts what it skips: a
    PackedDataset's own (samples too long to pack) and its sources', a MixtureDataset's data
    sets', or one SupervisedDataset's."""
    from collections import Counter

    parts = []
    if isinstance(getattr(dataset, "skip_counts", None), Counter):
        parts.append(dataset)
    members = getattr(dataset, "sources", None) or getattr(dataset, "datasets", None)
    parts.extend(members if members is not None else [dataset])
    ledgers = []
    for part in parts:
        counter = part.skip_counts if part is dataset and hasattr(part, "skip_counts") else vars(part).get("skips")
        if isinstance(counter, Counter):
            ledgers.append((counter, getattr(part, "skip_examples", None)))
    return ledgers


class _WorkerCollate:
    """Collates in a DataLoader worker and returns ``(batch, skips)``: what the worker's copies
    of the data sets skipped since its previous batch, ``[(ledger index, counts, examples)]``.

    A worker process counts skips in its own copy of the data sets; without this the training
    process's counters (``skip_report``) would miss every skip made in a worker.
    """

    def __init__(self, collate_fn: Callable, dataset) -> None:
        self.collate_fn = collate_fn
        self.dataset = dataset  # the same object as the worker's data set (one pickle, or a fork)
        self.seen = [dict(counter) for counter, _ in _skip_ledgers(dataset)]

    def __call__(self, items):
        batch = self.collate_fn(items)
        skips = []
        for i, ((counter, examples), seen) in enumerate(zip(_skip_ledgers(self.dataset), self.seen)):
            new = {reason: n - seen.get(reason, 0) for reason, n in counter.items() if n != seen.get(reason, 0)}
            if new:
                skips.append((i, new, dict(examples or {})))
                seen.update(counter)
        return batch, skips


def _merge_worker_skips(loader, dataset) -> Iterator[dict]:
    """The batches of a DataLoader of :class:`_WorkerCollate`, adding the workers' skips to
    ``dataset``'s counters in this process; empty batches (``None``) are dropped."""
    ledgers = _skip_ledgers(dataset)
    for batch, skips in loader:
        for i, new, examples in skips:
            counter, own_examples = ledgers[i]
            counter.update(new)
            if own_examples is not None:
                for reason, example in examples.items():
                    own_examples.setdefault(reason, example)
        if batch is not None:
            yield batch
