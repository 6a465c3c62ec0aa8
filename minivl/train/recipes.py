"""Recipes for real runs: fine-tune InternVL2.5-1B with LoRA on a hub data set, step by step.

The Colab recipe of chapter 13 is four calls, the same at every scale:

1. :func:`hub_to_meta`: load a data set with ``datasets`` (a Hub id such as
   ``HuggingFaceM4/the_cauldron``, or a local folder), map each row to an InternVL record
   (:mod:`minivl.data.hub`) and write ``records.jsonl`` + ``images/`` + ``meta.json``;
2. :func:`write_run_config`: a ``minivl train`` YAML naming the checkpoint, the meta JSON and
   a stage preset (``finetune_lora`` by default) with a few overrides;
3. :func:`minivl.train.run.run_training` on that YAML (LoRA adapters merged on save);
4. :func:`minivl.eval.inference.chat_command` on the result.

:func:`finetune_on_hub_dataset` chains 1-3. At ``smoke`` / ``cpu`` scale the checkpoint is
:func:`tiny_base_checkpoint` (a tiny random MiniVL saved in the official OpenGVLab layout,
tokenizer beside it) and the data set is :func:`suite_as_cauldron` (the synthetic suite
saved in the_cauldron's row layout with ``Dataset.save_to_disk``), so the code path the GPU
recipe takes is the one the tests run.

:data:`OFFICIAL_RUNS` holds what the stage presets do not: how many GPUs and which ZeRO
stage the InternVL 2.5 runs used (the official stage scripts, ``shell/internvl2.5/``).

Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

# Per model size, from the official stage scripts (shell/internvl2.5/stage{1,1.5,2}/*.sh and
# their DeepSpeed json): GPUs x micro-batch 1 x gradient accumulation, and the ZeRO stage.
OFFICIAL_RUNS: dict[str, dict[str, Any]] = {
    "1b": {"gpus": 512, "micro_batch": 1, "zero": "zero1", "stages": ("stage1", "stage2")},
    "2b": {"gpus": 512, "micro_batch": 1, "zero": "zero1", "stages": ("stage1", "stage2")},
    "4b": {"gpus": 512, "micro_batch": 1, "zero": "zero1", "stages": ("stage1", "stage2")},
    "8b": {"gpus": 512, "micro_batch": 1, "zero": "zero1", "stages": ("stage1", "stage1_5", "stage2")},
    "26b": {"gpus": 512, "micro_batch": 1, "zero": "zero3", "stages": ("stage1", "stage1_5", "stage2")},
    "38b": {"gpus": 512, "micro_batch": 1, "zero": "zero3", "stages": ("stage1", "stage2")},
    "78b": {"gpus": 512, "micro_batch": 1, "zero": "zero3", "stages": ("stage1", "stage2")},
}
"""The official InternVL 2.5 runs: 512 GPUs, one packed row per GPU; ZeRO-1 up to 8B, ZeRO-3 from 26B.

Explained in chapter 13 (notebooks/13_scaling_up.ipynb)."""

HUB_CHECKPOINT = "OpenGVLab/InternVL2_5-1B"
"""The checkpoint the GPU recipe fine-tunes."""

_IMAGE_TAG = re.compile(r"(Image-\d+: )?<image>\n?")


def _mappers() -> dict[str, Any]:
    from minivl.data.hub import map_cauldron, map_llava, map_mmmu

    return {"cauldron": map_cauldron, "llava": map_llava, "mmmu": map_mmmu}


def suite_as_cauldron(meta: str | os.PathLike, out_dir: str | os.PathLike, limit: int | None = None) -> Path:
    """Save the single-image records of an InternVL meta JSON as a ``datasets`` folder in the_cauldron's layout.

    Each record becomes a row ``{"images": [PIL image], "texts": [{"user", "assistant",
    "source"}, ...]}`` with one text entry per human / gpt pair and the ``<image>`` tag taken
    out of the question (:func:`minivl.data.hub.map_cauldron` puts it back). Multi-image,
    video and text-only records are left out; ``limit`` caps the number of rows. The folder,
    written with ``Dataset.save_to_disk``, loads through :func:`minivl.data.hub.load_hub_dataset`
    exactly as a Hub download of ``HuggingFaceM4/the_cauldron`` would.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    import datasets
    from PIL import Image

    from minivl.data.records import read_meta

    rows: list[dict[str, Any]] = []
    for entry in read_meta(meta).values():
        records, _ = entry.read_records(strict=False)
        for record in records:
            if limit is not None and len(rows) >= limit:
                break
            turns = record.turns
            if record.kind != "image" or len(turns) < 2 or len(turns) % 2:
                continue
            if any(turns[k]["from"] != ("human" if k % 2 == 0 else "gpt") for k in range(len(turns))):
                continue
            with Image.open(entry.image_path(record.images[0])) as im:
                image = im.convert("RGB")
            texts = [{"user": _IMAGE_TAG.sub("", turns[k]["value"]).strip(), "assistant": turns[k + 1]["value"],
                      "source": entry.name} for k in range(0, len(turns), 2)]
            rows.append({"images": [image], "texts": texts})
    if not rows:
        raise ValueError(f"suite_as_cauldron: {meta} has no single-image human/gpt records")
    features = datasets.Features({
        "images": datasets.Sequence(datasets.Image()),
        "texts": [{"user": datasets.Value("string"), "assistant": datasets.Value("string"),
                   "source": datasets.Value("string")}],
    })
    out = Path(out_dir)
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(out))
    return out


def hub_to_meta(source: str | os.PathLike, out_dir: str | os.PathLike, mapper: str = "cauldron",
                split: str = "train", limit: int | None = None, streaming: bool = False, name: str | None = None,
                max_dynamic_patch: int | None = None, **load_kwargs: Any) -> Path:
    """Map a data set to InternVL records and write ``out_dir/{records.jsonl, images/, meta.json}``.

    ``source`` is anything :func:`minivl.data.hub.load_hub_dataset` takes (a Hub id with a
    config in ``load_kwargs``, e.g. ``name="ai2d"``, or a local folder / file); ``mapper`` is
    ``"cauldron"``, ``"llava"`` or ``"mmmu"``; ``limit`` keeps the first rows (with
    ``streaming=True`` only those are downloaded). Returns the meta JSON's path; its single
    entry is named ``name`` (default: from ``source``) and points at the files by relative
    paths, so the folder can be moved.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    from minivl.data.hub import load_hub_dataset, safe_name
    from minivl.data.records import DatasetMeta, write_meta, write_records

    mappers = _mappers()
    if mapper not in mappers:
        raise ValueError(f"hub_to_meta: unknown mapper {mapper!r}; expected one of {', '.join(mappers)}")
    out = Path(out_dir)
    records = load_hub_dataset(source, split=split, mapper=mappers[mapper], streaming=streaming,
                               image_dir=out / "images", limit=limit, **load_kwargs)
    if not records:
        raise ValueError(f"hub_to_meta: {source} ({split}) gave no records")
    write_records(out / "records.jsonl", records)
    entry = DatasetMeta(name=name or safe_name(Path(str(source)).name), root="images", annotation="records.jsonl",
                        data_augment=False, max_dynamic_patch=max_dynamic_patch, repeat_time=1, length=len(records))
    return write_meta(out / "meta.json", [entry])


def write_run_config(path: str | os.PathLike, model: str | os.PathLike, data: str | os.PathLike,
                     output_dir: str | os.PathLike, preset: str = "finetune_lora", size: str = "1b",
                     tokenizer: str | os.PathLike | None = None, extra: dict[str, Any] | None = None,
                     **stage_overrides: Any) -> Path:
    """Write a ``minivl train`` YAML: ``model``, ``data``, ``output_dir`` and a stage preset plus overrides.

    The file reads back with :meth:`minivl.train.stages.RunConfig.from_yaml`; ``extra`` adds
    top-level keys (``min_num_frame``, ``llm_path`` ...). Paths are written as given.
    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    from minivl.train.stages import get_stage

    get_stage(preset, size, **stage_overrides)  # fail here, naming the key, not at training time
    body: dict[str, Any] = {"model": str(model), "data": str(data), "output_dir": str(output_dir)}
    if tokenizer is not None:
        body["tokenizer"] = str(tokenizer)
    body.update(extra or {})
    body["stage"] = {"preset": preset, "size": size, **stage_overrides}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def tiny_base_checkpoint(out_dir: str | os.PathLike, meta: str | os.PathLike, preset: str = "smoke",
                         vocab_size: int = 700, seed: int = 0, format: str = "official") -> Path:
    """A stand-in for ``OpenGVLab/InternVL2_5-1B`` at smoke / cpu scale: a tiny random MiniVL.

    A byte-level BPE with InternVL's special tokens is trained on the conversations of
    ``meta`` (about a second), the model is built from ``MiniVLConfig.<preset>`` (``smoke`` or
    ``tiny``) with that vocabulary, and both are saved in ``out_dir`` in the ``format`` layout
    (``official`` by default, the layout of the released checkpoints), so that
    ``MiniVL.from_pretrained(out_dir)`` takes the same branch as for the real one. Reused
    when ``out_dir/config.json`` exists.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    import torch

    from minivl.config import MiniVLConfig
    from minivl.data.dataset import conversation_texts
    from minivl.model import MiniVL
    from minivl.text.tokenizer import image_token_id, train_chat_tokenizer

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    if preset not in ("smoke", "tiny"):
        raise ValueError(f"tiny_base_checkpoint: preset must be 'smoke' or 'tiny', got {preset!r}")
    tok = train_chat_tokenizer(conversation_texts(meta), vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = getattr(MiniVLConfig, preset)(vocab_size=len(tok)).replace(image_token_id=image_token_id(tok))
    MiniVL(config).save_pretrained(out, format=format, tokenizer=tok)
    return out


def finetune_on_hub_dataset(model: str | os.PathLike, source: str | os.PathLike, out_dir: str | os.PathLike,
                            mapper: str = "cauldron", size: str = "1b", split: str = "train",
                            limit: int | None = None, streaming: bool = False,
                            load_kwargs: dict[str, Any] | None = None, progress: bool = True,
                            **stage_overrides: Any) -> dict[str, Any]:
    """Fine-tune a checkpoint with LoRA on a data set: :func:`hub_to_meta`, :func:`write_run_config`, train.

    ``model`` is a checkpoint directory or hub id (``"OpenGVLab/InternVL2_5-1B"``); the
    ``finetune_lora`` preset of ``size`` (r 16 on the LLM, lr 4e-5, 6 tiles, not packed) is
    used with ``stage_overrides`` (``max_steps=100`` ...). Writes ``out_dir/data/``,
    ``out_dir/run.yaml`` and the run under ``out_dir/run`` (the merged model in
    ``out_dir/run/final``); returns :func:`minivl.train.run.run_training`'s dict plus
    ``meta`` and ``config``.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    from minivl.train.run import run_training
    from minivl.train.stages import RunConfig

    out = Path(out_dir)
    meta = hub_to_meta(source, out / "data", mapper=mapper, split=split, limit=limit, streaming=streaming,
                       **(load_kwargs or {}))
    config = write_run_config(out / "run.yaml", model, meta, out / "run", preset="finetune_lora", size=size,
                              **stage_overrides)
    result = run_training(RunConfig.from_yaml(config), progress=progress)
    return {**result, "meta": str(meta), "config": str(config)}


__all__ = [
    "HUB_CHECKPOINT",
    "OFFICIAL_RUNS",
    "finetune_on_hub_dataset",
    "hub_to_meta",
    "suite_as_cauldron",
    "tiny_base_checkpoint",
    "write_run_config",
]
