"""Continuous batching: one decode loop per loaded model, rows joining and leaving at every step.

A batch used to last as long as its longest row, and a retry ran alone after it. Here the model
has a fixed number of *slots* (``max_batch``); a request waits in a queue until a slot is free,
is prefilled (from a stored prefix of its prompt when there is one, see ``kv.PrefixStore``),
then decodes one token per step beside whatever else is running. A row that ends (an end token,
the end of its grammar, a loop, its token budget) leaves at once and its slot takes the next
waiting request, new prompt or re-ask alike. Each row keeps its own grammar matcher, sampling
options, random generator and budget (``sampling.py``), so its output is what it would have been
alone: with greedy decoding, identical (tests compare).

The loop runs in a daemon thread that sleeps while there is no work. ``submit`` may be called
from any thread (``Guard.run`` from several threads shares the batch) and returns a
``concurrent.futures.Future``; cancelling it drops the row at the next step. An exception raised
by one row's grammar ends that request with the error and leaves the others running; a failure
of the model's forward pass ends every row it concerned.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from typing import Any

import torch
from transformers import DynamicCache

from guardrail.backends.local.head import SparseHead
from guardrail.backends.local.kv import PrefixStore, SlotCache, common_prefix, layer_states
from guardrail.backends.local.rows import Finished, Grammar, Request, Row
from guardrail.backends.local.sampling import choose
from guardrail.backends.loops import ends_in_loop

__all__ = ["Finished", "Grammar", "Request", "Scheduler"]

logger = logging.getLogger("guardrail")


class Scheduler:
    """The decode loop of one model; see the module docstring."""

    def __init__(self, model: Any, pad_id: int, *, slots: int, prefixes: PrefixStore | None = None,
                 threads: int | None = None, sparse_head: bool | None = None) -> None:
        self.model = model
        # Score only the tokens each row may take (``head``): by default where the vocabulary is large.
        self.head = None if sparse_head is False else SparseHead.of(
            model, **({"min_vocabulary": 0} if sparse_head else {}))
        self.pad_id = pad_id
        self.slots = slots
        self.threads = threads
        self.prefixes = prefixes if prefixes is not None else PrefixStore()
        self.share_prefixes = True  # False once this model's cache turns out not to be plain states
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.layers = int(config.num_hidden_layers)
        self.window: int | None = getattr(config, "sliding_window", None) if getattr(
            config, "use_sliding_window", True) else None
        self.device = model.device
        parameters = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self._keep_arg = "logits_to_keep" if "logits_to_keep" in parameters else None
        self._queue: deque[Request] = deque()
        self._rows: list[Row] = []
        self._cache: SlotCache | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        _RUNNING.add(self)
        #: Statistics for benchmarks: steps run, slot-steps used, rows admitted.
        self.steps = 0
        self.busy_slot_steps = 0
        self.admitted = 0

    # -- the public side: any thread ------------------------------------------------------------

    def submit(self, request: Request) -> Future[Finished]:
        """Queue a request; its future resolves when the row ends."""
        with self._wake:
            self._queue.append(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="guardrail-decode", daemon=True)
                self._thread.start()
            self._wake.notify()
        return request.future

    def close(self) -> None:
        """Stop the decode loop (its thread ends once the step in progress is done); queued requests are cancelled."""
        with self._wake:
            self._closing = True
            for request in self._queue:
                request.future.cancel()
            self._queue.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def resize(self, slots: int) -> None:
        """Change the number of slots (takes effect when the batch next empties)."""
        with self._wake:
            self.slots = slots

    @property
    def occupancy(self) -> float:
        """Share of slot-steps that decoded a row, since the start (1.0 when idle so far)."""
        return self.busy_slot_steps / (self.steps * self.slots) if self.steps else 1.0

    # -- the decode loop: the worker thread only ------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._rows and not self._closing:
                    self._wake.wait()
                if self._closing:
                    self._fail_all(RuntimeError("the decode loop was closed"))
                    return
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - a failed forward pass ends the rows it concerned
                logger.warning("guardrail: the decode step failed: %s: %s", type(exc).__name__, exc)
                self._fail_all(exc)

    def _step(self) -> None:
        threads = self._threads()
        with threads:
            self._drop_cancelled()
            self._admit()
            if not self._rows:
                return
            self.steps += 1
            self.busy_slot_steps += len(self._rows)
            chosen = choose(self._rows, self.device, self._fail, self.head)
            self._finish(chosen)
            if self._rows:
                self._forward([chosen[id(row)] for row in self._rows])

    def _threads(self) -> Any:
        if self.threads is None or torch.get_num_threads() == self.threads:
            return nullcontext()
        return _torch_threads(self.threads)

    def _drop_cancelled(self) -> None:
        for row in [r for r in self._rows if r.request.future.cancelled()]:
            self._remove(row)

    # -- admission ---------------------------------------------------------------------------------

    def _admit(self) -> None:
        free = self.slots - len(self._rows)
        taken: list[Request] = []
        with self._wake:
            if not self._rows and self._cache is not None and self._cache.slots != self.slots:
                self._cache = None  # a resize waits for an empty batch
            while free > 0 and self._queue:
                request = self._queue.popleft()
                if request.future.set_running_or_notify_cancel():
                    taken.append(request)
                    free -= 1
        if not taken:
            return
        for prefix, members in self._plan(taken):
            try:
                self._prefill(prefix, members)
            except Exception as exc:  # noqa: BLE001 - these prompts fail; the running rows go on
                for request in members:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _plan(self, taken: list[Request]) -> list[tuple[tuple[int, ...], list[Request]]]:
        """Group the admitted requests by the stored prefix each starts from (storing new ones)."""
        groups: dict[tuple[int, ...], list[Request]] = {}
        alone: dict[tuple[int, ...], list[Request]] = {}
        for request in taken:
            if not (self.share_prefixes and request.share_prefix):
                groups.setdefault((), []).append(request)
                continue
            stored = self.prefixes.longest(request.tokens)
            if stored is not None:
                groups.setdefault(stored, []).append(request)
            else:  # prompts of one guard begin alike: cluster them by their first tokens
                alone.setdefault(tuple(request.tokens[: self.prefixes.min_tokens]), []).append(request)
        for members in alone.values():
            if len(members) > 1:
                length = min(common_prefix([m.tokens for m in members]), min(len(m.tokens) for m in members) - 1)
            else:
                length = min(members[0].shared, len(members[0].tokens) - 1)
            prefix = self._store(tuple(members[0].tokens[:length])) if length >= self.prefixes.min_tokens else ()
            groups.setdefault(prefix, []).extend(members)
        # A group that shares much more than its stored prefix (few-shot turns after the
        # instructions, say) gets a longer prefix of its own.
        for stored, members in list(groups.items()):
            if stored and len(members) > 1:
                length = min(common_prefix([m.tokens for m in members]), min(len(m.tokens) for m in members) - 1)
                if length >= len(stored) + self.prefixes.min_tokens:
                    longer = self._store(tuple(members[0].tokens[:length]))
                    if longer:
                        del groups[stored]
                        groups.setdefault(longer, []).extend(members)
        return list(groups.items())

    def _store(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        """Compute and keep the states of ``prefix``; ``()`` if this model's cache cannot be kept."""
        if self.prefixes.get(prefix) is not None:
            return prefix
        base = self.prefixes.longest(prefix)
        start = len(base) if base is not None else 0
        cache = DynamicCache()
        if base is not None:
            for layer, (keys, values) in enumerate(self.prefixes.get(base) or []):
                cache.update(keys, values, layer)
        ids = torch.tensor([prefix[start:]], device=self.device)
        positions = torch.arange(start, len(prefix), device=self.device).unsqueeze(0)
        with torch.inference_mode():
            self._call(ids, torch.ones((1, len(prefix)), dtype=torch.long, device=self.device), positions, cache)
        states = layer_states(cache)
        if states is None:  # sliding windows kept short, recurrent state...: no prefixes for this model
            self.share_prefixes = False
            return ()
        self.prefixes.put(prefix, states)
        return prefix

    def _prefill(self, prefix: tuple[int, ...], members: list[Request]) -> None:
        """Prefill each member's tokens after ``prefix`` and give it a slot."""
        stored = self.prefixes.get(prefix) if prefix else None
        if prefix and stored is None:  # evicted meanwhile: prefill whole prompts
            prefix, members = (), members
        if stored is not None:
            self.prefixes.hits += len(members)
        chunks = [members]
        widest = len(prefix) + max(len(m.tokens) - len(prefix) for m in members)
        if self.window is not None and widest > self.window:
            chunks = [[m] for m in members]  # padding would stretch distances past the window
        for chunk in chunks:
            self._prefill_chunk(prefix, stored, chunk)

    def _prefill_chunk(self, prefix: tuple[int, ...], stored: Any, members: list[Request]) -> None:
        device = self.device
        rows: list[Row] = []
        for request in members:
            try:
                rows.append(Row(request, device))
            except Exception as exc:  # noqa: BLE001 - its grammar cannot start: this request fails alone
                request.future.set_exception(exc)
        if not rows:
            return
        start = len(prefix)
        suffixes = [row.request.tokens[start:] for row in rows]
        width = max(len(s) for s in suffixes)
        count = len(rows)
        ids = [[self.pad_id] * (width - len(s)) + s for s in suffixes]
        mask = [[1] * start + [0] * (width - len(s)) + [1] * len(s) for s in suffixes]
        positions = [[start] * (width - len(s)) + list(range(start, start + len(s))) for s in suffixes]
        cache = DynamicCache()
        if stored is not None:
            for layer, (keys, values) in enumerate(stored):
                cache.update(keys.expand(count, *keys.shape[1:]), values.expand(count, *values.shape[1:]), layer)
        with torch.inference_mode():
            logits = self._call(torch.tensor(ids, device=device), torch.tensor(mask, device=device),
                                torch.tensor(positions, device=device), cache)
        states = layer_states(cache)
        if states is None:
            raise RuntimeError("this model's key/value cache is not plain full-attention states; the local "
                               "decode loop cannot batch it")
        if self._cache is None:
            self._cache = SlotCache(self.layers, self.slots)
        for i, row in enumerate(rows):
            own = slice(start + width - len(suffixes[i]), start + width)
            pieces = [] if stored is None else [stored]
            pieces.append([(k[i:i + 1, :, own], v[i:i + 1, :, own]) for k, v in states])
            self._cache.admit(pieces)
            row.last = logits[i]
            self._rows.append(row)
            self.admitted += 1

    # -- one step ----------------------------------------------------------------------------------

    def _finish(self, chosen: dict[int, int]) -> None:
        """Advance each row with its token; rows that end leave their slot."""
        for row in list(self._rows):
            if row.request.future.done():  # failed while masking
                self._remove(row)
                continue
            token = chosen[id(row)]
            request = row.request
            ended: str | None = None
            if token in request.eos_ids:
                ended = "stop"
            else:
                row.generated.append(token)
                if row.matcher is not None and not row.broken:
                    try:
                        if not request.grammar.engine.advance(row.matcher, token):  # type: ignore[union-attr]
                            row.broken = True
                    except Exception as exc:  # noqa: BLE001
                        self._fail(row, exc)
                        self._remove(row)
                        continue
                if row.seen is not None:
                    row.seen = torch.cat([row.seen, torch.tensor([token], device=row.seen.device)])
                if request.on_token is not None:
                    try:
                        request.on_token(token)
                    except Exception as exc:  # noqa: BLE001 - the caller's callback failed: end its row
                        self._fail(row, exc)
                        self._remove(row)
                        continue
                if request.stop_loops and ends_in_loop(row.generated):
                    ended = "repetition"
                elif len(row.generated) >= request.sampling.max_new_tokens:
                    ended = "length"
            if ended is not None:
                count = len(row.generated) + (ended == "stop")
                if not request.future.done():
                    request.future.set_result(Finished(
                        tokens=row.generated, count=count, finish_reason=ended, logprobs=row.logprobs[: len(row.generated)],
                        prompt_tokens=len(request.tokens), seconds=time.perf_counter() - row.admitted))
                self._remove(row)

    def _forward(self, tokens: Sequence[int]) -> None:
        cache = self._cache
        assert cache is not None
        cache.reserve(1)
        device = self.device
        with torch.inference_mode():
            logits = self._call(torch.tensor([[t] for t in tokens], device=device), cache.attention_mask(1).to(device),
                                cache.positions().to(device), cache)
        cache.advance(1)
        for row, row_logits in zip(self._rows, logits, strict=True):
            row.last = row_logits

    def _call(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """One forward pass; at each row's last position the scores ``[rows, vocabulary]``, or with a
        sparse head the final hidden state ``[rows, hidden]``."""
        if self.head is not None:
            return self.head.hidden(ids, mask, positions, cache)
        options: dict[str, Any] = {self._cache_arg: cache}
        if self._keep_arg is not None:
            options[self._keep_arg] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **options)
        return out.logits[:, -1, :]

    # -- leaving -----------------------------------------------------------------------------------

    def _remove(self, row: Row) -> None:
        slot = self._rows.index(row)
        assert self._cache is not None
        moved = self._cache.remove(slot)
        if moved is not None:
            self._rows[slot] = self._rows[moved]
        self._rows.pop()

    def _fail(self, row: Row, exc: BaseException) -> None:
        if not row.request.future.done():
            row.request.future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for row in self._rows:
            self._fail(row, exc)
        self._rows = []
        self._cache = None


_RUNNING: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A decode thread still alive while the interpreter tears down the engines' native objects
    # aborts the process ("terminate called without an active exception"): end them first.
    for scheduler in list(_RUNNING):
        scheduler.close()


class _torch_threads:  # noqa: N801 - used like a function
    """Use ``count`` torch CPU threads for a step (the setting is process-wide: restore it)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.previous = 0

    def __enter__(self) -> None:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.count)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)
