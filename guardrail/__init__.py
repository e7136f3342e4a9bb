"""guardrail: trustworthy structured output from LLMs.

Constrain generation to a JSON Schema, validate what comes back, re-ask with the errors, and
measure how robust an extraction stays under noisy prompts.

>>> from guardrail import Guard
>>> Guard({"type": "object"}, llm=lambda prompt: "{}").run("hi").value
{}
"""

from guardrail.backends.base import Backend, Generation, Sampling
from guardrail.errors import BackendError, GuardError, GuardrailError, SchemaError, SuiteError, TransportError
from guardrail.events import StreamEvent
from guardrail.guard import Guard, guard
from guardrail.result import Attempt, Issue, Result
from guardrail.schema import Schema
from guardrail.validation import Validation, validate

#: The one place the version is written: pyproject.toml reads it from here (hatch's dynamic version).
__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "Backend",
    "BackendError",
    "Generation",
    "Guard",
    "GuardError",
    "GuardrailError",
    "Issue",
    "Result",
    "Sampling",
    "Schema",
    "SchemaError",
    "StreamEvent",
    "SuiteError",
    "TransportError",
    "Validation",
    "__version__",
    "guard",
    "validate",
]
