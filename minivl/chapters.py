"""The book's chapters and the modules that hold their code (the map in chapter 0).

Each chapter is one notebook under ``notebooks/``; each imports the modules listed here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"  # present in a source checkout


@dataclass(frozen=True)
class Chapter:
    number: int
    title: str
    notebook: str
    modules: tuple[str, ...]


CHAPTERS: tuple[Chapter, ...] = (
    Chapter(0, "Introduction", "00_introduction", ("minivl.scale", "minivl.chapters")),
    Chapter(1, "Dynamic high resolution", "01_dynamic_resolution",
            ("minivl.vision.tiling", "minivl.vision.transforms")),
    Chapter(2, "InternViT", "02_internvit", ("minivl.vision.intern_vit", "minivl.config")),
    Chapter(3, "Pixel unshuffle and the MLP projector", "03_pixel_unshuffle_and_projector",
            ("minivl.projector",)),
    Chapter(4, "Tokens and templates", "04_tokens_and_templates",
            ("minivl.text.tokenizer", "minivl.text.template", "minivl.text.prompt")),
    Chapter(5, "Assembling MiniVL", "05_assembling_minivl", ("minivl.model", "minivl.checkpoint")),
    Chapter(6, "Data", "06_data", ("minivl.data.synthetic", "minivl.data.records", "minivl.data.dataset")),
    Chapter(7, "Data filtering", "07_data_filtering", ("minivl.data.filtering", "minivl.data.hub")),
    Chapter(8, "Packing", "08_packing", ("minivl.data.packing", "minivl.train.attention", "minivl.data.packing_viz")),
    Chapter(9, "Loss reweighting", "09_loss_reweighting", ("minivl.train.loss",)),
    Chapter(10, "Stage 1: MLP warm-up", "10_stage1_mlp_warmup",
            ("minivl.train.trainer", "minivl.train.stages", "minivl.train.warmstart", "minivl.quickstart")),
    Chapter(11, "Stage 1.5: ViT incremental learning", "11_stage1_5_vit_incremental",
            ("minivl.train.stages", "minivl.train.transfer")),
    Chapter(12, "Stage 2: instruction tuning", "12_stage2_instruction_tuning", ("minivl.train.stages",)),
    Chapter(13, "Scaling up", "13_scaling_up",
            ("minivl.train.planner", "minivl.train.measure", "minivl.train.run", "minivl.train.recipes")),
    Chapter(14, "Inference and grounding", "14_inference_and_grounding", ("minivl.model", "minivl.eval.inference")),
    Chapter(15, "Evaluation and test-time scaling", "15_evaluation_and_test_time_scaling",
            ("minivl.eval.prompts", "minivl.eval.extract", "minivl.eval.metrics", "minivl.eval.vote",
             "minivl.eval.bench", "minivl.eval.benchmarks", "minivl.eval.suite", "minivl.eval.tts")),
)


def module_available(name: str) -> bool:
    """True when ``name`` can be imported from this installation (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def chapter_map() -> list[dict[str, str]]:
    """One row per chapter: number, title, notebook, modules, and whether it is written yet
    (all its modules importable and, in a source checkout, its notebook present)."""
    rows = []
    for ch in CHAPTERS:
        ready = all(module_available(m) for m in ch.modules)
        if _NOTEBOOKS.is_dir():
            ready = ready and (_NOTEBOOKS / f"{ch.notebook}.ipynb").exists()
        rows.append({
            "chapter": f"{ch.number:02d}",
            "title": ch.title,
            "notebook": f"notebooks/{ch.notebook}.ipynb",
            "modules": ", ".join(ch.modules),
            "status": "written" if ready else "in progress",
        })
    return rows
