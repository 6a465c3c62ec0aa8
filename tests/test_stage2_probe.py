"""scripts/stage2_probe.py: oracle vision reads painted scene cells back exactly; LLM variants run end to end."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from minivl.data.synthetic.common import CELL_NAMES
from minivl.vision.transforms import load_image_tiles
from minivl.vision.warmstart import cell_label

ROOT = Path(__file__).resolve().parents[1]


def _probe():
    spec = importlib.util.spec_from_file_location("stage2_probe", ROOT / "scripts" / "stage2_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_vision_reads_back_every_cell_of_painted_scenes(tmp_path):
    from minivl.data.synthetic import generate_suite

    probe = _probe()
    generate_suite(tmp_path, scale="smoke", seed=0)
    painted = probe.paint_oracle_scenes(tmp_path)
    assert painted > 0
    oracle = probe.OracleVision(hidden_size=8)
    checked = 0
    for split in ("train", "val", "test"):
        for task in ("caption", "shape_qa"):
            for line in (tmp_path / "annotations" / split / f"{task}.jsonl").read_text().splitlines():
                record = json.loads(line)
                if "shapes" not in record.get("meta", {}):
                    continue
                want = [0] * 9
                for s in record["meta"]["shapes"]:
                    want[CELL_NAMES.index(s["position"])] = cell_label(s["kind"], s["colour"])
                image = tmp_path / "images" / split / task / record["image"]
                for augment in (False, True):  # JPEG re-encoding (training) must not change a class
                    pixels, _ = load_image_tiles(str(image), image_size=84, max_num=1, augment=augment,
                                                 rng=random.Random(0))
                    assert oracle.read_classes(pixels)[0].tolist() == want, (record["id"], augment)
                checked += 1
    assert checked == painted  # every painted image checked
    tokens = oracle(torch.zeros(2, 3, 84, 84))
    assert tokens.shape == (2, 9, 8)
    with pytest.raises(ValueError, match="84 px tiles"):
        oracle.read_classes(torch.zeros(1, 3, 112, 112))


def test_oracle_through_the_projector_trains_the_projector(tmp_path):
    from minivl.config import MiniVLConfig, VisionConfig
    from minivl.model import MiniVL

    probe = _probe()
    vision = VisionConfig.tiny(image_size=84, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)
    llm = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1}
    for through in (False, True):
        model = MiniVL(MiniVLConfig(vision=vision, llm=llm, image_token_id=3))
        probe.attach_oracle_vision(model, through_projector=through)
        assert model.mlp1.oracle.classes.embedding_dim == (16 * 4 if through else 24)  # 2 x 2 unshuffled patches
        pixels = torch.randn(2, 3, 84, 84)
        tokens = model.extract_feature(pixels)
        assert tokens.shape == (2, 9, 24)
        tokens.sum().backward()
        assert (model.mlp1[1].weight.grad is not None) == through  # the projector is on the path only when asked


def test_oracle_kind_noise_misreads_kinds_only_and_the_same_way_each_time():
    from minivl.data.synthetic.common import COLOURS
    from minivl.vision.transforms import IMAGENET_MEAN, IMAGENET_STD
    from minivl.vision.warmstart import NUM_CLASSES

    probe = _probe()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, NUM_CLASSES, (400, 9), generator=g)  # about one cell in 17 empty
    # paint the codes as the oracle's tiles: each cell a flat grey, normalised as the ViT's input
    grey = probe.ORACLE_EMPTY + probe.ORACLE_STEP * codes.float()  # (N, 9)
    cells = grey.reshape(-1, 3, 3).repeat_interleave(28, 1).repeat_interleave(28, 2)  # (N, 84, 84)
    pixels = torch.stack([(cells / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], 1)
    exact = probe.OracleVision(hidden_size=4)
    assert torch.equal(exact.read_classes(pixels), codes)
    noisy = probe.OracleVision(hidden_size=4, kind_noise=0.25)
    read = noisy.misread_kinds(pixels, codes)
    assert torch.equal(read, noisy.misread_kinds(pixels, codes))  # the same tile, the same misreading
    changed = read != codes
    assert not changed[codes == 0].any()  # an empty cell stays empty
    occupied = codes > 0
    assert 0.2 < changed[occupied].float().mean() < 0.3
    n = len(COLOURS)
    assert torch.equal((read[occupied] - 1) % n, (codes[occupied] - 1) % n)  # colour kept
    assert ((read[changed] - 1) // n != (codes[changed] - 1) // n).all()  # a misread kind is another kind
    with pytest.raises(ValueError, match="probability"):
        probe.OracleVision(hidden_size=4, kind_noise=1.5)



def test_oracle_class_share_adds_the_same_noise_per_tile_at_the_asked_share():
    from minivl.vision.warmstart import class_variance

    probe = _probe()
    torch.manual_seed(0)
    faint = probe.OracleVision(hidden_size=256, class_share=0.25)
    exact = probe.OracleVision(hidden_size=256)
    exact.load_state_dict(faint.state_dict())
    codes = torch.randint(1, 17, (300, 9), generator=torch.Generator().manual_seed(1))  # every cell occupied
    faint.read_classes = exact.read_classes = lambda pixels: codes  # skip the painting: the codes are given
    pixels = torch.randn(300, 3, 84, 84, generator=torch.Generator().manual_seed(2))
    noisy, clean = faint(pixels), exact(pixels)
    assert torch.equal(noisy, faint(pixels))  # the same tile, the same noise
    assert not torch.allclose(noisy, clean)
    share = class_variance(noisy.flatten(0, 1), codes.flatten())["class"]
    assert abs(share - 0.25) < 0.05, share  # exact: class_variance 1.0
    assert class_variance(clean.flatten(0, 1), codes.flatten())["class"] > 0.99
    noisy.sum().backward()
    grad = faint.classes.weight.grad
    assert grad is not None  # the codes still learn; only the noise's scale carries no gradient
    with pytest.raises(ValueError, match="share"):
        probe.OracleVision(hidden_size=4, class_share=0.0)


def test_oracle_frozen_codes_are_buffers_that_no_stage_can_thaw():
    from minivl.config import MiniVLConfig, VisionConfig
    from minivl.model import MiniVL
    from minivl.train.stages import get_stage
    from minivl.train.trainer import apply_stage_freezing

    probe = _probe()
    vision = VisionConfig.tiny(image_size=84, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)
    llm = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1}
    model = MiniVL(MiniVLConfig(vision=vision, llm=llm, image_token_id=3))
    probe.attach_oracle_vision(model, through_projector=True, frozen_codes=True, factorised_codes=True)
    before = model.mlp1.oracle.classes.weight.clone()
    red_circle, blue_circle = cell_label("circle", "red"), cell_label("circle", "blue")
    red_square, blue_square = cell_label("square", "red"), cell_label("square", "blue")
    # factorised: a kind's vector plus a colour's, so swapping the colour moves every kind alike
    torch.testing.assert_close(before[red_circle] - before[blue_circle], before[red_square] - before[blue_square])
    apply_stage_freezing(model, get_stage("stage2", "tiny"))
    assert not any(name.startswith("mlp1.oracle") for name, _ in model.named_parameters())
    assert torch.equal(model.mlp1.oracle.classes.weight, before)
    tokens = model.extract_feature(torch.randn(2, 3, 84, 84))
    assert tokens.shape == (2, 9, 24)
    tokens.sum().backward()
    assert model.mlp1[1].weight.grad is not None  # the projector still learns

def test_probe_runs_with_an_untied_frozen_embedding_llm(tmp_path, monkeypatch):
    """At smoke scale, the LLM variant flags warm-start their own LLM (cached under --out, with
    untied embeddings whose input side kept its start) and the probe scores it."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("MINIVL_SCALE", "smoke")
    rows = _probe().main(["--out", str(tmp_path), "--tasks", "shape_qa", "--steps", "2", "--per-task", "2",
                          "--untied-embeddings", "--frozen-warm-embeddings"])
    (row,) = rows
    assert row["llm"] == "S_untied_frozen_embeddings (2 layers)" and 0.0 <= row["shape_qa"] <= 1.0
    variant = json.loads((tmp_path / "llm_S_untied_frozen_embeddings" / "warmstart.json").read_text())
    assert variant["key"]["train_embeddings"] is False
    assert variant["key"]["config"]["tie_word_embeddings"] is False
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "llm_S_untied_frozen_embeddings")
    assert not torch.equal(llm.lm_head.weight, llm.get_input_embeddings().weight)



def test_probe_vit_flags_warm_start_a_vit_of_their_own(tmp_path, monkeypatch):
    """At smoke scale, --vision-layers, --vit-prototype-weight, --vit-share-weight and
    --vit-warm-steps give the workspace a ViT warm-started with them (cached under its own
    name and key), and the probe trains with it."""
    monkeypatch.setenv("MINIVL_SCALE", "smoke")
    (row,) = _probe().main(["--out", str(tmp_path), "--tasks", "shape_qa", "--steps", "2", "--per-task", "2",
                            "--vision-layers", "3", "--vit-prototype-weight", "0.5", "--vit-share-weight", "2",
                            "--vit-warm-steps", "4", "--vision-lr-scale", "1"])
    assert 0.0 <= row["shape_qa"] <= 1.0
    key = json.loads((tmp_path / "vit_32x3" / "warmstart.json").read_text())["key"]
    assert key["config"]["num_hidden_layers"] == 3 and key["prototype_weight"] == 0.5 and key["share_weight"] == 2
    assert key["steps"] == 4


def test_counting_by_what_weights_each_answer_by_its_questions():
    probe = _probe()
    by_group = {("all", 1): (1.0, 3), ("all", 4): (0.0, 1), ("kind", 2): (0.5, 4), ("colour", 0): (0.0, 2)}
    assert probe.counting_by_what(by_group) == {"all": 0.75, "colour": 0.0, "kind": 0.5}
    assert probe.counting_by_what({}) == {}


@pytest.mark.parametrize("flag", [["--through-projector"], ["--oracle-kind-noise", "0.1"], ["--oracle-class-share", "0.5"],
                                  ["--oracle-frozen-codes"], ["--oracle-factorised-codes"]])
def test_oracle_options_need_oracle_vision(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _probe().main(["--out", str(tmp_path), *flag])
    assert f"{flag[0]} needs --oracle-vision" in capsys.readouterr().err
