"""Reliability of guardrail's schema intake and validator (issue 9, parts 1-4), as Markdown.

    .venv/bin/python benchmarks/reliability.py [--examples 100] [--out benchmarks/RELIABILITY.md]

1. every schema of ``../shared/data/jsonschemabench-sample/dev`` through ``Guard(schema, llm=fn)``
   and every test instance through ``Guard.run``, each schema under a watchdog: loaded, refused
   (by keyword), hung, crashed;
2. each verdict against the sample's label, next to plain python-jsonschema and to llguidance's
   published expectations (``../shared/data/peer-llguidance``), and the JSON Schema Test Suite;
3. the fuzz tests of tests/test_fuzz.py, with ``--examples`` examples each;
4. the hostile schemas and outputs of tests/test_hardening.py, each under a watchdog.

No socket may be opened while it runs (``socket.socket.connect`` and DNS raise); attempts are
counted and reported. ``holdout/`` is never read.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hypothesis  # noqa: E402

from guardrail import Guard, patterns  # noqa: E402
from guardrail.errors import SchemaError  # noqa: E402
from guardrail.schema import Schema  # noqa: E402
from guardrail.validation import MAX_CHARS, MAX_DEPTH, validate  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEV = DATA / "jsonschemabench-sample" / "dev"
SUITE = DATA / "json-schema-test-suite" / "tests"
PEER = DATA / "peer-llguidance"

#: Seconds one schema (construction and all its instances) or one hostile input may take before it counts as hung.
WATCHDOG_S = 30.0


def load_test_module(name: str) -> ModuleType:
    """Import one of tests/*.py by path (the tests folder is not a package)."""
    sys.path.insert(0, str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Watchdog:
    """Run a callable in a daemon thread; report its value, its exception, or that it hung."""

    def __init__(self, seconds: float = WATCHDOG_S) -> None:
        self.seconds = seconds

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any, float]:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - classified by the caller
                box["error"] = exc

        start = time.perf_counter()
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(self.seconds)
        elapsed = time.perf_counter() - start
        if thread.is_alive():
            return "hung", None, elapsed
        if "error" in box:
            return "raised", box["error"], elapsed
        return "ok", box["value"], elapsed


class NoNetwork:
    """Make connections and DNS lookups fail, counting the attempts."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> NoNetwork:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            self.attempts.append(repr(args[1:] if args and isinstance(args[0], socket.socket) else args)[:120])
            raise OSError("reliability benchmark: network access attempted")

        for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "getaddrinfo"),
                            (socket, "create_connection")):
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, refuse)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)


# -- parts 1 and 2: the real-world sample -------------------------------------------------------


def plain_jsonschema_verdicts(document: dict[str, Any]) -> list[bool] | None:
    """Verdicts of python-jsonschema alone (its default format checker, as installed here)."""
    try:
        schema = Schema.load(document["schema"])
    except SchemaError:
        return None
    cls = schema._validator_class
    validator = cls(schema.json_schema, registry=schema._registry, format_checker=cls.FORMAT_CHECKER)
    return [validator.is_valid(test["data"]) for test in document["tests"]]


def run_sample(hardening: ModuleType) -> dict[str, Any]:
    watchdog = Watchdog()
    out: dict[str, Any] = {
        "files": 0, "loaded": 0, "refused": collections.Counter(), "refusals": [], "hung": [], "crashed": [],
        "instances": 0, "valid": 0, "invalid": 0, "wrong": [], "known": [], "seconds": [], "plain_wrong": [],
    }
    for path in sorted(DEV.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        out["files"] += 1
        status, value, elapsed = watchdog.run(hardening.run_sample_file, document)
        out["seconds"].append(elapsed)
        if status == "hung":
            out["hung"].append(path.name)
            continue
        if status == "raised":
            out["crashed"].append(f"{path.name}: {type(value).__name__}: {value}")
            continue
        if isinstance(value, SchemaError):
            out["refused"][value.keyword or "?"] += 1
            out["refusals"].append(f"{path.name}: {value}")
            continue
        out["loaded"] += 1
        plain = plain_jsonschema_verdicts(document)
        for index, (test, verdict) in enumerate(zip(document["tests"], value, strict=True)):
            out["instances"] += 1
            out["valid" if test["valid"] else "invalid"] += 1
            if verdict != test["valid"]:
                entry = (path.name, index, "accepted an invalid instance" if verdict else "rejected a valid instance")
                reason = hardening.KNOWN_DISAGREEMENTS.get((path.name, index))
                (out["known"] if reason else out["wrong"]).append((*entry, reason))
            if plain is not None and plain[index] != test["valid"]:
                out["plain_wrong"].append((path.name, index, _features(document)))
    return out


GENERATION_PROMPT = "Write one realistic example of this JSON object. {description}"


def run_generation(count: int, max_new_tokens: int = 64) -> dict[str, Any]:
    """Constrained generation with the embedded model on ``count`` dev schemas, evenly spaced.

    A sound grammar means no attempt can end "invalid": output is valid, or cut off by the token
    budget (the retry doubles the budget, up to 4x), or the schema was generated unconstrained
    because every engine refused it.
    """
    from guardrail.backends.local import LocalBackend

    backend = LocalBackend(threads=1, grammar_cache=False)
    paths = sorted(DEV.glob("*.json"))
    picked = paths[:: max(1, len(paths) // count)][:count]
    out: dict[str, Any] = {"tried": 0, "engines": collections.Counter(), "valid_first": 0, "valid_after_length": 0,
                           "valid_after_reask": 0, "failed": [], "unsound": [], "tokens": 0, "seconds": 0.0}
    for path in picked:
        document = json.loads(path.read_text(encoding="utf-8"))
        try:
            guard = Guard(document["schema"], llm=backend, retries=2, max_new_tokens=max_new_tokens,
                          max_new_tokens_cap=4 * max_new_tokens)
        except SchemaError:
            continue
        out["tried"] += 1
        engine = backend.engine_for(guard.schema)
        out["engines"][engine or "unconstrained"] += 1
        description = str(document["schema"].get("description", ""))[:200] if isinstance(document["schema"], dict) else ""
        started = time.perf_counter()
        [result] = guard.run_many([GENERATION_PROMPT.format(description=description).strip()])
        out["seconds"] += time.perf_counter() - started
        out["tokens"] += sum(a.completion_tokens or 0 for a in result.attempts)
        endings = [a.ended for a in result.attempts]
        if engine is not None and "invalid" in endings:
            out["unsound"].append(f"{path.name} ({engine}): {result.attempts[endings.index('invalid')].issues[:1]}")
        if not result.ok:
            out["failed"].append(f"{path.name}: {' -> '.join(endings)}")
        elif len(endings) == 1:
            out["valid_first"] += 1
        elif "invalid" in endings:
            out["valid_after_reask"] += 1
        else:
            out["valid_after_length"] += 1
    return out


def _features(document: dict[str, Any]) -> str:
    return ", ".join(f for f in document.get("meta", {}).get("features", []) if f.startswith("format:")) or "-"


def peer_maskbench(names: list[str]) -> dict[str, Any]:
    """llguidance's expected MaskBench results, for the same schema files."""
    expected = json.loads((PEER / "json_stats" / "expected_maskbench.json").read_text(encoding="utf-8"))
    compile_errors: collections.Counter[str] = collections.Counter()
    validation_errors = 0
    for name in names:
        entry = expected.get(name, {})
        if "json_error" in entry:
            compile_errors[_peer_reason(entry["json_error"])] += 1
        if "validation_error" in entry:
            validation_errors += 1
    return {"schemas": len(names), "compile_errors": compile_errors, "validation_errors": validation_errors,
            "all": len(expected)}


def _peer_reason(message: str) -> str:
    first = message.splitlines()[0]
    if first.startswith("Unknown format"):
        return "unknown format"
    if first.startswith("oneOf constraints"):
        return "oneOf not provably exclusive"
    match = re.match(r"Unimplemented keys: (\[.*\])", first)
    if match:
        return "unimplemented " + " + ".join(f"`{k}`" for k in json.loads(match.group(1)))
    return first[:60]


# -- the JSON Schema Test Suite ----------------------------------------------------------------


def run_suite(conformance: ModuleType) -> dict[str, Any]:
    required = {}
    for draft in conformance.DRAFTS:
        total = failed = 0
        for path in conformance.suite_files(draft):
            n, failures = conformance.run_file(draft, path.name)
            total += n
            failed += len(failures)
        required[draft] = (total - failed, total)
    optional = SUITE / "draft2020-12" / "optional"
    formats = _optional_counts(sorted((optional / "format").glob("*.json")))
    regexes = _optional_counts([optional / "ecmascript-regex.json"])
    return {"required": required, "formats": formats, "regex": regexes}


def _optional_counts(paths: list[Path]) -> collections.Counter[str]:
    """Verdicts on optional suite files, with guardrail's defaults (format asserted)."""
    counts: collections.Counter[str] = collections.Counter()
    for path in paths:
        for group in json.loads(path.read_text(encoding="utf-8")):
            try:
                schema = Schema.load(group["schema"])
            except SchemaError:
                counts["refused"] += len(group["tests"])
                continue
            for test in group["tests"]:
                ok = validate(schema, json.dumps(test["data"])).ok
                counts["pass" if ok == test["valid"] else "false positive" if ok else "false negative"] += 1
    return counts


def peer_suite() -> dict[str, collections.Counter[str]]:
    expected = json.loads((PEER / "json_schema_test_suite" / "expected_json_schema_test_suite.json").read_text())
    counts: dict[str, collections.Counter[str]] = {"required": collections.Counter(), "format": collections.Counter()}
    for name, groups in expected["draft2020-12"].items():
        part = "format" if name.startswith("optional/format") else "required" if "/" not in name else None
        if part is None:
            continue
        for tests in groups.values():
            counts[part].update(tests.values())
    return counts


# -- part 3: fuzzing ------------------------------------------------------------------------------


def run_fuzz(fuzz: ModuleType) -> dict[str, Any]:
    """Run every test of tests/test_fuzz.py (imported with GUARDRAIL_FUZZ_EXAMPLES set), counting examples."""
    fuzz.EXAMPLES.clear()
    failures = []
    tests = [(name, getattr(fuzz, name)) for name in dir(fuzz) if name.startswith("test_")]
    start = time.perf_counter()
    for name, test in tests:
        runs: list[tuple[Any, ...]] = [()]
        if name in ("test_generated_instances_validate", "test_dropped_required_key_is_located",
                    "test_wrong_type_is_located", "test_extra_property_is_located"):
            runs = [(schema,) for schema in fuzz.NAMES]
        elif name == "test_number_out_of_range_is_located":
            runs = [(schema,) for schema in fuzz.NAMES if any(k in json.dumps(fuzz.SCHEMAS[schema].json_schema)
                                                               for k in fuzz._BOUNDS)]
        for args in runs:
            try:
                test(*args)
            except Exception as exc:  # noqa: BLE001 - a failure is reported, not fatal
                failures.append(f"{name}{list(args)}: {type(exc).__name__}: {str(exc)[:300]}")
    return {"examples": dict(fuzz.EXAMPLES), "failures": failures, "seconds": time.perf_counter() - start}


# -- part 4: hostile schemas and outputs ---------------------------------------------------------


def hostile_cases(hardening: ModuleType) -> list[tuple[str, str, Callable[[], Any]]]:
    """(group, description, thunk) for every hostile input; a thunk returns a short outcome text."""

    def construct(document: Any, **options: Any) -> Callable[[], str]:
        def thunk() -> str:
            try:
                Guard(document, llm=lambda prompt: "{}", **options)
            except SchemaError as exc:
                return f"SchemaError at {exc.location or '/'}" + (f" (`{exc.keyword}`)" if exc.keyword else "")
            return "loaded"
        return thunk

    def check(document: Any, text: str) -> Callable[[], str]:
        def thunk() -> str:
            schema = Schema.load(document)
            result = validate(schema, text)
            if result.ok:
                return "valid"
            keywords = collections.Counter(f"{i.keyword} at {i.path or '/'}" for i in result.issues)
            shown = ", ".join(f"{k}" + (f" x{n}" if n > 1 else "") for k, n in list(keywords.items())[:2])
            return f"{len(result.issues)} issue(s): {shown}" + (" ..." if len(keywords) > 2 else "")
        return thunk

    cases: list[tuple[str, str, Callable[[], Any]]] = []
    tree = hardening.TREE
    cases.append(("recursive $ref", "self-referencing tree, 30 levels", check(tree, json.dumps(hardening.tree(30)))))
    cases.append(("recursive $ref", "self-referencing tree, bad leaf 3 levels down",
                  check(tree, json.dumps(hardening.tree(3, leaf="x")))))
    nullable = {"$defs": {"n": {"anyOf": [{"type": "null"},
                                          {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}]}},
                "$ref": "#/$defs/n"}
    deep = '{"c":' * (MAX_DEPTH - 1) + "null" + "}" * (MAX_DEPTH - 1)
    cases.append(("recursive $ref", f"recursive anyOf, value {MAX_DEPTH - 1} levels deep", check(nullable, deep)))
    for name, document in hardening.CYCLES.items():
        cases.append(("$ref cycle without progress", name, construct(document)))
    cases.append(("$ref cycle without progress", "$dynamicRef loop (resolved at validation)",
                  check({"$dynamicAnchor": "node", "anyOf": [{"$dynamicRef": "#node"}]}, "{}")))
    for name, document in hardening.REMOTE.items():
        cases.append(("remote $ref (never fetched)", name, construct(document)))
    for regex, text in hardening.CATASTROPHIC:
        cases.append(("catastrophic pattern", f"{regex!r} on {len(text):,} chars",
                      check({"type": "string", "pattern": regex}, json.dumps(text))))
    evil = "^(a|aa)+$"
    key = "a" * 40 + "b"
    cases.append(("catastrophic pattern", f"{evil!r} on 200 strings (one budget)",
                  check({"type": "array", "items": {"pattern": evil}}, json.dumps([key] * 200))))
    for keyword in ("patternProperties", "additionalProperties", "unevaluatedProperties"):
        document: dict[str, Any] = {"patternProperties": {evil: {"type": "integer"}}}
        if keyword != "patternProperties":
            document[keyword] = False
        cases.append(("catastrophic pattern", f"{evil!r} in {keyword} on a key", check(document, json.dumps({key: 1}))))
    values = [f"value-{i}" for i in range(100_000)]
    cases.append(("enormous enum", "100,000 values: construction", construct({"enum": values})))
    cases.append(("enormous enum", "100,000 values: a miss", check({"enum": values}, '"nope"')))
    for document, _location, _keyword in hardening.WRONG_KEYWORD_TYPES:
        cases.append(("wrong keyword types", json.dumps(document), construct(document)))
    for depth in (300, 5000):
        nested: dict[str, Any] = {"type": "integer"}
        for _ in range(depth):
            nested = {"type": "array", "items": nested}
        cases.append(("deep schema", f"items nested {depth} levels", construct(nested)))
    unique = json.dumps([{"id": i} for i in range(70_000)], separators=(",", ":"))
    cases.append(("hostile output", f"uniqueItems on 70,000 objects ({len(unique):,} chars)",
                  check({"uniqueItems": True}, unique)))
    cases.append(("hostile output", f"{MAX_CHARS + 1:,} characters", check({}, "x" * (MAX_CHARS + 1))))
    cases.append(("hostile output", "100,000 nested brackets", check({}, "[" * 100_000 + "]" * 100_000)))
    cases.append(("hostile output", "integer of 5,000 digits", check({}, "[" + "1" * 5000 + "]")))
    cases.append(("hostile output", "1e400 (infinite as a float)", check({"multipleOf": 0.1}, "[1e400]")))
    cases.append(("hostile output", "NaN", check({}, '{"x": NaN}')))
    cases.append(("hostile output", "duplicate keys", check({}, '{"a": 1, "a": 2}')))
    cases.append(("hostile output", "lone surrogate escape", check({"type": "string"}, '"\\ud800"')))
    cases.append(("hostile output", "invalid UTF-8 via surrogateescape",
                  check({"type": "string"}, b'"\xff\xfe\x80"'.decode("utf-8", "surrogateescape"))))
    return cases


def run_hostile(hardening: ModuleType) -> list[dict[str, Any]]:
    watchdog = Watchdog()
    rows = []
    for group, description, thunk in hostile_cases(hardening):
        status, value, elapsed = watchdog.run(thunk)
        if status == "raised":
            traceback.print_exception(value, file=sys.stderr)
            value = f"CRASH {type(value).__name__}: {value}"
        rows.append({"group": group, "input": description, "status": status, "outcome": value or status,
                     "seconds": elapsed})
    return rows


# -- report ---------------------------------------------------------------------------------------


def markdown(sample: dict[str, Any], peer: dict[str, Any], suite: dict[str, Any], peer_tests: dict[str, Any],
             fuzz: dict[str, Any], hostile: list[dict[str, Any]], network: list[str], examples: int) -> str:
    lines: list[str] = []
    add = lines.append
    seconds = sample["seconds"]
    add("## Reliability")
    add("")
    versions = (f"Python {platform.python_version()}, jsonschema {importlib.metadata.version('jsonschema')}, "
                f"hypothesis {hypothesis.__version__}")
    bounded = "bounded (regex module)" if patterns.BOUNDED else "UNBOUNDED"
    add(f"Measured by `benchmarks/reliability.py` ({versions}, regex matching {bounded}"
        f"). Peer figures are llguidance's own published expectations from `shared/data/peer-llguidance` "
        f"(llguidance @ c75b0d90), not re-measured here. Network: {len(network)} connection attempts "
        f"(sockets and DNS were made to fail).")
    add("")
    add("### Real-world schemas (JSONSchemaBench sample, `dev/`)")
    add("")
    add("Each schema goes through `Guard(schema, llm=fn)` and each of its instances through `Guard.run` "
        f"(the function replies with the instance), under a {WATCHDOG_S:g} s watchdog per schema.")
    add("")
    refused = sum(sample["refused"].values())
    wrong = len(sample["wrong"])
    plain_wrong = len(sample["plain_wrong"])
    peer_errors = sum(peer["compile_errors"].values())
    add("| | guardrail (validator) | python-jsonschema alone | llguidance (grammar, published) |")
    add("|---|---|---|---|")
    add(f"| schemas tried | {sample['files']} | {sample['files']} | {peer['schemas']} |")
    add(f"| schemas usable | {sample['loaded']} | {sample['loaded']} | {peer['schemas'] - peer_errors} |")
    add(f"| refused with a reason | {refused} | - | {peer_errors} (compile errors) |")
    add(f"| hung (> {WATCHDOG_S:g} s) | {len(sample['hung'])} | - | - |")
    add(f"| crashed | {len(sample['crashed'])} | - | - |")
    add(f"| instances checked ({sample['valid']} valid, {sample['invalid']} invalid) | {sample['instances']} | "
        f"{sample['instances']} | on compiled schemas only |")
    add(f"| wrong verdicts | {wrong} (+{len(sample['known'])} known) | {plain_wrong} | {peer['validation_errors']} "
        "(schemas where the grammar refused a valid instance) |")
    add(f"| time per schema (construction + all instances) | median {statistics.median(seconds) * 1000:.0f} ms, "
        f"max {max(seconds) * 1000:.0f} ms | | |")
    add("")
    if sample["refused"]:
        add("Refused, by keyword: " + ", ".join(f"`{k}` {n}" for k, n in sample["refused"].most_common()) + ".")
    else:
        add("Refused: none; every schema of the sample is usable.")
    add("")
    if sample["plain_wrong"]:
        add(f"python-jsonschema alone accepts {plain_wrong} invalid instances, all through `format` "
            "(it checks `date-time`, `time`, `uri`, `uri-reference` and `uri-template` only when optional packages are "
            "installed; guardrail checks them itself): "
            + "; ".join(f"{n}#{i} ({f})" for n, i, f in sample["plain_wrong"]) + ".")
        add("")
    if peer["compile_errors"]:
        add(f"llguidance's compile errors on these {peer['schemas']} schemas (of {peer['all']:,} MaskBench schemas): "
            + ", ".join(f"{reason} {n}" for reason, n in peer["compile_errors"].most_common()) + ".")
        add("")
    add("Wrong verdicts and known disagreements: "
        + ("none." if not (sample["wrong"] or sample["known"]) else "; ".join(
            f"{n}#{i} {what}" + (f" (known: {why})" if why else "") for n, i, what, why in
            [*sample["wrong"], *sample["known"]])))
    add("")
    add("### JSON Schema Test Suite")
    add("")
    peer_required = peer_tests["required"]
    peer_format = peer_tests["format"]
    add("| | guardrail | llguidance (published) |")
    add("|---|---|---|")
    passed, total = suite["required"]["draft2020-12"]
    not_compiled = sum(n for k, n in peer_required.items() if k.startswith(("skip_compile", "compile_error")))
    add(f"| draft 2020-12, required tests | {passed}/{total} pass | {peer_required['pass']}/{sum(peer_required.values())} "
        f"pass; {not_compiled} not compiled, {peer_required['false_negative']} valid rejected, "
        f"{peer_required['false_positive']} invalid accepted |")
    passed7, total7 = suite["required"]["draft7"]
    add(f"| draft 7, required tests | {passed7}/{total7} pass | not published |")
    formats = suite["formats"]
    add(f"| draft 2020-12 `optional/format`, format asserted | {formats['pass']}/{sum(formats.values())} pass, "
        f"{formats['false positive']} invalid accepted, {formats['false negative']} valid rejected | "
        f"{peer_format['pass']}/{sum(peer_format.values())} pass, {peer_format['false_positive']} invalid accepted, "
        f"{peer_format['false_negative']} valid rejected |")
    regexes = suite["regex"]
    add(f"| draft 2020-12 `optional/ecmascript-regex` | {regexes['pass']}/{sum(regexes.values())} pass, "
        f"{regexes['refused']} refused at load, {regexes['false positive']} invalid accepted, {regexes['false negative']} "
        "valid rejected | not published |")
    add("")
    add("The 6 required 2020-12 failures: 5 `\\p{...}` Unicode property escapes in `pattern` (Python's `re` has none, "
        "so `Schema.load` refuses the pattern rather than guess) and 1 custom-metaschema vocabulary test (vocabularies are "
        "not enforced, as in python-jsonschema). The suite copies differ slightly (llguidance's baseline lists "
        f"{sum(peer_required.values())} required tests, ours {total}). Formats guardrail still does not check strictly "
        "(python-jsonschema needs optional packages for them): `duration`, `hostname`, `json-pointer`, "
        "`relative-json-pointer`, `iri`, `iri-reference`, and `email` beyond an `@`; the `regex` format accepts Python `re` "
        "syntax.")
    add("")
    add("Known disagreements, regex dialect (guardrail matches `pattern` with Python `re` syntax and semantics, as "
        "python-jsonschema does, where JSON Schema specifies ECMA-262): `\\p{...}` and `\\cX` are refused at load "
        "(a clear `SchemaError` at the pattern); `\\d` and `\\w` also match non-ASCII digits and letters (`\\d` "
        "matches \"৪\", `\\w` matches \"é\"); `\\s` does not match U+FEFF; `$` also matches before a final "
        "newline (`^abc$` accepts \"abc\\n\"; the suite's own test for it escapes the newline twice, so it passes).")
    add("")
    add("### Fuzzing (hypothesis, hypothesis-jsonschema)")
    add("")
    total_examples = sum(fuzz["examples"].values())
    add(f"{total_examples:,} examples ({examples} per test and schema) in {fuzz['seconds']:.0f} s, "
        f"{len(fuzz['failures'])} failures:")
    add("")
    add("| what | examples |")
    add("|---|---|")
    for what, n in sorted(fuzz["examples"].items()):
        add(f"| {what} | {n:,} |")
    add("")
    add("Generated instances of the shipped schemas (contact, invoice, calendar_event, product_review, support_ticket) "
        "validate; mutations (a required key dropped, a wrong type, a number out of range, an extra property) are "
        "rejected with the issue at the mutated path (an extra property on its object, named in the message); random "
        "text and bytes, invalid UTF-8 and lone surrogates, cut-off and mangled JSON, nesting up to 10,000 levels, "
        "NaN/Infinity/1e400 and 5,000-digit integers, duplicate keys and 1 MB outputs always get a verdict with a clear "
        f"issue (size limit {MAX_CHARS:,} characters, depth limit {MAX_DEPTH}).")
    for failure in fuzz["failures"]:
        add(f"- FAILURE {failure}")
    add("")
    add("### Hostile schemas and outputs")
    add("")
    hung = sum(r["status"] == "hung" for r in hostile)
    crashed = sum(r["status"] == "raised" for r in hostile)
    add(f"{len(hostile)} hostile inputs, each under a {WATCHDOG_S:g} s watchdog: {hung} hung, {crashed} crashed.")
    add("")
    add("| kind | input | outcome | time |")
    add("|---|---|---|---|")
    for row in hostile:
        text = str(row["outcome"]).replace("|", "\\|")
        add(f"| {row['group']} | {row['input'].replace('|', chr(92) + '|')} | {text} | {row['seconds'] * 1000:.0f} ms |")
    add("")
    add(f"Regex matching (`pattern`, `patternProperties`, and the regexes `additionalProperties` and "
        f"`unevaluatedProperties` consult) runs in the `regex` module with a {patterns.PATTERN_TIMEOUT_S:g} s timeout per "
        f"search and {patterns.REGEX_BUDGET_S:g} s per output; a timeout is an issue (treated as not matching). Python's "
        "`re` on `^(a|aa)+$` against 40 `a`s and a `b` would run for hours and cannot be interrupted.")
    add("")
    return "\n".join(lines)


def generation_markdown(gen: dict[str, Any]) -> str:
    engines = ", ".join(f"{name} {n}" for name, n in gen["engines"].most_common())
    lines = [
        "### Constrained generation on real-world schemas (embedded model)",
        "",
        f"{gen['tried']} dev schemas, evenly spaced through the sample, each through `Guard(schema, retries=2)` on "
        "the embedded SmolLM2-135M with 64 tokens per attempt (doubled after a cut-off, up to 256), greedy, one "
        f"thread. Engines chosen: {engines}. {gen['tokens']} tokens in {gen['seconds']:.0f} s.",
        "",
        "| outcome | schemas |",
        "|---|---|",
        f"| valid at the first attempt | {gen['valid_first']} |",
        f"| valid after a cut-off was retried with a larger budget | {gen['valid_after_length']} |",
        f"| valid after a re-ask (an attempt was invalid) | {gen['valid_after_reask']} |",
        f"| no valid output within 3 attempts | {len(gen['failed'])} |",
        f"| **constrained attempt that ended invalid (unsound grammar)** | **{len(gen['unsound'])}** |",
    ]
    if gen["failed"]:
        lines += ["", "Not valid within 3 attempts (attempt endings): " + "; ".join(gen["failed"]) + "."]
    if gen["unsound"]:
        lines += ["", "Unsound: " + "; ".join(gen["unsound"]) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="hypothesis examples per fuzz test and schema")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RELIABILITY.md")
    parser.add_argument("--generate", type=int, default=20,
                        help="dev schemas to generate for with the embedded model (0: skip)")
    args = parser.parse_args(argv)
    if not DEV.is_dir():
        print(f"shared data not found at {DATA}", file=sys.stderr)
        return 2
    hardening = load_test_module("test_hardening")
    os.environ["GUARDRAIL_FUZZ_EXAMPLES"] = str(args.examples)
    fuzz = load_test_module("test_fuzz")
    conformance = load_test_module("test_conformance")
    with NoNetwork() as network:
        sample = run_sample(hardening)
        suite = run_suite(conformance)
        fuzz_results = run_fuzz(fuzz)
        hostile = run_hostile(hardening)
        generation = run_generation(args.generate) if args.generate else None
    peer = peer_maskbench([p.name for p in sorted(DEV.glob("*.json"))])
    text = markdown(sample, peer, suite, peer_suite(), fuzz_results, hostile, network.attempts, args.examples)
    if generation is not None:
        text += "\n\n" + generation_markdown(generation)
    print(text)
    args.out.write_text(text + "\n", encoding="utf-8")
    bad = (sample["hung"] or sample["crashed"] or sample["wrong"] or fuzz_results["failures"] or network.attempts
           or any(r["status"] != "ok" for r in hostile) or (generation is not None and generation["unsound"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
