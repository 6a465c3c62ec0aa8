"""The training loop: what each stage trains, exact resume, LoRA merge, DDP == one process."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minivl.config import MiniVLConfig
from minivl.data.dataset import DataConfig, MixtureDataset, build_datasets, conversation_texts
from minivl.data.packing import padded_collate_fn
from minivl.data.synthetic import generate_suite
from minivl.model import MiniVL
from minivl.text.tokenizer import image_token_id, train_chat_tokenizer
from minivl.train.stages import get_stage
from minivl.train.trainer import add_lora, build_optimizer, latest_checkpoint, map_loader, merge_lora, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    meta = generate_suite(out, scale="smoke", seed=0)["meta"]["train"]
    tok = train_chat_tokenizer(conversation_texts(meta), vocab_size=800)
    tok_dir = out / "tokenizer"
    tok.save_pretrained(tok_dir)
    cfg = DataConfig(image_size=112, num_image_token=16, max_dynamic_patch=2, max_length=1024,
                     min_num_frame=2, max_num_frame=2)
    data = MixtureDataset(build_datasets(meta, tok, cfg, names=["shape_qa", "caption", "chart", "text_only"]))
    collate = functools.partial(padded_collate_fn, pad_token_id=tok.pad_token_id, loss_reduction="square")
    return {"meta": meta, "tok": tok, "tok_dir": tok_dir, "data": data, "collate": collate}


def new_model(tok, seed=0):
    torch.manual_seed(seed)
    return MiniVL(MiniVLConfig.smoke(vocab_size=len(tok), image_token_id=image_token_id(tok)))


def test_vision_lr_scale_gives_the_vit_its_own_group(setup):
    model = new_model(setup["tok"])
    stage = get_stage("stage2", "tiny", lr=1e-3)
    (group,) = build_optimizer(model, stage).param_groups  # the InternVL default: one group
    assert group["lr"] == 1e-3 and len(group["params"]) == len(list(model.parameters()))
    rest, vision = build_optimizer(model, stage.replace(vision_lr_scale=0.1)).param_groups
    assert rest["lr"] == 1e-3 and vision["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in vision["params"]} == {id(p) for p in model.vision_model.parameters()}
    assert len(rest["params"]) + len(vision["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="vision_lr_scale"):
        stage.replace(vision_lr_scale=-1.0)


def test_projector_lr_scale_gives_the_projector_its_own_group(setup):
    model = new_model(setup["tok"])
    stage = get_stage("stage2", "tiny", lr=1e-3)
    rest, projector = build_optimizer(model, stage.replace(projector_lr_scale=10.0)).param_groups
    assert rest["lr"] == 1e-3 and projector["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in projector["params"]} == {id(p) for p in model.mlp1.parameters()}
    rest, vision, projector = build_optimizer(model, stage.replace(vision_lr_scale=0.1,
                                                                   projector_lr_scale=3.0)).param_groups
    assert (rest["lr"], vision["lr"], projector["lr"]) == pytest.approx((1e-3, 1e-4, 3e-3))
    assert {id(p) for p in vision["params"]} == {id(p) for p in model.vision_model.parameters()}
    assert len(rest["params"]) + len(vision["params"]) + len(projector["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="projector_lr_scale"):
        stage.replace(projector_lr_scale=-0.5)


@pytest.mark.parametrize("stage_name,changed", [
    ("stage1", {"mlp1"}),
    ("stage1_5", {"vision_model", "mlp1"}),
    ("stage2", {"vision_model", "mlp1", "language_model"}),
])
def test_only_the_stage_towers_change(setup, stage_name, changed):
    model = new_model(setup["tok"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # no warm-up: a warm-up starts at lr 0 (HF's schedule), so its first step moves nothing
    stage = get_stage(stage_name, "tiny", max_steps=1, packing=False, batch_size=4, warmup_steps=0, warmup_ratio=0.0)
    train(model, map_loader(setup["data"], 4, setup["collate"]), stage, progress=False)
    moved = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == changed
    # within a trained tower every weight matrix moved (no silently frozen sub-module)
    for k, v in model.state_dict().items():
        if k.split(".")[0] in changed and k.endswith("weight") and v.dim() == 2 and "embed" not in k:
            assert not torch.equal(v, before[k]), k


def test_resume_gives_the_same_curve(setup, tmp_path):
    stage = get_stage("stage2", "tiny", max_steps=6, packing=False, batch_size=4, save_every=3,
                      drop_path_rate=0.1, warmup_steps=2)
    data, collate = setup["data"], setup["collate"]
    full = train(new_model(setup["tok"]), map_loader(data, 4, collate, seed=1), stage,
                 output_dir=tmp_path / "full", progress=False)
    model_a = new_model(setup["tok"])
    part = train(model_a, map_loader(data, 4, collate, seed=1), stage, output_dir=tmp_path / "cut",
                 stop_after=4, progress=False)  # runs past the step-3 checkpoint, then stops
    assert part.steps == 4 and latest_checkpoint(tmp_path / "cut").name == "checkpoint-3"
    model_b = new_model(setup["tok"], seed=123)  # different init: everything must come from the checkpoint
    resumed = train(model_b, map_loader(data, 4, collate, seed=1), stage, output_dir=tmp_path / "cut",
                    progress=False)
    assert resumed.steps == 6
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)
    assert len(resumed.losses) == 6
    logged = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert len(logged) == 6  # the step-4 row of the interrupted run was replaced
    resumed_state = {k: v for k, v in model_b.state_dict().items()}
    full_model = new_model(setup["tok"])
    train(full_model, map_loader(data, 4, collate, seed=1), stage, output_dir=tmp_path / "full", progress=False)
    for k, v in full_model.state_dict().items():  # resumes from checkpoint-6: the finished run's weights
        assert torch.allclose(v, resumed_state[k], atol=1e-6), k


def test_lora_merge_keeps_logits(setup):
    model = new_model(setup["tok"])
    add_lora(model, get_stage("finetune_lora", "tiny").lora)
    for name, p in model.language_model.named_parameters():  # give the adapters a non-zero update
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    batch = setup["collate"]([setup["data"][i] for i in range(3)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_flags")}
    model.eval()
    with torch.no_grad():
        before = model(**inputs).logits
        merged = merge_lora(model)
        after = merged(**inputs).logits
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("target,checkpointing", [("llm", False), ("llm", True), ("vision", True)])
def test_lora_stage_trains_only_adapters(setup, target, checkpointing):
    """Also under gradient checkpointing (the GPU presets' setting), where frozen inputs must
    not cut the adapters' gradients."""
    from minivl.train.stages import LoraSpec

    model = new_model(setup["tok"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage = get_stage("finetune_lora", "tiny", max_steps=2, batch_size=4, lora=LoraSpec(target=target),
                      gradient_checkpointing=checkpointing)
    train(model, map_loader(setup["data"], 4, setup["collate"]), stage, progress=False)
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items()}
    adapters = {k for k in after if "lora_" in k}
    assert adapters and all(".lora_" in k for k in adapters)
    for k, v in before.items():  # every original weight is untouched
        assert torch.equal(after[k], v), k
    assert any(not torch.allclose(after[k], torch.zeros_like(after[k])) for k in adapters if "lora_B" in k)
    # the ViT's own layers are checkpointed, through PEFT's wrapper when its LoRA wraps the ViT
    from minivl.vision.intern_vit import InternVisionEncoder

    (encoder,) = [m for m in model.vision_model.modules() if isinstance(m, InternVisionEncoder)]
    assert encoder.gradient_checkpointing == checkpointing


def test_ddp_two_processes_equal_one(setup, tmp_path):
    worker = Path(__file__).with_name("_ddp_train_worker.py")
    args = [str(setup["meta"]), str(setup["tok_dir"])]
    single = tmp_path / "single.pt"
    subprocess.run([sys.executable, str(worker), *args, str(single), "4"], check=True, capture_output=True)
    double = tmp_path / "double.pt"
    # two CPU processes (gloo), each with half the batch: what `accelerate launch` starts on a CPU cluster
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(worker), *args, str(double), "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(single, weights_only=True), torch.load(double, weights_only=True)
    assert (a["world"], b["world"]) == (1, 2)
    for k, v in a["state"].items():
        assert torch.allclose(v, b["state"][k], atol=1e-5), k


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def _tight_datasets(setup, max_length):
    """The smoke suite's data sets with a token limit that makes some samples too long."""
    cfg = DataConfig(image_size=112, num_image_token=16, max_dynamic_patch=2, max_length=max_length,
                     min_num_frame=2, max_num_frame=2)
    return build_datasets(setup["meta"], setup["tok"], cfg, names=["shape_qa", "caption", "chart", "text_only"])


def test_map_loader_workers_give_the_same_batches_and_keep_the_skip_counts(setup):
    """DataLoader workers build the batches ahead: the same batches in the same order, and the
    samples they skip are counted in this process's data sets as without workers."""
    inproc, workers = MixtureDataset(_tight_datasets(setup, 60)), MixtureDataset(_tight_datasets(setup, 60))
    a = list(map_loader(inproc, 2, setup["collate"], seed=3)(0))
    b = list(map_loader(workers, 2, setup["collate"], seed=3, num_workers=2)(0))
    _assert_same_batches(a, b)
    assert sum(inproc.skips.values()) > 0  # the limit bites, so the counts below mean something
    assert workers.skips == inproc.skips
    for d_in, d_w in zip(inproc.datasets, workers.datasets):
        assert d_w.skip_examples.keys() == d_in.skip_examples.keys()
    with pytest.raises(ValueError, match="num_workers"):
        map_loader(inproc, 2, setup["collate"], num_workers=-1)


def test_packed_loader_workers_pack_the_same_samples_and_keep_the_skip_counts(setup):
    from minivl.data.packing import PackedDataset, packed_collate_fn
    from minivl.train.trainer import packed_loader

    tok = setup["tok"]
    collate = functools.partial(packed_collate_fn, loss_reduction="square")

    def loader(workers):
        packed = PackedDataset(_tight_datasets(setup, 90), max_packed_tokens=64, num_images_expected=6, seed=0,
                               img_start_token_id=tok.convert_tokens_to_ids("<img>"),
                               img_end_token_id=tok.convert_tokens_to_ids("</img>"), pad_token_id=tok.pad_token_id)
        return packed, packed_loader(packed, collate, num_workers=workers)

    (p0, l0), (p1, l1), (p2, l2) = loader(0), loader(1), loader(2)
    rows0 = list(l0(1))
    _assert_same_batches(rows0, list(l1(1)))  # one worker reads every shard: the same rows
    rows2 = list(l2(1))  # two workers: each packs its own half, as in InternVL
    assert sum(int(r["statistics"]["num_tokens"]) for r in rows2) == sum(int(r["statistics"]["num_tokens"])
                                                                          for r in rows0)
    skipped = [sum(sum(d.skips.values()) for d in p.sources) for p in (p0, p1, p2)]
    assert skipped[0] > 0 and skipped == [skipped[0]] * 3
    assert sum(p0.skip_counts.values()) > 0 and p1.skip_counts == p0.skip_counts == p2.skip_counts
    with pytest.raises(ValueError, match="num_workers"):
        get_stage("stage2", "tiny", num_workers=-2)


def test_presets_use_internvl_dataloader_workers():
    assert get_stage("stage1", "1b").num_workers == get_stage("stage2", "8b").num_workers == 8
    assert get_stage("finetune_full", "2b").num_workers == get_stage("finetune_lora", "1b").num_workers == 4
    assert all(get_stage(name, "tiny").num_workers == 0 for name in ("stage1", "stage2", "finetune_lora"))


def test_map_loader_groups_by_length_across_ranks_and_accumulation(setup):
    """InternVL's --group_by_length order: one process with a batch of 4, two ranks with 2 each,
    and one process accumulating two micro-batches of 2 draw the same samples per step."""
    data = setup["data"]
    lengths = data.length_estimates()

    def samples(make):  # each batch as its samples' token ids (padding removed)
        return [[tuple(ids[mask.bool()].tolist()) for ids, mask in zip(b["input_ids"], b["attention_mask"])]
                for b in make(0)]

    one = samples(map_loader(data, 4, setup["collate"], seed=2, rank=0, world_size=1, lengths=lengths))
    ranks = [samples(map_loader(data, 2, setup["collate"], seed=2, rank=r, world_size=2, lengths=lengths))
             for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == len(data) // 4
    for whole, a, b in zip(one, *ranks):
        assert sorted(whole) == sorted(a + b)  # the same samples, dealt to two ranks
    plain = samples(map_loader(data, 4, setup["collate"], seed=2, rank=0, world_size=1))
    assert one != plain  # the same draw as a plain shuffle, each batch longest first
    # with accumulation the mega-batch spans the micro-batches of one optimizer step
    acc = samples(map_loader(data, 2, setup["collate"], seed=2, rank=0, world_size=1, lengths=lengths, grad_accum=2))
    for whole, a, b in zip(one, acc[0::2], acc[1::2]):
        assert sorted(whole) == sorted(a + b)
    with pytest.raises(ValueError, match="lengths"):
        map_loader(data, 2, setup["collate"], lengths=lengths[:-1])
    with pytest.raises(ValueError, match="group_by_length"):
        get_stage("finetune_full", "tiny", packing=True)
    assert get_stage("finetune_lora", "1b").group_by_length and not get_stage("stage2", "1b").group_by_length
