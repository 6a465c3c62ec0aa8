"""Text side of minivl: special tokens and tokenizers, conversation templates, prompt building.

Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
"""

from __future__ import annotations

from minivl.text.prompt import (
    IGNORE_TOKEN_ID,
    IMAGE_PLACEHOLDER,
    NUM_IMAGE_TOKEN,
    VIDEO_PLACEHOLDER,
    ConversationError,
    ConversationInputs,
    PlaceholderMismatchError,
    SampleTooLongError,
    build_generation_prompt,
    conversation_segments,
    expand_image_placeholders,
    expand_video_placeholder,
    format_token_rows,
    image_span,
    multi_image_prefix,
    parse_response,
    preprocess_internvl2_5,
    token_rows,
    validate_conversations,
    video_frame_prefix,
)
from minivl.text.template import TEMPLATES, Template, chat_template_jinja, get_template
from minivl.text.tokenizer import (
    BOX_END_TOKEN,
    BOX_START_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    INTERNVL_TOKENS,
    PAD_TOKEN,
    QUAD_END_TOKEN,
    QUAD_START_TOKEN,
    REF_END_TOKEN,
    REF_START_TOKEN,
    SPECIAL_TOKENS,
    add_internvl_tokens,
    default_corpus,
    image_token_id,
    load_tokenizer,
    token_id,
    tokenizer_fingerprint,
    train_chat_tokenizer,
    train_tokenizer,
)

__all__ = [
    "BOX_END_TOKEN", "BOX_START_TOKEN", "IGNORE_TOKEN_ID", "IMAGE_PLACEHOLDER", "IMG_CONTEXT_TOKEN",
    "IMG_END_TOKEN", "IMG_START_TOKEN", "IM_END_TOKEN", "IM_START_TOKEN", "INTERNVL_TOKENS",
    "NUM_IMAGE_TOKEN", "PAD_TOKEN", "QUAD_END_TOKEN", "QUAD_START_TOKEN", "REF_END_TOKEN",
    "REF_START_TOKEN", "SPECIAL_TOKENS", "TEMPLATES", "VIDEO_PLACEHOLDER",
    "ConversationError", "ConversationInputs", "PlaceholderMismatchError", "SampleTooLongError", "Template",
    "add_internvl_tokens", "build_generation_prompt", "chat_template_jinja", "conversation_segments",
    "default_corpus", "expand_image_placeholders", "expand_video_placeholder", "format_token_rows", "get_template", "image_span",
    "image_token_id", "load_tokenizer", "multi_image_prefix", "parse_response", "preprocess_internvl2_5",
    "token_id", "token_rows", "tokenizer_fingerprint", "train_chat_tokenizer", "train_tokenizer", "validate_conversations", "video_frame_prefix",
]
