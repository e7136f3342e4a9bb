"""Read a JSON document while it streams in: the complete part so far, and what just completed.

``PartialJSON`` is fed the model's text chunk by chunk. After each chunk it knows

* the **partial value**: for an object, the members whose value has fully arrived (a string up
  to its closing quote, a number up to the character after it) plus the nested objects and
  lists that have begun, each holding its own complete parts; for a list, its complete items
  plus the one that has begun if it is an object or a list. A half-written string, number or
  ``true`` never shows; so every value it shows is final, and later chunks only add members
  and items (the partial value is always a "prefix" of the final one);
* the **completed pointers**: the JSON Pointers (RFC 6901, ``~`` and ``/`` escaped) of the
  values that this chunk completed, inner before outer: scalar members and items, then objects
  and lists when they close, ``""`` for the whole document.

>>> reader = PartialJSON()
>>> reader.feed('Sure! ```json\\n{"name": "Ada", "tags": ["x", "y').value
{'name': 'Ada', 'tags': ['x']}
>>> update = reader.feed('"], "age": 3')
>>> update.value, update.completed
({'name': 'Ada', 'tags': ['x', 'y']}, ('/tags/1', '/tags'))
>>> update = reader.feed('6}\\n```')
>>> update.value, update.completed, update.done
({'name': 'Ada', 'tags': ['x', 'y'], 'age': 36}, ('/age', ''), True)

Where the document starts follows ``guardrail.validation``'s extraction: text that starts with
a JSON value is that value; anything else (prose, a ```` ```json ```` fence) is skipped up to
the first ``{`` or ``[``. A text that starts with a scalar (``42``, ``"yes"``, ``true``) only
has it as its value when nothing but whitespace follows, so a scalar is shown at ``finish()``;
if prose follows instead (``3 items: {...}``), the reader goes on to the first bracket.
Whatever follows a complete object or list (a closing fence, an explanation) is ignored.

The value is parsed as ``json.loads`` parses it (last duplicate key wins, surrogate pairs
combined), except that ``NaN`` and ``Infinity``, which guardrail's validation refuses, are
syntax errors. A syntax error inside the document stops the reader: ``error`` says what and at
which offset of the stream (0-based), and later chunks change nothing (the guard's validation of the
whole text then reports the issue). ``feed`` never raises for text.

Each character is read once, so a stream of n characters costs O(n) however it is chunked.
``value`` is one live object that later chunks extend in place (that is what makes it O(n));
take ``copy.deepcopy(update.value)`` to keep a snapshot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from guardrail.leaves import escape

__all__ = ["PartialJSON", "PartialUpdate"]

_WS = frozenset(" \t\n\r")
_WS_RUN = re.compile(r"[ \t\n\r]*")
# A run of string characters that need no attention: not a quote, backslash or control character.
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')
_NUMBER_RUN = re.compile(r"[0-9eE.+\-]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS: dict[str, tuple[str, Any]] = {"t": ("true", True), "f": ("false", False), "n": ("null", None)}
_HEX = frozenset("0123456789abcdefABCDEF")
_NUMBER_START = frozenset("-0123456789")
_PROSE_BRACKET = re.compile(r"[{\[]")

# Where the reader is in the document.
_START, _PROSE, _BODY, _TAIL, _DONE, _FAILED = range(6)
# What the innermost container expects next.
_KEY_OR_END, _KEY, _COLON, _VALUE, _VALUE_OR_END, _COMMA_OR_END = range(6)
# The scalar being read, if any.
_NONE, _STRING, _NUMBER_TOKEN, _LITERAL = range(4)

_MISSING: Any = object()


@dataclass(frozen=True)
class PartialUpdate:
    """What ``PartialJSON.feed`` (or ``finish``) learned from one chunk.

    ``value`` is the partial value (``None`` until the document has begun, see ``started``);
    ``completed`` the pointers of the values this chunk completed; ``done`` whether the whole
    document is complete; ``error`` the syntax error that stopped the reader, if any.
    """

    value: Any
    completed: tuple[str, ...]
    done: bool
    started: bool
    error: str | None = None


class _Frame:
    """An object or list that has begun: the container itself, its pointer, what comes next."""

    __slots__ = ("container", "expect", "is_object", "key", "pointer")

    def __init__(self, container: dict[str, Any] | list[Any], pointer: str) -> None:
        self.container = container
        self.pointer = pointer
        self.is_object = isinstance(container, dict)
        self.expect = _KEY_OR_END if self.is_object else _VALUE_OR_END
        self.key: str | None = None


class PartialJSON:
    """Reads one JSON document from text chunks; see the module docstring.

    >>> r = PartialJSON()
    >>> [r.feed(chunk).completed for chunk in ['[1, {"a', '": tr', 'ue}', ']']]
    [('/0',), (), ('/1/a', '/1'), ('',)]
    """

    def __init__(self) -> None:
        self._phase = _START
        self._stack: list[_Frame] = []
        self._root: Any = _MISSING
        self._tail_value: Any = _MISSING  # a top-level scalar, until the text ends or prose follows
        self._token = _NONE
        self._is_key = False
        self._parts: list[str] = []
        self._escape: str | None = None  # None: not in an escape; "": after "\"; "uXX": reading \uXXXX
        self._high: int | None = None  # a high surrogate waiting for its low half
        self._literal = ""
        self._literal_value: Any = None
        self._literal_at = 0
        self._number_at = 0  # where the number being read began, in the whole text
        self._offset = 0  # characters read before the current chunk
        self._completed: list[str] = []
        self.error: str | None = None
        self.finished = False

    # -- public ------------------------------------------------------------------------------

    @property
    def value(self) -> Any:
        """The partial value (a live object; ``None`` until the document begins)."""
        return None if self._root is _MISSING else self._root

    @property
    def done(self) -> bool:
        """Whether the document is complete (an object or list closed, or a scalar at ``finish``)."""
        return self._phase == _DONE

    @property
    def started(self) -> bool:
        """Whether the document has begun (its value exists, possibly partial)."""
        return self._root is not _MISSING

    def feed(self, chunk: str) -> PartialUpdate:
        """Read the next chunk of text; return the partial value and what this chunk completed."""
        if not isinstance(chunk, str):
            raise TypeError(f"PartialJSON.feed takes text (str), got {type(chunk).__name__}")
        if self.finished:
            raise ValueError("PartialJSON.feed after finish(): start a new PartialJSON for a new document")
        self._completed = []
        if self._phase not in (_DONE, _FAILED):
            self._read(chunk)
        self._offset += len(chunk)
        return self._update()

    def finish(self) -> PartialUpdate:
        """The text has ended: complete a top-level scalar (a number ends only here)."""
        self._completed = []
        if not self.finished and self._phase not in (_DONE, _FAILED):
            if self._token == _NUMBER_TOKEN and not self._stack:
                self._end_number()
            if self._phase == _TAIL:
                self._root, self._phase = self._tail_value, _DONE
                self._completed.append("")
        self.finished = True
        return self._update()

    def _update(self) -> PartialUpdate:
        return PartialUpdate(self.value, tuple(self._completed), self._phase == _DONE,
                             self._root is not _MISSING, self.error)

    # -- the reader ----------------------------------------------------------------------------

    def _read(self, text: str) -> None:
        i, n = 0, len(text)
        while i < n and self._phase not in (_DONE, _FAILED):
            token = self._token
            if token == _STRING:
                i = self._read_string(text, i)
            elif token == _NUMBER_TOKEN:
                run = _NUMBER_RUN.match(text, i)
                if run is not None:
                    self._parts.append(run.group())
                    i = run.end()
                if i < n:  # the number ends at the first character that cannot continue it
                    self._end_number()
            elif token == _LITERAL:
                i = self._read_literal(text, i)
            elif self._phase == _BODY:
                i = self._read_structure(text, i)
            elif self._phase == _START:
                i = _WS_RUN.match(text, i).end()  # type: ignore[union-attr]
                if i < n:
                    self._begin(text[i], i)
                    i += 1
            elif self._phase == _PROSE:
                found = _PROSE_BRACKET.search(text, i)
                if found is None:
                    return
                self._open(found.group())
                i = found.end()
            else:  # _TAIL: a top-level scalar is the document only if nothing but whitespace follows
                i = _WS_RUN.match(text, i).end()  # type: ignore[union-attr]
                if i < n:
                    self._tail_value, self._phase = _MISSING, _PROSE

    def _begin(self, char: str, at: int) -> None:
        """The first non-space character: a document, or prose to skip."""
        if char in "{[":
            self._open(char)
        elif char == '"':
            self._start_string(is_key=False)
        elif char in _NUMBER_START:
            self._start_number(char, at)
        elif char in _LITERALS:
            self._start_literal(char)
        else:
            self._phase = _PROSE

    def _read_structure(self, text: str, i: int) -> int:
        """Between values inside an object or list: one structural character (or a value's start)."""
        n = len(text)
        i = _WS_RUN.match(text, i).end()  # type: ignore[union-attr]
        if i >= n:
            return i
        char = text[i]
        frame = self._stack[-1]
        expect = frame.expect
        if expect in (_VALUE, _VALUE_OR_END):
            if char == "]" and expect == _VALUE_OR_END and not frame.is_object:
                self._close()
            elif char in "{[":
                self._open(char)
            elif char == '"':
                self._start_string(is_key=False)
            elif char in _NUMBER_START:
                self._start_number(char, i)
            elif char in _LITERALS:
                self._start_literal(char)
            else:
                self._fail(f"expected a value, found {char!r}", i)
        elif expect in (_KEY, _KEY_OR_END):
            if char == '"':
                self._start_string(is_key=True)
            elif char == "}" and expect == _KEY_OR_END:
                self._close()
            else:
                self._fail(f"expected a member name in double quotes, found {char!r}", i)
        elif expect == _COLON:
            if char == ":":
                frame.expect = _VALUE
            else:
                self._fail(f"expected ':' after the member name, found {char!r}", i)
        elif char == ",":  # _COMMA_OR_END
            frame.expect = _KEY if frame.is_object else _VALUE
        elif char == ("}" if frame.is_object else "]"):
            self._close()
        else:
            closer = "'}'" if frame.is_object else "']'"
            self._fail(f"expected ',' or {closer}, found {char!r}", i)
        return i + 1

    # -- containers ------------------------------------------------------------------------------

    def _open(self, bracket: str) -> None:
        container: dict[str, Any] | list[Any] = {} if bracket == "{" else []
        if not self._stack:
            self._root, self._phase = container, _BODY
            self._stack.append(_Frame(container, ""))
            return
        pointer = self._attach(container)
        self._stack.append(_Frame(container, pointer))

    def _close(self) -> None:
        frame = self._stack.pop()
        self._completed.append(frame.pointer)
        if self._stack:
            self._stack[-1].expect = _COMMA_OR_END
        else:
            self._phase = _DONE

    def _attach(self, value: Any) -> str:
        """Put a value (complete, or a container that has begun) into the innermost container."""
        frame = self._stack[-1]
        if frame.is_object:
            key = frame.key
            assert key is not None
            frame.container[key] = value  # type: ignore[call-overload]
            pointer = f"{frame.pointer}/{escape(key)}"
        else:
            pointer = f"{frame.pointer}/{len(frame.container)}"
            frame.container.append(value)  # type: ignore[union-attr]
        frame.expect = _COMMA_OR_END
        return pointer

    def _complete(self, value: Any) -> None:
        """A scalar has fully arrived."""
        self._token = _NONE
        if not self._stack:  # a top-level scalar: the document only if the text ends here
            self._tail_value, self._phase = value, _TAIL
            return
        self._completed.append(self._attach(value))

    # -- scalars ---------------------------------------------------------------------------------

    def _start_string(self, *, is_key: bool) -> None:
        self._token, self._is_key, self._parts, self._escape, self._high = _STRING, is_key, [], None, None

    def _read_string(self, text: str, i: int) -> int:
        n = len(text)
        parts = self._parts
        while i < n:
            if self._escape is not None:
                i = self._read_escape(text, i)
                if self._token != _STRING:  # a bad escape ended the string
                    return i
                continue
            run = _PLAIN.match(text, i)
            if run is not None:
                if self._high is not None:
                    parts.append(chr(self._high))
                    self._high = None
                parts.append(run.group())
                i = run.end()
                continue
            char = text[i]
            if char == '"':
                if self._high is not None:
                    parts.append(chr(self._high))
                    self._high = None
                value = "".join(parts)
                if self._is_key:
                    self._token = _NONE
                    frame = self._stack[-1]
                    frame.key, frame.expect = value, _COLON
                else:
                    self._complete(value)
                return i + 1
            if char == "\\":
                self._escape = ""
                i += 1
                continue
            return self._fail_scalar(f"control character {char!r} inside a string (escape it)", i)
        return i

    def _read_escape(self, text: str, i: int) -> int:
        escape = self._escape
        assert escape is not None
        if escape == "":
            char = text[i]
            if char == "u":
                self._escape = "u"
                return i + 1
            if char not in _ESCAPES:
                return self._fail_scalar(f"invalid escape \\{char} in a string", i)
            self._escape = None
            self._add_char(_ESCAPES[char])
            return i + 1
        # Reading the four hex digits of \uXXXX, possibly across chunks.
        take = min(5 - len(escape), len(text) - i)
        digits = text[i : i + take]
        for offset, digit in enumerate(digits):
            if digit not in _HEX:
                return self._fail_scalar(f"invalid \\u escape: {digit!r} is not a hex digit", i + offset)
        escape += digits
        if len(escape) < 5:
            self._escape = escape
            return i + take
        self._escape = None
        code = int(escape[1:], 16)
        if self._high is not None and 0xDC00 <= code <= 0xDFFF:  # the low half of a surrogate pair
            self._parts.append(chr(0x10000 + ((self._high - 0xD800) << 10) + (code - 0xDC00)))
            self._high = None
        elif 0xD800 <= code <= 0xDBFF:
            self._add_char("")
            self._high = code
        else:
            self._add_char(chr(code))
        return i + take

    def _add_char(self, char: str) -> None:
        if self._high is not None:  # a lone high surrogate stays, as json.loads keeps it
            self._parts.append(chr(self._high))
            self._high = None
        if char:
            self._parts.append(char)

    def _start_number(self, char: str, i: int) -> None:
        self._token, self._parts, self._number_at = _NUMBER_TOKEN, [char], self._offset + i

    def _end_number(self) -> None:
        """The number's characters have all arrived (the next character cannot continue it)."""
        text = "".join(self._parts)
        match = _NUMBER.fullmatch(text)
        problem = None if match else f"{text!r} is not a JSON number"
        value: Any = None
        if match:
            try:
                value = float(text) if match.group(1) or match.group(2) else int(text)
            except ValueError as exc:  # an integer longer than Python's int-from-text limit
                problem = f"the number {text[:20]}... cannot be read: {exc}"
        if problem is not None:
            self._fail_scalar(problem, self._number_at - self._offset)
            return
        self._complete(value)

    def _start_literal(self, char: str) -> None:
        self._literal, self._literal_value = _LITERALS[char]
        self._token, self._literal_at = _LITERAL, 1

    def _read_literal(self, text: str, i: int) -> int:
        word = self._literal
        while i < len(text) and self._literal_at < len(word):
            if text[i] != word[self._literal_at]:
                return self._fail_scalar(f"expected {word!r}, found {word[: self._literal_at] + text[i]!r}", i)
            self._literal_at += 1
            i += 1
        if self._literal_at == len(word):
            self._complete(self._literal_value)
        return i

    # -- failures --------------------------------------------------------------------------------

    def _fail_scalar(self, message: str, i: int) -> int:
        """A bad scalar at character ``i`` of the chunk: inside the document a syntax error; at the
        top level it was prose after all, read again from ``i`` for a bracket. Where to go on."""
        self._token = _NONE
        if self._stack:
            self._fail(message, i)
            return i + 1
        self._phase = _PROSE
        return i

    def _fail(self, message: str, i: int) -> None:
        """A syntax error at character ``i`` of the chunk: the reader stops."""
        self._token = _NONE
        self._phase = _FAILED
        self.error = f"not valid JSON at offset {self._offset + i} of the text: {message}"
