"""Load a schema once, from whatever the user has, and check it before any call.

A schema arrives as a pydantic model class, a JSON Schema dict, a path to a ``.json`` file, or
the name of a schema shipped in ``schemas/``. ``Schema.load`` normalises all four into one
``Schema``: the JSON Schema, the pydantic model if any, a name and a content hash (the key for
compiled grammars). Problems surface here, at construction, as ``SchemaError`` with the JSON
Pointer of the offending keyword, not at the first call.

Remote ``$ref`` targets are never fetched: pass their contents with ``refs={uri: schema}``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import numbers
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urldefrag, urljoin

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as _METASCHEMAS
from pydantic import BaseModel

from guardrail import patterns
from guardrail.errors import SchemaError
from guardrail.schema_walk import IN_PLACE, Refs, escape, join_pointer, subschemas, walk

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True, eq=False)
class Schema:
    """A checked schema, ready to validate and to compile into a grammar.

    >>> s = Schema.load({"type": "object", "properties": {"name": {"type": "string"}}})
    >>> s.name, len(s.hash)
    ('schema', 64)
    """

    json_schema: dict[str, Any]  # or a boolean schema: True accepts anything, False nothing
    name: str
    model: type[BaseModel] | None = None
    refs: Mapping[str, Any] = field(default_factory=dict)
    assert_formats: bool = True

    @classmethod
    def load(cls, source: Any, *, refs: Mapping[str, Any] | None = None, name: str | None = None,
             assert_formats: bool = True) -> Schema:
        """Normalise ``source`` (model class, dict, path or shipped name) and check it.

        ``assert_formats`` (default true) makes ``format`` (``email``, ``date`` ...) a check, as an
        extractor needs; false keeps the JSON Schema default, where ``format`` only annotates.
        """
        if isinstance(source, Schema):
            return source
        model: type[BaseModel] | None = None
        if isinstance(source, type) and issubclass(source, BaseModel):
            model = source
            try:
                document = source.model_json_schema()
            except Exception as exc:  # pydantic raises several types for unschematisable models
                raise SchemaError(f"pydantic model {source.__name__} has no JSON Schema: {exc}") from exc
            default_name = source.__name__
        elif isinstance(source, Mapping):
            document = dict(source)
            default_name = str(document.get("title") or "schema")
        elif isinstance(source, bool):  # a boolean schema, as JSON Schema allows anywhere a schema goes
            document = source  # type: ignore[assignment]
            default_name = "schema"
        elif isinstance(source, (str, Path)):
            path = _locate(source)
            document = _read_json(path)
            default_name = path.stem
        else:
            raise SchemaError(
                f"expected a pydantic model class, a JSON Schema dict, a path or a schema name, "
                f"got {type(source).__name__}"
            )
        schema = cls(json_schema=document, name=name or default_name, model=model, refs=dict(refs or {}),
                     assert_formats=assert_formats)
        schema.check()
        return schema

    @cached_property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the schema (and any ``refs``): the cache key for grammars."""
        canonical = json.dumps([self.json_schema, self.refs], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @cached_property
    def validator(self) -> Validator:
        """A ``jsonschema`` validator of the schema's draft (2020-12 unless ``$schema`` says otherwise)."""
        cls = self._validator_class
        checker = _format_checker(cls) if self.assert_formats else None
        return _hardened(cls)(self.json_schema, registry=self._registry, format_checker=checker)

    @cached_property
    def _validator_class(self) -> type[Validator]:
        cls = _dialect(self.json_schema, self.refs)
        return cls if cls is not None else jsonschema.Draft202012Validator

    @cached_property
    def _specification(self) -> referencing.Specification[Any]:
        return referencing.jsonschema.specification_with(self._validator_class.META_SCHEMA["$schema"])

    @cached_property
    def _registry(self) -> referencing.Registry:
        default = self._specification
        resources = [
            (uri, referencing.Resource.from_contents(contents, default_specification=default))
            for uri, contents in self.refs.items()
        ]
        # The drafts' own metaschemas are known without fetching (jsonschema adds them to a validator's
        # registry too), so a "$ref" to e.g. the draft-07 metaschema is not a remote reference.
        registry = referencing.Registry(retrieve=_refuse_remote).with_resources(resources)  # type: ignore[call-arg]
        return _METASCHEMAS.combine(registry)

    def check(self) -> None:
        """Raise ``SchemaError`` if the schema is invalid against its metaschema or has an unusable ``$ref``."""
        try:
            self._check()
        except RecursionError:
            raise SchemaError("the schema nests too deeply to check (hundreds of levels); flatten it with $defs") from None

    def _check(self) -> None:
        if isinstance(self.json_schema, bool):
            return
        if not isinstance(self.json_schema, Mapping):
            raise SchemaError(f"a schema must be an object or a boolean, got {type(self.json_schema).__name__}")
        declared = self.json_schema.get("$schema")
        if declared is not None and not isinstance(declared, str):
            raise SchemaError("$schema must be a string URI", location="/$schema", keyword="$schema")
        if declared is not None and _dialect(self.json_schema, self.refs) is None:
            raise SchemaError(
                f"unsupported $schema {declared!r}: use draft 2020-12 or draft 7 (or pass a custom metaschema "
                f"built on one of them with refs={{{declared!r}: ...}})",
                location="/$schema",
                keyword="$schema",
            )
        cls = self._validator_class
        error = jsonschema.exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(self.json_schema))
        if error is not None:
            location = join_pointer(error.absolute_path)
            raise SchemaError(
                f"{error.message} (keyword {error.validator!r} of the metaschema)",
                location=location,
                keyword=str(error.absolute_path[-1]) if error.absolute_path else str(error.validator),
            )
        self._check_patterns()
        self._check_refs()
        self._check_ref_cycles()

    def _check_patterns(self) -> None:
        # Python's re is what validates "pattern": a regex it cannot compile (such as the ECMA-262
        # "\p{L}") would otherwise raise re.error at the first validation, not here.
        for location, keyword, regex in _patterns(self.json_schema):
            try:
                re.compile(regex)
                patterns.compile_pattern(regex)  # what validation matches with (bounded in time)
            except patterns.COMPILE_ERRORS as exc:  # re.error among them
                raise SchemaError(
                    f"{keyword} {regex!r} is not a regular expression guardrail can use (Python re): {exc}",
                    location=location,
                    keyword=keyword,
                ) from None

    def _check_refs(self) -> None:
        resolver = self._registry.resolver_with_root(self._specification.create_resource(self.json_schema))
        # Up to draft 7 a "$ref" makes its siblings, "$id" included, ignored.
        ref_hides_id = self._validator_class in _REF_HIDES_SIBLINGS
        for location, ref_base, ref in _refs(self.json_schema, ref_hides_id):
            if not ref_base:
                target = ref
            elif ref.startswith("#"):  # as referencing does: urljoin knows nothing of e.g. "urn:" bases
                target = urldefrag(ref_base)[0] + ref
            else:
                target = urljoin(ref_base, ref)
            try:
                resolver.lookup(target)
            except Exception as exc:  # noqa: BLE001 - only a refused fetch or a dangling pointer is fatal here
                dangling = _find_cause(exc, referencing.exceptions.PointerToNowhere)
                if dangling is not None:
                    # jsonschema would raise this at the first instance that reaches the $ref
                    raise SchemaError(
                        f"$ref {ref!r} points to nothing: {dangling.ref!r} does not exist in its schema",
                        location=location,
                        keyword="$ref",
                    ) from None
                refused = _find_cause(exc, _RemoteRefused)
                if refused is None:
                    # Anything else that cannot be resolved up front is left to validation:
                    # a lookup quirk must not reject a valid schema.
                    continue
                raise SchemaError(
                    f"$ref {ref!r} points outside the schema ({refused.uri}); guardrail never fetches remote "
                    f"schemas: pass its contents with refs={{{refused.uri!r}: ...}}",
                    location=location,
                    keyword="$ref",
                ) from None

    def _check_ref_cycles(self) -> None:
        # A "$ref" loop that never moves into the instance ({"$defs": {"a": {"$ref": "#/$defs/b"},
        # "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}) would make every validation recurse
        # until RecursionError; refuse it here, naming the loop.
        cycle = _in_place_cycle(self.json_schema, self._registry, self._specification,
                                self._validator_class in _REF_HIDES_SIBLINGS)
        if cycle:
            loop = " -> ".join([*cycle, cycle[0]])
            raise SchemaError(
                f"$ref cycle that never descends into the value ({loop}): validation would recurse forever",
                location=cycle[0],
                keyword="$ref",
            )


_KNOWN_DIALECTS: dict[str, type[Validator]] = {
    "https://json-schema.org/draft/2020-12/schema": jsonschema.Draft202012Validator,
    "http://json-schema.org/draft-07/schema": jsonschema.Draft7Validator,
    "https://json-schema.org/draft-07/schema": jsonschema.Draft7Validator,
}


def _dialect(document: Any, refs: Mapping[str, Any]) -> type[Validator] | None:
    """The validator class for ``document``'s ``$schema``; ``None`` when it names no usable dialect.

    No ``$schema`` means 2020-12. Besides 2020-12 and draft 7, the older drafts jsonschema knows are
    accepted as before; a custom metaschema counts when its contents are given in ``refs`` and its
    own ``$schema`` is a known dialect (vocabularies are not enforced, as in jsonschema).
    """
    declared = document.get("$schema") if isinstance(document, Mapping) else None
    if declared is None:
        return jsonschema.Draft202012Validator
    if not isinstance(declared, str):
        return None
    known = _KNOWN_DIALECTS.get(declared.rstrip("#"))
    if known is not None:
        return known
    cls = jsonschema.validators.validator_for({"$schema": declared}, default=None)
    if cls is not None:
        return cls  # type: ignore[no-any-return]
    custom = refs.get(declared, refs.get(declared.rstrip("#")))
    if isinstance(custom, Mapping) and custom.get("$schema") != declared:
        return _dialect(custom, {})
    return None


_REF_HIDES_SIBLINGS = (
    jsonschema.Draft3Validator, jsonschema.Draft4Validator, jsonschema.Draft6Validator, jsonschema.Draft7Validator
)


class _RemoteRefused(Exception):
    def __init__(self, uri: str) -> None:
        super().__init__(f"remote reference {uri} is not fetched")
        self.uri = uri


_E = TypeVar("_E", bound=BaseException)


def _find_cause(exc: BaseException | None, kind: type[_E]) -> _E | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _refuse_remote(uri: str) -> referencing.Resource:
    raise _RemoteRefused(uri)


_HARDENED: dict[type[Validator], type[Validator]] = {}


def _hardened(cls: type[Validator]) -> type[Validator]:
    """``cls`` with bounded regex matching (guardrail.patterns) and a linear-time ``uniqueItems``."""
    hardened = _HARDENED.get(cls)
    if hardened is None:
        keywords: dict[str, Any] = dict(
            patterns.KEYWORDS_2020_12 if cls is jsonschema.Draft202012Validator else patterns.KEYWORDS
        )
        keywords["uniqueItems"] = _unique_items
        keywords = {k: v for k, v in keywords.items() if k in cls.VALIDATORS}
        hardened = _HARDENED[cls] = jsonschema.validators.extend(cls, keywords)
    return hardened


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    # jsonschema compares unsortable items (objects) pairwise: minutes for 20,000 of them.
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _json_key(item)
        if key in seen:
            yield jsonschema.exceptions.ValidationError(f"{_clip_repr(instance)} has non-unique elements")
            return
        seen.add(key)


def _json_key(value: Any) -> Any:
    """A hashable key equal for equal JSON values (1 == 1.0, true != 1, key order ignored)."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, numbers.Number):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, Mapping):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_json_key(v) for v in value))
    return ("other", id(value))


def _clip_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# -- formats that jsonschema checks only with optional packages -------------------------------

_TIME = r"(\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))"
_DATE_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt]" + _TIME, re.ASCII)
_TIME_RE = re.compile(_TIME, re.ASCII)
_PCT = r"%[0-9A-Fa-f]{2}"
_SUB_DELIMS = r"!$&'()*+,;="
#: Characters of a path, query or fragment (RFC 3986 pchar plus "/" and "?"): no brackets, no spaces.
_PCHARS_RE = re.compile(rf"(?:[A-Za-z0-9\-._~{re.escape(_SUB_DELIMS)}:@/?]|{_PCT})*", re.ASCII)
_USERINFO_RE = re.compile(rf"(?:[A-Za-z0-9\-._~{re.escape(_SUB_DELIMS)}:]|{_PCT})*", re.ASCII)
_REG_NAME_RE = re.compile(rf"(?:[A-Za-z0-9\-._~{re.escape(_SUB_DELIMS)}]|{_PCT})*", re.ASCII)
_IP_FUTURE_RE = re.compile(rf"v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~{re.escape(_SUB_DELIMS)}:]+", re.ASCII)
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):", re.ASCII)
_VARNAME = rf"(?:[A-Za-z0-9_]|{_PCT})(?:\.?(?:[A-Za-z0-9_]|{_PCT}))*(?::[1-9][0-9]{{0,3}}|\*)?"
_URI_TEMPLATE_RE = re.compile(
    rf"(?:[^\x00-\x20\x7f\"%<>\\^`{{|}}]|{_PCT}|\{{[+#./;?&=,!@|]?{_VARNAME}(?:,{_VARNAME})*\}})*", re.ASCII
)


def _valid_time(match: re.Match[str], first: int) -> bool:
    hour, minute, second = (int(match.group(first + i)) for i in range(3))
    if hour > 23 or minute > 59 or second > 60:
        return False
    offset = 0
    if match.group(first + 5) is not None:  # [+-]hh:mm
        off_hour, off_minute = int(match.group(first + 6)), int(match.group(first + 7))
        if off_hour > 23 or off_minute > 59:
            return False
        offset = (off_hour * 60 + off_minute) * (1 if match.group(first + 5) == "+" else -1)
    # a leap second is 23:59:60 in UTC
    return second < 60 or (hour * 60 + minute - offset) % 1440 == 23 * 60 + 59


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    match = _DATE_TIME_RE.fullmatch(instance)
    if match is None:
        return False
    try:
        datetime.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return False
    return _valid_time(match, 4)


def _is_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    match = _TIME_RE.fullmatch(instance)
    return match is not None and _valid_time(match, 1)


def _authority_ok(authority: str) -> bool:
    userinfo, at, host_port = authority.rpartition("@")
    if at and ("@" in userinfo or not _USERINFO_RE.fullmatch(userinfo)):
        return False
    if host_port.startswith("["):
        literal, bracket, port = host_port[1:].partition("]")
        if not bracket or "%" in literal:
            return False
        if not _IP_FUTURE_RE.fullmatch(literal):
            try:
                ipaddress.IPv6Address(literal)
            except ValueError:
                return False
        port = port[1:] if port.startswith(":") else "x" if port else ""
    else:
        host, _, port = host_port.partition(":")
        if not _REG_NAME_RE.fullmatch(host):
            return False
    return port.isascii() and (port == "" or port.isdigit())


def _uri_ok(text: str, *, relative: bool) -> bool:
    """RFC 3986 syntax: a URI, or with ``relative`` a URI reference."""
    scheme = _SCHEME_RE.match(text)
    if scheme is None and not relative:
        return False
    rest = text[scheme.end():] if scheme else text
    hier, _, fragment = rest.partition("#")
    path, _, query = hier.partition("?")
    if path.startswith("//"):
        authority, slash, tail = path[2:].partition("/")
        if not _authority_ok(authority):
            return False
        path = slash + tail
    elif scheme is None and ":" in path.split("/", 1)[0]:
        return False  # a relative path's first segment cannot hold a colon
    return all(_PCHARS_RE.fullmatch(part) for part in (path, query, fragment))


def _is_uri(instance: object) -> bool:
    return not isinstance(instance, str) or _uri_ok(instance, relative=False)


def _is_uri_reference(instance: object) -> bool:
    return not isinstance(instance, str) or _uri_ok(instance, relative=True)


def _is_uri_template(instance: object) -> bool:
    return not isinstance(instance, str) or _URI_TEMPLATE_RE.fullmatch(instance) is not None


#: RFC 3339 / RFC 3986 / RFC 6570 syntax checks, used where jsonschema lacks the optional package.
_EXTRA_FORMATS = {
    "date-time": _is_date_time,
    "time": _is_time,
    "uri": _is_uri,
    "uri-reference": _is_uri_reference,
    "uri-template": _is_uri_template,
}
_FORMAT_CHECKERS: dict[type[Validator], jsonschema.FormatChecker] = {}


def _format_checker(cls: type[Validator]) -> jsonschema.FormatChecker:
    """``cls``'s format checker, plus guardrail's checks for common formats it cannot check here."""
    checker = _FORMAT_CHECKERS.get(cls)
    if checker is None:
        base = cls.FORMAT_CHECKER
        checker = jsonschema.FormatChecker(formats=())
        checker.checkers = dict(base.checkers)
        for name, function in _EXTRA_FORMATS.items():
            if name not in checker.checkers:
                checker.checks(name)(function)
        _FORMAT_CHECKERS[cls] = checker
    return checker


# -- $ref loops that never move into the instance ------------------------------------------


def _in_place_cycle(document: Any, registry: referencing.Registry, specification: Any,
                    ref_hides_siblings: bool) -> list[str]:
    """Pointers of a loop of in-place subschemas reachable from the root, or ``[]``.

    Iterative (a deep schema must not recurse here); nodes are dicts, by identity.
    """
    if not isinstance(document, Mapping):
        return []
    refs = Refs(document, registry=registry, specification=specification)
    # Reachable nodes, with their pointer, and the in-place edges between them.
    where: dict[int, str] = {id(document): ""}
    edges: dict[int, list[int]] = {}
    todo: list[tuple[Mapping[str, Any], str]] = [(document, "")]
    while todo:
        node, pointer = todo.pop()
        out = edges[id(node)] = []
        hidden = ref_hides_siblings and "$ref" in node  # up to draft 7 a "$ref" makes its siblings ignored
        targets: list[tuple[Any, str, bool]] = [
            (sub, pointer + join_pointer(path), path[0] in IN_PLACE)
            for path, sub in ([] if hidden else subschemas(node, definitions=False))
            if isinstance(sub, Mapping)
        ]
        ref = node.get("$ref")
        if isinstance(ref, str):
            resolved = refs.lookup(ref, where=node)  # unresolvable refs are _check_refs' business
            if isinstance(resolved, Mapping):
                label = unquote(ref[1:]) if ref.startswith("#") else ref  # "#/$defs/a" -> "/$defs/a"
                targets.append((resolved, label, True))
        for sub, sub_pointer, in_place in targets:
            if in_place:
                out.append(id(sub))
            if id(sub) not in where:
                where[id(sub)] = sub_pointer
                todo.append((sub, sub_pointer))
    # A cycle among in-place edges (three-colour depth-first search, with an explicit stack).
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in edges:
        if state.get(start):
            continue
        path = [start]
        stack = [iter(edges[start])]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):]
                return [where[n] or "/" for n in loop]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges.get(nxt, ())))
    return []


def _refs(document: Any, ref_hides_id: bool = False) -> Iterator[tuple[str, str, str]]:
    """Yield (pointer, base URI, ref) for every ``$ref`` string in a schema, tracking ``$id`` scopes."""
    bases: dict[str, str] = {}
    for node in walk(document):
        base = "" if node.parent is None else bases[node.parent]
        node_id, ref = node.schema.get("$id"), node.schema.get("$ref")
        if isinstance(node_id, str) and not node_id.startswith("#") and not (ref_hides_id and "$ref" in node.schema):
            base = urljoin(base, node_id) if base else node_id
        bases[node.pointer] = base
        if isinstance(ref, str) and (not ref.startswith("#") or ref == "#" or ref.startswith("#/")):
            yield f"{node.pointer}/$ref", base, ref


def _patterns(document: Any) -> Iterator[tuple[str, str, str]]:
    """Yield (pointer, keyword, regex) for every ``pattern`` and ``patternProperties`` key of a schema."""
    for node in walk(document):
        pattern, by_pattern = node.schema.get("pattern"), node.schema.get("patternProperties")
        if isinstance(pattern, str):
            yield f"{node.pointer}/pattern", "pattern", pattern
        if isinstance(by_pattern, Mapping):
            for regex in by_pattern:
                yield f"{node.pointer}/patternProperties/{escape(regex)}", "patternProperties", str(regex)


def shipped_schemas_dir() -> Path:
    """The folder of schemas shipped with guardrail (package data, or ``schemas/`` in a checkout)."""
    packaged = Path(__file__).parent / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "schemas"


def shipped_schema_names() -> list[str]:
    """Names accepted by ``Schema.load`` as shipped schemas, e.g. ``"invoice"``."""
    folder = shipped_schemas_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def _locate(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if path.suffix == ".json" or path.exists() or "/" in str(source):
        if not path.is_file():
            raise SchemaError(f"schema file {str(path)!r} does not exist")
        return path
    shipped = shipped_schemas_dir() / f"{source}.json"
    if shipped.is_file():
        return shipped
    names = ", ".join(shipped_schema_names()) or "none found"
    raise SchemaError(f"no schema named {str(source)!r}: give a path to a .json file or one of: {names}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file {str(path)!r}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{str(path)!r} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if not isinstance(document, (dict, bool)):
        raise SchemaError(f"{str(path)!r} must hold a JSON object, got {type(document).__name__}")
    return document  # type: ignore[return-value]
