"""Training reports: stage tables, trainable counts, lr curve, smoothing, plots, held-out losses."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minivl.config import MiniVLConfig  # noqa: E402
from minivl.data.dataset import DataConfig, build_datasets, conversation_texts  # noqa: E402
from minivl.data.synthetic import generate_suite  # noqa: E402
from minivl.model import MiniVL  # noqa: E402
from minivl.quickstart import RECIPES, Workspace  # noqa: E402
from minivl.text.tokenizer import image_token_id, train_chat_tokenizer  # noqa: E402
from minivl.train.report import (  # noqa: E402
    format_rows,
    heldout_task_losses,
    lr_curve,
    plot_accuracy_bars,
    plot_losses,
    smooth,
    stage_rows,
    train_packed,
    trainable_rows,
)
from minivl.train.stages import LoraSpec, get_stage  # noqa: E402
from minivl.train.trainer import apply_stage_freezing, build_optimizer, build_scheduler  # noqa: E402


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    metas = generate_suite(out, scale="smoke", seed=0)["meta"]
    tok = train_chat_tokenizer(conversation_texts(metas["train"]), vocab_size=800)
    return {"train": metas["train"], "test": metas["test"], "tok": tok}


def new_model(tok, seed=0):
    torch.manual_seed(seed)
    return MiniVL(MiniVLConfig.smoke(vocab_size=len(tok), image_token_id=image_token_id(tok)))


def test_stage_rows_are_the_official_values():
    rows = stage_rows([("stage1", "1b"), ("stage1_5", "8b"), ("stage2", "1b"), ("stage2", "8b"),
                       ("finetune_lora", "1b"), ("stage1", "tiny")])
    s1, s15, s2, s2_8b, lora, tiny = rows
    # internvl_official_spec section 9.3: stage 1 lr 2e-4, 100 warm-up steps, drop path 0, wd 0.01
    assert (s1["trains"], s1["lr"], s1["warmup"], s1["drop_path"], s1["weight_decay"]) == ("mlp1", 2e-4, "100 steps", 0.0, 0.01)
    # stage 1.5 (8B): ViT + MLP, lr 1e-5, packed batch 1024 = gradient accumulation 2, wd 0.05
    assert (s15["trains"], s15["lr"], s15["grad_accum"], s15["weight_decay"]) == ("ViT + mlp1", 1e-5, 2, 0.05)
    # stage 2: everything, lr 4e-5, warm-up ratio 0.03, 22000 steps (1B) and 5500 (8B), context 16384, 48 tiles
    assert (s2["trains"], s2["lr"], s2["warmup"], s2["max_steps"]) == ("ViT + mlp1 + LLM", 4e-5, "ratio 0.03", 22000)
    assert (s2["max_packed_tokens"], s2["num_images_expected"], s2_8b["max_steps"]) == (16384, 48, 5500)
    assert lora["trains"] == "LoRA r16 on LLM" and lora["drop_path"] == 0.0
    assert tiny["max_packed_tokens"] == 1024 and tiny["stage"] == "stage1" and tiny["size"] == "tiny"


def test_format_rows_aligns_text_left_and_numbers_right():
    text = format_rows([{"name": "a", "n": 1234, "x": 0.5}, {"name": "bcd", "n": 5, "x": 2e-4}])
    assert text.splitlines() == [
        "name      n       x",
        "----  -----  ------",
        "a     1,234     0.5",
        "bcd       5  0.0002",
    ]
    with pytest.raises(KeyError, match="no column"):
        format_rows([{"a": 1}], columns=["b"])


def test_trainable_rows_per_stage(suite):
    model = new_model(suite["tok"])
    cfg = model.config
    c4, h = cfg.vision.hidden_size * 4, cfg.llm_hidden_size  # pixel unshuffle: 4C features per token
    mlp1 = 2 * c4 + (c4 * h + h) + (h * h + h)  # LayerNorm(4C) + Linear(4C, H) + Linear(H, H)
    vision_total = sum(p.numel() for p in model.vision_model.parameters())
    llm_total = sum(p.numel() for p in model.language_model.parameters())

    apply_stage_freezing(model, get_stage("stage1", "tiny"))
    rows = {r["tower"]: r for r in trainable_rows(model)}
    assert rows["projector"]["trainable"] == rows["projector"]["total"] == mlp1
    assert rows["vision"]["trainable"] == 0 and rows["llm"]["trainable"] == 0
    total = vision_total + llm_total + mlp1
    assert rows["all"]["total"] == total
    assert rows["all"]["trainable_%"] == round(100 * mlp1 / total, 2)

    apply_stage_freezing(model, get_stage("stage1_5", "tiny"))
    rows = {r["tower"]: r for r in trainable_rows(model)}
    assert rows["all"]["trainable"] == vision_total + mlp1 and rows["vision"]["trainable_%"] == 100.0


def test_lr_curve_matches_the_trainer_schedule_and_hand_values():
    stage = get_stage("stage2", "tiny", lr=1.0, warmup_steps=4, max_steps=10)
    curve = lr_curve(stage)
    # warm-up s / 4, then 0.5 (1 + cos(pi (s - 4) / 6))
    expected = [0.0, 0.25, 0.5, 0.75] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert curve == pytest.approx(expected, abs=1e-12)
    # the trainer's LambdaLR gives the same lr at each optimizer step
    p = torch.nn.Parameter(torch.zeros(1))
    model = torch.nn.Module()
    model.p = p
    opt = build_optimizer(model, stage)
    sched = build_scheduler(opt, stage)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(curve, abs=1e-12)
    assert lr_curve(stage, steps=3) == curve[:3]


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert smooth([3.0, 1.0, 2.0], 1) == [3.0, 1.0, 2.0]
    assert smooth([3.0, 1.0, 2.0], 10) == pytest.approx([3.0, 2.0, 2.0])
    with pytest.raises(ValueError):
        smooth([1.0], 0)


def test_plots_draw_the_numbers():
    ax = plot_losses({"a": [4.0, 2.0, 0.0], "b": [{"loss": 1.0}, {"loss": 3.0}]}, window=2, offsets={"b": 3})
    a, b = ax.get_lines()
    assert list(a.get_ydata()) == [4.0, 3.0, 1.0] and list(a.get_xdata()) == [1, 2, 3]
    assert list(b.get_ydata()) == [1.0, 2.0] and list(b.get_xdata()) == [4, 5]
    plt.close(ax.figure)
    ax = plot_accuracy_bars({"before": {"x": 0.1, "y": 0.2, "all": 0.15}, "after": {"x": 0.3, "y": 0.4, "all": 0.35}},
                            baseline={"y": 0.5})
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [0.1, 0.2, 0.3, 0.4]  # "all" is not a task
    plt.close(ax.figure)


def test_heldout_task_losses_equal_per_sample_losses(suite):
    model = new_model(suite["tok"])
    tok = suite["tok"]
    got = heldout_task_losses(model, tok, suite["test"], ["shape_qa", "chart"], per_task=2, batch_size=2,
                              max_dynamic_patch=6)
    blank = heldout_task_losses(model, tok, suite["test"], ["shape_qa"], per_task=2, batch_size=1, blank_images=True)
    # reference: each sample alone (no padding), token-weighted mean over the samples
    cfg = DataConfig(image_size=112, num_image_token=model.num_image_token, max_dynamic_patch=6, max_length=None,
                     min_num_frame=4, max_num_frame=4)
    for task in ("shape_qa", "chart"):
        ds = build_datasets(suite["test"], tok, cfg, train=False, names=[task])[0]
        for blank_images in (False, True) if task == "shape_qa" else (False,):
            num, den = 0.0, 0
            for i in range(2):
                s = ds[i]
                pv = torch.zeros_like(s["pixel_values"]) if blank_images else s["pixel_values"]
                with torch.no_grad():
                    out = model(input_ids=s["input_ids"][None], pixel_values=pv, image_flags=s["image_flags"],
                                labels=s["labels"][None])
                n = int((s["labels"][1:] != -100).sum())
                num, den = num + out.loss.item() * n, den + n
            ref = num / den
            assert (blank if blank_images else got)[task] == pytest.approx(ref, rel=1e-5), (task, blank_images)
    assert abs(blank["shape_qa"] - got["shape_qa"]) > 1e-4  # the images do reach the loss
    assert model.training  # mode restored


def test_train_packed_runs_any_stage(suite, tmp_path):
    tok = suite["tok"]
    recipe = RECIPES["smoke"]
    ws = Workspace(tmp_path, recipe, suite["train"], suite["test"], tok, None, {})
    model = new_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage = get_stage("finetune_lora", "tiny", max_steps=2, warmup_steps=1, lora=LoraSpec(target="vision"),
                      max_packed_tokens=recipe.max_packed_tokens, num_images_expected=recipe.num_images_expected)
    result = train_packed(ws, model, stage, progress=False)
    assert result.steps == 2 and len(result.losses) == 2
    assert all(math.isfinite(x) for x in result.losses)
    after = model.state_dict()
    lora = [k for k in after if "lora_" in k]
    assert lora and all(".vision_model." in f".{k}" or k.startswith("vision_model.") for k in lora)
    # every base weight stays (PEFT renames them: ...base_model.model.X.base_layer.weight)
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert set(base) == set(before)
    assert all(torch.equal(base[k], before[k]) for k in before)
    # while the adapters moved: LoRA B starts at zero and is non-zero after two steps
    assert all(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora if "lora_B" in k)
