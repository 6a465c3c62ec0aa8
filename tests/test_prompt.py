"""Prompt building and label masking (minivl.text.prompt), checked token by token.

Expected sequences are written out by hand from the official ``preprocess_internvl2_5`` rules:
special tokens by their fixed ids (``<|im_start|>`` 1, ``<|im_end|>`` 2, ``<img>`` 3, ``</img>`` 4,
``<IMG_CONTEXT>`` 5, ``<ref>`` 8, ``</ref>`` 9, ``<box>`` 10, ``</box>`` 11) and text runs by the
tokenizer's pieces; labels keep only the assistant content and its ``<|im_end|>``.
"""

from __future__ import annotations

import pytest

from minivl.text.prompt import (
    IGNORE_TOKEN_ID,
    ConversationError,
    PlaceholderMismatchError,
    SampleTooLongError,
    build_generation_prompt,
    conversation_segments,
    expand_image_placeholders,
    image_span,
    multi_image_prefix,
    parse_response,
    preprocess_internvl2_5,
    video_frame_prefix,
)
from minivl.text.template import get_template
from minivl.text.tokenizer import train_tokenizer

IMS, IME, IMG, IMG_END, CTX, REF, REF_END, BOX, BOX_END = 1, 2, 3, 4, 5, 8, 9, 10, 11
M = IGNORE_TOKEN_ID
SYS = get_template("internvl2_5").system_message

CORPUS = [
    "What is it? A cat. What colour is the circle? Red. Where does it move? left",
    "Image-1: Image-2: Which image has more shapes? Frame-1: Frame-2: Frame-3:",
    "Please provide the bounding box of <ref>the red circle</ref><box>[[12, 340, 560, 1000]]</box>",
    "You are brief. Be helpful.",
] * 30


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=400)


def E(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def seq(tok, *parts):
    """Concatenate ids: ints and lists of ints as they are, strings through the tokenizer."""
    out: list[int] = []
    for p in parts:
        out += E(tok, p) if isinstance(p, str) else ([p] if isinstance(p, int) else list(p))
    return out


def masked(n):
    return [M] * n


def human(v):
    return {"from": "human", "value": v}


def gpt(v):
    return {"from": "gpt", "value": v}


def system_part(tok, sys=SYS):
    return seq(tok, IMS, "system\n" + sys, IME, "\n")


def test_newline_is_one_token(tok):
    assert len(E(tok, "\n")) == 1


def test_single_image(tok):
    conv = [human("What is it?"), gpt("A cat.")]
    out = preprocess_internvl2_5(conv, tok, [3], num_image_token=2)  # 3 tiles x 2 tokens
    s, u = system_part(tok), seq(tok, IMS, "user\n", IMG, [CTX] * 6, IMG_END, "\nWhat is it?", IME, "\n")
    head, answer, nl = seq(tok, IMS, "assistant\n"), seq(tok, "A cat.", IME), E(tok, "\n")
    assert out.input_ids.tolist() == s + u + head + answer + nl
    assert out.labels.tolist() == masked(len(s) + len(u) + len(head)) + answer + masked(1)
    assert out.attention_mask.tolist() == [1] * len(out.input_ids)
    assert out.num_image_tokens == 6
    assert out.num_supervised == len(answer) == len(E(tok, "A cat.")) + 1
    assert out.segments == [("system", len(s)), ("user", len(u)), ("assistant", len(head) + len(answer) + 1)]
    assert tok.decode([t for t in out.labels.tolist() if t != M]) == "A cat.<|im_end|>"
    # "<image>\n" written by the data gives the same tokens as the automatic prefix
    same = preprocess_internvl2_5([human("<image>\nWhat is it?"), gpt("A cat.")], tok, [3], num_image_token=2)
    assert same.input_ids.tolist() == out.input_ids.tolist()
    assert same.labels.tolist() == out.labels.tolist()
    # the input record is not modified
    assert conv[0]["value"] == "What is it?"


def test_single_image_placeholder_in_a_later_turn_is_not_duplicated(tok):
    conv = [human("Hi."), gpt("Hi."), human("<image>\nWhat is it?"), gpt("A cat.")]
    out = preprocess_internvl2_5(conv, tok, [1], num_image_token=4)
    ids = out.input_ids.tolist()
    assert ids.count(IMG) == 1 and ids.count(CTX) == 4
    first_user_end = ids.index(IME, len(system_part(tok)))
    assert ids.index(IMG) > first_user_end  # the image sits in the second human turn


def test_multi_turn_labels(tok):
    conv = [human("<image>\nWhat is it?"), gpt("A cat."), human("What colour is the circle?"), gpt("Red.")]
    out = preprocess_internvl2_5(conv, tok, [1], num_image_token=1)
    s = system_part(tok)
    u1 = seq(tok, IMS, "user\n", IMG, CTX, IMG_END, "\nWhat is it?", IME, "\n")
    a1 = seq(tok, "A cat.", IME)
    u2 = seq(tok, IMS, "user\nWhat colour is the circle?", IME, "\n")
    a2 = seq(tok, "Red.", IME)
    head, nl = seq(tok, IMS, "assistant\n"), E(tok, "\n")
    assert out.input_ids.tolist() == s + u1 + head + a1 + nl + u2 + head + a2 + nl
    assert out.labels.tolist() == (masked(len(s) + len(u1) + len(head)) + a1 + masked(1)
                                   + masked(len(u2) + len(head)) + a2 + masked(1))
    # the official toy check: supervised text is every answer followed by its <|im_end|>
    assert tok.decode([t for t in out.labels.tolist() if t != M]) == "A cat.<|im_end|>Red.<|im_end|>"
    assert out.num_supervised == len(a1) + len(a2)


def test_multi_image(tok):
    question = multi_image_prefix(2) + "Which image has more shapes?"
    assert question == "Image-1: <image>\nImage-2: <image>\nWhich image has more shapes?"
    out = preprocess_internvl2_5([human(question), gpt("Image-2")], tok, [2, 1], num_image_token=3)
    u = seq(tok, IMS, "user\nImage-1: ", IMG, [CTX] * 6, IMG_END, "\nImage-2: ", IMG, [CTX] * 3, IMG_END,
            "\nWhich image has more shapes?", IME, "\n")
    s, head, answer = system_part(tok), seq(tok, IMS, "assistant\n"), seq(tok, "Image-2", IME)
    assert out.input_ids.tolist() == s + u + head + answer + E(tok, "\n")
    assert out.labels.tolist() == masked(len(s) + len(u) + len(head)) + answer + masked(1)
    assert out.num_image_tokens == 9


def test_multi_image_across_turns_in_order(tok):
    conv = [human("<image>\nWhat is it?"), gpt("A cat."), human("<image>\nWhat is it?"), gpt("A cat.")]
    out = preprocess_internvl2_5(conv, tok, [2, 1], num_image_token=1)
    ids = out.input_ids.tolist()
    first, second = ids.index(IMG), ids.index(IMG, ids.index(IMG) + 1)
    assert ids[first:first + 4] == [IMG, CTX, CTX, IMG_END]  # 2 tiles in the first turn
    assert ids[second:second + 3] == [IMG, CTX, IMG_END]  # 1 tile in the second


def test_video(tok):
    assert video_frame_prefix(3) == "Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>"
    assert video_frame_prefix(2, style="chat") == "Frame1: <image>\nFrame2: <image>\n"
    conv = [human("<video>\nWhere does it move?"), gpt("left")]
    out = preprocess_internvl2_5(conv, tok, num_frames=3, num_image_token=2)
    frame = [IMG, CTX, CTX, IMG_END]
    u = seq(tok, IMS, "user\nFrame-1: ", frame, "\nFrame-2: ", frame, "\nFrame-3: ", frame,
            "\nWhere does it move?", IME, "\n")
    s, head, answer = system_part(tok), seq(tok, IMS, "assistant\n"), seq(tok, "left", IME)
    assert out.input_ids.tolist() == s + u + head + answer + E(tok, "\n")
    assert out.labels.tolist() == masked(len(s) + len(u) + len(head)) + answer + masked(1)
    assert out.num_image_tokens == 6
    # without <video> the placeholder is put in front, as the official loader does
    same = preprocess_internvl2_5([human("Where does it move?"), gpt("left")], tok, num_frames=3, num_image_token=2)
    assert same.input_ids.tolist() == out.input_ids.tolist()


def test_text_only_with_own_system_turn(tok):
    conv = [{"from": "system", "value": "You are brief."}, human("What is it?"), gpt("A cat.")]
    out = preprocess_internvl2_5(conv, tok)
    s = system_part(tok, "You are brief.")
    u = seq(tok, IMS, "user\nWhat is it?", IME, "\n")
    head, answer = seq(tok, IMS, "assistant\n"), seq(tok, "A cat.", IME)
    assert out.input_ids.tolist() == s + u + head + answer + E(tok, "\n")
    assert out.labels.tolist() == masked(len(s) + len(u) + len(head)) + answer + masked(1)
    assert out.num_image_tokens == 0
    # system_message= replaces the default only when the record has no system turn
    other = preprocess_internvl2_5(conv[1:], tok, system_message="You are brief.")
    assert other.input_ids.tolist() == out.input_ids.tolist()
    assert preprocess_internvl2_5(conv, tok, system_message="Be helpful.").input_ids.tolist() == out.input_ids.tolist()


def test_grounding_answer(tok):
    q = "Please provide the bounding box of <ref>the red circle</ref>"
    a = "<ref>the red circle</ref><box>[[12, 340, 560, 1000]]</box>"
    out = preprocess_internvl2_5([human(q), gpt(a)], tok, [1], num_image_token=1)
    answer = seq(tok, REF, "the red circle", REF_END, BOX, "[[12, 340, 560, 1000]]", BOX_END, IME)
    u = seq(tok, IMS, "user\n", IMG, CTX, IMG_END, "\nPlease provide the bounding box of ", REF, "the red circle",
            REF_END, IME, "\n")
    s, head = system_part(tok), seq(tok, IMS, "assistant\n")
    assert out.input_ids.tolist() == s + u + head + answer + E(tok, "\n")
    assert [t for t in out.labels.tolist() if t != M] == answer
    digits = [p for p in tok.convert_ids_to_tokens(answer) if p.isdigit()]
    assert digits == list("12340560" "1000")


def test_decoded_ids_equal_the_template_rendering(tok):
    conv = [human(multi_image_prefix(2) + "What is it?"), gpt("A cat."), human("Colour?"), gpt("Red.")]
    out = preprocess_internvl2_5(conv, tok, [2, 3], num_image_token=2)
    expanded = expand_image_placeholders(conv, [4, 6])
    rendered = get_template("internvl2_5").render([(t["from"], t["value"]) for t in expanded])
    assert rendered == "".join(text for _, text in conversation_segments(expanded))
    assert tok.decode(out.input_ids) == rendered
    assert sum(n for _, n in out.segments) == len(out.input_ids)
    assert expanded[0]["value"].startswith("Image-1: " + image_span(4) + "\nImage-2: " + image_span(6))


def test_bos_tokenizer_gets_one_masked_bos(tok):
    from transformers import PreTrainedTokenizerFast

    bos = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, bos_token="<|endoftext|>")
    bos.add_bos_token = True
    conv = [human("What is it?"), gpt("A cat.")]
    plain = preprocess_internvl2_5(conv, tok, [1], num_image_token=2)
    out = preprocess_internvl2_5(conv, bos, [1], num_image_token=2)
    assert out.input_ids.tolist() == [0] + plain.input_ids.tolist()
    assert out.labels.tolist() == [M] + plain.labels.tolist()
    assert out.segments[0] == ("system", plain.segments[0][1] + 1)
    assert out.segments[1:] == plain.segments[1:]


# ----- truncation --------------------------------------------------------------------------


def _two_turns(tok):
    conv = [human("<image>\nWhat is it?"), gpt("A cat."), human("What colour is the circle?"), gpt("Red.")]
    return conv, preprocess_internvl2_5(conv, tok, [2], num_image_token=4)


def test_too_long_raises_by_default(tok):
    conv, full = _two_turns(tok)
    n = len(full.input_ids)
    same = preprocess_internvl2_5(conv, tok, [2], num_image_token=4, max_length=n)
    assert same.input_ids.tolist() == full.input_ids.tolist() and same.num_truncated == 0
    with pytest.raises(SampleTooLongError, match=f"{n} tokens > max_length={n - 1} \\(8 of them image tokens\\)"):
        preprocess_internvl2_5(conv, tok, [2], num_image_token=4, max_length=n - 1)


def test_truncation_after_images(tok):
    conv, full = _two_turns(tok)
    n = len(full.input_ids)
    cut = n - 3  # inside the second answer, well after </img>
    out = preprocess_internvl2_5(conv, tok, [2], num_image_token=4, max_length=cut, truncation="after_images")
    assert out.input_ids.tolist() == full.input_ids.tolist()[:cut]
    assert out.labels.tolist() == full.labels.tolist()[:cut]
    assert out.num_truncated == 3
    assert out.num_supervised == sum(t != M for t in full.labels.tolist()[:cut])
    assert sum(n for _, n in out.segments) == cut and out.segments[-1][0] == "assistant"
    assert out.num_image_tokens == 8


def test_truncation_never_cuts_an_image(tok):
    conv, full = _two_turns(tok)
    ids = full.input_ids.tolist()
    img_end = ids.index(IMG_END)
    with pytest.raises(SampleTooLongError, match=f"last image span ends at token {img_end}"):
        preprocess_internvl2_5(conv, tok, [2], num_image_token=4, max_length=img_end, truncation="after_images")
    # a cut after the image but before any answer token leaves nothing to learn
    first_label = next(i for i, t in enumerate(full.labels.tolist()) if t != M)
    with pytest.raises(SampleTooLongError, match="no supervised token left"):
        preprocess_internvl2_5(conv, tok, [2], num_image_token=4, max_length=first_label, truncation="after_images")
    with pytest.raises(ValueError, match="truncation must be one of"):
        preprocess_internvl2_5(conv, tok, [2], truncation="left")


# ----- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("conv, match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"from": "human"}], r"conversations\[0\]: expected a dict with keys 'from' and 'value'"),
    ([human("a"), {"from": "user", "value": "b"}], r"conversations\[1\]: unknown role 'user'"),
    ([human("a"), gpt("b"), gpt("c")], r"conversations\[2\]: expected a 'human' turn"),
    ([gpt("a"), human("b")], r"conversations\[0\]: expected a 'human' turn"),
    ([human("a"), human("b")], r"conversations\[1\]: expected a 'gpt' turn"),
    ([human("a"), gpt("b"), {"from": "system", "value": "s"}], r"conversations\[2\]: a system turn is only allowed first"),
    ([{"from": "system", "value": "s"}], "only a system turn"),
    ([human("a"), gpt("b"), human("c")], r"conversations\[2\]: the last turn is 'human'"),
    ([human("a"), gpt(3)], r"conversations\[1\]\['value'\]: expected a string, got int"),
])
def test_bad_conversations(tok, conv, match):
    with pytest.raises(ConversationError, match=match):
        preprocess_internvl2_5(conv, tok)


@pytest.mark.parametrize("conv, patches, frames, match", [
    ([human("<image>\n<image>\nWhat?"), gpt("A.")], [1], None, "2 '<image>' placeholder\\(s\\) in the human turns but 1 image"),
    ([human("What?"), gpt("A.")], [1, 2], None, "0 '<image>' placeholder\\(s\\) in the human turns but 2 image"),
    ([human("<image>\nWhat?"), gpt("A.")], [], None, "1 '<image>' placeholder\\(s\\) in the human turns but 0 image"),
    ([human("<image>\nWhat?"), gpt("<image>")], [1], None, r"conversations\[1\] \(gpt\) contains '<image>'"),
    ([human("<video>\nWhat?"), gpt("A.")], [], None, "'<video>' in the conversation but num_frames is not given"),
    ([human("<video> What?"), gpt("A.")], [], 2, "1 '<video>' placeholder\\(s\\) left"),
    ([human("<video>\nWhat?"), gpt("A.")], [1, 1, 1], 2, "num_frames=2 but num_patches_list has 3 entries"),
])
def test_placeholder_mismatch(tok, conv, patches, frames, match):
    with pytest.raises(PlaceholderMismatchError, match=match):
        preprocess_internvl2_5(conv, tok, patches, num_frames=frames)


def test_bad_numbers(tok):
    with pytest.raises(ValueError, match="num_patches_list must be >= 1"):
        preprocess_internvl2_5([human("<image>\na"), gpt("b")], tok, [0])
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        image_span(0)
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        multi_image_prefix(0)


# ----- generation prompt (chat()) ----------------------------------------------------------------


def test_generation_prompt_single_image():
    prompt = build_generation_prompt("What is it?", num_patches_list=[2], num_image_token=2)
    assert prompt == ("<|im_start|>system\n" + SYS + "<|im_end|>\n<|im_start|>user\n<img>"
                      + "<IMG_CONTEXT>" * 4 + "</img>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n")
    assert build_generation_prompt("Hi", system_message="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_generation_prompt_with_history_and_multi_image():
    # second call of chat(): the history keeps the question with its "<image>\n", no new prefix
    prompt = build_generation_prompt("Colour?", history=[("<image>\nWhat is it?", "A cat.")], num_patches_list=[1],
                                     num_image_token=3)
    assert prompt == ("<|im_start|>system\n" + SYS + "<|im_end|>\n<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 3
                      + "</img>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
                      "<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\n")
    multi = build_generation_prompt(multi_image_prefix(2) + "Same?", num_patches_list=[1, 2], num_image_token=1)
    assert "user\nImage-1: <img><IMG_CONTEXT></img>\nImage-2: <img><IMG_CONTEXT><IMG_CONTEXT></img>\nSame?" in multi
    with pytest.raises(PlaceholderMismatchError, match="0 '<image>' placeholder\\(s\\) in the prompt"):
        build_generation_prompt("Colour?", history=[("What is it?", "A cat.")], num_patches_list=[1])
    older = build_generation_prompt("Hi", template="Hermes-2")
    assert older.endswith("<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n")


def test_generation_prompt_is_the_training_prefix(tok):
    conv = [human("What is it?"), gpt("A cat.")]
    train = preprocess_internvl2_5(conv, tok, [2], num_image_token=3).input_ids.tolist()
    prompt = E(tok, build_generation_prompt("What is it?", num_patches_list=[2], num_image_token=3))
    assert train[:len(prompt)] == prompt
    assert tok.decode(train[len(prompt):]) == "A cat.<|im_end|>\n"


def test_parse_response():
    assert parse_response(" A cat. <|im_end|>\n<|im_start|>user") == "A cat."
    assert parse_response("Red.") == "Red."


def test_token_rows_and_text_rendering(tok):
    from minivl.text.prompt import format_token_rows, token_rows

    conv = [human(multi_image_prefix(2) + "What is it?"), gpt("A cat.")]
    out = preprocess_internvl2_5(conv, tok, [2, 1], num_image_token=3)  # runs of 6 and 3 context tokens
    rows = token_rows(out, tok)
    assert len(rows) == len(out.input_ids) - (6 - 1) - (3 - 1)
    assert [r["count"] for r in rows if r["id"] == CTX] == [6, 3]
    assert [r["role"] for r in rows if r["id"] == IMS] == ["system", "user", "assistant"]
    supervised = "".join(r["piece"] for r in rows if r["supervised"]).replace("␣", " ")
    assert supervised == "A cat.<|im_end|>"
    assert len(token_rows(out, tok, collapse_image=False)) == len(out.input_ids)
    lines = format_token_rows(rows).splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["system", "user", "assistant"]
    assert "<img>|<IMG_CONTEXT>×6|</img>" in lines[1] and "<img>|<IMG_CONTEXT>×3|</img>" in lines[1]
    assert lines[2].endswith("|«<|im_end|>»|\\n")
