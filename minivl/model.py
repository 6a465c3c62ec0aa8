"""MiniVL: InternViT + ``mlp1`` + any transformers causal LM (the official ``InternVLChatModel``).

The forward pass, as in the official ``modeling_internvl_chat.py``::

    pixel_values (N, 3, H, W)                                  N tiles of every image in the batch
      -> vision_model, select_layer        (N, 1 + P, C)       InternViT hidden states
      -> drop CLS, square, pixel_shuffle   (N, P/4, 4C)        2x2 patches -> one token (v2)
      -> mlp1                              (N, P/4, H_llm)     the projector
      -> [image_flags == 1]                (n, P/4, H_llm)     padding / dummy tiles dropped
    input_ids (B, L) -> embed_tokens       (B, L, H_llm)
      -> positions where input_ids == IMG_CONTEXT get the n * P/4 image tokens, in order
      -> language_model(inputs_embeds=...) -> logits (B, L, V)

The three sub-modules keep the official names (``vision_model``, ``mlp1``,
``language_model``), so a minivl state dict *is* an official one for Qwen2 and Llama LLMs.
Loading and saving in the three checkpoint layouts lives in ``minivl/checkpoint.py``.

Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minivl.config import MiniVLConfig
from minivl.projector import MLPProjector, extract_feature
from minivl.vision.intern_vit import InternVisionModel

IGNORE_INDEX = -100

# keys of a stored LLM config that describe the file or another machine, not the model
_LLM_CONFIG_DROP = (
    "_name_or_path", "auto_map", "attn_implementation", "_attn_implementation", "transformers_version",
    "torch_dtype", "dtype", "use_flash_attn", "model_type", "_commit_hash",
)


def tokenize_left_padded(tokenizer: Any, texts: list[str]) -> Any:
    """Tokenize a batch of prompts padded on the left (so every prompt ends where generation
    starts), leaving the tokenizer's own ``padding_side`` as it was."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def build_language_model(llm: dict[str, Any], attn_implementation: str = "sdpa") -> nn.Module:
    """A randomly initialised transformers causal LM from a config dict (``model_type`` required).

    Keys that only describe a stored file (``auto_map``, ``torch_dtype``, an
    ``attn_implementation`` of another machine, ...) are ignored.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if "model_type" not in llm:
        raise ValueError("LLM config dict needs a 'model_type' (e.g. 'qwen2' or 'llama')")
    kwargs = {k: v for k, v in llm.items() if k not in _LLM_CONFIG_DROP}
    config = AutoConfig.for_model(llm["model_type"], **kwargs)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def supervised_positions_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    loss_weight: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The loss of :func:`causal_lm_loss` (or, with ``loss_weight``, of
    :func:`minivl.train.loss.weighted_causal_lm_loss`) from the logits of the kept positions only.

    ``logits`` (K, V) are the rows of the positions where ``keep`` (B, L) is true, in row-major
    order; ``keep[:, t]`` marks that ``labels[:, t + 1]`` is supervised.

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
        raise ValueError(f"expected ({int(keep.sum())}, V) logits for the kept positions, got {tuple(logits.shape)}")
    shifted = torch.zeros_like(keep)  # (B, L): True at t + 1 where keep[t]
    shifted[:, 1:] = keep[:, :-1]
    targets = labels.to(logits.device)[shifted]  # (K,)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (K,)
    if loss_weight is None:
        return ce.sum() / max(ce.numel(), 1)
    from minivl.train.loss import divide_by_weight

    w = loss_weight.to(logits.device, torch.float32)
    return divide_by_weight((w[shifted] * ce).sum(), w[:, 1:], denominator)


def _unwrapped(module: nn.Module) -> nn.Module:
    """The model inside a PEFT wrapper (LoRA), or ``module`` itself."""
    return module.get_base_model() if hasattr(module, "get_base_model") else module


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    """Whether ``cls.forward`` has a ``logits_to_keep`` parameter (looked up once per class)."""
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy over the labels that are not ``ignore_index``.

    The logit at position t predicts ``labels[t+1]`` (the usual shift). Computed in float32;
    0 (still differentiable) when nothing is supervised.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    shift_logits = logits[:, :-1, :].float()  # (B, L, V) -> (B, L-1, V)
    shift_labels = labels[:, 1:].to(logits.device)  # (B, L) -> (B, L-1)
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),  # (B, L-1, V) -> (B*(L-1), V)
        shift_labels.reshape(-1),  # (B, L-1) -> (B*(L-1),)
        ignore_index=ignore_index,
        reduction="sum",
    )
    count = (shift_labels != ignore_index).sum()
    return total / count.clamp_min(1)


class MiniVL(nn.Module):
    """InternVL 2.5 as one ``nn.Module``: ``vision_model`` (InternViT), ``mlp1`` (projector) and
    ``language_model`` (a transformers ``*ForCausalLM``).

    ``MiniVL(config)`` builds every part with random weights; pass ``language_model=`` to use an
    LLM you already have (its hidden size must match ``config.llm``). Load released weights
    with :meth:`from_pretrained`.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """

    def __init__(self, config: MiniVLConfig, language_model: nn.Module | None = None,
                 attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.vision_model = InternVisionModel(config.vision)
        if language_model is None:
            language_model = build_language_model(config.llm, attn_implementation)
        hidden = language_model.get_input_embeddings().weight.shape[1]
        if hidden != config.llm_hidden_size:
            raise ValueError(f"language_model hidden size {hidden} != config.llm['hidden_size'] {config.llm_hidden_size}")
        self.language_model = language_model
        self.mlp1 = MLPProjector(config.vision.hidden_size, hidden, config.downsample_ratio)

    # ----- sizes and handles ---------------------------------------------------------------
    @property
    def num_image_token(self) -> int:
        """LLM tokens per tile (256 for 448 px tiles, 16 for the 112 px tiny ViT)."""
        return self.config.num_image_token

    @property
    def image_token_id(self) -> int | None:
        return self.config.image_token_id

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    # ----- the forward pass ----------------------------------------------------------------
    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles (N, 3, H, W) -> image tokens (N, num_image_token, H_llm).

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        pixel_values = pixel_values.to(device=self.mlp1[1].weight.device, dtype=self.mlp1[1].weight.dtype)
        return extract_feature(self.vision_model, self.mlp1, pixel_values, select_layer=self.config.select_layer,
                               downsample_ratio=self.config.downsample_ratio, ps_version=self.config.ps_version)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                     image_flags: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, L, H_llm) with the image tokens written at the ``IMG_CONTEXT`` positions.

        Tiles whose ``image_flags`` entry is 0 (InternVL's dummy tiles of text-only samples and
        padding tiles) go through the ViT but are dropped before the merge. The features fill
        the placeholder slots in row-major order of the (B, L) batch, so ``pixel_values`` must
        list the tiles in the order their ``<IMG_CONTEXT>`` runs appear. A count mismatch is an
        error naming both numbers.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        embeds = self.language_model.get_input_embeddings()(input_ids)  # (B, L, H)
        if pixel_values is None:
            return embeds
        if self.config.image_token_id is None:
            raise ValueError("MiniVL: config.image_token_id is not set; set it from the tokenizer "
                             "(minivl.text.tokenizer.image_token_id(tok)) before passing pixel_values")
        vit_embeds = self.extract_feature(pixel_values)  # (N, T, H)
        all_tiles = vit_embeds
        if image_flags is not None:
            flags = image_flags.reshape(-1).to(vit_embeds.device)  # (N, 1) or (N,) -> (N,)
            if flags.numel() != vit_embeds.shape[0]:
                raise ValueError(f"MiniVL: image_flags has {flags.numel()} entries for {vit_embeds.shape[0]} tiles")
            vit_embeds = vit_embeds[flags == 1]  # (n, T, H)
        mask = input_ids == self.config.image_token_id  # (B, L)
        n_tokens = int(mask.sum())
        n_features = vit_embeds.shape[0] * vit_embeds.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"MiniVL: the input has {n_tokens} <IMG_CONTEXT> tokens (id {self.config.image_token_id}) but the "
                f"images give {n_features} features ({vit_embeds.shape[0]} tiles x {vit_embeds.shape[1]} tokens); "
                f"each <image> must expand to num_image_token ({self.num_image_token}) x its tile count"
            )
        # (n, T, H) -> (n*T, H), written into the masked slots in row-major order
        features = vit_embeds.reshape(-1, vit_embeds.shape[-1]).to(embeds.dtype)
        embeds = embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), features)
        if n_features == 0 and torch.is_grad_enabled():
            # keep the ViT in the graph when every tile was a dummy (as the official "* 0.0 +" does),
            # so data-parallel training sees all its parameters used
            embeds = embeds + 0.0 * all_tiles.sum()
        return embeds

    def _llm_keeps_logits(self) -> bool:
        """Whether the LLM's forward takes transformers' ``logits_to_keep`` (every transformers
        causal LM of v4.50+ does; remote-code models may not)."""
        return _takes_logits_to_keep(type(_unwrapped(self.language_model)))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_weight: torch.Tensor | None = None,
        loss_denominator: torch.Tensor | float | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        supervised_logits_only: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Logits (B, L, V) and, with ``labels``, the loss; returns a transformers
        ``CausalLMOutputWithPast`` (``.loss``, ``.logits``, ``.cache``).

        The loss is the plain mean next-token cross-entropy over ``labels != -100``, or, when
        ``loss_weight`` (B, L) is given, InternVL's weighted loss
        (:func:`minivl.train.loss.weighted_causal_lm_loss`, with ``loss_denominator`` as its
        global denominator). Other keyword arguments (``cu_seqlens`` for packed rows,
        ``output_hidden_states``, ...) go to the LLM unchanged. ``use_cache`` defaults to off
        unless a KV ``cache`` is given (training never needs the cache, and a cache
        disables transformers' packed-row detection).

        ``supervised_logits_only=True`` (with ``labels``; the trainer's setting) projects onto
        the vocabulary only the positions whose next label is supervised: the loss is the same
        number, but the (B, L, V) logits are never built, which on a real InternVL (V = 151,674,
        most positions image or prompt tokens) is most of the activation memory of the LM head.
        ``.logits`` is then (K, V), one row per supervised position in row-major order.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        from transformers.modeling_outputs import CausalLMOutputWithPast

        embeds = self.embed_inputs(input_ids, pixel_values, image_flags)
        if cache is None:
            cache = kwargs.pop("past_key_values", None)  # the transformers 4.x name
        if use_cache is None:
            use_cache = cache is not None
        keep = None
        if supervised_logits_only and labels is not None and self._llm_keeps_logits():
            # position t predicts labels[t+1]: keep the t whose next label is supervised
            keep = torch.zeros_like(labels, dtype=torch.bool)  # (B, L)
            keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
            kwargs["logits_to_keep"] = keep
        out = self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        logits = out.logits
        loss = None
        if keep is not None:
            loss = supervised_positions_loss(logits, labels, keep, loss_weight, loss_denominator)
        elif labels is not None:
            if loss_weight is not None:
                from minivl.train.loss import weighted_causal_lm_loss

                loss = weighted_causal_lm_loss(logits, labels.to(logits.device), loss_weight.to(logits.device),
                                               denominator=loss_denominator)
            else:
                loss = causal_lm_loss(logits, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=getattr(out, "cache", None),
                                      hidden_states=getattr(out, "hidden_states", None),
                                      attentions=getattr(out, "attentions", None))

    # ----- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """New tokens (B, new) after the prompt, from the LLM's ``generate(inputs_embeds=...)``.

        The prompt (with its image tokens) is embedded once; decoding then runs on the LLM with
        its KV cache. Any ``GenerationMixin.generate`` argument works (``max_new_tokens``,
        ``do_sample``, ``eos_token_id``, ``streamer`` ...). As in the official code the result
        holds only the generated tokens, not the prompt.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        if input_ids is None:
            raise ValueError("MiniVL.generate needs input_ids (the prompt)")
        if generate_kwargs.get("use_cache") is False:
            raise ValueError("MiniVL.generate decodes with the KV cache: with inputs_embeds, transformers cannot "
                             "re-embed the image prompt at every step; use forward() in a loop to decode without it")
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.embed_inputs(input_ids, pixel_values, image_flags)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask.to(self.device),
                                            **generate_kwargs)

    def expand_image_placeholders(self, query: str, num_patches_list: Sequence[int]) -> str:
        """Replace each ``<image>`` in turn by ``<img>`` + ``<IMG_CONTEXT>`` x (``num_image_token`` x tiles)
        + ``</img>``, as the official ``chat()`` does.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        from minivl.text.prompt import image_span

        for num_patches in num_patches_list:
            if "<image>" not in query:
                raise ValueError(f"chat: {len(num_patches_list)} images but fewer '<image>' placeholders in the prompt")
            query = query.replace("<image>", image_span(self.num_image_token * num_patches), 1)
        return query

    def build_chat_prompt(self, question: str, history: Sequence[tuple[str, str]] | None = None,
                          system_message: str | None = None) -> str:
        """The ``config.template`` prompt for ``question`` after ``history``, ending with the assistant prefix.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        from minivl.text.template import get_template

        template = get_template(self.config.template)
        messages: list[tuple[str, str | None]] = []
        for old_question, old_answer in history or []:
            messages += [("user", old_question), ("assistant", old_answer)]
        messages += [("user", question), ("assistant", None)]
        return template.render(messages, system_message=system_message)

    def _check_tokenizer(self, tokenizer: Any) -> None:
        from minivl.text.tokenizer import image_token_id

        tid = image_token_id(tokenizer)
        if self.config.image_token_id is None:
            self.config.image_token_id = tid
        elif tid != self.config.image_token_id:
            raise ValueError(f"chat: the tokenizer's <IMG_CONTEXT> id {tid} != model.config.image_token_id "
                             f"{self.config.image_token_id}; use the tokenizer the model was trained with")

    def _stop_token_id(self, tokenizer: Any) -> int:
        from minivl.text.template import get_template
        from minivl.text.tokenizer import token_id

        return token_id(tokenizer, get_template(self.config.template).stop_token)

    def chat(
        self,
        tokenizer: Any,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict[str, Any],
        history: list[tuple[str, str]] | None = None,
        return_history: bool = False,
        num_patches_list: Sequence[int] | None = None,
        system_message: str | None = None,
        verbose: bool = False,
    ) -> str | tuple[str, list[tuple[str, str]]]:
        """One chat turn, as the official ``InternVLChatModel.chat``.

        ``<image>\\n`` is put in front of the question when there are images, no ``<image>`` in
        the question and no history; each ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x
        (``num_image_token`` x tiles) + ``</img>``; the prompt follows ``config.template``;
        generation stops at the template's ``<|im_end|>``. ``num_patches_list`` gives the tile
        count of each image (default: all of ``pixel_values`` is one image). Pass a transformers
        ``TextIteratorStreamer``/``TextStreamer`` as ``generation_config["streamer"]`` to stream.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        self._check_tokenizer(tokenizer)
        if pixel_values is not None and history is None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and sum(num_patches_list) != pixel_values.shape[0]:
            raise ValueError(f"chat: num_patches_list sums to {sum(num_patches_list)} but pixel_values has "
                             f"{pixel_values.shape[0]} tiles")
        history = [] if history is None else list(history)
        query = self.expand_image_placeholders(self.build_chat_prompt(question, history, system_message), num_patches_list)
        if verbose:
            print(query)
        inputs = tokenizer(query, return_tensors="pt", add_special_tokens=False)
        config = dict(generation_config)
        config["eos_token_id"] = self._stop_token_id(tokenizer)
        config.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else config["eos_token_id"])
        output = self.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                               attention_mask=inputs["attention_mask"], **config)
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        response = response.split(tokenizer.convert_ids_to_tokens(config["eos_token_id"]))[0].strip()
        history.append((question, response))
        return (response, history) if return_history else response

    def batch_chat(
        self,
        tokenizer: Any,
        pixel_values: torch.Tensor | None,
        questions: Sequence[str],
        generation_config: dict[str, Any],
        num_patches_list: Sequence[int] | None = None,
        system_message: str | None = None,
        image_counts: Sequence[int] | None = None,
    ) -> list[str]:
        """Several single-turn questions at once (left padding), as the official ``batch_chat``.

        Question k gets the tiles ``num_patches_list[k]`` (one image each), or, with
        ``image_counts``, the next ``image_counts[k]`` entries of ``num_patches_list``.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        self._check_tokenizer(tokenizer)
        if num_patches_list is None:
            if pixel_values is not None and len(questions) > 1:
                raise ValueError("batch_chat: pass num_patches_list (the tile count of each question's image)")
            num_patches_list = [] if pixel_values is None else [pixel_values.shape[0]]
        if pixel_values is not None and sum(num_patches_list) != pixel_values.shape[0]:
            raise ValueError(f"batch_chat: num_patches_list sums to {sum(num_patches_list)} but pixel_values has "
                             f"{pixel_values.shape[0]} tiles")
        counts = list(image_counts) if image_counts is not None else [1 if pixel_values is not None else 0] * len(questions)
        if sum(counts) != len(num_patches_list):
            raise ValueError(f"batch_chat: image_counts sum to {sum(counts)} for {len(num_patches_list)} images")
        queries, start = [], 0
        for question, count in zip(questions, counts):
            if count and "<image>" not in question:
                question = "<image>\n" + question
            patches = list(num_patches_list[start:start + count])
            start += count
            queries.append(self.expand_image_placeholders(self.build_chat_prompt(question, None, system_message), patches))
        inputs = tokenize_left_padded(tokenizer, queries)
        config = dict(generation_config)
        config["eos_token_id"] = self._stop_token_id(tokenizer)
        config.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else config["eos_token_id"])
        output = self.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"],
                               attention_mask=inputs["attention_mask"], **config)
        stop = tokenizer.convert_ids_to_tokens(config["eos_token_id"])
        return [text.split(stop)[0].strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]

    # ----- what trains -----------------------------------------------------------------------
    def towers(self) -> dict[str, nn.Module]:
        """``{"vision": vision_model, "projector": mlp1, "llm": language_model}``."""
        return {"vision": self.vision_model, "projector": self.mlp1, "llm": self.language_model}

    def freeze(self, vision: bool | None = None, projector: bool | None = None, llm: bool | None = None) -> dict[str, dict[str, int]]:
        """Freeze (``True``) or unfreeze (``False``) each tower; ``None`` leaves it as it is.

        Freezing only sets ``requires_grad``: it does not switch a tower to eval mode (InternVL
        keeps drop path active in a frozen ViT). Returns :meth:`trainable_parameter_summary`.
        Stage 1 is ``freeze(vision=True, projector=False, llm=True)``.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        for name, flag in (("vision", vision), ("projector", projector), ("llm", llm)):
            if flag is not None:
                self.towers()[name].requires_grad_(not flag)
        return self.trainable_parameter_summary()

    def freeze_vision(self, frozen: bool = True) -> None:
        """``freeze(vision=frozen)``."""
        self.freeze(vision=frozen)

    def freeze_projector(self, frozen: bool = True) -> None:
        """``freeze(projector=frozen)``."""
        self.freeze(projector=frozen)

    def freeze_llm(self, frozen: bool = True) -> None:
        """``freeze(llm=frozen)``."""
        self.freeze(llm=frozen)

    def trainable_parameter_summary(self) -> dict[str, dict[str, int]]:
        """``{tower: {"trainable": n, "total": n}}`` for ``vision``, ``projector``, ``llm`` and ``all``
        (tied tensors counted once).

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        summary = {}
        for name, module in {**self.towers(), "all": self}.items():
            params = list(module.parameters())  # parameters() already de-duplicates tied tensors
            summary[name] = {"trainable": sum(p.numel() for p in params if p.requires_grad),
                             "total": sum(p.numel() for p in params)}
        return summary

    def gradient_checkpointing_enable(self, vision: bool = True, llm: bool = True) -> None:
        """Recompute activations in the backward pass, per tower (ViT layers, LLM layers).

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        # through a PEFT wrapper (ViT LoRA) to the InternViT itself: setting the flag on the
        # wrapper would leave the ViT un-checkpointed
        _unwrapped(self.vision_model).gradient_checkpointing = vision
        lm = self.language_model
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.2x names
            if llm:
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            elif lm.is_activation_checkpointing:
                lm.activation_checkpointing_disable()
        elif llm:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif lm.is_gradient_checkpointing:
            lm.gradient_checkpointing_disable()

    def gradient_checkpointing_disable(self) -> None:
        """Turn gradient checkpointing off in both towers."""
        self.gradient_checkpointing_enable(vision=False, llm=False)

    @property
    def is_gradient_checkpointing(self) -> dict[str, bool]:
        lm = self.language_model
        llm = lm.is_activation_checkpointing if hasattr(lm, "activation_checkpointing_enable") else lm.is_gradient_checkpointing
        return {"vision": bool(_unwrapped(self.vision_model).gradient_checkpointing), "llm": bool(llm)}

    # ----- checkpoints -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, image_token_id: int | None = None, dtype: torch.dtype | None = None,
                        strict: bool = True, attn_implementation: str = "sdpa") -> MiniVL:
        """Load a minivl, official OpenGVLab (``InternVLChatModel``) or transformers
        (``InternVLForConditionalGeneration``) checkpoint; the layout is read from ``config.json``.

        ``path`` is a local directory, or a hub id (``"OpenGVLab/InternVL2_5-1B"``) fetched with
        ``huggingface_hub.snapshot_download``. Safetensors only (sharded or not). ``dtype``
        defaults to the dtype of the stored weights. See :func:`minivl.checkpoint.load_pretrained`.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        from minivl.checkpoint import load_pretrained

        return load_pretrained(path, image_token_id=image_token_id, dtype=dtype, strict=strict,
                               attn_implementation=attn_implementation, model_class=cls)

    def save_pretrained(self, path: str | Path, format: str = "minivl", tokenizer: Any = None,
                        max_shard_size: int | None = None) -> Path:
        """Write ``config.json`` + safetensors in the ``minivl``, ``official`` or ``hf`` layout.

        See :func:`minivl.checkpoint.save_pretrained`.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        from minivl.checkpoint import save_pretrained

        return save_pretrained(self, path, format=format, tokenizer=tokenizer, max_shard_size=max_shard_size)


def count_parameters(config: MiniVLConfig) -> dict[str, int]:
    """Parameter counts per tower of the model ``config`` describes, built on the meta device
    (no memory, no time): ``{"vision", "projector", "llm", "total"}``.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    with torch.device("meta"):
        model = MiniVL(config)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.towers().items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


__all__ = ["IGNORE_INDEX", "MiniVL", "build_language_model", "causal_lm_loss", "count_parameters", "supervised_positions_loss"]
