"""Voting, agreement and per-field confidence, with hand-made samples and log-probabilities.

The model is a plain Python function or a tiny ``Backend``: these tests pin the logic (majority
per field, normalised comparison, ties, fallback, budgets, re-asks, seeds, the attempt history,
the confidence arithmetic and the report's calibration section) without a model.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, model_validator

from guardrail import Backend, Generation, Guard, GuardError, Sampling
from guardrail.calibration import agreement_vs_accuracy, auroc, calibration_summary, ece, reliability
from guardrail.confidence import field_confidence, locate, scan, span_confidence, token_offsets
from guardrail.leaves import schema_leaves, value_leaves
from guardrail.report import run_report
from guardrail.report.svg import reliability_diagram
from guardrail.suite import parse_suite
from guardrail.voting import Ballot, vote

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "n": {"type": "integer"}, "tags": {"type": "array",
                                                                               "items": {"type": "string"}}},
    "required": ["city"],
}


class Customer(BaseModel):
    name: str
    email: str | None = None


class Item(BaseModel):
    sku: str
    qty: int


class Invoice(BaseModel):
    total: float
    customer: Customer
    billing: Customer | None = None
    items: list[Item] = []


def tokens_of(text: str, size: int = 3, logprob: float = -0.1) -> list[tuple[str, float]]:
    """Cut ``text`` into pieces of ``size`` characters, each with the same log-probability."""
    return [(text[i : i + size], logprob) for i in range(0, len(text), size)]


class FakeBatcher(Backend):
    """A batching backend that answers from a script and records every call."""

    batches = True
    wants_instructions = False

    def __init__(self, answers: Sequence[str], logprob: float | None = None) -> None:
        self.answers = itertools.cycle(answers)
        self.calls: list[tuple[int, Sampling]] = []
        self.logprob = logprob

    def generate(self, prompts: Sequence[Any], schema: Any, sampling: Sampling) -> list[Generation]:
        self.calls.append((len(prompts), sampling))
        out = []
        for _ in prompts:
            text = next(self.answers)
            lp = None if self.logprob is None else tokens_of(text, logprob=self.logprob)
            out.append(Generation(text, prompt_tokens=10, completion_tokens=len(text) // 3, logprobs=lp))
        return out


class SeedEcho(Backend):
    """A non-batching backend whose answer depends on the seed it is called with."""

    def __init__(self) -> None:
        self.seeds: list[int | None] = []
        self.wants_instructions = False

    def generate(self, prompts: Sequence[Any], schema: Any, sampling: Sampling) -> list[Generation]:
        self.seeds.append(sampling.seed)
        return [Generation(json.dumps({"city": "Oslo" if (sampling.seed or 0) % 2 == 0 else "Bergen"}))
                for _ in prompts]


# -- leaves -----------------------------------------------------------------------------------


def test_schema_leaves_follow_refs_optional_models_and_keep_arrays_whole() -> None:
    leaves = schema_leaves(Invoice.model_json_schema())
    assert leaves == ["/total", "/customer/name", "/customer/email", "/billing/name", "/billing/email", "/items"]


def test_schema_leaves_of_recursive_and_free_form_schemas_end() -> None:
    recursive = {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                                     "next": {"$ref": "#/$defs/node"}}}},
                 "$ref": "#/$defs/node"}
    assert schema_leaves(recursive) == ["/v", "/next"]  # the second visit of a $ref is a leaf
    assert schema_leaves({"type": "object"}) == [""]
    assert schema_leaves({"type": "object", "properties": {"a/b": {"type": "string"}}}) == ["/a~1b"]


def test_value_leaves_stop_at_schema_leaves_and_skip_null_parents() -> None:
    leaves = schema_leaves(Invoice.model_json_schema())
    value = {"total": 3, "customer": {"name": "Ada"}, "billing": None, "items": [{"sku": "a", "qty": 1}]}
    assert value_leaves(value, leaves) == {"/total": 3, "/customer/name": "Ada", "/items": [{"sku": "a", "qty": 1}]}
    assert value_leaves({"extra": {"x": 1}}, ["/a"]) == {"/extra/x": 1}


# -- the span scanner and confidence ------------------------------------------------------------


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [true, false, null], "c": {"d": "x\\"y\\u00e9"}, "e": -1.5e3, "f": []}',
    '[{"k": "v"}, 2, "three"]',
    '  {"ünï": "çødé 😀", "n": 0}  ',
    '"just a string"',
])
def test_scan_reads_what_json_reads_and_its_spans_hold_each_value(text: str) -> None:
    value, spans, end = scan(text, len(text) - len(text.lstrip()))
    assert value == json.loads(text)
    assert text[end:].strip() == ""
    for pointer, (start, stop) in spans.items():
        node: Any = value
        for key in [k for k in pointer.split("/")[1:]]:
            node = node[int(key)] if isinstance(node, list) else node[key.replace("~1", "/").replace("~0", "~")]
        assert json.loads(text[start:stop]) == node


def test_scan_refuses_broken_json() -> None:
    for text in ('{"a": }', '{"a" 1}', "[1, 2", "nul", '{"a": 1,}'):
        with pytest.raises(ValueError):
            scan(text)


def test_locate_finds_the_json_validation_found_in_prose_or_a_fence() -> None:
    text = 'Here you go:\n```json\n{"city": "Oslo"}\n```'
    value, spans = locate(text, {"city": "Oslo"})  # type: ignore[misc]
    assert value == {"city": "Oslo"} and text[slice(*spans["/city"])] == '"Oslo"'
    assert locate("no json here", {"a": 1}) is None


def test_confidence_is_the_product_of_the_probabilities_of_the_value_tokens() -> None:
    text = '{"city": "Oslo", "n": 3, "tags": ["a", "b"]}'
    pieces = ['{"', "city", '": "', "Os", "lo", '",', ' "', "n", '":', " ", "3", ",", ' "', "tags", '":', ' ["',
              "a", '",', ' "', "b", '"]', "}"]
    assert "".join(pieces) == text
    logprobs = [math.log(p) for p in (1, 0.9, 1, 0.5, 0.8, 0.7, 1, 0.6, 1, 1, 0.4, 0.9, 1, 1, 1, 1, 0.5, 1, 1, 0.5,
                                      0.9, 1)]
    conf = field_confidence(text, list(zip(pieces, logprobs, strict=True)), schema_leaves(CITY))
    assert conf is not None
    assert conf["/city"] == pytest.approx(0.5 * 0.8 * 0.7)  # "Os", "lo", and '",' (its closing quote)
    assert conf["/n"] == pytest.approx(0.4)
    assert conf["/tags"] == pytest.approx(0.5 * 0.5 * 0.9)  # ' ["' has p=1; "a", "b", '"]' (the closing bracket)
    assert all(0.0 <= v <= 1.0 for v in conf.values())


def test_a_token_without_text_of_its_own_counts_for_the_character_it_starts() -> None:
    # The first byte of "é" decodes to nothing; the next token completes the character.
    tokens = [('{"a": "', 0.0), ("", math.log(0.5)), ("é", math.log(0.5)), ('"}', 0.0)]
    assert token_offsets(tokens)[1] == token_offsets(tokens)[2]
    assert field_confidence('{"a": "é"}', tokens, ["/a"]) == {"/a": pytest.approx(0.25)}


def test_confidence_is_none_when_the_tokens_do_not_spell_the_text() -> None:
    assert field_confidence('{"a": 1}', [('{"a": 2}', 0.0)], ["/a"]) is None
    assert field_confidence('{"a": 1}', None, ["/a"]) is None
    assert field_confidence('{"a": 1}', [], ["/a"]) is None


def test_span_confidence_clamps_to_the_unit_interval() -> None:
    assert span_confidence([("ab", 1e-9)], 0, 2) == 1.0  # a rounding excess above log 1
    assert span_confidence([("ab", -1e6)], 0, 2) == 0.0
    assert span_confidence([("ab", -1.0)], 5, 6) is None


# -- voting -----------------------------------------------------------------------------------


def test_vote_takes_the_per_field_majority_with_normalised_comparison() -> None:
    ballots = [Ballot({"city": "Oslo", "n": 1, "tags": ["x", "y"]}),
               Ballot({"city": " oslo.", "n": 2, "tags": ["y", "x"]}),
               Ballot({"city": "Bergen", "n": 2})]
    result = vote(ballots, schema_leaves(CITY))
    assert result.data == {"city": "Oslo", "n": 2, "tags": ["x", "y"]}
    assert result.agreement == {"/city": 0.667, "/n": 0.667, "/tags": 0.667}
    assert result.assembled


def test_leaving_a_field_out_is_a_vote_and_numbers_agree_across_types() -> None:
    ballots = [Ballot({"city": "Oslo"}), Ballot({"city": "Oslo", "n": None}), Ballot({"city": "Oslo", "n": 4})]
    result = vote(ballots, schema_leaves(CITY))
    assert "n" not in result.data or result.data["n"] is None
    assert result.agreement["/n"] == 0.667
    assert vote([Ballot({"n": 12.5}), Ballot({"n": "12.50"})], ["/n"]).agreement == {"/n": 1.0}


def test_a_tie_goes_to_the_more_confident_value() -> None:
    ballots = [Ballot({"city": "Oslo"}, confidence={"/city": 0.2}),
               Ballot({"city": "Bergen"}, confidence={"/city": 0.9})]
    result = vote(ballots, ["/city"])
    assert result.data == {"city": "Bergen"}
    assert result.confidence == {"/city": 0.9}
    assert vote(list(reversed(ballots)), ["/city"]).data == {"city": "Bergen"}


def test_the_answer_reuses_a_sample_text_when_it_equals_that_sample() -> None:
    ballots = [Ballot({"city": "Oslo"}, '{"city":"Oslo"}'), Ballot({"city": "Oslo"}, '{"city": "Oslo"}')]
    assert vote(ballots, ["/city"]).text == '{"city":"Oslo"}'


def test_an_invalid_assembly_falls_back_to_the_most_agreeing_whole_sample() -> None:
    # Every sample has start < end, but the per-field winners (start 5 from b and c; end 4, first of
    # a three-way tie) do not.
    ballots = [Ballot({"start": 1, "end": 4}, "a"), Ballot({"start": 5, "end": 9}, "b"),
               Ballot({"start": 5, "end": 6}, "c")]
    result = vote(ballots, ["/start", "/end"], is_valid=lambda d: d["end"] > d["start"])
    assert not result.assembled and result.winners == {"/start": 5, "/end": 4}
    # b and c agree with the most (start: 2 of 3); the tie goes to the earlier sample.
    assert (result.data, result.text, result.sample) == ({"start": 5, "end": 9}, "b", 1)
    assert result.agreement == {"/start": 0.667, "/end": 0.333}


def test_vote_needs_a_sample() -> None:
    with pytest.raises(ValueError):
        vote([], ["/a"])


# -- the guard loop ---------------------------------------------------------------------------


def test_vote_samples_in_one_batched_call_and_records_each_sample() -> None:
    backend = FakeBatcher(['{"city": "Oslo", "n": 1}', '{"city": "oslo", "n": 2}', '{"city": "Bergen", "n": 2}',
                           "not json", '{"city": "Oslo"}'], logprob=-0.05)
    guard = Guard(CITY, llm=backend, strategy="vote", samples=5, seed=3)
    result = guard.run("where?")
    assert backend.calls == [(5, guard.sampling)] and guard.sampling.temperature == 0.7
    assert result.data == {"city": "Oslo", "n": 2}
    assert set(result.agreement or {}) == set(schema_leaves(CITY)) == {"/city", "/n", "/tags"}
    assert result.agreement == {"/city": 0.75, "/n": 0.5, "/tags": 1.0}
    (round_,) = result.attempts
    assert [s.sample for s in round_.samples] == [0, 1, 2, 3, 4]
    assert [s.ended for s in round_.samples] == ["valid", "valid", "valid", "invalid", "valid"]
    assert round_.ok and round_.output == result.raw
    assert round_.prompt_tokens == 50 and result.tokens == sum(s.tokens or 0 for s in round_.samples)
    assert all(0 <= v <= 1 for v in (result.confidence or {}).values()) and result.confidence
    assert round_.to_dict()["samples"][3]["sample"] == 3


def test_vote_on_a_backend_that_does_not_batch_makes_concurrent_calls_with_distinct_seeds() -> None:
    backend = SeedEcho()
    result = Guard(CITY, llm=backend, strategy="vote", samples=4, seed=10).run("where?")
    assert sorted(backend.seeds) == [10, 11, 12, 13]  # type: ignore[type-var]
    assert result.agreement == {"/city": 0.5, "/n": 1.0, "/tags": 1.0}
    async_backend = SeedEcho()
    asyncio.run(Guard(CITY, llm=async_backend, strategy="vote", samples=3, seed=0).arun("where?"))
    assert sorted(async_backend.seeds) == [0, 1, 2]  # type: ignore[type-var]


def test_a_vote_is_reasked_only_when_no_sample_is_valid() -> None:
    backend = FakeBatcher(["{}", "nope", '{"city": 5}', '{"city": "Oslo"}', '{"city": "Oslo"}', '{"city": "Rome"}'])
    guard = Guard(CITY, llm=backend, strategy="vote", samples=3, retries=2)
    result = guard.run("where?")
    assert len(result.attempts) == 2 and [len(a.samples) for a in result.attempts] == [3, 3]
    assert not result.attempts[0].ok and result.attempts[0].issues  # the round quotes its best invalid sample
    assert result.attempts[1].ok and result.data == {"city": "Oslo"}
    assert result.agreement == {"/city": 0.667, "/n": 1.0, "/tags": 1.0}
    one_valid = FakeBatcher(["nope", '{"city": "Oslo"}', "nope"])
    assert len(Guard(CITY, llm=one_valid, strategy="vote", samples=3).run("x").attempts) == 1


def test_votes_share_the_token_budget() -> None:
    backend = FakeBatcher(["nope"])
    guard = Guard(CITY, llm=backend, strategy="vote", samples=4, retries=5, token_budget=40)
    with pytest.raises(GuardError) as info:
        guard.run("where?")
    assert len(info.value.attempts) == 1 and "token budget" in str(info.value)
    assert info.value.attempts[0].ended == "budget"


def test_a_vote_whose_calls_all_fail_is_retried_like_a_failed_call() -> None:
    calls = {"n": 0}

    def flaky(prompt: Any) -> str:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise ConnectionError("down")
        return '{"city": "Oslo"}'

    result = Guard(CITY, llm=flaky, strategy="vote", samples=3, retries=1).run("where?")
    assert result.attempts[0].ended == "error" and result.attempts[1].ok


def test_a_pydantic_rule_across_fields_is_checked_on_the_assembled_answer() -> None:
    class Span(BaseModel):
        start: int
        end: int

        @model_validator(mode="after")
        def ordered(self) -> Span:
            if self.end <= self.start:
                raise ValueError("end must be after start")
            return self

    backend = FakeBatcher(['{"start": 5, "end": 9}', '{"start": 5, "end": 3}', '{"start": 1, "end": 3}'])
    result = Guard(Span, llm=backend, strategy="vote", samples=3).run("when?")
    assert isinstance(result.value, Span) and result.value.end > result.value.start


def test_greedy_reports_confidence_when_the_backend_knows_logprobs_and_none_otherwise() -> None:
    result = Guard(CITY, llm=FakeBatcher(['{"city": "Oslo"}'], logprob=-0.2)).run("x")
    assert result.agreement is None and result.confidence is not None and set(result.confidence) == {"/city"}
    assert result.attempts[0].confidence == result.confidence
    plain = Guard(CITY, llm=lambda p: '{"city": "Oslo"}').run("x")
    assert plain.confidence is None and plain.agreement is None


def test_strategy_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        Guard(CITY, llm=lambda p: "{}", strategy="beam")
    with pytest.raises(ValueError, match="temperature 0"):
        Guard(CITY, llm=lambda p: "{}", strategy="greedy", temperature=0.5)
    with pytest.raises(ValueError, match="above 0"):
        Guard(CITY, llm=lambda p: "{}", strategy="vote", temperature=0)
    with pytest.raises(ValueError, match="samples"):
        Guard(CITY, llm=lambda p: "{}", strategy="vote", samples=0)
    assert Guard(CITY, llm=lambda p: "{}", temperature=0.3).strategy == "sample"
    assert Guard(CITY, llm=lambda p: "{}", strategy="sample").sampling.temperature == 0.7


def test_run_many_votes_every_prompt_in_one_call_per_batch() -> None:
    backend = FakeBatcher(['{"city": "Oslo"}'])
    results = Guard(CITY, llm=backend, strategy="vote", samples=3).run_many(["a", "b", "c"], concurrency=2)
    assert [n for n, _ in backend.calls] == [6, 3]
    assert all(r.agreement == {"/city": 1.0, "/n": 1.0, "/tags": 1.0} for r in results)


# -- calibration and the report -------------------------------------------------------------


def test_ece_and_auroc_on_known_values() -> None:
    assert ece([(1.0, True), (0.0, False)]) == 0.0
    assert ece([(0.9, True), (0.9, False)]) == pytest.approx(0.4)
    assert ece([]) is None
    assert auroc([(0.9, True), (0.1, False)]) == 1.0 and auroc([(0.5, True)]) is None
    rows = [{"valid": True, "output": {"a": "x"}, "gold": {"a": "y"}, "confidence": {"/a": 1.0}}]
    cal = reliability(rows, bins=4)
    assert cal["bins"][-1]["n"] == 1 and cal["ece"] == 1.0
    assert calibration_summary([{"valid": True, "output": {}, "gold": {}}]) is None


def test_agreement_counts_answered_fields_and_omissions_apart() -> None:
    rows = [{"valid": True, "output": {"a": "x"}, "gold": {"a": "x", "b": "y"},
             "agreement": {"/a": 0.6, "/b": 1.0, "/c": 1.0}}]
    found = agreement_vs_accuracy(rows)
    assert found["n"] == 1 and found["split"] == {"n": 1, "accuracy": 1.0}
    assert found["omitted"] == {"n": 1, "unanimous": 1}


def test_reliability_diagram_escapes_its_title() -> None:
    svg = reliability_diagram([{"lo": 0.0, "hi": 0.1, "n": 2, "confidence": 0.05, "accuracy": 0.5}], title="<b>")
    assert "<b>" not in svg and svg.count('class="gr-rel-bin"') == 1


SUITE = {
    "name": "cities", "schema": CITY, "instruction": "Extract the city.",
    "cases": [{"id": "c1", "input": "Ada lives in Oslo", "gold": {"city": "Oslo"}},
              {"id": "c2", "input": "Bo lives in Rome", "gold": {"city": "Rome"}}],
}

_VOTES = itertools.cycle(['{"city": "Oslo"}', '{"city": "Oslo"}', '{"city": "Paris"}'])


def _voter(prompt: Any) -> Generation:
    text = next(_VOTES)
    return Generation(text, logprobs=tokens_of(text, logprob=-0.3))


def test_report_vote_adds_agreement_confidence_and_a_calibration_section(tmp_path: Path) -> None:
    suite = parse_suite(SUITE)
    greedy = run_report(suite, families=["case"], severities=[0.5], seeds=1, out_dir=tmp_path / "g", llm=_voter,
                        n_boot=10)
    voted = run_report(suite, families=["case"], severities=[0.5], seeds=1, out_dir=tmp_path / "v", llm=_voter,
                       n_boot=10, strategy="vote", samples=3)
    assert voted.config_hash != greedy.config_hash
    assert json.loads((tmp_path / "v" / "run.json").read_text())["config"]["strategy"] == {
        "strategy": "vote", "temperature": 0.7, "seed": 0, "samples": 3}
    rows = [json.loads(line) for line in (tmp_path / "v" / "results.jsonl").read_text().splitlines()]
    assert all(set(r["agreement"]) == {"/city", "/n", "/tags"} and r["confidence"] for r in rows)
    assert all("agreement" not in r for r in
               (json.loads(line) for line in (tmp_path / "g" / "results.jsonl").read_text().splitlines()))
    cal = voted.report["calibration"]["constrained"]
    assert cal["confidence"]["n"] == len(rows) and cal["agreement"]["n"] == len(rows)
    assert "## Confidence and agreement (constrained)" in (tmp_path / "v" / "report.md").read_text()
    assert 'class="gr-chart gr-reliability"' in (tmp_path / "v" / "report.html").read_text()
    with pytest.raises(ValueError):
        run_report(suite, families=["case"], severities=[0.5], out_dir=tmp_path / "x", llm=_voter, strategy="nope")


class ByteTokenizer:
    """Decodes token ids as UTF-8 bytes, as a byte-level BPE does (a partial character shows as U+FFFD)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_local_token_texts_join_to_the_text_and_keep_characters_whole() -> None:
    from guardrail.backends.local.sampling import token_logprobs as _token_logprobs

    text = '{"a": "Zürich 😀"}'
    ids = list(text.encode())
    pieces = _token_logprobs(ByteTokenizer(), ids, [-0.1] * len(ids), text)
    assert pieces is not None and "".join(p for p, _ in pieces) == text
    assert [p for p, _ in pieces if p and len(p.encode()) > 1] == ["ü", "😀"]
    assert sum(1 for p, _ in pieces if p == "") == 1 + 3  # ü is 2 bytes, 😀 is 4
    assert _token_logprobs(ByteTokenizer(), ids, [-0.1] * len(ids), text + "x") is None


def test_cli_report_takes_strategy_and_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from guardrail.report.cli import register

    (tmp_path / "vote_llm.py").write_text(
        "import itertools\n"
        "answers = itertools.cycle(['{\"city\": \"Oslo\"}', '{\"city\": \"Oslo\"}', '{\"city\": \"Rome\"}'])\n"
        "def llm(prompt):\n"
        "    return next(answers)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = tmp_path / "cities.yaml"
    suite.write_text(json.dumps(SUITE), encoding="utf-8")
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """guardrail (test app)"""

    register(app)
    common = ["report", str(suite), "--llm", "vote_llm:llm", "--perturb", "case", "--severity", "0.5",
              "--out", str(tmp_path / "out")]
    done = CliRunner().invoke(app, [*common, "--strategy", "vote", "--samples", "3"])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["strategy"]["samples"] == 3
    assert report["calibration"]["constrained"]["agreement"]["n"] > 0
    bad = CliRunner().invoke(app, [*common, "--strategy", "beam"])
    assert bad.exit_code == 2 and "'beam' is not one of" in " ".join(bad.output.split())
