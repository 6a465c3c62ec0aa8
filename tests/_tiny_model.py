"""A tiny random MiniVL and its tokenizer, shared by the chat, inference and benchmark tests."""

from __future__ import annotations

import torch


def tiny_model_and_tokenizer(noise: float = 0.05):
    """A smoke-size MiniVL (seed 0) with weights jittered by ``noise`` so that greedy answers
    vary from token to token, and a 300-token tokenizer; the model is in eval mode."""
    from minivl.config import MiniVLConfig
    from minivl.model import MiniVL
    from minivl.text.tokenizer import train_tokenizer

    tok = train_tokenizer(vocab_size=300)
    torch.manual_seed(0)
    model = MiniVL(MiniVLConfig.smoke(vocab_size=300, image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>")))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval(), tok
