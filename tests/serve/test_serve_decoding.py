"""Per-row sampling and stopping inside one batched generate: stop strings, holdback, top_p, seeded sampling."""

from __future__ import annotations

import torch

from mmadapt.serve.decoding import RowSampler, RowState, RowStopper, sample_rows


class CharTokenizer:
    """Token i is the character chr(97 + i); decode joins them."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i) for i in ids)


def row(max_tokens=10, stop=(), temperature=0.0, top_p=1.0, seed=0):
    pieces = []
    state = RowState(temperature, top_p, max_tokens, list(stop), torch.Generator().manual_seed(seed),
                     emit=pieces.append, cancelled=lambda: False)
    return state, pieces


def feed(stopper, rows, columns):
    """Run the stopper over one new token per row per step; returns the done flags of each step."""
    flags = []
    for step in columns:
        flags.append(stopper(torch.tensor([[t] for t in step]), torch.zeros(len(step), 5)).tolist())
    return flags


def test_stop_string_cuts_the_answer_and_is_never_streamed():
    a, pieces_a = row(stop=["cd"])
    b, pieces_b = row(max_tokens=3)
    stopper = RowStopper([a, b], CharTokenizer(), eos={25})
    flags = feed(stopper, [a, b], [[0, 0], [1, 1], [2, 2], [3, 3]])  # a: "abcd" -> stop at "cd"; b: 3 tokens
    assert flags == [[False, False], [False, False], [False, True], [True, True]]
    assert (a.text, a.finish_reason) == ("ab", "stop")
    assert "".join(pieces_a) == "ab" and all("c" not in p for p in pieces_a)
    assert (b.text, b.finish_reason, "".join(pieces_b)) == ("abc", "length", "abc")


def test_eos_ends_a_row_without_text_and_a_cancelled_row_stops():
    a, pieces = row()
    cancelled = {"now": False}
    b = RowState(0.0, 1.0, 10, [], torch.Generator(), emit=lambda s: None, cancelled=lambda: cancelled["now"])
    stopper = RowStopper([a, b], CharTokenizer(), eos={25})
    feed(stopper, [a, b], [[0, 0]])
    cancelled["now"] = True
    assert feed(stopper, [a, b], [[25, 1]]) == [[True, True]]
    assert (a.finish_reason, a.text, "".join(pieces)) == ("stop", "a", "a")
    assert b.finish_reason == "cancelled" and b.tokens == [0]


def test_sampling_stays_in_the_top_p_nucleus_and_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    one = torch.ones(1)

    def draw(u, top_p=1.0, temperature=1.0):
        return int(sample_rows(logits, one * temperature, one * top_p, torch.tensor([u])))

    # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05); the CDF walks them in that order
    assert [draw(u) for u in (0.0, 0.49, 0.51, 0.79, 0.81, 0.96, 0.999)] == [1, 1, 3, 3, 2, 0, 0]
    assert {draw(u, top_p=0.7) for u in (0.0, 0.5, 0.9, 0.999)} == {1, 3}  # nucleus {1, 3}: 0.5 + 0.3 >= 0.7
    assert {draw(u, top_p=0.4) for u in (0.0, 0.999)} == {1}
    assert draw(0.999, temperature=0.01) == 1  # near-zero temperature: the argmax


def test_a_row_that_does_not_stream_is_detokenised_once_at_the_end():
    class Counting(CharTokenizer):
        calls = 0

        def decode(self, ids, skip_special_tokens=True):
            Counting.calls += 1
            return super().decode(ids)

    quiet = RowState(0.0, 1.0, 4, [], torch.Generator(), emit=None, cancelled=lambda: False)
    ended = RowState(0.0, 1.0, 4, [], torch.Generator(), emit=None, cancelled=lambda: False)
    stopper = RowStopper([quiet, ended], Counting(), eos={25})
    feed(stopper, [quiet, ended], [[0, 0], [1, 1], [2, 25], [3, 0]])
    assert (quiet.text, quiet.finish_reason) == ("abcd", "length")
    assert (ended.text, ended.finish_reason, Counting.calls) == ("ab", "stop", 2)  # one decode per row, at its end


def test_sampler_is_per_row_seeded_and_leaves_greedy_rows_alone():
    scores = torch.randn(3, 50)

    def sample(seed):
        greedy, _ = row(temperature=0.0)
        hot, _ = row(temperature=1.5, seed=seed)
        other, _ = row(temperature=1.0, seed=99)
        out = RowSampler([greedy, hot, other])(None, scores.clone())
        return out

    first, again, different = sample(1), sample(1), sample(2)
    assert torch.equal(first[0], scores[0])  # the greedy row: untouched
    chosen = first[1].argmax()
    assert first[1, chosen] == 0 and torch.isinf(first[1]).sum() == 49  # only the sampled token stays possible
    assert torch.equal(first, again)  # same seed, same token
    tokens = {int(sample(s)[1].argmax()) for s in range(20)}
    assert len(tokens) > 1 and int(different[2].argmax()) == int(first[2].argmax())  # row 2's seed is its own
