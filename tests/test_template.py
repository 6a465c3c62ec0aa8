"""Conversation templates (minivl.text.template): full rendered strings, and the tokenizer's chat template."""

from __future__ import annotations

import pytest

from minivl.text.template import TEMPLATES, Template, chat_template_jinja, get_template
from minivl.text.tokenizer import train_tokenizer

# The official default system messages (internvl/conversation.py), typed out here.
SYS_25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
SYS_20 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"

DIALOGUE = [("user", "<image>\nWhat is it?"), ("assistant", "A cat."), ("user", "Colour?"), ("assistant", "Red.")]


@pytest.fixture(scope="module")
def tok():
    corpus = ["What is it? A cat. Colour? Red. Be brief.", "How many circles? 3."] * 20
    return train_tokenizer(corpus, vocab_size=300)


def test_internvl2_5_full_string():
    t = get_template("internvl2_5")
    expected = (
        "<|im_start|>system\n" + SYS_25 + "<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nColour?<|im_end|>\n"
        "<|im_start|>assistant\nRed.<|im_end|>\n"
    )
    assert t.render(DIALOGUE) == expected
    # generation prompt: a role with no message writes only the role prefix
    assert t.render([("user", "Hi"), ("assistant", None)]) == (
        "<|im_start|>system\n" + SYS_25 + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # official role names are accepted too
    assert t.render([("human", "Hi"), ("gpt", "Yo")]) == t.render([("user", "Hi"), ("assistant", "Yo")])
    assert t.stop_token == "<|im_end|>"


def test_own_and_empty_system_message():
    t = get_template("internvl2_5")
    assert t.render([("user", "Hi")], system_message="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    # an empty system message still writes the (empty) system block, as get_prompt() does
    assert t.render([], system_message="") == "<|im_start|>system\n<|im_end|>\n"


@pytest.mark.parametrize("name", ["internlm2-chat", "Hermes-2"])
def test_older_templates_have_no_newline_after_im_end(name):
    t = get_template(name)
    assert t.render(DIALOGUE[:2] + [("user", "Colour?"), ("assistant", None)]) == (
        "<|im_start|>system\n" + SYS_20 + "<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\nA cat.<|im_end|>"
        "<|im_start|>user\nColour?<|im_end|>"
        "<|im_start|>assistant\n"
    )
    assert t.stop_token == "<|im_end|>"
    assert t.stop_str == ("<|endoftext|>" if name == "Hermes-2" else None)


def test_get_template():
    assert set(TEMPLATES) == {"internvl2_5", "internlm2-chat", "Hermes-2"}
    t = get_template("internvl2_5")
    assert get_template(t) is t
    with pytest.raises(KeyError, match="unknown conversation template 'internvl3'.*internvl2_5"):
        get_template("internvl3")
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        t.render([("tool", "x")])


def _messages(dialogue, system=None):
    out = [{"role": "system", "content": system}] if system is not None else []
    return out + [{"role": r, "content": c} for r, c in dialogue]


@pytest.mark.parametrize("system", [None, "Be brief.", "It's a \\test\n with 'quotes'"])
def test_trained_tokenizer_chat_template_matches_internvl2_5(tok, system):
    t = get_template("internvl2_5")
    rendered = tok.apply_chat_template(_messages(DIALOGUE, system), tokenize=False)
    assert rendered == t.render(DIALOGUE, system_message=system)
    prompt = tok.apply_chat_template(_messages(DIALOGUE[:3], system), tokenize=False, add_generation_prompt=True)
    assert prompt == t.render(DIALOGUE[:3] + [("assistant", None)], system_message=system)
    assert prompt.endswith("<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_survives_save_and_load(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.apply_chat_template(_messages(DIALOGUE), tokenize=False) == get_template("internvl2_5").render(DIALOGUE)
    ids = again.apply_chat_template(_messages(DIALOGUE), tokenize=True, return_dict=True)["input_ids"]
    assert ids == again(get_template("internvl2_5").render(DIALOGUE), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["internlm2-chat", "Hermes-2"])
def test_chat_template_for_older_templates(tok, name):
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>")
    other.chat_template = chat_template_jinja(name)
    rendered = other.apply_chat_template(_messages(DIALOGUE[:3]), tokenize=False, add_generation_prompt=True)
    assert rendered == get_template(name).render(DIALOGUE[:3] + [("assistant", None)])
    assert "<|im_end|>\n" not in rendered


def test_chat_template_rejects_unknown_roles(tok):
    with pytest.raises(Exception, match="role tool is not system"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], tokenize=False)


def test_template_is_frozen():
    import dataclasses

    t = get_template("internvl2_5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.sep = "x"  # type: ignore[misc]
    assert isinstance(t, Template)
