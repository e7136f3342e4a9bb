"""Key/value states for continuous batching: one buffer of slots, and the stored prompt prefixes.

``SlotCache`` is a transformers ``Cache`` whose layers keep the running batch's keys and values in
preallocated buffers ``[slots, heads, capacity, head_dim]``. The active rows occupy slots
``0 .. rows - 1`` (a row that leaves is replaced by the last one, so a forward pass always reads a
contiguous batch), and every row is *right-aligned*: its states fill the columns
``row_start .. end`` of a window ``start .. end`` shared by all rows, and a decode step writes
each row's new token at column ``end``. Because a row's states are contiguous, a column's
distance from ``end`` is the true distance between tokens, so causal and sliding-window masks built
from the window are exact, and positions come from ``end - row_start``. A row admitted later is
written with its right edge at ``end``; the window grows to the left when it needs room and is
trimmed when the rows that needed that room have left. Writes are in place: no step copies the
whole cache, as ``DynamicCache``'s concatenation does.

``PrefixStore`` keeps the states of a few prompt prefixes (the guard's instructions, shared by
every prompt of a task), so an admitted row prefills only what follows them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

#: Shorter shared prefixes are not worth a forward pass of their own.
MIN_PREFIX_TOKENS = 32
#: Prefixes kept (least recently used out first): one per task of a report, with room to spare.
MAX_PREFIXES = 16

#: Per layer: (keys, values), each ``[batch, heads, tokens, head_dim]``.
LayerStates = list[tuple[torch.Tensor, torch.Tensor]]


class _SlotLayer(CacheLayerMixin):
    """One layer's view of the slot buffers (the cache owns the window; layers only read and write it)."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: SlotCache, index: int) -> None:
        super().__init__()
        self.owner = owner
        self.index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.owner.write(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.width + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.width

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """The running batch's key/value states; see the module docstring for the layout."""

    def __init__(self, layers: int, slots: int) -> None:
        super().__init__(layers=[_SlotLayer(self, i) for i in range(layers)])
        self.slots = slots
        self.rows = 0  # active rows, in slots 0 .. rows - 1
        self.start = 0  # the window shared by the rows: columns start .. end
        self.end = 0
        self.row_start: list[int] = []  # per active row: its first column
        self.keys: list[torch.Tensor] = []  # per layer: [slots, heads, capacity, head_dim]
        self.values: list[torch.Tensor] = []

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    # -- called by the model's attention layers, during a forward pass ----------------------------

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the step's new states at ``end`` and return every row's states so far."""
        steps = keys.shape[2]
        stop = self.end + steps
        self.keys[layer][: self.rows, :, self.end:stop] = keys
        self.values[layer][: self.rows, :, self.end:stop] = values
        return self.keys[layer][: self.rows, :, self.start:stop], self.values[layer][: self.rows, :, self.start:stop]

    # -- called by the scheduler, between forward passes --------------------------------------------

    def attention_mask(self, steps: int = 1) -> torch.Tensor:
        """``[rows, width + steps]``: 1 on each row's own columns (including the ``steps`` to come)."""
        columns = torch.arange(self.width + steps)
        offsets = torch.tensor(self.row_start, dtype=torch.long) - self.start
        return (columns.unsqueeze(0) >= offsets.unsqueeze(1)).long()

    def positions(self) -> torch.Tensor:
        """``[rows, 1]``: the position of each row's next token (its length so far)."""
        return (self.end - torch.tensor(self.row_start, dtype=torch.long)).unsqueeze(1)

    def reserve(self, steps: int) -> None:
        """Make room for ``steps`` more columns at the right of the window."""
        if self.end + steps > self.capacity:
            self._relayout(0, max(2 * (self.width + steps), 64))

    def advance(self, steps: int) -> None:
        """The forward pass wrote ``steps`` columns: they belong to the window now."""
        self.end += steps

    def admit(self, pieces: Sequence[LayerStates]) -> int:
        """Put one row's states in the next free slot; returns the slot.

        ``pieces`` are consecutive parts of the row (a stored prefix, then its own tokens), batch 1.
        """
        if self.rows >= self.slots:
            raise RuntimeError("no free slot")  # the scheduler admits only into free slots
        length = sum(piece[0][0].shape[2] for piece in pieces)
        if not self.keys:
            self._allocate(pieces[0], max(2 * length, 64))
        if self.rows == 0:  # an empty batch: start a fresh window
            self.start = self.end = 0
        if self.end - length < 0:  # not enough room to the left of the right edge
            self._relayout(length - self.width, max(2 * (length + 16), self.capacity))
        self.start = min(self.start, self.end - length)
        slot = self.rows
        column = self.end - length
        for piece in pieces:
            size = piece[0][0].shape[2]
            for layer, (keys, values) in enumerate(piece):
                self.keys[layer][slot, :, column:column + size] = keys[0]
                self.values[layer][slot, :, column:column + size] = values[0]
            column += size
        self.row_start.append(self.end - length)
        self.rows += 1
        return slot

    def remove(self, slot: int) -> int | None:
        """Drop the row in ``slot``; the last row moves into it. Returns the slot it moved from, if any."""
        last = self.rows - 1
        moved = None
        if slot != last:
            window = slice(self.start, self.end)
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, window] = keys[last, :, window]
                values[slot, :, window] = values[last, :, window]
            self.row_start[slot] = self.row_start[last]
            moved = last
        self.row_start.pop()
        self.rows -= 1
        if self.row_start:  # columns no row uses any more leave the window
            self.start = min(self.row_start)
        else:
            self.start = self.end
        return moved

    def _allocate(self, states: LayerStates, capacity: int) -> None:
        self.keys = [torch.zeros((self.slots, k.shape[1], capacity, k.shape[3]), dtype=k.dtype, device=k.device)
                     for k, _ in states]
        self.values = [torch.zeros((self.slots, v.shape[1], capacity, v.shape[3]), dtype=v.dtype, device=v.device)
                       for _, v in states]

    def _relayout(self, left: int, capacity: int) -> None:
        """Copy the window into new buffers, ``left`` free columns before it (zeros: masked anyway)."""
        capacity = max(capacity, left + self.width + 1)
        width = self.width
        for store in (self.keys, self.values):
            for layer, old in enumerate(store):
                new = torch.zeros((old.shape[0], old.shape[1], capacity, old.shape[3]), dtype=old.dtype,
                                  device=old.device)
                new[:, :, left:left + width] = old[:, :, self.start:self.end]
                store[layer] = new
        shift = left - self.start
        self.row_start = [s + shift for s in self.row_start]
        self.start, self.end = left, left + width


class PrefixStore:
    """States of recently used prompt prefixes, batch 1, least recently used dropped first."""

    def __init__(self, max_entries: int = MAX_PREFIXES, min_tokens: int = MIN_PREFIX_TOKENS) -> None:
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[int, ...], LayerStates] = OrderedDict()
        self._lock = threading.Lock()
        self.prefills = 0  # prefixes computed and stored (misses)
        self.hits = 0  # rows that started from a stored prefix

    def longest(self, tokens: Sequence[int]) -> tuple[int, ...] | None:
        """The longest stored prefix of ``tokens`` that leaves at least one token of its own."""
        with self._lock:
            fitting = [p for p in self._entries if len(p) < len(tokens) and tuple(tokens[: len(p)]) == p]
            if not fitting:
                return None
            best = max(fitting, key=len)
            self._entries.move_to_end(best)
            return best

    def get(self, prefix: tuple[int, ...]) -> LayerStates | None:
        with self._lock:
            return self._entries.get(prefix)

    def put(self, prefix: tuple[int, ...], states: LayerStates) -> None:
        with self._lock:
            self._entries[prefix] = states
            self.prefills += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def lengths(self) -> list[int]:
        with self._lock:
            return [len(p) for p in self._entries]


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares."""
    first = rows[0]
    length = min(len(r) for r in rows)
    for i in range(length):
        token = first[i]
        if any(r[i] != token for r in rows):
            return i
    return length


def layer_states(cache: Any) -> LayerStates | None:
    """Per-layer (keys, values) of a plain full-attention cache; None for any other kind."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ != "DynamicLayer" or layer.keys is None for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]
