"""Backends: where text comes from. One interface (``Backend``), one module per kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from guardrail.backends.base import Backend, Generation, Prompt, Sampling
from guardrail.backends.callable import CallableBackend

__all__ = ["RUNTIMES", "Backend", "CallableBackend", "Generation", "Prompt", "Sampling", "resolve"]

#: How a local model runs: ``"transformers"`` (the default) or ``"llamacpp"`` (GGUF files).
RUNTIMES = ("transformers", "llamacpp")


def resolve(llm: Backend | Callable[..., Any] | None, model: str | None, *, timeout_s: float | None = None,
            **options: Any) -> Backend:
    """Pick the backend for ``Guard(llm=..., model=...)``.

    A ``Backend`` is used as is; a callable is wrapped; a ``base_url`` option selects an
    OpenAI-compatible server (``guardrail.backends.remote``), where ``model`` is the server's model
    name; otherwise ``model`` names a local model (``None`` or ``"embedded"`` is the default
    embedded model, ``guardrail.backends.embedded``), run by the ``runtime`` option:
    ``"transformers"`` (the default: any Hugging Face model, batches, GPUs;
    ``guardrail.backends.local``) or ``"llamacpp"`` (a GGUF file run by llama.cpp, faster for
    single requests on a CPU; ``guardrail.backends.llamacpp``).
    """
    if llm is not None and model is not None:
        raise ValueError("give either llm= (your own function or backend) or model=, not both")
    runtime = options.pop("runtime", None)
    if runtime not in (None, *RUNTIMES):
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime is not None and (llm is not None or options.get("base_url") is not None):
        raise ValueError("runtime= chooses how a local model runs; it does not apply to llm= or base_url=")
    base_url = options.pop("base_url", None)
    if base_url is not None:
        if llm is not None:
            raise ValueError("give either llm= (your own function or backend) or base_url=, not both")
        from guardrail.backends.remote import RemoteBackend

        return RemoteBackend(base_url, model, timeout_s=timeout_s, **options)
    if isinstance(llm, Backend):
        return llm
    if llm is not None:
        if options:
            raise TypeError(f"options {sorted(options)} apply to local models, not to an llm= function")
        return CallableBackend(llm, timeout_s=timeout_s)
    if runtime == "llamacpp":
        from guardrail.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, **options)
    from guardrail.backends.local import LocalBackend  # heavy imports only when a local model is used

    return LocalBackend(model, **options)
