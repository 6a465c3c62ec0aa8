"""``minivl train CONFIG``: one stage from a YAML file (model, data, stage, output directory).

``model`` is a checkpoint directory or hub id (minivl, official or transformers layout; the
tokenizer lies beside the weights), or a :class:`~minivl.config.MiniVLConfig` preset name
(``tiny``, ``smoke``, ``internvl2_5_1b`` ...) for a model built from parts: then the YAML also
names ``tokenizer`` and may name ``llm_path`` (a pretrained causal LM, as the official
``--llm_path``) and ``vision_path`` (an InternViT checkpoint, as ``--vision_path``); the
projector starts random, as in stage 1. The final model and its tokenizer are written to
``<output_dir>/final``. Runs unchanged under ``accelerate launch`` for several GPUs.

Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from minivl.train.stages import RunConfig

_PRESETS = ("tiny", "smoke", "internvl2_5_1b", "internvl2_5_2b", "internvl2_5_4b", "internvl2_5_8b")


def build_model_and_tokenizer(run: RunConfig) -> tuple[Any, Any]:
    """The model and tokenizer a run starts from (see the module docstring)."""
    import torch

    from minivl.config import MiniVLConfig
    from minivl.model import MiniVL
    from minivl.text.tokenizer import image_token_id, load_tokenizer

    if run.model not in _PRESETS:
        model = MiniVL.from_pretrained(run.model)
        return model, load_tokenizer(run.tokenizer or run.model)
    if not run.tokenizer:
        raise ValueError(f"model preset {run.model!r} needs a 'tokenizer' entry (a tokenizer directory)")
    tok = load_tokenizer(run.tokenizer)
    preset = getattr(MiniVLConfig, run.model)
    config = preset(vocab_size=len(tok)) if run.model in ("tiny", "smoke") else preset()
    config = config.replace(image_token_id=image_token_id(tok))
    language_model = None
    if run.extra.get("llm_path"):
        from transformers import AutoModelForCausalLM

        language_model = AutoModelForCausalLM.from_pretrained(run.extra["llm_path"], dtype=torch.float32)
        config = config.replace(llm={**language_model.config.to_dict(), "model_type": language_model.config.model_type})
    model = MiniVL(config, language_model=language_model)
    if run.extra.get("vision_path"):
        from minivl.checkpoint import load_state_dict_strict, read_safetensors, vit_official_to_minivl

        state = read_safetensors(run.extra["vision_path"])
        if any(k.startswith("vision_model.") for k in state):
            state = vit_official_to_minivl(state)
        load_state_dict_strict(model.vision_model, state, where=str(run.extra["vision_path"]))
    if model.get_input_embeddings().weight.shape[0] < len(tok):
        model.language_model.resize_token_embeddings(len(tok))
    return model, tok


def run_training(run: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Train one stage as the config says; returns where the model went and the last losses."""
    from minivl.data.dataset import DataConfig, MixtureDataset, build_datasets, skip_report
    from minivl.data.packing import PackedDataset, packed_collate_fn, padded_collate_fn
    from minivl.train.attention import enable_packed_attention
    from minivl.train.trainer import map_loader, packed_loader, train

    stage = run.stage
    model, tok = build_model_and_tokenizer(run)
    vision = model.config.vision
    data_cfg = DataConfig(image_size=vision.image_size, num_image_token=model.num_image_token,
                          max_dynamic_patch=stage.max_dynamic_patch, max_length=stage.max_seq_length,
                          min_num_frame=int(run.extra.get("min_num_frame", 8)),
                          max_num_frame=int(run.extra.get("max_num_frame", 32)))
    datasets = build_datasets(run.data, tok, data_cfg, seed=stage.seed)
    if stage.packing:
        enable_packed_attention(model.language_model)
        packed = PackedDataset(datasets, max_packed_tokens=stage.max_packed_tokens,
                               num_images_expected=stage.num_images_expected, max_buffer_size=stage.max_buffer_size,
                               seed=stage.seed, img_start_token_id=tok.convert_tokens_to_ids("<img>"),
                               img_end_token_id=tok.convert_tokens_to_ids("</img>"), pad_token_id=tok.pad_token_id)
        make_loader = packed_loader(packed, functools.partial(packed_collate_fn, loss_reduction=stage.loss_reduction),
                                    num_workers=stage.num_workers)
    else:
        collate = functools.partial(padded_collate_fn, pad_token_id=tok.pad_token_id,
                                    loss_reduction=stage.loss_reduction)
        mixture = MixtureDataset(datasets)
        make_loader = map_loader(mixture, stage.batch_size, collate, seed=stage.seed, num_workers=stage.num_workers,
                                 lengths=mixture.length_estimates() if stage.group_by_length else None,
                                 grad_accum=stage.grad_accum)
    result = train(model, make_loader, stage, output_dir=run.output_dir, progress=progress)
    print(skip_report(datasets))
    final = Path(run.output_dir) / "final"
    if stage.lora is not None:
        from minivl.train.trainer import merge_lora

        merge_lora(model)
    model.save_pretrained(final, tokenizer=tok)
    print(f"saved {final}")
    return {"final_model": str(final), "steps": result.steps, "losses": result.losses[-10:]}


def train_command(config_path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML run config, apply ``overrides`` to its stage, and run it."""
    run = RunConfig.from_yaml(config_path)
    if overrides:
        run.stage = run.stage.replace(**overrides)
    return run_training(run)
