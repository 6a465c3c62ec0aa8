"""`minivl quickstart` end to end at smoke scale: every step runs and writes its outputs."""

from __future__ import annotations

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
    saved = json.loads((tmp_path / "qs" / "results.json").read_text())
    assert saved["accuracy"] == results["accuracy"]
    for name in ("loss.png", "accuracy.png"):
        assert (tmp_path / "qs" / name).stat().st_size > 1000
    for name, steps, _ in RECIPES["smoke"].stages:  # one log row per optimizer step
        assert len((tmp_path / "qs" / name / "log.jsonl").read_text().splitlines()) == steps
    model = MiniVL.from_pretrained(tmp_path / "qs" / "final")
    assert model.config.vision.hidden_size == RECIPES["smoke"].vision_width
