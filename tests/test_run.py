"""`minivl train CONFIG`: a YAML run from a preset model, then a fine-tune from its checkpoint."""

from __future__ import annotations

import pytest
import torch
import yaml

from minivl import cli
from minivl.data.dataset import conversation_texts
from minivl.data.synthetic import generate_suite
from minivl.model import MiniVL
from minivl.text.tokenizer import train_chat_tokenizer


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("runsuite")
    meta = generate_suite(out, scale="smoke", seed=1)["meta"]["train"]
    tok = train_chat_tokenizer(conversation_texts(meta), vocab_size=700)
    tok.save_pretrained(out / "tok")
    return out, meta


def _write(path, **body):
    path.write_text(yaml.safe_dump(body))
    return path


def test_train_from_preset_then_finetune_from_checkpoint(suite, tmp_path):
    out, meta = suite
    stage = {"preset": "stage2", "size": "tiny", "max_packed_tokens": 512, "max_seq_length": 512,
             "max_dynamic_patch": 2, "save_every": 0, "log_every": 1}
    cfg = _write(tmp_path / "s2.yaml", model="smoke", tokenizer=str(out / "tok"), data=str(meta),
                 output_dir=str(tmp_path / "s2"), stage=stage, min_num_frame=2, max_num_frame=2)
    assert cli.main(["train", str(cfg), "--max-steps", "2"]) == 0
    final = tmp_path / "s2" / "final"
    model = MiniVL.from_pretrained(final)
    assert model.config.vision.hidden_size == 32
    assert len((tmp_path / "s2" / "log.jsonl").read_text().splitlines()) == 2
    # fine-tune the result with LoRA on padded batches; the merged model is saved
    lora = {"preset": "finetune_lora", "size": "tiny", "max_steps": 2, "batch_size": 2, "max_dynamic_patch": 2,
            "max_seq_length": 512}
    cfg2 = _write(tmp_path / "ft.yaml", model=str(final), data=str(meta), output_dir=str(tmp_path / "ft"),
                  stage=lora, min_num_frame=2, max_num_frame=2)
    assert cli.main(["train", str(cfg2)]) == 0
    tuned = MiniVL.from_pretrained(tmp_path / "ft" / "final")
    names = set(tuned.state_dict())
    assert names == set(model.state_dict())  # adapters merged away: same layout as the base
    diff = [not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), model.state_dict().values())]
    assert any(diff)  # the merged adapters changed some LLM weights
    vit_same = all(torch.equal(tuned.state_dict()[k], v) for k, v in model.state_dict().items()
                   if k.startswith("vision_model."))
    assert vit_same  # LLM LoRA leaves the ViT alone


def test_preset_without_tokenizer_is_an_error(suite, tmp_path):
    out, meta = suite
    cfg = _write(tmp_path / "bad.yaml", model="tiny", data=str(meta), stage={"preset": "stage1", "size": "tiny"})
    with pytest.raises(ValueError, match="needs a 'tokenizer' entry"):
        cli.main(["train", str(cfg)])
