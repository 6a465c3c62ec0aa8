"""Progressive scaling: train the ViT once with a small LLM, then reuse it with a larger one.

InternVL 2.5 (report section 3.3) runs stage 1.5 (ViT incremental learning) with a *small*
LLM, then moves the trained InternViT to a *larger* LLM "through a shared-weight
mechanism" and skips stage 1.5 there: the large model only needs stage 1 (a new ``mlp1``,
trained alone) and stage 2. The ViT's features stay "generalizable representations that can
be easily understood by other LLMs". In practice InternViT-300M-V2.5 comes from the 8B
stage 1.5 and serves 1B, 2B and 4B; InternViT-6B-V2.5 comes from the 26B run and serves 38B
and 78B. The report's "about 120B tokens" for the 78B model leaves out the stage 1.5 tokens
of the 26B run that produced its ViT: that cost is paid once and shared.

This module holds:

* :func:`transfer_vision`: the move itself (ViT copied, projector new unless asked and
  compatible, the large LLM attached), with loud checks;
* compute accounting: :func:`training_flops` (the planner's FLOPs per sample x samples)
  and :class:`FlopMeter` (the same formula applied to every batch a run really sees);
* :func:`progressive_scaling_demo`: the measured experiment of chapter 11 (a small-LLM
  pair trained 1 -> 1.5, its ViT moved to the large LLM for stage 1 only, against the large
  LLM trained 1 -> 1.5 from a fresh ViT), with :func:`plot_progressive_scaling`.

Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minivl.checkpoint import state_digest
from minivl.config import MiniVLConfig
from minivl.model import MiniVL
from minivl.train.planner import flops_per_sample
from minivl.train.stages import StageConfig

# ViT fields that must agree for a transferred ViT to be the one the target model expects.
_VISION_FIELDS = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "qkv_bias", "qk_normalization", "norm_type")
# Model fields that decide what the ViT's tokens look like after pixel unshuffle.
_MODEL_FIELDS = ("downsample_ratio", "select_layer", "ps_version")


# ----------------------------------------------------------------------------------------
# The transfer
# ----------------------------------------------------------------------------------------

def _llm_config_dict(llm: nn.Module) -> dict[str, Any]:
    """The config dict of a transformers causal LM, as :class:`MiniVLConfig` stores it."""
    config = getattr(llm, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"transfer_vision: the large LLM must be a transformers causal LM, got {type(llm).__name__}")
    d = config.to_dict()
    if "model_type" not in d or not d["model_type"]:
        raise ValueError(f"transfer_vision: the large LLM's config has no model_type ({type(llm).__name__})")
    return d


def _resolve_image_token_id(tokenizer_or_id: Any) -> int:
    if isinstance(tokenizer_or_id, bool):
        raise TypeError("transfer_vision: tokenizer_or_image_token_id must be a tokenizer or an int id")
    if isinstance(tokenizer_or_id, int):
        return tokenizer_or_id
    from minivl.text.tokenizer import image_token_id

    return image_token_id(tokenizer_or_id)


def check_vision_compatible(source: MiniVLConfig, target: MiniVLConfig) -> None:
    """Raise ``ValueError`` naming every field where ``target`` does not expect ``source``'s ViT.

    The ViT's shape (width, depth, heads, patch and tile size, norms) and the way its tokens
    are cut (``downsample_ratio``, ``select_layer``, ``ps_version``) must match; the LLM may
    differ (that is the point).

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    diffs = [f"vision.{k}: {getattr(source.vision, k)!r} != {getattr(target.vision, k)!r}"
             for k in _VISION_FIELDS if getattr(source.vision, k) != getattr(target.vision, k)]
    diffs += [f"{k}: {getattr(source, k)!r} != {getattr(target, k)!r}"
              for k in _MODEL_FIELDS if getattr(source, k) != getattr(target, k)]
    if diffs:
        raise ValueError("transfer_vision: the trained ViT does not fit the target model (source != target): "
                         + "; ".join(diffs))


def transfer_vision(
    small_model: MiniVL,
    large_llm: nn.Module,
    tokenizer_or_image_token_id: Any,
    reset_projector: bool = True,
    seed: int = 0,
) -> MiniVL:
    """Move the InternViT of ``small_model`` (trained with a small LLM) onto ``large_llm``.

    ``large_llm`` is a transformers causal LM, or a :class:`MiniVL` whose ViT is to be
    replaced (then its ViT config must match the trained one, or a ``ValueError`` names the
    fields that differ). The returned model holds a *copy* of the trained ViT (training the
    new model never changes ``small_model``), the large LLM itself (not a copy), and

    * with ``reset_projector=True`` (InternVL's recipe): a fresh ``mlp1`` (initialised under
      ``torch.manual_seed(seed)``), to be trained by stage 1 on the large LLM;
    * with ``reset_projector=False``: a copy of the small model's ``mlp1``, which is only
      possible when both LLMs have the same width (else ``ValueError``).

    ``tokenizer_or_image_token_id`` gives the ``<IMG_CONTEXT>`` id of the tokenizer the large
    LLM uses; it must equal the small model's (the data is encoded once for both) and lie
    inside the large LLM's vocabulary.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    if not isinstance(small_model, MiniVL):
        raise TypeError(f"transfer_vision: small_model must be a MiniVL, got {type(small_model).__name__}")
    source = small_model.config
    if isinstance(large_llm, MiniVL):
        check_vision_compatible(source, large_llm.config)
        llm_dict = dict(large_llm.config.llm)
        large_llm = large_llm.language_model
    else:
        llm_dict = _llm_config_dict(large_llm)

    token_id = _resolve_image_token_id(tokenizer_or_image_token_id)
    if source.image_token_id is not None and source.image_token_id != token_id:
        raise ValueError(f"transfer_vision: the tokenizer's <IMG_CONTEXT> id is {token_id} but the small model was "
                         f"trained with image_token_id {source.image_token_id}; use the same tokenizer for both LLMs")
    vocab = large_llm.get_input_embeddings().weight.shape[0]
    if not 0 <= token_id < vocab:
        raise ValueError(f"transfer_vision: <IMG_CONTEXT> id {token_id} is outside the large LLM's vocabulary "
                         f"({vocab} rows in its input embeddings)")

    hidden = large_llm.get_input_embeddings().weight.shape[1]
    llm_dict["hidden_size"] = hidden
    config = dataclasses.replace(source, vision=copy.deepcopy(source.vision), llm=llm_dict,
                                 image_token_id=token_id, official_llm_architecture=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MiniVL(config, language_model=large_llm)
    model.vision_model.load_state_dict(small_model.vision_model.state_dict(), strict=True)  # copies the tensors
    if not reset_projector:
        small_hidden = small_model.mlp1.out_features
        if small_hidden != hidden:
            raise ValueError(f"transfer_vision: cannot keep the projector: it maps to the small LLM's width "
                             f"{small_hidden}, the large LLM is {hidden} wide; use reset_projector=True")
        model.mlp1.load_state_dict(small_model.mlp1.state_dict(), strict=True)
    return model.to(small_model.device)


# ----------------------------------------------------------------------------------------
# Compute accounting
# ----------------------------------------------------------------------------------------

def training_flops(config: MiniVLConfig, stage: StageConfig, tiles: int, tokens: int, steps: int,
                   attention_span: float | None = None) -> float:
    """Model FLOPs of ``steps`` optimizer steps whose samples (packed rows) all have ``tiles``
    tiles and ``tokens`` tokens: the planner's :func:`~minivl.train.planner.flops_per_sample`
    ``x batch_size x grad_accum x steps``. Recomputation by gradient checkpointing is not
    counted (model FLOPs, not hardware FLOPs).

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    per_sample = flops_per_sample(config, stage, tiles, tokens, attention_span=attention_span)["total"]
    return per_sample * stage.batch_size * stage.grad_accum * steps


def batch_flops(config: MiniVLConfig, stage: StageConfig, batch: dict[str, Any]) -> float:
    """Model FLOPs of training on one collated batch, from what it really holds.

    Tiles are the rows of ``pixel_values`` (dummy tiles of text-only samples go through the
    ViT too); tokens are all of ``input_ids`` (B, L). Attention is counted per sample: in a
    packed row with ``cu_seqlens`` the span is ``sum(n_i^2) / sum(n_i)``, so the planner's
    ``4 x tokens x span`` equals ``4 x sum(n_i^2)``; a padded batch attends over its row
    length ``L``.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    ids = batch["input_ids"]
    tokens = int(ids.numel())
    pixels = batch.get("pixel_values")
    tiles = int(pixels.shape[0]) if pixels is not None else 0
    if batch.get("cu_seqlens") is not None:
        lengths = (batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).double()  # (segments,)
        span = float((lengths**2).sum()) / max(1, tokens)
    else:
        span = float(ids.shape[-1])
    return flops_per_sample(config, stage, tiles, tokens, attention_span=span)["total"]


class FlopMeter:
    """Counts the model FLOPs, samples, tokens and tiles of every batch a training run draws.

    ``meter.wrap(make_loader)`` returns a ``make_loader`` for :func:`minivl.train.trainer.train`
    that passes batches through unchanged and adds :func:`batch_flops` of each to
    ``meter.flops`` as it is drawn, so at any step the meter holds exactly the compute spent
    so far (an evaluation callback can read it to place a point on an accuracy-vs-compute
    curve).

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """

    def __init__(self, config: MiniVLConfig, stage: StageConfig) -> None:
        self.config = config
        self.stage = stage
        self.flops = 0.0
        self.batches = 0
        self.samples = 0
        self.tokens = 0
        self.tiles = 0

    def add(self, batch: dict[str, Any]) -> float:
        """Count one batch; returns its FLOPs."""
        f = batch_flops(self.config, self.stage, batch)
        self.flops += f
        self.batches += 1
        if batch.get("cu_seqlens") is not None:
            self.samples += int(batch["cu_seqlens"].numel()) - 1
        else:
            self.samples += int(batch["input_ids"].shape[0])
        self.tokens += int(batch["input_ids"].numel())
        pixels = batch.get("pixel_values")
        self.tiles += int(pixels.shape[0]) if pixels is not None else 0
        return f

    def wrap(self, make_loader: Callable[[int], Iterable[dict]]) -> Callable[[int], Iterator[dict]]:
        def counted(epoch: int) -> Iterator[dict]:
            for batch in make_loader(epoch):
                self.add(batch)
                yield batch

        return counted

    def to_dict(self) -> dict[str, float]:
        return {"flops": self.flops, "batches": self.batches, "samples": self.samples, "tokens": self.tokens,
                "tiles": self.tiles}


# ----------------------------------------------------------------------------------------
# The measured experiment
# ----------------------------------------------------------------------------------------

@dataclass
class TransferRecipe:
    """Sizes, steps and data of :func:`progressive_scaling_demo` (one per scale in
    :data:`TRANSFER_RECIPES`). The cpu recipe takes about 7 minutes on 2 busy cores.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """

    vision_width: int = 64
    vision_layers: int = 4
    stage1_steps: int = 100
    stage1_5_steps: int = 200
    stage1_lr: float = 2e-3
    stage1_5_lr: float = 1e-3
    eval_every: int = 50
    train_tasks: tuple[str, ...] = ("shape_qa", "chart")
    eval_tasks: tuple[str, ...] = ("shape_qa", "chart")
    eval_per_task: int | None = 60
    max_packed_tokens: int = 1024
    num_images_expected: int = 24
    max_dynamic_patch: int = 6
    seed: int = 0


TRANSFER_RECIPES = {
    "smoke": TransferRecipe(vision_width=32, vision_layers=2, stage1_steps=2, stage1_5_steps=2, eval_every=1,
                            eval_per_task=4, max_packed_tokens=512),
    "cpu": TransferRecipe(),
    "gpu": TransferRecipe(vision_width=256, vision_layers=6, stage1_steps=1000, stage1_5_steps=3000,
                          stage1_5_lr=5e-4, eval_every=250, eval_per_task=None, max_packed_tokens=4096,
                          num_images_expected=96),
}

RUN_LABELS = {
    "a_small": "(a) ViT + LLM-S: stage 1 -> 1.5",
    "b_transfer": "(b) ViT from (a) + LLM-L: stage 1",
    "c_scratch": "(c) fresh ViT + LLM-L: stage 1 -> 1.5",
}


def _fresh_vision_model(llm: nn.Module, tokenizer: Any, recipe: TransferRecipe) -> MiniVL:
    """A MiniVL with a seeded fresh InternViT and ``mlp1`` around ``llm`` (the same seed gives the
    same ViT initialisation for every LLM)."""
    from minivl.config import VisionConfig
    from minivl.text.tokenizer import image_token_id

    vision = VisionConfig.tiny(hidden_size=recipe.vision_width, num_hidden_layers=recipe.vision_layers,
                               num_attention_heads=4, intermediate_size=4 * recipe.vision_width)
    config = MiniVLConfig(vision=vision, llm=_llm_config_dict(llm), image_token_id=image_token_id(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return MiniVL(config, language_model=llm)


def _packed_make_loader(model: MiniVL, tokenizer: Any, train_meta: str | Path, recipe: TransferRecipe):
    from minivl.data.dataset import DataConfig, build_datasets
    from minivl.data.packing import PackedDataset, packed_collate_fn
    from minivl.train.trainer import packed_loader

    data_cfg = DataConfig(image_size=model.config.vision.image_size, num_image_token=model.num_image_token,
                          max_dynamic_patch=recipe.max_dynamic_patch, max_length=recipe.max_packed_tokens)
    datasets = build_datasets(train_meta, tokenizer, data_cfg, seed=recipe.seed, names=list(recipe.train_tasks))
    packed = PackedDataset(datasets, max_packed_tokens=recipe.max_packed_tokens,
                           num_images_expected=recipe.num_images_expected, seed=recipe.seed,
                           img_start_token_id=tokenizer.convert_tokens_to_ids("<img>"),
                           img_end_token_id=tokenizer.convert_tokens_to_ids("</img>"),
                           pad_token_id=tokenizer.pad_token_id)
    return packed_loader(packed, functools.partial(packed_collate_fn, loss_reduction="square"))


def evaluate_tasks(model: MiniVL, tokenizer: Any, test_meta: str | Path, tasks: Sequence[str],
                   per_task: int | None) -> dict[str, float]:
    """Greedy accuracy per task on the held-out split (the suite's metrics) and their mean.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    from minivl.quickstart import evaluate_suite

    return evaluate_suite(model, tokenizer, test_meta, tasks=list(tasks), per_task=per_task)


def run_stages(model: MiniVL, tokenizer: Any, train_meta: str | Path, test_meta: str | Path,
               stages: Sequence[tuple[str, int, float]], recipe: TransferRecipe,
               start: dict[str, float] | None = None, progress: bool = False) -> dict[str, Any]:
    """Train ``model`` through ``stages`` (``(name, steps, lr)``), evaluating every
    ``recipe.eval_every`` steps and at the end of each stage; every point carries the compute
    spent so far (FLOPs and training seconds, evaluation excluded), continuing from ``start``.

    Returns ``{"curve": [point, ...], "stages": [{"stage", "steps", "flops", "seconds", ...}]}``.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    from minivl.train.stages import get_stage
    from minivl.train.trainer import train

    flops0 = (start or {}).get("flops", 0.0)
    seconds0 = (start or {}).get("seconds", 0.0)
    curve: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    evaluate = functools.partial(evaluate_tasks, tokenizer=tokenizer, test_meta=test_meta,
                                 tasks=recipe.eval_tasks, per_task=recipe.eval_per_task)
    curve.append({"stage": "start", "step": 0, "flops": flops0, "seconds": seconds0, **evaluate(model)})
    for name, steps, lr in stages:
        stage = get_stage(name, "tiny", max_steps=steps, lr=lr, seed=recipe.seed, eval_every=recipe.eval_every,
                          max_packed_tokens=recipe.max_packed_tokens, num_images_expected=recipe.num_images_expected,
                          warmup_steps=min(20, max(1, steps // 10)), log_every=10)
        meter = FlopMeter(model.config, stage)
        eval_seconds = [0.0]
        t_start = time.perf_counter()

        def eval_fn(m: nn.Module, _name=name, _meter=meter, _spent=eval_seconds, _t0=t_start, _f0=flops0,
                    _s0=seconds0) -> dict[str, float]:
            t = time.perf_counter()
            train_seconds = t - _t0 - _spent[0]
            scores = evaluate(m)
            _spent[0] += time.perf_counter() - t
            curve.append({"stage": _name, "flops": _f0 + _meter.flops, "seconds": _s0 + train_seconds, **scores})
            return scores

        result = train(model, meter.wrap(_packed_make_loader(model, tokenizer, train_meta, recipe)), stage,
                       eval_fn=eval_fn, resume=False, progress=progress)
        for point, row in zip([p for p in curve if p["stage"] == name], result.evals):
            point["step"] = row["step"]
        seconds = result.seconds - eval_seconds[0]
        done.append({"stage": name, "steps": result.steps, "lr": lr, "flops": meter.flops, "seconds": seconds,
                     **{k: v for k, v in meter.to_dict().items() if k != "flops"},
                     "final_loss": sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))})
        flops0 += meter.flops
        seconds0 += seconds
    return {"curve": curve, "stages": done}


def progressive_scaling_demo(
    tokenizer: Any,
    train_meta: str | Path,
    test_meta: str | Path,
    llm_small: nn.Module,
    llm_large: nn.Module,
    recipe: TransferRecipe | None = None,
    scale: str | None = None,
    cache: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The progressive-scaling experiment, measured.

    (a) a fresh ViT with ``llm_small``: stage 1 -> stage 1.5 (ViT incremental, LLM frozen);
    (b) that ViT moved to ``llm_large`` (:func:`transfer_vision`, fresh projector): stage 1 only;
    (c) the baseline: the same fresh ViT initialisation with ``llm_large``: stage 1 -> stage 1.5.

    Both LLMs stay frozen throughout (they are copied, the arguments are not changed). Every
    run is evaluated on ``recipe.eval_tasks`` along the way. Returns a JSON-ready dict:
    ``runs`` (each with its ``curve`` of accuracy vs cumulative FLOPs / seconds and its
    ``stages``), ``table`` (final accuracy and compute of (b) and (c), with (a)'s compute
    counted for (b) or treated as already paid), ``recipe`` and ``seconds``. With ``cache`` (a
    file), a result saved there by the same recipe is returned instead of retraining.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    from minivl.scale import get_scale
    from minivl.train.attention import enable_packed_attention

    recipe = recipe or TRANSFER_RECIPES[get_scale(scale)]
    key = {**dataclasses.asdict(recipe), "vocab": len(tokenizer), "llm_small": state_digest(llm_small),
           "llm_large": state_digest(llm_large)}
    key = json.loads(json.dumps(key))  # tuples -> lists, as they come back from the file
    if cache is not None and Path(cache).exists():
        saved = json.loads(Path(cache).read_text())
        if saved.get("key") == key:
            return saved
    t0 = time.perf_counter()
    s1 = ("stage1", recipe.stage1_steps, recipe.stage1_lr)
    s15 = ("stage1_5", recipe.stage1_5_steps, recipe.stage1_5_lr)

    def prepared(llm: nn.Module) -> nn.Module:
        llm = copy.deepcopy(llm)
        enable_packed_attention(llm)
        return llm

    runs: dict[str, Any] = {}
    small = _fresh_vision_model(prepared(llm_small), tokenizer, recipe)
    runs["a_small"] = run_stages(small, tokenizer, train_meta, test_meta, [s1, s15], recipe, progress=progress)
    large_b = transfer_vision(small, prepared(llm_large), tokenizer, reset_projector=True, seed=recipe.seed)
    runs["b_transfer"] = run_stages(large_b, tokenizer, train_meta, test_meta, [s1], recipe, progress=progress)
    large_c = _fresh_vision_model(prepared(llm_large), tokenizer, recipe)
    runs["c_scratch"] = run_stages(large_c, tokenizer, train_meta, test_meta, [s1, s15], recipe, progress=progress)
    result = {"key": key, "recipe": dataclasses.asdict(recipe), "runs": runs,
              "table": compute_table(runs, recipe.eval_tasks), "seconds": time.perf_counter() - t0}
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps(result, indent=1))
    return result


def _total(run: dict[str, Any], what: str) -> float:
    return sum(s[what] for s in run["stages"])


def compute_table(runs: dict[str, Any], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of final accuracy vs compute: (a), (b) with (a)'s ViT compute reused (already paid,
    as for InternVL's 1B-4B and 38B-78B models), (b) with it counted, and (c).

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    a, b, c = runs["a_small"], runs["b_transfer"], runs["c_scratch"]
    rows = [
        ("(a) LLM-S: stage 1 -> 1.5", a, 0.0, 0.0),
        ("(b) transfer, ViT reused", b, 0.0, 0.0),
        ("(b) transfer + cost of (a)", b, _total(a, "flops"), _total(a, "seconds")),
        ("(c) LLM-L from scratch", c, 0.0, 0.0),
    ]
    table = []
    for label, run, extra_flops, extra_seconds in rows:
        final = run["curve"][-1]
        table.append({"run": label, **{t: final[t] for t in tasks}, "mean": final["all"],
                      "flops": _total(run, "flops") + extra_flops, "seconds": _total(run, "seconds") + extra_seconds})
    return table


def format_compute_table(table: Sequence[dict[str, Any]], tasks: Sequence[str]) -> str:
    """The table as aligned text: accuracy in percent, compute in TFLOPs and seconds.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    head = f"{'run':<30}" + "".join(f"{t:>11}" for t in tasks) + f"{'mean':>8}{'TFLOPs':>9}{'train s':>9}"
    lines = [head]
    for row in table:
        lines.append(f"{row['run']:<30}" + "".join(f"{row[t]:>10.1%} " for t in tasks)
                     + f"{row['mean']:>7.1%} {row['flops'] / 1e12:>8.2f} {row['seconds']:>8.0f}")
    return "\n".join(lines)


def plot_progressive_scaling(result: dict[str, Any], metric: str = "all", x: str = "flops", ax=None):
    """Accuracy (``metric``: a task or ``"all"``) against cumulative compute (``x``: ``"flops"``
    or ``"seconds"``) for the large-LLM runs: (c) from scratch, (b) with the ViT reused and (b)
    shifted right by the compute of (a). Returns the matplotlib axes.

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    runs = result["runs"]
    scale = 1e12 if x == "flops" else 1.0
    shift = _total(runs["a_small"], x)

    def draw(run, offset, **style):
        points = run["curve"]
        ax.plot([(p[x] + offset) / scale for p in points], [p[metric] for p in points], marker="o", **style)

    draw(runs["c_scratch"], 0.0, label=RUN_LABELS["c_scratch"], color="tab:red")
    draw(runs["b_transfer"], 0.0, label="(b) transfer, ViT already paid for", color="tab:blue")
    draw(runs["b_transfer"], shift, label="(b) transfer + compute of (a)", color="tab:blue", linestyle="--",
         alpha=0.6)
    for p in runs["c_scratch"]["curve"]:
        if p["stage"] == "stage1_5":
            ax.axvline(runs["c_scratch"]["stages"][0][x] / scale, color="grey", linestyle=":", linewidth=1)
            break
    ax.set(xlabel="cumulative training TFLOPs" if x == "flops" else "cumulative training seconds",
           ylabel=f"accuracy ({metric})", ylim=(0, 1), title="LLM-L: transferred ViT vs ViT trained from scratch")
    ax.legend(fontsize=8)
    return ax


# ----------------------------------------------------------------------------------------
# The two LLMs of the demo
# ----------------------------------------------------------------------------------------

# LLM-L is 6.5x LLM-S; on 2 CPU cores it gets fewer warm-start steps than the quickstart's S.
LARGE_WARM_STEPS = {"smoke": 5, "cpu": 120, "gpu": 2000}


def prepare_llms(out: str | Path, scale: str | None = None, progress: bool = False) -> dict[str, Any]:
    """The synthetic suite, tokenizer and LLM-S of :func:`minivl.quickstart.prepare` (shared with
    chapters 10-12 under ``out``), plus LLM-L warm-started on the same conversations.

    Returns ``{"workspace", "llm_small", "llm_large", "info_small", "info_large"}``; both LLMs
    are cached under ``out`` (``llm_S``, ``llm_L``).

    Explained in chapter 11 (notebooks/11_stage1_5_vit_incremental.ipynb).
    """
    from minivl.quickstart import prepare
    from minivl.scale import get_scale
    from minivl.train.warmstart import suite_conversations, warm_start_llm

    scale = get_scale(scale)
    ws = prepare(out, scale, progress=progress)
    conversations = suite_conversations(ws.train_meta)
    llm_large, info = warm_start_llm(ws.tokenizer, conversations, "L", steps=LARGE_WARM_STEPS[scale],
                                     seed=ws.recipe.seed, cache=Path(out) / "llm_L", progress=progress)
    return {"workspace": ws, "llm_small": ws.llm, "llm_large": llm_large, "info_small": ws.llm_info,
            "info_large": info}
