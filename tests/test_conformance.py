"""The official JSON Schema Test Suite, run through guardrail's own API.

Every group's schema goes through ``Schema.load`` (so the checks at construction run too) and
every instance through ``guardrail.validation.check``. The suite's ``remotes/`` folder, which the
suite serves at ``http://localhost:1234/``, is handed over as ``refs``: guardrail never fetches.
Only the required tests run (the top-level files, not ``optional/``).

A schema that ``Schema.load`` refuses counts as a failure of all its tests unless listed in
``KNOWN_FAILURES``. A known failure that starts passing fails the run too, so the list stays true.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from guardrail.errors import SchemaError
from guardrail.schema import Schema
from guardrail.validation import check

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUITE = DATA / "json-schema-test-suite"

if not (SUITE / "tests").is_dir():
    pytest.skip(
        f"JSON Schema Test Suite not found at {SUITE} (it lives in ../shared/data, next to the checkout)",
        allow_module_level=True,
    )

DRAFTS = ("draft7", "draft2020-12")

#: The suite's draft-7 schemas carry no ``$schema``; guardrail's default is 2020-12, so say it.
DIALECT = {"draft7": "http://json-schema.org/draft-07/schema#"}

_UNICODE_ESCAPE = "ECMA-262 \\p{...} Unicode property escape: Python's re has none, so Schema.load refuses the pattern"
_VOCABULARY = "vocabularies are not enforced (as in python-jsonschema): 'minimum' still applies"

#: (draft, file, group description, test description) -> why it fails.
KNOWN_FAILURES: dict[tuple[str, str, str, str], str] = {
    **{
        ("draft2020-12", "pattern.json", "pattern with Unicode property escape requires unicode mode", test): (
            _UNICODE_ESCAPE
        )
        for test in ("ASCII letters match", "Non-ASCII letters match", "Digits do not match")
    },
    **{
        ("draft2020-12", "patternProperties.json", "patternProperties with Unicode property escape", test): (_UNICODE_ESCAPE)
        for test in ("Unicode letter property name matches", "Non-letter property name does not match pattern")
    },
    (
        "draft2020-12",
        "vocabulary.json",
        "schema that uses custom metaschema with with no validation vocabulary",
        "no validation: invalid number, but it still validates",
    ): _VOCABULARY,
}

#: Tests that must pass per draft; a drop is a regression, a rise means KNOWN_FAILURES is stale.
EXPECTED = {
    "draft7": {"total": 927, "passed": 927},
    "draft2020-12": {"total": 1299, "passed": 1293},
}


@cache
def remotes() -> dict[str, Any]:
    """Every file under ``remotes/``, keyed by the URL the suite serves it at."""
    folder = SUITE / "remotes"
    return {
        f"http://localhost:1234/{path.relative_to(folder).as_posix()}": json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.rglob("*.json"))
    }


def suite_files(draft: str) -> list[Path]:
    return sorted((SUITE / "tests" / draft).glob("*.json"))


def load(draft: str, schema: Any) -> Schema:
    if isinstance(schema, dict) and "$schema" not in schema and draft in DIALECT:
        schema = {"$schema": DIALECT[draft], **schema}
    # The suite tests the standard's default, where ``format`` only annotates; guardrail asserts
    # it by default (tests/test_validation.py), so the standard mode is asked for here.
    return Schema.load(schema, refs=remotes(), assert_formats=False)


@cache
def run_file(draft: str, name: str) -> tuple[int, tuple[tuple[tuple[str, str, str, str], str], ...]]:
    """(number of tests, ((key, what went wrong), ...)) for one suite file."""
    total = 0
    failures: list[tuple[tuple[str, str, str, str], str]] = []
    groups = json.loads((SUITE / "tests" / draft / name).read_text(encoding="utf-8"))
    for group in groups:
        try:
            schema: Schema | None = load(draft, group["schema"])
            refused = ""
        except SchemaError as exc:
            schema, refused = None, f"Schema.load refused it: {exc}"
        for test in group["tests"]:
            total += 1
            key = (draft, name, group["description"], test["description"])
            if schema is None:
                failures.append((key, refused))
                continue
            try:
                issues = check(schema, test["data"])
            except Exception as exc:  # a crash is a failure to report, not a reason to stop the file
                failures.append((key, f"check raised {type(exc).__name__}: {exc}"))
                continue
            if (not issues) != test["valid"]:
                verdict = "accepted an invalid instance" if not issues else f"rejected a valid instance: {issues}"
                failures.append((key, verdict))
    return total, tuple(failures)


def cases() -> Iterator[Any]:
    for draft in DRAFTS:
        for path in suite_files(draft):
            yield pytest.param(draft, path.name, id=f"{draft}/{path.name}")


def test_suite_is_complete() -> None:
    for draft in DRAFTS:
        assert len(suite_files(draft)) >= 35, f"{draft}: suite files missing under {SUITE / 'tests' / draft}"
    assert "http://localhost:1234/integer.json" in remotes()
    assert "http://localhost:1234/draft2020-12/metaschema-no-validation.json" in remotes()


@pytest.mark.parametrize(("draft", "name"), list(cases()))
def test_suite_file(draft: str, name: str) -> None:
    total, failures = run_file(draft, name)
    assert total > 0
    failed = dict(failures)
    known_here = {key: why for key, why in KNOWN_FAILURES.items() if key[:2] == (draft, name)}
    unexpected = {key: why for key, why in failed.items() if key not in known_here}
    fixed = sorted(key for key in known_here if key not in failed)
    report = [f"  {group} / {test}: {why}" for (_, _, group, test), why in unexpected.items()]
    assert not unexpected, f"{draft}/{name}: {len(unexpected)} unexpected failure(s):\n" + "\n".join(report)
    assert not fixed, f"{draft}/{name}: listed in KNOWN_FAILURES but now pass (remove them): {fixed}"


def test_known_failures_exist() -> None:
    """Every KNOWN_FAILURES entry names a real test, so a renamed test cannot hide behind the list."""
    present = set()
    for draft in DRAFTS:
        for path in suite_files(draft):
            for group in json.loads(path.read_text(encoding="utf-8")):
                present.update((draft, path.name, group["description"], t["description"]) for t in group["tests"])
    assert set(KNOWN_FAILURES) <= present, sorted(set(KNOWN_FAILURES) - present)


def test_pass_counts() -> None:
    lines = []
    for draft in DRAFTS:
        total = failed = 0
        for path in suite_files(draft):
            n, failures = run_file(draft, path.name)
            total += n
            failed += len(failures)
        passed = total - failed
        lines.append(f"{draft}: {passed}/{total} passed, {failed} failed")
        assert {"total": total, "passed": passed} == EXPECTED[draft], lines[-1]
    reasons: dict[str, int] = {}
    for why in KNOWN_FAILURES.values():
        reasons[why] = reasons.get(why, 0) + 1
    print("\nJSON Schema Test Suite (required tests) through guardrail:")
    print("\n".join(f"  {line}" for line in lines))
    print("  known failures:")
    print("\n".join(f"    {count} x {why}" for why, count in reasons.items()))
