"""Load a schema once, from whatever the user has, and check it before any call.

A schema arrives as a pydantic model class, a JSON Schema dict, a path to a ``.json`` file, or
the name of a schema shipped in ``schemas/``. ``Schema.load`` normalises all four into one
``Schema``: the JSON Schema, the pydantic model if any, a name and a content hash (the key for
compiled grammars). Problems surface here, at construction, as ``SchemaError`` with the JSON
Pointer of the offending keyword, not at the first call.

Remote ``$ref`` targets are never fetched: pass their contents with ``refs={uri: schema}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urldefrag, urljoin

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as _METASCHEMAS
from pydantic import BaseModel

from guardrail.errors import SchemaError

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# Keywords whose values are data, not subschemas: a "$ref" inside them is not a reference.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


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
        checker = cls.FORMAT_CHECKER if self.assert_formats else None
        return cls(self.json_schema, registry=self._registry, format_checker=checker)

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
            location = _pointer(error.absolute_path)
            raise SchemaError(
                f"{error.message} (keyword {error.validator!r} of the metaschema)",
                location=location,
                keyword=str(error.absolute_path[-1]) if error.absolute_path else str(error.validator),
            )
        self._check_patterns()
        self._check_refs()

    def _check_patterns(self) -> None:
        # Python's re is what validates "pattern": a regex it cannot compile (such as the ECMA-262
        # "\p{L}") would otherwise raise re.error at the first validation, not here.
        for location, keyword, regex in _patterns(self.json_schema, ""):
            try:
                re.compile(regex)
            except re.error as exc:
                raise SchemaError(
                    f"{keyword} {regex!r} is not a regular expression guardrail can use (Python re): {exc}",
                    location=location,
                    keyword=keyword,
                ) from None

    def _check_refs(self) -> None:
        resolver = self._registry.resolver_with_root(self._specification.create_resource(self.json_schema))
        # Up to draft 7 a "$ref" makes its siblings, "$id" included, ignored.
        ref_hides_id = self._validator_class in _REF_HIDES_SIBLINGS
        for location, ref_base, ref in _refs(self.json_schema, "", "", ref_hides_id):
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


def _refs(node: Any, base: str, location: str, ref_hides_id: bool = False) -> Iterator[tuple[str, str, str]]:
    """Yield (pointer, base URI, ref) for every ``$ref`` string in a schema, tracking ``$id`` scopes."""
    if isinstance(node, dict):
        node_id = node.get("$id")
        ref = node.get("$ref")
        if isinstance(node_id, str) and not node_id.startswith("#") and not (ref_hides_id and "$ref" in node):
            base = urljoin(base, node_id) if base else node_id
        if isinstance(ref, str) and (not ref.startswith("#") or ref == "#" or ref.startswith("#/")):
            yield f"{location}/$ref", base, ref
        for key, value in node.items():
            if key in _DATA_KEYWORDS:
                continue
            if key == "properties" and isinstance(value, dict):
                # property names are data: walk into each property's schema, not into the name
                for name, sub in value.items():
                    yield from _refs(sub, base, f"{location}/properties/{_escape(name)}", ref_hides_id)
                continue
            yield from _refs(value, base, f"{location}/{_escape(key)}", ref_hides_id)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _refs(item, base, f"{location}/{index}", ref_hides_id)


def _patterns(node: Any, location: str) -> Iterator[tuple[str, str, str]]:
    """Yield (pointer, keyword, regex) for every ``pattern`` and ``patternProperties`` key of a schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _DATA_KEYWORDS:
                continue
            here = f"{location}/{_escape(key)}"
            if key == "pattern" and isinstance(value, str):
                yield here, "pattern", value
            elif key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    yield from _patterns(sub, f"{here}/{_escape(name)}")
            else:
                if key == "patternProperties" and isinstance(value, dict):
                    for regex in value:
                        yield f"{here}/{_escape(regex)}", "patternProperties", regex
                yield from _patterns(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _patterns(item, f"{location}/{index}")


def _escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _pointer(parts: Any) -> str:
    """JSON Pointer (RFC 6901) for a sequence of keys and indexes."""
    return "".join(f"/{_escape(p)}" for p in parts)


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
