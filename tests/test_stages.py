"""Stage recipes: the official values, the YAML files, the schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from minivl.train.stages import LoraSpec, RunConfig, StageConfig, get_stage
from minivl.train.trainer import build_scheduler, cosine_with_warmup

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name,size,lr,wd,dp,trains",
    [  # from the InternVL 2.5 stage scripts (research spec section 9.3)
        ("stage1", "1b", 2e-4, 0.01, 0.0, (False, True, False)),
        ("stage1", "8b", 2e-4, 0.05, 0.0, (False, True, False)),
        ("stage1_5", "8b", 1e-5, 0.05, 0.1, (True, True, False)),
        ("stage2", "1b", 4e-5, 0.01, 0.1, (True, True, True)),
        ("stage2", "2b", 4e-5, 0.01, 0.1, (True, True, True)),
        ("stage2", "8b", 4e-5, 0.05, 0.1, (True, True, True)),
        ("finetune_full", "1b", 4e-5, 0.01, 0.1, (False, True, True)),
        ("finetune_lora", "8b", 4e-5, 0.05, 0.0, (False, False, False)),
    ],
)
def test_official_stage_values(name, size, lr, wd, dp, trains):
    cfg = get_stage(name, size)
    assert (cfg.lr, cfg.weight_decay, cfg.drop_path_rate) == (lr, wd, dp)
    assert (cfg.train_vision, cfg.train_projector, cfg.train_llm) == trains
    # packed stages square-average (--loss_reduction square); the fine-tuning scripts are not packed
    # and pass no loss_reduction: a plain token-mean cross-entropy
    assert cfg.max_grad_norm == 1.0 and cfg.loss_reduction == ("token" if name.startswith("finetune") else "square")


def test_stage_details():
    assert get_stage("stage1", "1b").num_warmup_steps == 100
    s2 = get_stage("stage2", "1b")
    assert s2.max_steps == 22000 and s2.num_warmup_steps == math.ceil(0.03 * 22000) == 660
    assert (s2.max_packed_tokens, s2.num_images_expected, s2.max_buffer_size) == (16384, 48, 20)
    assert get_stage("stage2", "8b").max_steps == 5500
    assert get_stage("stage1_5", "8b").grad_accum == 2  # packed batch 1024 = 512 GPUs x 2
    ft = get_stage("finetune_full", "1b")
    assert (ft.packing, ft.max_dynamic_patch, ft.max_seq_length, ft.batch_size * ft.grad_accum) == (False, 6, 8192, 16)
    lora = get_stage("finetune_lora", "1b").lora
    assert lora == LoraSpec(target="llm", r=16, alpha=32, dropout=0.05)


def test_every_yaml_matches_its_preset():
    files = sorted((ROOT / "configs").glob("*/*.yaml"))
    stage_files = [f for f in files if f.parent.name != "accelerate"]
    assert len(stage_files) >= 18
    sizes = {"tiny": "tiny", "internvl2_5_1b": "1b", "internvl2_5_2b": "2b", "internvl2_5_8b": "8b"}
    for f in stage_files:
        run = RunConfig.from_yaml(f)
        assert run.stage == get_stage(f.stem, sizes[f.parent.name]), f"{f} disagrees with its preset"


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="unknown stage config keys: \\['learning_rate'\\]"):
        StageConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="trains nothing"):
        StageConfig(train_vision=False, train_projector=False, train_llm=False)
    with pytest.raises(ValueError, match="loss_reduction"):
        StageConfig(loss_reduction="mean")
    with pytest.raises(ValueError, match="unknown stage 'stage3'"):
        get_stage("stage3")
    with pytest.raises(FileNotFoundError, match="training config not found"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nstage: {preset: stage1, size: tiny}\n")
    with pytest.raises(ValueError, match="missing keys \\['data'\\]"):
        RunConfig.from_yaml(bad)


def test_cosine_with_warmup_by_hand():
    # warm-up 4 of 10 steps: s/4 for s < 4 (the first step at lr 0), then 0.5 * (1 + cos(pi * (s - 4) / 6))
    assert [cosine_with_warmup(s, 4, 10) for s in range(4)] == [0.0, 0.25, 0.5, 0.75]
    assert cosine_with_warmup(4, 4, 10) == 1.0
    assert math.isclose(cosine_with_warmup(7, 4, 10), 0.5)
    assert math.isclose(cosine_with_warmup(10, 4, 10), 0.0, abs_tol=1e-12)
    assert math.isclose(cosine_with_warmup(7, 4, 10, min_ratio=0.1), 0.55)
    assert cosine_with_warmup(0, 0, 10) == 1.0  # no warm-up: the cosine starts at once
    assert cosine_with_warmup(15, 4, 10, min_ratio=0.1) == 0.1  # past the end it stays at the floor


@pytest.mark.parametrize("warmup_steps, warmup_ratio, max_steps, min_ratio",
                         [(100, 0.0, 1000, 0.0), (0, 0.03, 350, 0.0), (0, 0.03, 22000, 0.0), (0, 0.05, 7000, 0.0),
                          (7, 0.0, 50, 0.1), (0, 0.0, 20, 0.0)])
def test_schedule_is_hf_cosine_schedule(warmup_steps, warmup_ratio, max_steps, min_ratio):
    """InternVL trains with HF's cosine schedule: same warm-up length (ceil of ratio * steps) and
    the very same lr at every optimizer step, the first one (lr 0) included."""
    from transformers import TrainingArguments, get_cosine_with_min_lr_schedule_with_warmup

    stage = get_stage("stage2", "1b", lr=4e-5, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
                      max_steps=max_steps, min_lr_ratio=min_ratio)
    hf_warmup = TrainingArguments(output_dir="unused", warmup_steps=warmup_steps or warmup_ratio,
                                  report_to=[]).get_warmup_steps(max_steps)
    assert stage.num_warmup_steps == hf_warmup

    def lrs(make) -> list[float]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=stage.lr)
        sched, seen = make(opt), []
        for _ in range(max_steps):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    ours = lrs(lambda opt: build_scheduler(opt, stage))
    theirs = lrs(lambda opt: get_cosine_with_min_lr_schedule_with_warmup(opt, hf_warmup, max_steps,
                                                                         min_lr_rate=min_ratio))
    assert ours == theirs
    assert ours[0] == (0.0 if hf_warmup else stage.lr)
