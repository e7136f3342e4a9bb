"""One streamed attempt, read as it arrives: the deltas a backend yields become ``StreamEvent`` s.

``StreamReader`` is the part of ``Guard.stream`` that decides and does no I/O: fed each
``StreamDelta`` of one attempt, it separates a reasoning model's thinking from the answer
(``guardrail.reasoning.ReasoningStream``; thinking a server sends apart is reasoning as it comes),
reads the answer with ``guardrail.partial.PartialJSON``, and says what the caller may show:

* ``text`` and ``reasoning``: the answer and thinking text this delta made certain;
* ``value``: the JSON data complete so far, a snapshot (later events never change it): the
  members whose value has fully arrived, plus the objects and lists that have begun. For a
  pydantic schema it is the same plain data: the model instance is built from the whole,
  validated answer only (``Result.value``);
* ``completed``: the JSON Pointers of the values this delta completed, inner before outer
  (``""``: the whole document);
* ``done``: the backend's stream has ended.

At the end, ``generation()`` is the ``Generation`` the whole stream amounts to, the one the guard
validates exactly as it validates ``generate``'s.

>>> from guardrail.backends.base import StreamDelta
>>> reader = StreamReader(attempt=1)
>>> for delta in [StreamDelta('{"a": 1, "b'), StreamDelta('": [2'), StreamDelta("]}"), StreamDelta(final=True)]:
...     event = reader.feed(delta)
...     print(repr(event.text), event.value, event.completed)
'{"a": 1, "b' {'a': 1} ('/a',)
'": [2' {'a': 1, 'b': []} ()
']}' {'a': 1, 'b': [2]} ('/b/0', '/b', '')
'' {'a': 1, 'b': [2]} ()
>>> reader.generation().text
'{"a": 1, "b": [2]}'
"""

from __future__ import annotations

import copy
from typing import Any

from guardrail.backends.base import Generation, StreamDelta, assemble
from guardrail.events import StreamEvent
from guardrail.partial import PartialJSON
from guardrail.reasoning import ReasoningStream

__all__ = ["StreamReader"]

_OPENERS = ("{", "[")


class StreamReader:
    """Turns one attempt's stream deltas into ``StreamEvent`` s, and at the end into its ``Generation``."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self._split = ReasoningStream()
        self._json = PartialJSON()
        self._deltas: list[StreamDelta] = []
        self._snapshot: Any = None

    def feed(self, delta: StreamDelta) -> StreamEvent:
        """The event for one delta (every delta gives one, perhaps with nothing new to show)."""
        self._deltas.append(delta)
        thought, said = self._split.feed(delta.text) if delta.text else ("", "")
        if delta.final:
            more_thought, more_said = self._split.finish()
            thought, said = thought + more_thought, said + more_said
        completed: tuple[str, ...] = ()
        if said:
            completed = self._json.feed(said).completed
        if delta.final:
            completed += self._json.finish().completed
        # A value changes only when a member completes or a container begins: copy it only then.
        if completed or any(opener in said for opener in _OPENERS):
            self._snapshot = copy.deepcopy(self._json.value)
        return StreamEvent(self.attempt, text=said, reasoning=delta.reasoning + thought, value=self._snapshot,
                           completed=completed, done=delta.final)

    def generation(self, duration_s: float | None = None) -> Generation:
        """The whole output, as ``generate`` would have returned it."""
        return assemble(self._deltas, duration_s)
