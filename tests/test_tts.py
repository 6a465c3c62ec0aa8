"""Test-time scaling (minivl.eval.tts): scripted chains -> votes, accuracies and token counts
computed by hand; seeding; greedy k = 1 at temperature 0."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from minivl.eval import tts
from minivl.eval.prompts import MC_COT_PROMPT, MC_DIRECT_PROMPT

COT_SUFFIX = "Think step by step, then give the final answer on the last line as 'Answer: \\boxed{LETTER}'."
DIRECT_SUFFIX = "Answer with the option's letter from the given choices directly."
OPTIONS = ["10", "20", "30", "40"]
# (question, gold letter) of three instances
QUESTIONS = [("How many circles are there?", "B"), ("How many squares are there?", "A"),
             ("How many red shapes are there?", "D")]


def _human(question: str, suffix: str) -> str:
    lines = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", OPTIONS))
    return f"<image>\n{question}\n{lines}\n{suffix}"


@pytest.fixture()
def meta_path(tmp_path):
    """A meta file with one ``reasoning`` entry: 3 instances x (cot, direct) records, in the
    synthetic suite's layout."""
    (tmp_path / "images").mkdir()
    lines = []
    for i, (question, gold) in enumerate(QUESTIONS):
        Image.new("RGB", (40, 20), (30 * i, 100, 200)).save(tmp_path / "images" / f"{i:06d}.png")
        meta = {"instance": f"reasoning-test-{i:06d}", "options": OPTIONS, "answer_letter": gold}
        for variant, suffix, answer in (("cot", COT_SUFFIX, f"...\nAnswer: \\boxed{{{gold}}}"),
                                        ("direct", DIRECT_SUFFIX, gold)):
            lines.append(json.dumps({
                "id": f"reasoning-test-{i:06d}-{variant}", "image": f"{i:06d}.png", "width": 40, "height": 20,
                "conversations": [{"from": "human", "value": _human(question, suffix)},
                                  {"from": "gpt", "value": answer}],
                "meta": meta | {"variant": variant}}))
    (tmp_path / "reasoning.jsonl").write_text("\n".join(lines) + "\n")
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"reasoning": {"root": "images", "annotation": "reasoning.jsonl",
                                              "data_augment": False, "max_dynamic_patch": 2, "repeat_time": 1,
                                              "length": 6}}))
    return path


def words(text: str) -> int:
    """The scripted chains' cost: their number of whitespace-separated words."""
    return len(text.split())


TOK = object()  # the scripted model never looks at the tokenizer


# Scripted CoT chains (chain 0 is the greedy one) and the letter each gives.
COT = {
    0: ["x y\nAnswer: \\boxed{C}", "Answer: \\boxed{B}", "Answer: \\boxed{B}", "no idea", "Answer: \\boxed{C}"],
    1: ["Answer: \\boxed{A}", "Answer: \\boxed{D}", "Answer: \\boxed{D}", "Answer: \\boxed{A}", "Answer: \\boxed{A}"],
    2: ["garbage", "garbage", "Answer: \\boxed{D}", "garbage", "garbage"],
}
DIRECT = {0: "B", 1: "C", 2: "D"}


class ScriptedModel:
    """Stands in for MiniVL: ``batch_chat`` returns the scripted chain of each question, in
    order, and records every call (generation config, torch seed, prompts)."""

    def __init__(self):
        self.config = type("C", (), {"vision": type("V", (), {"image_size": 16})()})()
        self.training = True
        self.calls = []
        self.served = {}

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list, image_counts):
        assert sum(num_patches_list) == pixel_values.shape[0] and image_counts == [1] * len(questions)
        assert not self.training
        self.calls.append({"config": dict(generation_config), "seed": torch.initial_seed(), "prompts": list(questions)})
        out = []
        for prompt in questions:
            index = next(i for i, (q, _) in enumerate(QUESTIONS) if f"\n{q}\n" in prompt)
            if prompt.endswith(COT_SUFFIX) or prompt.endswith(MC_COT_PROMPT):
                j = self.served.get(index, 0)
                self.served[index] = j + 1
                out.append(COT[index][j])
            else:
                out.append(DIRECT[index])
        return out


def test_reasoning_questions_rebuild_the_prompts(meta_path):
    from minivl.data.records import read_meta

    task = read_meta(meta_path)["reasoning"]
    records = task.read_records()[0]
    cot = tts.reasoning_questions(records, task, mode="cot")
    assert [q.id for q in cot] == [f"reasoning-test-{i:06d}" for i in range(3)]  # one per instance
    assert [q.gold for q in cot] == ["B", "A", "D"]
    assert cot[0].options == {"A": "10", "B": "20", "C": "30", "D": "40"}
    # trained style, CoT: exactly the cot record's human turn
    assert [q.prompt for q in cot] == [r.conversations[0]["value"] for r in records if r.id.endswith("-cot")]
    direct = tts.reasoning_questions(records[::-1], meta_path, mode="direct")  # direct records come first here
    assert [q.prompt for q in direct] == [_human(q, DIRECT_SUFFIX) for q, _ in QUESTIONS[::-1]]
    report = tts.reasoning_questions(None, meta_path, mode="cot", prompt_style="report", limit=2)
    assert len(report) == 2
    assert report[0].prompt == ("<image>\nHow many circles are there?\nA. 10\nB. 20\nC. 30\nD. 40\n" + MC_COT_PROMPT)
    report_direct = tts.reasoning_questions(None, meta_path, mode="direct", prompt_style="report")
    assert report_direct[1].prompt.endswith("D. 40\n" + MC_DIRECT_PROMPT)
    assert cot[0].image == meta_path.parent / "images" / "000000.png"
    with pytest.raises(ValueError, match="mode"):
        tts.reasoning_questions(records, task, mode="vote")


def test_sample_chains_greedy_first_then_sampled_with_seeds(meta_path):
    model = ScriptedModel()
    chains = tts.sample_chains(model, TOK, None, meta_path, k=5, temperature=0.7, top_p=0.95,
                               max_new_tokens=40, batch_size=2, seed=11, count_tokens=words)
    assert chains.texts == [COT[0], COT[1], COT[2]]
    assert chains.token_counts == [[4, 2, 2, 2, 2], [2, 2, 2, 2, 2], [1, 1, 2, 1, 1]]
    assert model.training  # restored
    greedy = {"max_new_tokens": 40, "do_sample": False}
    sampled = {"max_new_tokens": 40, "do_sample": True, "temperature": 0.7, "top_p": 0.95}
    # batch 0 = questions 0-1, batch 1 = question 2: one greedy call (chain 0), then chains
    # 1-4 together, the questions repeated chain after chain
    q = [_human(question, COT_SUFFIX) for question, _ in QUESTIONS]
    assert [(c["config"], c["seed"], c["prompts"]) for c in model.calls] == [
        (greedy, 11, q[:2]), (sampled, 11 + 1_000_000, q[:2] * 4),
        (greedy, 12, q[2:]), (sampled, 12 + 1_000_000, q[2:] * 4)]
    # one call per chain: chain j of batch b is seeded with seed + 1_000_000 * j + b
    model = ScriptedModel()
    again = tts.sample_chains(model, TOK, None, meta_path, k=5, temperature=0.7, top_p=0.95, max_new_tokens=40,
                              batch_size=2, seed=11, count_tokens=words, chains_per_call=3)
    assert again.texts == chains.texts and again.token_counts == chains.token_counts
    assert [(c["seed"], len(c["prompts"])) for c in model.calls] == [
        (11, 2), (11 + 1_000_000, 6), (11 + 4_000_000, 2), (12, 1), (12 + 1_000_000, 3), (12 + 4_000_000, 1)]


def test_test_time_scaling_matches_hand_computed_votes(meta_path):
    model = ScriptedModel()
    result = tts.test_time_scaling(model, TOK, None, meta_path, ks=(1, 3, 5), temperature=0.7,
                                   top_p=0.95, max_new_tokens=40, direct_max_new_tokens=3, batch_size=2, seed=0,
                                   count_tokens=words)
    # direct: B (right), C (wrong), D (right)
    assert result["direct"] == {"accuracy": 2 / 3, "tokens": 3, "tokens_per_question": 1.0, "unparseable": 0}
    assert result["cot_answers"] == [["C", "B", "B", None, "C"], ["A", "D", "D", "A", "A"],
                                     [None, None, "D", None, None]]
    # maj@1 = greedy CoT: C (wrong), A (right), None -> 1/3, one unparseable; 4 + 2 + 1 tokens
    assert result["cot_greedy"] == {"accuracy": 1 / 3, "tokens": 7, "tokens_per_question": 7 / 3, "unparseable": 1}
    rows = {r["k"]: r for r in result["vote"]}
    # k=3: (C,B,B) -> B right; (A,D,D) -> D wrong; (None,None,D) -> D right
    assert rows[3] == {"k": 3, "accuracy": 2 / 3, "pass_at_k": 1.0, "unparseable": 0, "ties": 0,
                       "tokens": 18, "tokens_per_question": 6.0}
    # k=5: (C,B,B,-,C) 2-2 tie -> C (first seen) wrong; (A,D,D,A,A) -> A right; D right
    assert rows[5] == {"k": 5, "accuracy": 2 / 3, "pass_at_k": 1.0, "unparseable": 0, "ties": 1,
                       "tokens": 28, "tokens_per_question": 28 / 3}
    assert rows[1]["pass_at_k"] == 1 / 3 and rows[1]["tokens"] == 7
    # chains 1-4 alone: (B,D,-) 1/3, (B,D,D) 2/3, (-,A,-) 1/3, (C,A,-) 1/3 -> mean 5/12
    assert result["sampled_chain_accuracy"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 3 + 1 / 3) / 4)
    table = tts.tts_markdown(result)
    assert "| CoT maj@5 | 66.7 | 100.0 | 9.3 | 0 |" in table
    assert "| direct (greedy) | 66.7 | | 1.0 | 0 |" in table


def test_k1_at_temperature_zero_is_the_greedy_result(meta_path):
    greedy_model, zero_model = ScriptedModel(), ScriptedModel()
    greedy = tts.sample_chains(greedy_model, TOK, None, meta_path, k=1, batch_size=3, count_tokens=words)
    zero = tts.sample_chains(zero_model, TOK, None, meta_path, k=4, temperature=0.0, batch_size=3,
                             count_tokens=words)
    assert [row[0] for row in zero.texts] == [row[0] for row in greedy.texts] == [COT[i][0] for i in range(3)]
    assert zero.texts == [[COT[i][0]] * 4 for i in range(3)]  # every chain greedy, computed once
    assert [c["config"]["do_sample"] for c in zero_model.calls] == [False]
    scores = tts.score_chains(zero, ks=(1, 4))
    assert [r["accuracy"] for r in scores["rows"]] == [1 / 3, 1 / 3]


def test_arguments_are_checked(meta_path):
    with pytest.raises(ValueError, match="k must be"):
        tts.sample_chains(ScriptedModel(), TOK, None, meta_path, k=0)
    with pytest.raises(ValueError, match="top_p"):
        tts.sample_chains(ScriptedModel(), TOK, None, meta_path, k=2, top_p=0.0)
    other = meta_path.parent / "other.json"
    other.write_text(json.dumps({"shape_qa": {"root": "images", "annotation": "reasoning.jsonl"}}))
    with pytest.raises(KeyError, match="no 'reasoning' entry"):
        tts.sample_chains(ScriptedModel(), TOK, None, other, k=1)


def test_real_model_sampling_is_seeded(meta_path):
    """A tiny random MiniVL: the same seed gives the same chains, the first k of a longer run
    are the chains of a run with k, and another seed changes the sampled chains."""
    from minivl.config import MiniVLConfig
    from minivl.model import MiniVL
    from minivl.text.tokenizer import image_token_id, train_tokenizer

    tok = train_tokenizer(vocab_size=300)
    torch.manual_seed(0)
    model = MiniVL(MiniVLConfig.smoke(vocab_size=len(tok), image_token_id=image_token_id(tok))).eval()
    args = dict(temperature=1.0, top_p=1.0, max_new_tokens=4, batch_size=2, chains_per_call=1, limit=2, max_num=1)
    a = tts.sample_chains(model, tok, None, meta_path, k=3, seed=5, **args)
    b = tts.sample_chains(model, tok, None, meta_path, k=2, seed=5, **args)
    c = tts.sample_chains(model, tok, None, meta_path, k=3, seed=6, **args)
    assert [row[:2] for row in a.texts] == b.texts
    assert [row[0] for row in c.texts] == [row[0] for row in a.texts]  # greedy chain: seed-independent
    assert [row[1:] for row in c.texts] != [row[1:] for row in a.texts]
    # all sampled chains in one call: reproducible too
    d = tts.sample_chains(model, tok, None, meta_path, k=3, seed=6, **(args | {"chains_per_call": None}))
    assert [row[0] for row in d.texts] == [row[0] for row in a.texts]
    assert d.texts[0][1:] != c.texts[0][1:] or d.texts[1][1:] != c.texts[1][1:]  # another random stream
    # the greedy chain's token count equals the tokens generate() produces for that prompt
    from minivl.vision.transforms import load_image_tiles

    q = a.questions[0]
    pixel_values, patches = load_image_tiles(q.image, image_size=model.config.vision.image_size, max_num=1)
    query = model.expand_image_placeholders(model.build_chat_prompt(q.prompt), patches)
    ids = tok(query, return_tensors="pt", add_special_tokens=False)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = model.generate(pixel_values=pixel_values, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                         max_new_tokens=4, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    row = out[0].tolist()
    assert a.token_counts[0][0] == (row.index(eos) + 1 if eos in row else len(row))
    assert all(1 <= n <= 4 for r in a.token_counts for n in r)


def test_token_counter_stops_each_row_at_its_first_stop_token():
    counter = tts.TokenCounter(eos_token_id=2)
    counter.put(torch.zeros(2, 0, dtype=torch.long))  # the prompt (2-D) is not counted
    for step in ([5, 2], [2, 7], [0, 7]):  # row 1 stops at step 1 (then padding), row 0 at step 2
        counter.put(torch.tensor(step))
    assert counter.counts(2) == [2, 1]
    never = tts.TokenCounter(eos_token_id=3)
    for step in ([5, 2], [2, 7]):
        never.put(torch.tensor(step))
    assert never.counts(2) == [2, 2]  # never stopped: every step counts (cut by max_new_tokens)
    with pytest.raises(RuntimeError, match="no generated tokens"):
        tts.TokenCounter(eos_token_id=2).counts(1)
