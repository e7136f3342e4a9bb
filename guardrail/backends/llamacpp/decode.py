"""The pieces of the llama.cpp decode loop that need no backend: the prompt, the mask and the draw.

``_tokens`` turns a prompt into tokens (through the GGUF's chat template) and the positions where
its messages end; ``_feed_prompt`` evaluates it, starting from a KV-cache snapshot of a shared
prefix when one is saved (``_save``); ``_allowed`` reads the tokens a grammar's matcher
(``grammars``) allows next and ``_draw`` samples one. ``LlamaCppBackend._one`` runs the loop.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from guardrail.backends.base import Prompt, Sampling
from guardrail.backends.llamacpp.model import _LoadedLlama, _Snapshot
from guardrail.backends.reasoning_grammar import think_opened
from guardrail.messages import text_only

#: The shortest prompt prefix worth a KV-cache snapshot, in tokens.
_MIN_PREFIX = 32


# --------------------------------------------------------------------------------------------
# The prompt


def _tokens(loaded: _LoadedLlama, prompt: Prompt) -> tuple[list[int], list[int], bool]:
    """The prompt as tokens (through the GGUF's chat template when it has one), its cuts, and whether
    it opens a thinking block (``reasoning_grammar.think_opened``).

    The cuts are the token positions where a message ends (where the tokens of the leading
    messages alone stop), found from the prompt alone: the prompt is always evaluated in
    pieces between them, and KV-cache snapshots are taken only there (``_feed_prompt``).
    """
    prompt = text_only(prompt, "LlamaCppBackend")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    llama = loaded.llama
    if loaded.formatter is None:
        if isinstance(prompt, str):
            text = prompt
        else:  # a base model without a template: a plain transcript that ends where the answer goes
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
        return list(llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)), [], think_opened(text)

    def encode(text: str) -> list[int]:
        # The template writes any special tokens itself (transformers: add_special_tokens=False).
        return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    text = loaded.formatter(messages=messages).prompt
    tokens = encode(text)
    cuts = []
    for end in range(1, len(messages)):
        head = loaded.history_formatter(messages=messages[:end]).prompt
        if head and text.startswith(head):
            part = encode(head)
            if 0 < len(part) < len(tokens) and tokens[:len(part)] == part:
                cuts.append(len(part))
    return tokens, sorted(set(cuts)), think_opened(text)


def _feed_prompt(llama_cpp: Any, loaded: _LoadedLlama, tokens: list[int], cuts: list[int], threads: int,
                 prefix_cache_mb: float) -> None:
    """Evaluate the prompt into an empty KV cache, starting from a saved prefix when one fits.

    Outputs must not depend on what ran before, and llama.cpp's results do depend, slightly,
    on how a prompt is split into batches and on where its cells lie in the KV cache. So:

    * the cache is cleared first, so the cells lie as in a fresh process (llama.cpp's server
      instead keeps the cells of the previous request, which reorders them);
    * the prompt is always evaluated in the same pieces, cut where its messages end
      (``cuts``, which depend on the prompt only);
    * snapshots (``llama_state_seq_get_data``) are taken, and restored, only at those cuts:
      a restored prefix holds the very bytes that evaluating it would write, and the rest is
      computed exactly as without the snapshot.

    A cut is saved once a recent prompt shared it (the system prompt, the examples: whatever
    the requests of a guard have in common), within ``prefix_cache_mb``, least recently used
    out first. Tests check that outputs and log-probabilities are the same bit for bit with
    and without snapshots.
    """
    llama = loaded.llama
    llama._ctx.kv_cache_clear()
    llama.reset()
    start = 0
    save_at: set[int] = set()
    budget = int(prefix_cache_mb * 2**20)
    if budget > 0 and cuts:
        for cut in reversed(cuts):  # the longest saved prefix first
            key = (threads, tuple(tokens[:cut]))
            snapshot = loaded.snapshots.get(key)
            if snapshot is None:
                continue
            if llama_cpp.llama_state_seq_set_data(llama.ctx, snapshot.state, snapshot.size, 0) == snapshot.size:
                start = cut
                llama.input_ids[:cut] = tokens[:cut]
                llama.n_tokens = cut
                loaded.snapshots.move_to_end(key)
                loaded.prefix_hits += 1
            else:  # refused: forget it, and evaluate everything
                del loaded.snapshots[key]
                llama._ctx.kv_cache_clear()
                llama.reset()
            break
        shared = max((_common(tokens, earlier) for count, earlier in loaded.recent if count == threads), default=0)
        save_at = {cut for cut in cuts if start < cut <= shared and cut >= _MIN_PREFIX}
        loaded.recent.append((threads, tuple(tokens)))
    for end in [*(cut for cut in cuts if cut > start), len(tokens)]:
        llama.eval(tokens[start:end])
        start = end
        if end in save_at:
            _save(llama_cpp, loaded, (threads, tuple(tokens[:end])), budget)


def _save(llama_cpp: Any, loaded: _LoadedLlama, key: tuple[int, tuple[int, ...]], budget: int) -> None:
    """Snapshot the sequence state under ``key``, then drop the least recently used beyond ``budget`` bytes."""
    import ctypes

    size = int(llama_cpp.llama_state_seq_get_size(loaded.llama.ctx, 0))
    if size > budget:
        return
    state = (ctypes.c_uint8 * size)()
    written = int(llama_cpp.llama_state_seq_get_data(loaded.llama.ctx, state, size, 0))
    if written <= 0:
        return
    loaded.snapshots[key] = _Snapshot(state, written)
    loaded.snapshots.move_to_end(key)
    while sum(s.size for s in loaded.snapshots.values()) > budget:
        loaded.snapshots.popitem(last=False)  # the least recently used


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# The choice of each token


def _allowed(matcher: Any, bitmask: Any, n_vocab: int) -> Any:
    """The tokens ``matcher`` allows next, as a boolean array; None when it allows none."""
    import llguidance.numpy
    import numpy as np

    if matcher.is_error():
        return None
    llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
    words = bitmask[0] if sys.byteorder == "little" else bitmask[0].byteswap()
    allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)
    if allowed.shape[0] < n_vocab:  # logits wider than the grammar's vocabulary
        allowed = np.pad(allowed, (0, n_vocab - allowed.shape[0]))
    return allowed if allowed.any() else None


def _draw(logprobs: Any, sampling: Sampling, rng: Any) -> int:
    """Sample a token as transformers does: temperature, then top-k, then top-p (keeping at least one)."""
    import numpy as np

    scores = logprobs / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.shape[0])
        scores = np.where(scores < np.partition(scores, -k)[-k], -np.inf, scores)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        order = np.argsort(scores, kind="stable")  # ascending, as transformers' TopPLogitsWarper
        probs = np.exp(scores[order] - np.max(scores))
        cumulative = np.cumsum(probs / probs.sum())
        drop = cumulative <= 1 - sampling.top_p
        drop[-1] = False
        scores = scores.copy()
        scores[order[drop]] = -np.inf
    probs = np.exp(scores - np.max(scores))
    cumulative = np.cumsum(probs)
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), scores.shape[0] - 1))
