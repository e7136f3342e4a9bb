"""Shared prompt prefixes: the guard's instructions are prefilled once, not once per prompt.

Every prompt a guard sends starts with the same system message (task and schema) and few-shot
turns: about 150-350 tokens of the embedded model's 160-400 token prompts. Prefilling them again
for every row of a batch, and again for every call, was most of a batched report's time on a CPU
(16 rows x 370 tokens is about 10 s of prefill, against 1 s for the shared part once).

``PrefixCache`` keeps the key/value states of a few such prefixes (batch 1, least recently used
first out) and turns a batch into ``(input_ids, attention_mask, cache)`` for ``model.generate``:
each row is ``prefix + padding + its own suffix``, the padding masked out, so positions (taken
from the mask's running sum) and attention are what they would have been without the cache.
Rows always keep at least one token of their own for the model to read.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

# Shorter prefixes are not worth a second forward call.
MIN_PREFIX_TOKENS = 32
MAX_ENTRIES = 4


class PrefixCache:
    """Key/value states of recently used prompt prefixes for one model."""

    def __init__(self, model: Any, *, max_entries: int = MAX_ENTRIES, min_tokens: int = MIN_PREFIX_TOKENS) -> None:
        self.model = model
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.supported = True  # False once the model's cache turns out not to be plain key/value states
        self.prefills = 0  # prefixes computed (a miss)
        self.hits = 0  # batches that reused a stored prefix
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def inputs(self, rows: Sequence[Sequence[int]], pad_id: int,
               instructions_end: Callable[[], int] = lambda: 0) -> dict[str, Any]:
        """``generate`` keyword arguments for ``rows`` (token ids, unpadded).

        A stored prefix of every row is reused; otherwise the longest common prefix of the batch
        is prefilled and stored, or for a single row its instructions: the first
        ``instructions_end()`` tokens (called only then, as it renders the chat template again).
        Falls back to plain left padding when no prefix of at least ``min_tokens`` is shared.
        """
        if not self.supported:
            return left_padded(rows, pad_id, self.model.device)
        stored = self._reusable(rows)
        shared: tuple[int, ...] | None = None
        if stored is not None and len(rows) == 1:
            # A single row never replaces a stored prefix: its "instructions" on a re-ask include
            # its own earlier answer, which no other prompt will share.
            shared = stored
        else:
            shortest = min(len(r) for r in rows)
            length = min(_common_prefix(rows) if len(rows) > 1 else instructions_end(), shortest - 1)
            # A stored prefix serves unless the batch shares much more (few-shot turns after the
            # instructions, say).
            if stored is not None and len(stored) + self.min_tokens > length:
                shared = stored
            elif length >= self.min_tokens:
                shared = tuple(rows[0][:length])
        if shared is None:
            return left_padded(rows, pad_id, self.model.device)
        if shared is stored:
            with self._lock:
                self.hits += 1
        states = self._states(shared)
        if states is None:
            return left_padded(rows, pad_id, self.model.device)
        return self._with_prefix(rows, shared, states, pad_id)

    def _reusable(self, rows: Sequence[Sequence[int]]) -> tuple[int, ...] | None:
        """The longest stored prefix of every row (leaving each row a token of its own)."""
        with self._lock:
            shortest = min(len(r) for r in rows)
            fitting = [p for p in self._entries
                       if len(p) < shortest and all(tuple(r[: len(p)]) == p for r in rows)]
            if not fitting:
                return None
            best = max(fitting, key=len)
            self._entries.move_to_end(best)
            return best

    def _states(self, prefix: tuple[int, ...]) -> list[tuple[Any, Any]] | None:
        with self._lock:
            found = self._entries.get(prefix)
        if found is not None:
            return found
        import torch

        ids = torch.tensor([prefix], device=self.model.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        states = _layer_states(cache)
        if states is None:  # sliding windows, recurrent state...: this model decodes without the cache
            self.supported = False
            return None
        with self._lock:
            self._entries[prefix] = states
            self.prefills += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return states

    def _with_prefix(self, rows: Sequence[Sequence[int]], prefix: tuple[int, ...], states: list[tuple[Any, Any]],
                     pad_id: int) -> dict[str, Any]:
        import torch
        from transformers import DynamicCache

        suffixes = [list(r[len(prefix):]) for r in rows]
        width = max(len(s) for s in suffixes)
        ids = [[*prefix, *[pad_id] * (width - len(s)), *s] for s in suffixes]
        mask = [[1] * len(prefix) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes]
        batch = len(rows)
        # generate() appends to the cache in place: every call gets its own copy of the states.
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(states):
            cache.update(keys.expand(batch, *keys.shape[1:]).clone(),
                         values.expand(batch, *values.shape[1:]).clone(), layer)
        device = self.model.device
        return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device),
                self._cache_name: cache}


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    length = min(len(r) for r in rows)
    for i in range(length):
        token = first[i]
        if any(r[i] != token for r in rows):
            return i
    return length


def _layer_states(cache: Any) -> list[tuple[Any, Any]] | None:
    """Per-layer (keys, values) of a plain full-attention cache; None for any other kind."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return None
        return [(layer.keys, layer.values) for layer in layers]
    if isinstance(cache, tuple) and all(isinstance(layer, tuple) and len(layer) == 2 for layer in cache):
        return list(cache)  # transformers 4.x legacy format
    return None


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
