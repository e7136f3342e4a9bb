"""Show an extraction field by field while the model writes it.

``Guard.stream`` runs a prompt exactly as ``run`` does (constrained decoding, validation, re-asks)
and yields what happens as it happens: each piece of the answer comes with the JSON complete so
far and the JSON Pointers it just completed, so a UI can fill in fields as they land. An answer
that turns out invalid is re-asked; the next attempt's ``attempt_start`` event says to clear what
was shown. The last event holds the validated ``Result``, the one ``run`` returns.

Here the model is the default embedded one, Gemma 3 270M (transformers, token by token from its
decode loop); a server (``base_url=``) streams by server-sent events, and your own function
streams by returning an iterator of text chunks.

Run: python examples/streaming_example.py ["text to extract from"]
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from guardrail import Guard, GuardError, StreamEvent
from guardrail.leaves import resolve

TEXT = ("Invoice INV-100 dated 2024-05-10 from Acme Tools Ltd to Baker Street Garage: "
        "2 x torque wrench at GBP 45.00 each. Total: GBP 90.00.")


def main(text: str = TEXT, schema: Any = "invoice", max_new_tokens: int = 256) -> Any:
    """Stream the extraction of ``text``, printing each field as it lands; returns the validated data."""
    guard: Guard[Any] = Guard(schema, max_new_tokens=max_new_tokens, threads=1)
    started = time.perf_counter()
    try:
        for event in guard.stream(text):
            if event.kind == "attempt_start" and event.number > 1:  # type: ignore[union-attr]
                print(f"-- attempt {event.number}: the answer above was not valid, starting over")  # type: ignore[union-attr]
            elif isinstance(event, StreamEvent):
                for pointer in event.completed:
                    value = resolve(event.value, pointer)
                    if not isinstance(value, (dict, list)):  # a leaf field: show it as soon as it is whole
                        print(f"{time.perf_counter() - started:6.2f} s  {pointer} = {json.dumps(value)}")
            elif event.kind == "run_end":
                result = event.result  # type: ignore[union-attr]
                print(f"{time.perf_counter() - started:6.2f} s  valid after {len(result.attempts)} attempt(s)")
                return result.data
    except GuardError as error:  # raised after the last event, as run raises it
        print("no valid output:", error)
    return None


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else TEXT)
