"""Majority voting, accuracy vs k and token cost of minivl.eval.vote, by hand."""

from __future__ import annotations

import pytest

from minivl.eval.metrics import mc_accuracy
from minivl.eval.vote import accuracy_vs_k, extract_samples, majority_vote, token_cost


def test_plurality():
    vote = majority_vote(["B", "A", "B"])
    assert (vote.answer, vote.votes, vote.n_valid, vote.n_samples, vote.tie) == ("B", 2, 3, 3, False)
    assert vote.counts == (("B", 2), ("A", 1))


@pytest.mark.parametrize(
    "answers, winner",
    [
        (["C", "A", "A", "C"], "C"),        # 2-2 tie: C occurs first
        (["A", "C", "C", "A"], "A"),        # same counts, other order: A occurs first
        ([None, "D", "B", "B", "D"], "D"),  # None does not vote and does not break ties
        (["B", "C", "D"], "B"),             # three-way tie: the greedy sample 0 wins
    ],
)
def test_tie_goes_to_earliest_first_occurrence(answers, winner):
    vote = majority_vote(answers)
    assert vote.answer == winner
    assert vote.tie is True


def test_none_is_ignored_and_all_none_gives_none():
    vote = majority_vote([None, None, "B"])
    assert (vote.answer, vote.votes, vote.n_valid, vote.n_samples) == ("B", 1, 1, 3)
    empty = majority_vote([None, None])
    assert (empty.answer, empty.votes, empty.n_valid, empty.n_samples, empty.tie) == (None, 0, 0, 2, False)
    with pytest.raises(TypeError):
        majority_vote("ABA")  # type: ignore[arg-type]


def test_k1_equals_the_single_answer():
    samples = [["A", "B", "B"], [None, "C", "C"], ["D", "D", "A"], ["B", "A", "A"]]
    gold = ["A", "C", "D", "A"]
    for s in samples:
        assert majority_vote(s[:1]).answer == s[0]
    (row,) = accuracy_vs_k(samples, gold, ks=(1,))
    assert row["accuracy"] == mc_accuracy([s[0] for s in samples], gold) == 0.5
    assert row["unparseable"] == 1


SAMPLES = [
    ["A", "B", "B", "A", "A"],
    [None, "B", "C", "C", "B"],
    ["D", None, None, "C", "C"],
]
GOLD = ["A", "B", "C"]
TOKENS = [[10, 20, 30, 40, 50], [5, 5, 5, 5, 5], [1, 2, 3, 4, 5]]


def test_accuracy_vs_k_by_hand():
    rows = accuracy_vs_k(SAMPLES, GOLD, ks=(1, 3, 5), token_counts=TOKENS)
    # k=1: A right, None (unparseable), D wrong.
    assert rows[0] == {"k": 1, "accuracy": 1 / 3, "pass_at_k": 1 / 3, "unparseable": 1, "ties": 0,
                       "tokens": 16, "tokens_per_question": 16 / 3}
    # k=3: B beats A 2-1 (wrong); B-C tie -> B (right); D alone (wrong). C not yet seen in Q2.
    assert rows[1] == {"k": 3, "accuracy": 1 / 3, "pass_at_k": 2 / 3, "unparseable": 0, "ties": 1,
                       "tokens": 81, "tokens_per_question": 27.0}
    # k=5: A 3-2; B-C 2-2 tie -> B; C 2-1 over D. All right.
    assert rows[2] == {"k": 5, "accuracy": 1.0, "pass_at_k": 1.0, "unparseable": 0, "ties": 1,
                       "tokens": 190, "tokens_per_question": 190 / 3}


def test_accuracy_vs_k_uses_the_first_k_samples():
    # Only the order decides: the right answer in position 3 cannot count at k=2.
    rows = accuracy_vs_k([["B", "B", "A"]], ["A"], ks=(2, 3))
    assert [r["pass_at_k"] for r in rows] == [0.0, 1.0]
    assert [r["accuracy"] for r in rows] == [0.0, 0.0]
    assert "tokens" not in rows[0]


def test_errors_are_loud():
    with pytest.raises(ValueError, match="question 0 has 5 samples, fewer than k=9"):
        accuracy_vs_k(SAMPLES, GOLD)  # default ks go up to 9
    with pytest.raises(ValueError, match="gold"):
        accuracy_vs_k(SAMPLES, GOLD[:2], ks=(1,))
    with pytest.raises(ValueError, match="k must be >= 1"):
        accuracy_vs_k(SAMPLES, GOLD, ks=(0,))
    with pytest.raises(ValueError, match="question 1 has 2 token counts"):
        token_cost([[1, 2, 3], [1, 2]], 3)


def test_token_cost():
    assert token_cost(TOKENS, 1) == 16
    assert token_cost(TOKENS, 5) == 150 + 25 + 15


def test_extract_then_vote():
    responses = ["Answer: \\boxed{B}", "so it is a cat. Answer: B", "I give up", "\\boxed{C}"]
    answers = extract_samples(responses, ["dog", "cat", "bird"])
    assert answers == ["B", "B", None, "C"]
    assert majority_vote(answers).answer == "B"
    assert extract_samples(["Answer: Two.", "two"]) == ["two", "two"]
