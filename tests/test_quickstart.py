"""`minivl quickstart` end to end at smoke scale: every step runs and writes its outputs."""

from __future__ import annotations

import dataclasses
import json

from minivl.model import MiniVL
from minivl.quickstart import EVAL_TASKS, RECIPES, run_quickstart


def test_quickstart_smoke(tmp_path, capsys):
    results = run_quickstart(tmp_path / "qs", scale="smoke", progress=False)
    out = capsys.readouterr().out
    assert "Accuracy on the held-out test split after each stage" in out
    assert list(results["accuracy"]) == [name for name, _, _ in RECIPES["smoke"].stages]
    for row in results["accuracy"].values():
        assert set(row) == {*EVAL_TASKS, "all"} and all(0.0 <= v <= 1.0 for v in row.values())
    assert set(results["tiling"]) == {"max_num=1", "max_num=16"}
    assert list(results["shape_qa_by_type"]) == list(results["accuracy"])  # one entry per stage
    for name, scores in results["shape_qa_by_type"].items():  # count / colour / position, each in [0, 1]
        assert name in results["accuracy"] and set(scores) <= {"count", "colour", "position"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert "shape_qa by question type:" in out
    saved = json.loads((tmp_path / "qs" / "results.json").read_text())
    assert saved["accuracy"] == results["accuracy"]
    for name in ("loss.png", "accuracy.png"):
        assert (tmp_path / "qs" / name).stat().st_size > 1000
    for name, steps, _ in RECIPES["smoke"].stages:  # one log row per optimizer step
        assert len((tmp_path / "qs" / name / "log.jsonl").read_text().splitlines()) == steps
    model = MiniVL.from_pretrained(tmp_path / "qs" / "final")
    assert model.config.vision.hidden_size == RECIPES["smoke"].vision_width


def test_build_model_does_not_share_the_workspace_llm(tmp_path):
    import torch

    from minivl.quickstart import build_model, prepare

    ws = prepare(tmp_path / "ws", scale="smoke", progress=False)
    before = {k: v.clone() for k, v in ws.llm.state_dict().items()}
    a, b = build_model(ws), build_model(ws)
    assert a.language_model is not ws.llm and a.language_model is not b.language_model
    with torch.no_grad():
        for p in a.language_model.parameters():
            p.add_(1.0)
    for k, v in ws.llm.state_dict().items():
        assert torch.equal(v, before[k]) and torch.equal(b.language_model.state_dict()[k], before[k]), k
    # the warm-started ViT is copied in (not shared), unless a random one is asked for
    for k, v in ws.vit.state_dict().items():
        assert torch.equal(a.vision_model.state_dict()[k], v), k
    assert a.vision_model is not ws.vit
    random_vit = build_model(ws, pretrained_vit=False)
    assert not torch.equal(random_vit.vision_model.embeddings.patch_embedding.weight,
                           ws.vit.embeddings.patch_embedding.weight)
    # an LLM of no known size would be saved with a wrong config: refused
    import copy

    import pytest

    odd = copy.deepcopy(ws.llm)
    odd.config.num_hidden_layers = 3
    with pytest.raises(ValueError, match="none of the warm-start sizes"):
        build_model(ws, language_model=odd)


def test_format_table_aligns_long_stage_names():
    from minivl.quickstart import format_table

    table = {"before": {"shape_qa": 0.275, "all": 0.1}, "after stage 1": {"shape_qa": 0.5, "all": 0.25}}
    lines = format_table(table).splitlines()
    assert len({len(line) for line in lines}) == 1  # every column lines up
    assert lines[2].startswith("after stage 1 ") and lines[2].endswith("25.0%")
    assert lines[1].split() == ["before", "27.5%", "10.0%"]


def test_train_stage_cached_trains_once_then_loads(tmp_path):
    import torch

    from minivl.quickstart import build_model, prepare, train_stage_cached

    ws = prepare(tmp_path / "ws", scale="smoke", progress=False)
    trained, record = train_stage_cached(ws, build_model(ws), "stage1", 2, 2e-3, tmp_path / "c")
    assert not record["loaded"] and len(record["history"]) == 2
    loaded, again = train_stage_cached(ws, build_model(ws), "stage1", 2, 2e-3, tmp_path / "c")
    assert again["loaded"] and again["history"] == record["history"]
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    _, other = train_stage_cached(ws, build_model(ws), "stage1", 2, 1e-3, tmp_path / "c")  # another lr: retrain
    assert not other["loaded"]
    # other starting weights, or another recipe knob, retrain too
    louder = dataclasses.replace(ws, recipe=dataclasses.replace(ws.recipe, projector_init_scale=3.0))
    _, other = train_stage_cached(louder, build_model(louder), "stage1", 2, 1e-3, tmp_path / "c")
    assert not other["loaded"]
    slower = dataclasses.replace(louder, recipe=dataclasses.replace(louder.recipe, vision_lr_scale=0.5))
    _, other = train_stage_cached(slower, build_model(slower), "stage1", 2, 1e-3, tmp_path / "c")
    assert not other["loaded"]
    _, again = train_stage_cached(slower, build_model(slower), "stage1", 2, 1e-3, tmp_path / "c")
    assert again["loaded"]


def test_recipe_projector_init_scale_scales_only_the_projectors_last_layer(tmp_path):
    import torch

    from minivl.quickstart import build_model, prepare

    ws = prepare(tmp_path / "ws", scale="smoke", progress=False)
    plain = build_model(ws)
    loud = build_model(dataclasses.replace(ws, recipe=dataclasses.replace(ws.recipe, projector_init_scale=5.0)))
    last = {f"mlp1.{len(plain.mlp1) - 1}.weight", f"mlp1.{len(plain.mlp1) - 1}.bias"}
    for k, v in plain.state_dict().items():
        expected = v * 5.0 if k in last else v
        assert torch.allclose(loud.state_dict()[k], expected), k


def test_prepare_regenerates_a_suite_of_another_version(tmp_path, capsys):
    from minivl.data.synthetic.suite import SUITE_VERSION, read_suite_stamp
    from minivl.quickstart import prepare

    ws = prepare(tmp_path / "ws", scale="smoke", progress=False)
    data, tok_dir = tmp_path / "ws" / "data", tmp_path / "ws" / "tokenizer"
    assert read_suite_stamp(data) == {"version": SUITE_VERSION, "scale": "smoke", "seed": 0}
    # the training meta is the filtered one, with every entry still there
    assert ws.train_meta.name == "train_filtered.json"
    assert set(json.loads(ws.train_meta.read_text())) == set(json.loads((data / "train.json").read_text()))
    shape_qa = data / "annotations" / "train" / "shape_qa.jsonl"
    original = shape_qa.read_text()
    shape_qa.write_text("not json\n")
    capsys.readouterr()
    prepare(tmp_path / "ws", scale="smoke", progress=False)  # same version: the suite is reused as it is
    out = capsys.readouterr().out
    assert shape_qa.read_text() == "not json\n" and "regenerated" not in out
    assert "not_a_json_object 1" in out  # the unreadable line is counted by the filtering step, not fatal
    (data / "suite.json").write_text(json.dumps({"version": SUITE_VERSION - 1, "scale": "smoke", "seed": 0}))
    (tok_dir / "marker").write_text("")
    prepare(tmp_path / "ws", scale="smoke", progress=False)
    assert "regenerated it" in capsys.readouterr().out
    assert shape_qa.read_text() == original and not (tok_dir / "marker").exists()  # suite and tokenizer rebuilt
    assert read_suite_stamp(data)["version"] == SUITE_VERSION


def test_recipe_image_size_sets_the_tile_of_the_vit_and_its_warm_start(tmp_path):
    import dataclasses

    import torch

    from minivl.quickstart import build_model, prepare, vision_config

    recipe = dataclasses.replace(RECIPES["smoke"], image_size=84)
    assert vision_config(recipe).image_size == 84
    ws = prepare(tmp_path / "ws", scale="smoke", recipe=recipe, progress=False)
    assert ws.vit.config.image_size == 84 and ws.vit_info["key"]["config"]["image_size"] == 84
    model = build_model(ws)
    # 84 px / 14 px patches = 6 x 6 patches; pixel unshuffle (0.5) -> 3 x 3 = 9 tokens, one per scene cell
    assert model.num_image_token == 9
    with torch.no_grad():
        assert model.extract_feature(torch.zeros(2, 3, 84, 84)).shape == (2, 9, model.config.llm["hidden_size"])


def test_evaluate_suite_passes_group_by_through(tmp_path):
    from minivl.quickstart import build_model, evaluate_suite, prepare

    ws = prepare(tmp_path / "ws", scale="smoke", progress=False)
    scores = evaluate_suite(build_model(ws), ws.tokenizer, ws.test_meta, tasks=["shape_qa"], per_task=3,
                            details=True, group_by=lambda record: "every record")
    assert list(scores["tasks"]["shape_qa"].by_group) == ["every record"]
    assert scores["tasks"]["shape_qa"].by_group["every record"][1] == scores["tasks"]["shape_qa"].n > 0


def test_packed_make_loader_with_a_worker_gives_the_same_rows(tmp_path):
    import torch

    from minivl.quickstart import build_model, prepare
    from minivl.train.report import packed_make_loader

    ws = prepare(tmp_path / "ws", scale="smoke", progress=False)
    model = build_model(ws)
    rows = [list(packed_make_loader(ws, model, num_workers=workers)(1)) for workers in (0, 1)]
    assert len(rows[0]) == len(rows[1]) > 0
    for a, b in zip(*rows):
        for key in ("input_ids", "labels", "pixel_values", "loss_weight", "cu_seqlens"):
            assert torch.equal(a[key], b[key]), key
