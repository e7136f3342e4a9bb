"""The transformers runtime: a local model whose decoding is constrained to the schema.

``LocalBackend`` is the public name (``guardrail.backends.local.LocalBackend``); the modules
beside it each hold one concern: ``models`` (loading, once per process), ``engines`` (grammar
engines), ``grammars`` (which grammar constrains a request), ``text`` (prompts to model text and
tokens back), ``scheduler`` (the continuous-batching decode loop), ``rows`` (what it works on),
``kv`` (key/value states of the running rows and of stored prompt prefixes) and ``sampling``
(choosing each row's token).
"""

from guardrail.backends.decoding_schema import DEFAULT_STRING_CAP, SEPARATORS, decoding_schema
from guardrail.backends.local.backend import LocalBackend
from guardrail.backends.local.engines import ENGINES, EngineRefused
from guardrail.backends.local.models import LOCAL_HINT, unload_models

__all__ = [
    "DEFAULT_STRING_CAP",
    "ENGINES",
    "LOCAL_HINT",
    "SEPARATORS",
    "EngineRefused",
    "LocalBackend",
    "decoding_schema",
    "unload_models",
]
