"""Reasoning blocks (``guardrail.reasoning``) on outputs shaped like real reasoning models'."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.reasoning import ReasoningStream, server_reasoning, split_message, split_reasoning

ANSWER = '{"name": "Carla Dias", "city": "Braga"}'
# Qwen3 with thinking on: the block, a blank line, the answer.
QWEN3 = ("<think>\nOkay, the user wants the name and the city. The text says \"Carla Dias works downtown in "
         "Braga\", so the name is Carla Dias and the city is Braga. I should output only JSON.\n</think>\n\n" + ANSWER)
# Qwen3 with enable_thinking=False: the template leaves an empty block.
QWEN3_OFF = "<think>\n\n</think>\n\n" + ANSWER
# DeepSeek-R1 (and Qwen3 templates that open the block in the prompt): no opening tag.
R1 = ("Okay, so I need to extract the person's name and city from \"Carla Dias works downtown in Braga\". "
      "Let me write it as {\"name\": ..., \"city\": ...}.\n</think>\n\n```json\n" + ANSWER + "\n```")
# Cut off by max_tokens while still thinking.
CUT = "<think>\nLet me look at the invoice. The total is 42.50 and the customer is"


def test_realistic_outputs_split_into_reasoning_and_answer() -> None:
    thought, answer = split_reasoning(QWEN3)
    assert thought is not None and thought.startswith("Okay, the user") and thought.endswith("only JSON.")
    assert answer == ANSWER
    assert split_reasoning(QWEN3_OFF) == ("", ANSWER)
    thought, answer = split_reasoning(R1)
    assert thought is not None and thought.startswith("Okay, so I need") and thought.endswith('"city": ...}.')
    assert answer == "```json\n" + ANSWER + "\n```"
    assert split_reasoning(CUT) == ("Let me look at the invoice. The total is 42.50 and the customer is", "")
    assert split_reasoning("  \n" + QWEN3) == split_reasoning(QWEN3), "whitespace before the block is fine"


def test_text_without_a_leading_block_is_all_answer_untouched() -> None:
    for text in [ANSWER, " " + ANSWER + "\n", "Sure! ```json\n" + ANSWER + "\n```", "",
                 '{"note": "ends with </think> inside a string"}', '[1, "</think>"]',
                 "Here: " + ANSWER + " <think>late</think>", "prose <think>x</think> then </think>"]:
        assert split_reasoning(text) == (None, text), text
    assert split_reasoning("plan</think>" + ANSWER, implicit_open=False) == (None, "plan</think>" + ANSWER)


def test_a_server_sends_the_reasoning_apart() -> None:
    vllm = {"role": "assistant", "content": ANSWER, "reasoning_content": "The name is Carla Dias."}
    openrouter = {"role": "assistant", "content": ANSWER, "reasoning": "The name is Carla Dias."}
    assert server_reasoning(vllm) == server_reasoning(openrouter) == "The name is Carla Dias."
    assert split_message(vllm) == split_message(openrouter) == ("The name is Carla Dias.", ANSWER)
    assert split_message({"role": "assistant", "content": QWEN3}) == split_reasoning(QWEN3)
    assert split_message({"content": QWEN3_OFF, "reasoning_content": "Thought."}) == ("Thought.", ANSWER)
    assert split_message({"content": None, "reasoning_content": "Thought."}) == ("Thought.", "")
    assert server_reasoning({"content": ANSWER, "reasoning_content": None}) is None
    assert server_reasoning(None) is None


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("<>/thinkab {}[]\n ")), max_size=40)
       | st.sampled_from([QWEN3, QWEN3_OFF, R1, CUT, ANSWER, " \n" + ANSWER, "Sure! " + ANSWER, "<thin", "<think>",
                             "<think>a </think>", "a</thi", "  ", "", "<think> x </think> \n ", "x</think></think>y",
                             'plan</think>{"a": "<think>"}']),
       cuts=st.lists(st.integers(0, 400), max_size=12), implicit_open=st.booleans())
def test_the_stream_split_equals_the_whole_text_split(text: str, cuts: list[int], implicit_open: bool) -> None:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    splitter = ReasoningStream(implicit_open=implicit_open)
    thoughts, answers = [], []
    for a, b in itertools.pairwise(bounds):
        thought, said = splitter.feed(text[a:b])
        thoughts.append(thought)
        answers.append(said)
    thought, said = splitter.finish()
    thoughts.append(thought)
    answers.append(said)
    expected_reasoning, expected_answer = split_reasoning(text, implicit_open=implicit_open)
    assert "".join(answers) == splitter.answer == expected_answer
    assert splitter.reasoning == expected_reasoning
    assert "".join(thoughts) == (expected_reasoning or "")


def test_the_stream_hands_out_reasoning_as_it_comes_and_the_json_answer_at_once() -> None:
    splitter = ReasoningStream()
    assert splitter.feed("<think>\nFirst") == ("First", "")
    assert splitter.feed(" step. </thi") == (" step.", ""), "a possible tag and trailing space are held back"
    assert splitter.feed("nk>\n\n{") == ("", "{")
    assert splitter.feed('"a": 1}') == ("", '"a": 1}')
    direct = ReasoningStream()
    assert direct.feed('  {"a"') == ("", '  {"a"'), "an answer that starts as JSON streams at once"
    assert direct.reasoning is None


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="takes the model's text"):
        split_reasoning(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes text"):
        ReasoningStream().feed(b"<think>")  # type: ignore[arg-type]
