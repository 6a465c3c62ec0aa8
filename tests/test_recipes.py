"""The chapter 13 recipe: a data set through the_cauldron's layout to records, a run YAML, LoRA, chat."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from minivl.data.records import read_meta
from minivl.data.synthetic import generate_suite
from minivl.eval.inference import chat_command
from minivl.model import MiniVL
from minivl.text.tokenizer import image_token_id, load_tokenizer
from minivl.train.planner import plan
from minivl.train.recipes import (
    OFFICIAL_RUNS,
    finetune_on_hub_dataset,
    hub_to_meta,
    suite_as_cauldron,
    tiny_base_checkpoint,
    write_run_config,
)
from minivl.train.stages import RunConfig, get_stage, stage2


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    meta = generate_suite(out / "suite", scale="smoke", seed=3, splits=("train",),
                          tasks=("shape_qa", "chart", "multi_image"))["meta"]["train"]
    return out, meta


def _originals(meta):
    return [(e, r) for e in read_meta(meta).values() for r in e.read_records()[0]]


def test_suite_through_cauldron_layout_and_back(suite, tmp_path):
    out, meta = suite
    originals = [(e, r) for e, r in _originals(meta) if r.kind == "image"]
    assert len(originals) < len(_originals(meta))  # the multi-image records are left out
    src = suite_as_cauldron(meta, tmp_path / "cauldron")
    new_meta = hub_to_meta(src, tmp_path / "mapped", mapper="cauldron", name="suite")
    entry = read_meta(new_meta)["suite"]
    records, skipped = entry.read_records()
    assert not skipped and entry.length == len(records) == len(originals)
    for (orig_entry, orig), rec in zip(originals, records):
        # map_cauldron puts back exactly the "<image>\n" the conversion took out
        assert rec.conversations == orig.turns
        a = np.asarray(Image.open(orig_entry.image_path(orig.images[0])).convert("RGB"))
        b = np.asarray(Image.open(entry.image_path(rec.images[0])))
        assert np.array_equal(a, b)
    limited = hub_to_meta(src, tmp_path / "two", limit=2)
    assert read_meta(limited)["cauldron"].length == 2
    with pytest.raises(ValueError, match="unknown mapper 'coco'"):
        hub_to_meta(src, tmp_path / "bad", mapper="coco")


def test_write_run_config_reads_back_as_the_preset(tmp_path):
    path = write_run_config(tmp_path / "run.yaml", "OpenGVLab/InternVL2_5-1B", "data/meta.json", "runs/ft",
                            max_steps=7, batch_size=2)
    run = RunConfig.from_yaml(path)
    assert run.model == "OpenGVLab/InternVL2_5-1B" and run.output_dir == "runs/ft"
    assert run.stage == get_stage("finetune_lora", "1b", max_steps=7, batch_size=2)
    assert run.stage.lora.r == 16 and run.stage.lr == 4e-5 and not run.stage.packing
    with pytest.raises(TypeError, match="max_step"):
        write_run_config(tmp_path / "bad.yaml", "m", "d", "o", max_step=7)
    assert not (tmp_path / "bad.yaml").exists()


def test_tiny_base_checkpoint_is_an_official_layout_with_its_tokenizer(suite, tmp_path):
    _, meta = suite
    path = tiny_base_checkpoint(tmp_path / "base", meta)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]
    model, tok = MiniVL.from_pretrained(path), load_tokenizer(path)
    assert model.config.image_token_id == image_token_id(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    stamp = (path / "config.json").stat().st_mtime_ns
    assert tiny_base_checkpoint(path, meta) == path and (path / "config.json").stat().st_mtime_ns == stamp


def test_finetune_on_hub_dataset_trains_lora_merges_and_chats(suite, tmp_path):
    out, meta = suite
    base = tiny_base_checkpoint(out / "base", meta)
    src = suite_as_cauldron(meta, tmp_path / "cauldron")
    result = finetune_on_hub_dataset(base, src, tmp_path / "ft", size="tiny", max_steps=2, batch_size=2,
                                     max_dynamic_patch=2, progress=False)
    assert result["steps"] == 2 and len(result["losses"]) == 2
    assert len((tmp_path / "ft" / "run" / "log.jsonl").read_text().splitlines()) == 2
    before, after = MiniVL.from_pretrained(base), MiniVL.from_pretrained(result["final_model"])
    b, a = before.state_dict(), after.state_dict()
    assert set(a) == set(b)  # adapters merged away
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("language_model.") for k in changed)  # LoRA on the LLM only
    assert any("q_proj" in k for k in changed) and not any("embed_tokens" in k for k in changed)
    image = read_meta(result["meta"])["cauldron"].root_path / "cauldron-0_1.png"
    answers = chat_command(result["final_model"], [image], "How many shapes are there?", max_num=2,
                           max_new_tokens=4, stream=False)
    assert len(answers) == 1 and isinstance(answers[0], str)


@pytest.mark.parametrize("size", ["1b", "2b", "4b", "8b"])
def test_official_runs_fit_per_the_planner(size):
    # 512 GPUs x one 16k-token packed row, ZeRO-1 (optimizer states / 512): fits an 80 GB card
    run = OFFICIAL_RUNS[size]
    assert run["zero"] == "zero1" and run["gpus"] == 512
    p = plan(f"internvl2_5_{size}", stage2(size), run["gpus"], "A100-80GB", strategy=run["zero"])
    assert p.fits, str(p)
    assert p.memory["optimizer_states"] == 8 * p.params["all"]["trainable"] / 512
