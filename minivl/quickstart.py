"""``minivl quickstart``: the whole InternVL 2.5 recipe at one scale, from nothing to a results table.

The steps, each a function of the package:

1. the synthetic suite (:func:`minivl.data.synthetic.generate_suite`), its train split filtered
   by the model-free filters of chapter 7 (:func:`minivl.data.filtering.filter_meta`);
2. a byte-level BPE tokenizer with InternVL's special tokens (:func:`minivl.text.tokenizer.train_chat_tokenizer`);
3. an LLM warm start, standing in for a pretrained Qwen2.5 (:func:`minivl.train.warmstart.warm_start_llm`),
   and a ViT warm start, standing in for the pretrained InternViT (:func:`minivl.vision.warmstart.warm_start_vit`);
4. MiniVL = that InternViT + a fresh MLP projector + that LLM (:class:`minivl.model.MiniVL`);
5. stage 1 (projector), stage 1.5 (ViT + projector), stage 2 (everything), on packed rows with
   square-averaged loss (:func:`minivl.train.trainer.train`), each followed by an evaluation
   on the held-out test split (:func:`minivl.eval.bench.evaluate`);
6. the small-text task evaluated with one tile versus dynamic tiling;
7. the final model saved with its tokenizer, loss and accuracy plots, ``results.json``.

A scale picks the sizes (:data:`RECIPES`); the code is the same. Explained across chapters
10-12 and in the README.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from minivl.scale import get_scale, print_environment


@dataclass
class Recipe:
    """Sizes and step counts of a quickstart run (one per scale)."""

    vision_width: int = 64
    vision_layers: int = 2
    # Tile side in pixels, a multiple of the ViT's 14 px patches: 112 px -> 16 image tokens per
    # tile. 84 px gives 9 tokens, one per cell of the scenes' 3 x 3 grid, and a better ViT warm
    # start (what each cell holds: kind 87 % instead of 81 %), but in the stage-2 probe
    # (scripts/stage2_probe.py --image-size 84, seeds 0 / 1) colour and count stayed within the
    # seed spread (colour 71 / 68 against 66 / 66, count 72 / 72 against 75 / 66), and small
    # text's 7 px glyphs would shrink to 5 px. With the token-trained warm start (vit_warm_lr,
    # vit_token_weight below) 84 px did worse: shape_qa 43.8 % (seed 0; 59.8 % at 112 px), and with
    # --projector-init-scale 5 54.0 / 54.5 % (colour 69 / 64 %, count 72 / 75 %, seeds 0 / 1)
    image_size: int = 112
    llm_size: str = "S"
    vocab_size: int = 1000
    warm_steps: int = 300
    # the ViT warm start: AdamW steps of batch 64 over this many rendered scenes
    vit_warm_steps: int = 1800
    vit_warm_scenes: int = 16384
    # its peak lr, and the weight of its per-image-token objective (0: the cells' objective alone;
    # see minivl.vision.warmstart). Measured at cpu scale on held-out scenes: lr 5e-3 on the
    # cells alone left kind per cell at 81 % with its loss still falling (3600 steps reach 98 %,
    # yet the quickstart's colour questions then stayed at 64 %), and a linear probe read the
    # kind from an LLM-sized token (token_probe) 66 % of the time. lr 1e-2 with the token
    # objective, at the same cost: kind per cell 97 %, per token 91 %. In the quickstart (seed 0)
    # that bought position questions 25 -> 39 % and shape_qa 55 -> 59 %, not colour or count;
    # in the stage-2 probe (scripts/stage2_probe.py, 1500 steps, seeds 0 / 1 / 2) shape_qa
    # 59.8 / 61.0 / 63.7 % against 51.5-54.8 % with the old warm start
    vit_warm_lr: float = 1e-2
    vit_token_weight: float = 1.0
    # off: pulling each token towards a fixed kind + colour direction made the tokens' colours
    # louder, not their kinds (class_variance, kind 7.7 -> 5.4 %), and the stage-2 probe
    # (6000 steps, seed 0) fell from 65.5 % to 61.0 % on shape_qa (chapter 15)
    vit_prototype_weight: float = 0.0
    # off: the class-share objective (minivl.vision.warmstart.class_share_loss, weight 1) makes
    # the tokens plainer (class share 18 -> 61 % at 112 px, 41 -> 81 % at 84 px, 88 % with
    # 3600 steps), yet the stage-2 probe (6000 steps, seed 0) fell from 65.5 % to 52.0 % on
    # shape_qa at 112 px, and at 84 px with 3600 steps it gave 62.0 / 61.3 % (seeds 0 / 1)
    # against 63.0 / 57.0 % without it (chapter 15)
    vit_share_weight: float = 0.0
    # (stage, optimizer steps, peak lr): about 7 minutes of training on 2 idle cores; the whole run about 9.
    # Stage 2 at 1e-3 rather than 2e-3: at 2e-3 the result swung with the schedule's length
    # (on the suite before its question types were balanced: 5500 steps 50.7 % on shape_qa,
    # 6000 steps 34.5 %), and 1e-3 did better on every question type in the shape-only probe
    # (scripts/stage2_probe.py); 7000 steps rather than 5500 buy
    # position questions 13 % -> 25 % and charts 5 % -> 14 % for 95 s
    stages: list[tuple[str, int, float]] = field(default_factory=lambda: [
        ("stage1", 200, 2e-3), ("stage1_5", 300, 1e-3), ("stage2", 7000, 1e-3)])
    # the warm-started ViT learns at a tenth of the stage's lr: at the LLM's 2e-3 it forgets
    # what it knows faster than the LLM learns to read it (measured: shape_qa 36 % vs 55 %)
    vision_lr_scale: float = 0.1
    # the projector's lr scale in every stage (1: the stage's lr, as in InternVL). 10 taught
    # frozen oracle codes to count a named kind (stage-2 probe, seed 1: 62 -> 98 %), not the
    # real ViT's tokens (seed 0: shape_qa 63.2 -> 63.5 %, colour 61 -> 63 %, a named kind 45 -> 52 %)
    projector_lr_scale: float = 1.0
    # InternVL's 0.1 regularises a 24-layer ViT; a 2-layer one only gets noisier gradients
    drop_path_rate: float = 0.0
    # the fresh projector's last Linear (weight and bias) times this (see build_model). 1 keeps
    # PyTorch's default, as InternVL does. 5 (image tokens start ~5x louder than the LLM's text
    # embeddings) let perfect oracle tokens through the projector (stage-2 probe, 6000 steps:
    # colour 97 % instead of 70 %) but not real ViT features (colour 64 / 68 % vs 68 / 61 %, seeds 0 / 1)
    projector_init_scale: float = 1.0
    max_packed_tokens: int = 1024
    num_images_expected: int = 24
    max_dynamic_patch: int = 6
    eval_per_task: int | None = None  # None: the whole test split
    seed: int = 0


RECIPES = {
    "smoke": Recipe(vision_width=32, vision_layers=2, vocab_size=600, warm_steps=5, vit_warm_steps=3,
                    vit_warm_scenes=16, stages=[("stage1", 2, 2e-3), ("stage1_5", 2, 1e-3), ("stage2", 3, 1e-3)],
                    max_packed_tokens=512, num_images_expected=24, eval_per_task=4),
    "cpu": Recipe(),
    # gpu scale: the same recipe with a wider model; real InternVL 2.5 runs use configs/ and `minivl train`.
    "gpu": Recipe(vision_width=256, vision_layers=6, llm_size="L", warm_steps=2000, vit_warm_steps=3000,
                  vit_warm_scenes=32768, drop_path_rate=0.1,
                  stages=[("stage1", 500, 2e-3), ("stage1_5", 1500, 5e-4), ("stage2", 4000, 5e-4)],
                  max_packed_tokens=4096, num_images_expected=96),
}

# Tasks scored after each stage (caption and text_only have no single right answer to score;
# the faulty task exists for the filtering chapter).
EVAL_TASKS = ("shape_qa", "small_text", "chart", "grounding", "multi_image", "video", "reasoning")


def _section(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


@dataclass
class Workspace:
    """What the first steps produce and every later step uses (chapters 10-12 reuse it)."""

    out: Path
    recipe: Recipe
    train_meta: Path
    test_meta: Path
    tokenizer: Any
    llm: Any
    llm_info: dict[str, Any]
    vit: Any = None
    vit_info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """Two lines for a chapter: the suite, tokenizer and LLM; the ViT warm start's
        held-out cell accuracy against an untrained ViT."""
        lines = [f"suite: {len(json.loads(Path(self.train_meta).read_text()))} training data sets; "
                 f"tokenizer: {len(self.tokenizer)} tokens; LLM: {self.llm_info['parameters']:,} parameters"]
        if self.vit_info:
            held, chance = self.vit_info["held_out"], self.vit_info["chance"]
            lines.append(f"ViT warm start: {len(self.vit_info['losses'])} steps; held-out cells right "
                         f"{held['cell']:.1%} (untrained {chance['cell']:.1%}): colour {held['colour']:.1%}, "
                         f"kind {held['kind']:.1%}, empty or not {held['occupied']:.1%}")
            if "held_out_tokens" in self.vit_info:
                tokens = self.vit_info["held_out_tokens"]
                lines.append(f"  per LLM image token (2 x 2 patches): right {tokens['token']:.1%}; on a shape, "
                             f"kind {tokens['kind']:.1%}, colour {tokens['colour']:.1%}")
        return "\n".join(lines)


def vision_config(recipe: Recipe):
    """The recipe's InternViT: ``image_size`` px tiles, ``vision_width`` wide, ``vision_layers`` deep."""
    from minivl.config import VisionConfig

    return VisionConfig.tiny(image_size=recipe.image_size, hidden_size=recipe.vision_width,
                             num_hidden_layers=recipe.vision_layers, num_attention_heads=4, intermediate_size=4 * recipe.vision_width)


def prepare(out: str | Path, scale: str | None = None, recipe: Recipe | None = None,
            progress: bool = True) -> Workspace:
    """Steps 1-3: the synthetic suite, the tokenizer and the LLM and ViT warm starts, each
    reused from ``out`` when an earlier run left it there."""
    from minivl.data.dataset import conversation_texts
    from minivl.data.filtering import filter_meta
    from minivl.data.records import read_meta
    from minivl.data.synthetic.suite import ensure_suite, read_suite_stamp
    from minivl.text.tokenizer import image_token_id, load_tokenizer, train_chat_tokenizer
    from minivl.train.warmstart import suite_conversations, warm_start_llm
    from minivl.vision.warmstart import warm_start_vit

    scale = get_scale(scale)
    recipe = recipe or RECIPES[scale]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    _section("1. synthetic suite")
    data_dir = out / "data"
    stamp = read_suite_stamp(data_dir)
    if ensure_suite(data_dir, scale="smoke" if scale == "smoke" else "cpu", seed=recipe.seed) is not None:
        if stamp is not None or (data_dir / "test.json").exists():  # an older suite was there
            print(f"the suite in {data_dir} was {stamp or 'unstamped'}: regenerated it; retraining the tokenizer")
        shutil.rmtree(out / "tokenizer", ignore_errors=True)
    test_meta = data_dir / "test.json"
    print(f"train: {sum(m.length or 0 for m in read_meta(data_dir / 'train.json').values())} records in {data_dir}")

    _section("1b. data filtering")
    # InternVL 2.5 filters its SFT data before training (report section 4.3); the suite's train
    # split carries labelled faulty copies for exactly this step. The cheap, model-free filters
    # (heuristic rules, n-gram repetition) run in about a second, so they run every time.
    train_meta, reports = filter_meta(data_dir / "train.json", data_dir / "train_filtered.json")
    total, removed = sum(r.total for r in reports.values()), sum(r.removed for r in reports.values())
    rules = Counter(r.flag.rule for report in reports.values() for r in report.removals)
    print(f"{total} records -> {total - removed} kept, {removed} removed: "
          + ", ".join(f"{rule} {n}" for rule, n in rules.most_common()))

    _section("2. tokenizer")
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_chat_tokenizer(conversation_texts(train_meta), vocab_size=recipe.vocab_size).save_pretrained(tok_dir)
    tok = load_tokenizer(tok_dir)
    print(f"vocabulary {len(tok)}, <IMG_CONTEXT> id {image_token_id(tok)}")

    _section(f"3. LLM warm start (size {recipe.llm_size})")
    conversations = suite_conversations(train_meta)
    llm, info = warm_start_llm(tok, conversations, recipe.llm_size, steps=recipe.warm_steps, seed=recipe.seed,
                               cache=out / f"llm_{recipe.llm_size}", progress=progress)
    print(f"{info['parameters']:,} parameters, final loss {info['final_loss']:.3f}")

    vcfg = vision_config(recipe)
    _section(f"3b. ViT warm start ({vcfg.hidden_size} wide x {vcfg.num_hidden_layers} layers)")
    vit, vit_info = warm_start_vit(vcfg, steps=recipe.vit_warm_steps, num_scenes=recipe.vit_warm_scenes,
                                   lr=recipe.vit_warm_lr, token_weight=recipe.vit_token_weight,
                                   prototype_weight=recipe.vit_prototype_weight,
                                   share_weight=recipe.vit_share_weight, seed=recipe.seed,
                                   cache=out / f"vit_{vcfg.hidden_size}x{vcfg.num_hidden_layers}", progress=progress)
    held, chance = vit_info["held_out"], vit_info["chance"]
    print(f"{vit_info['parameters']:,} parameters; held-out scenes, what each cell holds: "
          f"{held['cell']:.1%} (untrained {chance['cell']:.1%}); colour {held['colour']:.1%}, kind {held['kind']:.1%}")
    return Workspace(out, recipe, train_meta, test_meta, tok, llm, info, vit, vit_info)


def build_model(ws: Workspace, language_model: Any = None, pretrained_vit: bool = True):
    """Step 4: MiniVL = the recipe's InternViT (warm-started unless ``pretrained_vit=False``) +
    a fresh projector + the warm-started LLM.

    The projector keeps InternVL's architecture and PyTorch's default initialisation, except
    that its last Linear is multiplied by ``recipe.projector_init_scale``."""
    import torch

    from minivl.config import MiniVLConfig
    from minivl.model import MiniVL
    from minivl.text.tokenizer import image_token_id
    from minivl.train.attention import enable_packed_attention
    from minivl.train.warmstart import LLM_SIZES, llm_config

    r = ws.recipe
    torch.manual_seed(r.seed)
    vision = vision_config(r)
    # a copy: training or LoRA-wrapping one model must not change the workspace's LLM (or the next model)
    llm = language_model if language_model is not None else copy.deepcopy(ws.llm)
    # the saved config must describe this LLM: find its size by width and depth
    dims = (llm.config.hidden_size, llm.config.num_hidden_layers)
    size = next((name for name, spec in LLM_SIZES.items() if spec[:2] == dims), None)
    if size is None:
        raise ValueError(f"language_model is {dims[0]} wide x {dims[1]} layers, none of the warm-start sizes "
                         f"{ {name: spec[:2] for name, spec in LLM_SIZES.items()} }; add it to LLM_SIZES")
    config = MiniVLConfig(vision=vision, llm=llm_config(size, len(ws.tokenizer), llm.config.tie_word_embeddings),
                          image_token_id=image_token_id(ws.tokenizer))
    model = MiniVL(config, language_model=llm)
    if r.projector_init_scale != 1.0:
        with torch.no_grad():
            for p in model.mlp1[-1].parameters():
                p.mul_(r.projector_init_scale)
    if pretrained_vit and ws.vit is not None:
        model.vision_model.load_state_dict(ws.vit.state_dict())
    enable_packed_attention(model.language_model)
    return model


def train_stage(ws: Workspace, model, name: str, steps: int, lr: float, progress: bool = True,
                output_dir: str | Path | None = None, names: list[str] | None = None):
    """Step 5, one stage: packed rows of the whole training mixture (or of the data sets
    ``names`` only), square-averaged loss, the ``tiny`` preset of ``name`` with the recipe's
    ViT learning-rate scale and drop path."""
    from minivl.train.report import train_packed
    from minivl.train.stages import get_stage

    r = ws.recipe
    stage = get_stage(name, "tiny", max_steps=steps, lr=lr, seed=r.seed, max_packed_tokens=r.max_packed_tokens,
                      num_images_expected=r.num_images_expected, vision_lr_scale=r.vision_lr_scale,
                      projector_lr_scale=r.projector_lr_scale)
    if stage.drop_path_rate:
        stage = stage.replace(drop_path_rate=r.drop_path_rate)
    return train_packed(ws, model, stage, output_dir=output_dir, progress=progress, names=names)


def train_stage_cached(ws: Workspace, model, name: str, steps: int, lr: float, cache: str | Path,
                       progress: bool = False):
    """:func:`train_stage`, or its result loaded from ``cache`` when a run of the same stage,
    steps and learning rate, from the same starting weights and recipe, saved it there (chapters
    10-12 use this so that a second run of a chapter takes seconds).

    Returns ``(model, record)``: the trained (or loaded) model with packed attention on, and
    ``{"stage", "steps", "lr", "tokenizer", "start", "recipe", "seconds", "history", "loaded"}``.
    """
    from minivl.checkpoint import state_digest
    from minivl.model import MiniVL
    from minivl.text.tokenizer import tokenizer_fingerprint
    from minivl.train.attention import enable_packed_attention

    cache = Path(cache)
    # the tokenizer's fingerprint stands for the data: a regenerated suite retrains the tokenizer;
    # the starting weights and the recipe's training knobs (ViT lr scale, drop path, packing)
    # must match too
    knobs = {k: v for k, v in asdict(ws.recipe).items() if k not in ("stages", "eval_per_task")}
    key = {"stage": name, "steps": steps, "lr": lr, "tokenizer": tokenizer_fingerprint(ws.tokenizer),
           "start": state_digest(model), "recipe": knobs}
    path = cache / "history.json"
    if path.exists() and (cache / "model" / "config.json").exists():
        record = json.loads(path.read_text())
        if all(record.get(k) == v for k, v in key.items()):  # the starting weights' digest covers their shapes
            model = MiniVL.from_pretrained(cache / "model")
            enable_packed_attention(model.language_model)
            return model, {**record, "loaded": True}
    start = time.perf_counter()
    result = train_stage(ws, model, name, steps, lr, progress=progress)
    record = {**key, "seconds": time.perf_counter() - start, "history": result.history}
    model.save_pretrained(cache / "model", tokenizer=ws.tokenizer)
    path.write_text(json.dumps(record))
    return model, {**record, "loaded": False}


def run_quickstart(out: str | Path = "runs/quickstart", scale: str | None = None,
                   recipe: Recipe | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the pipeline at ``scale`` (default ``$MINIVL_SCALE`` or ``cpu``), writing under ``out``.

    Returns a dict with the accuracy table per stage, the tiling comparison, the seconds each
    step took and where the final model is.
    """
    scale = get_scale(scale)
    recipe = recipe or RECIPES[scale]
    out = Path(out)
    print(f"minivl quickstart: scale={scale}, out={out}")
    print_environment(scale)
    start = time.perf_counter()
    ws = prepare(out, scale, recipe, progress)
    seconds: dict[str, float] = {"prepare": time.perf_counter() - start}

    t = _section("4. MiniVL")
    model = build_model(ws)
    print(", ".join(f"{k} {v['total']:,}" for k, v in model.trainable_parameter_summary().items()))
    seconds["model"] = time.perf_counter() - t

    table: dict[str, dict[str, float]] = {}
    by_type: dict[str, dict[str, float]] = {}  # shape_qa accuracy per question type, per stage
    histories: dict[str, list[dict]] = {}
    evaluate = functools.partial(evaluate_suite, tokenizer=ws.tokenizer, meta=ws.test_meta,
                                 per_task=recipe.eval_per_task, progress=progress)
    for name, steps, lr in recipe.stages:
        t = _section(f"5. {name}: {steps} steps, lr {lr:g}")
        result = train_stage(ws, model, name, steps, lr, progress=progress, output_dir=out / name)
        histories[name] = result.history
        seconds[name] = time.perf_counter() - t
        t = time.perf_counter()
        scores = evaluate(model, details=True)
        details = scores.pop("tasks")
        table[name] = scores
        if "shape_qa" in details:
            by_type[name] = {q: score for q, (score, _) in details["shape_qa"].by_type.items()}
        seconds[f"eval_{name}"] = time.perf_counter() - t
        print(format_table({name: table[name]}))
        if name in by_type:
            print(format_by_type(by_type[name]))

    t = _section("6. dynamic tiling versus one tile (small_text)")
    tiling = {f"max_num={n}": evaluate(model, tasks=["small_text"], max_num=n)["small_text"] for n in (1, 16)}
    print("  ".join(f"{k}: {v:.1%}" for k, v in tiling.items()))
    seconds["tiling"] = time.perf_counter() - t

    _section("7. save")
    final = out / "final"
    model.save_pretrained(final, tokenizer=ws.tokenizer)
    results = {"scale": scale, "recipe": asdict(recipe), "accuracy": table, "shape_qa_by_type": by_type,
               "tiling": tiling, "seconds": seconds, "final_model": str(final)}
    results["seconds"]["total"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    save_plots(histories, table, out)
    print(f"\nAccuracy on the held-out test split after each stage ({scale} scale):")
    print(format_table(table))
    if by_type:
        print(format_by_type(by_type[list(by_type)[-1]]))
    print(f"\nsmall_text: one tile {tiling['max_num=1']:.1%}, dynamic tiling {tiling['max_num=16']:.1%}")
    print(f"total {results['seconds']['total'] / 60:.1f} min; model in {final}")
    image = out / "data" / "images" / "test" / "shape_qa" / "000000.png"
    # shape scenes are trained as one tile (their meta's max_dynamic_patch), so chat with one tile
    print(f'try: minivl chat --model {final} --max-num 1 --image {image} "How many shapes are there?"')
    return results


def evaluate_suite(model, tokenizer, meta, tasks=None, per_task=None, max_num=None, progress=False,
                   details=False, **kwargs: Any) -> dict[str, Any]:
    """Score ``model`` on the synthetic test split, one number per task and their mean (``all``);
    with ``details``, each task's :class:`minivl.eval.suite.TaskScore` under ``"tasks"``. Other
    keyword arguments (``group_by``, ``batch_size``, ``max_new_tokens``) go to
    :func:`minivl.eval.suite.evaluate_suite`, which this calls with the quickstart's tasks."""
    from minivl.eval.suite import evaluate_suite as _evaluate

    return _evaluate(model, tokenizer, meta, tasks=tasks or EVAL_TASKS, per_task=per_task, max_num=max_num,
                     progress=progress, details=details, **kwargs)


def format_by_type(scores: dict[str, float]) -> str:
    """``shape_qa by question type: count 58.0%, colour 50.0%, position 22.0%``."""
    return "shape_qa by question type: " + ", ".join(f"{q} {v:.1%}" for q, v in scores.items())


def format_table(table: dict[str, dict[str, float]]) -> str:
    """Stages as rows, tasks as columns, accuracies in percent."""
    tasks = list(next(iter(table.values())))
    width = max(10, *(len(stage) + 1 for stage in table))
    lines = [f"{'stage':<{width}}" + "".join(f"{t:>12}" for t in tasks)]
    for stage, row in table.items():
        lines.append(f"{stage:<{width}}" + "".join(f"{row[t]:>12.1%}" for t in tasks))
    return "\n".join(lines)


def save_plots(histories: dict[str, list[dict]], table: dict[str, dict[str, float]], out: Path) -> None:
    """``loss.png`` (loss per step, stages end to end) and ``accuracy.png`` (per task per stage)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for name, rows in histories.items():
        ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], label=name)
        offset += len(rows)
    ax.set(xlabel="optimizer step", ylabel="loss (square-averaged)", title="quickstart training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)

    tasks = [t for t in next(iter(table.values())) if t != "all"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(table)
    for i, (stage, row) in enumerate(table.items()):
        ax.bar([j + i * width for j in range(len(tasks))], [row[t] for t in tasks], width, label=stage)
    ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(tasks))], tasks, rotation=20)
    ax.set(ylabel="accuracy", ylim=(0, 1), title="held-out accuracy after each stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
