"""Turn the issues of a failed attempt into the next prompt: the re-ask.

Issues stay structured until here; this module is the one place they become words. The message
is short and concrete (path, problem, bad value) because small models follow short
instructions better than long ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from guardrail.backends.base import Prompt
from guardrail.result import Issue

#: The default re-ask. ``{issues}`` is a bullet list; ``{output}`` the previous answer.
DEFAULT_REASK_TEMPLATE = (
    "Your previous answer was not valid:\n{issues}\n"
    "Reply again with only the corrected JSON, no explanation."
)

#: At most this many issues are listed; the rest are counted, so the message stays short.
MAX_LISTED = 8

#: How much failure history a re-ask carries: ``"last"``, the original request plus only the
#: latest failed output and its issues (the prompt does not grow with the attempts), or
#: ``"all"``, every earlier failure too (each re-ask extends the previous request).
REASK_HISTORIES = ("last", "all")
DEFAULT_REASK_HISTORY = "last"


def describe_issues(issues: Sequence[Issue], limit: int = MAX_LISTED) -> str:
    """A bullet list of issues, one per line.

    >>> print(describe_issues([Issue("/items/0/price", "-3 is less than the minimum of 0", -3)]))
    - at /items/0/price: -3 is less than the minimum of 0
    """
    lines = [f"- at {issue.path or '/'}: {issue.message}" for issue in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"- and {len(issues) - limit} more problems")
    return "\n".join(lines)


def reask(prompt: Prompt, output: str | None, issues: Sequence[Issue], template: str = DEFAULT_REASK_TEMPLATE,
          error: str | None = None) -> Prompt:
    """The prompt for the next attempt after ``output`` failed with ``issues``.

    A string prompt gets the previous answer and the problems appended; chat messages get an
    assistant turn (the answer) and a user turn (the problems). After a call that raised
    (``output`` is ``None``) the prompt is sent again unchanged.
    """
    if output is None:
        return prompt
    message = template.format(issues=describe_issues(issues) or f"- {error}", output=output)
    if isinstance(prompt, str):
        return f"{prompt}\n\nYour previous answer:\n{output}\n\n{message}"
    return [*prompt, {"role": "assistant", "content": output}, {"role": "user", "content": message}]


def next_request(original: Prompt, previous: Prompt, output: str | None, issues: Sequence[Issue],
                 template: str = DEFAULT_REASK_TEMPLATE, error: str | None = None, *,
                 history: str = DEFAULT_REASK_HISTORY) -> Prompt:
    """The request for the next attempt, keeping ``history`` (``"last"`` or ``"all"``) of the failures.

    ``original`` is the first request of the run, ``previous`` the one just sent. With ``"last"``
    the next request is ``original`` plus the latest failed ``output`` and its ``issues`` only, so
    attempt 5 is no longer than attempt 2; with ``"all"`` it is ``reask(previous, ...)``. After
    a call that raised (``output`` is ``None``) the previous request is sent again: it already
    holds the latest failed output, if any.

    >>> first = next_request("Extract.", "Extract.", "{", [Issue("", "not JSON")], "Fix: {issues}")
    >>> next_request("Extract.", first, "[", [Issue("", "not JSON")], "Fix: {issues}")
    'Extract.\\n\\nYour previous answer:\\n[\\n\\nFix: - at /: not JSON'
    """
    if history not in REASK_HISTORIES:
        raise ValueError(f"reask_history must be one of {', '.join(map(repr, REASK_HISTORIES))}, got {history!r}")
    if output is None:
        return previous
    return reask(original if history == "last" else previous, output, issues, template, error)


def compact(value: Any, limit: int = 120) -> str:
    """A short JSON rendering of a value for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
