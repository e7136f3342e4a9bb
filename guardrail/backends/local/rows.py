"""What the decode loop works on: a request, the row it becomes while it holds a slot, and what it
produced when it ends. A row carries everything that makes its output its own: its grammar
matcher, its sampling options and random generator, its tokens so far and their probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from guardrail.backends.base import Sampling
from guardrail.backends.local.engines import Engine
from guardrail.backends.local.sampling import generator_for


@dataclass(frozen=True)
class Grammar:
    """A compiled grammar and the engine that drives its matchers."""

    engine: Engine
    compiled: Any


@dataclass
class Finished:
    """What a request produced: its tokens (an end token excluded) and how it ended."""

    tokens: list[int]
    count: int  # tokens generated, an end token included
    finish_reason: str  # "stop", "length" or "repetition"
    logprobs: list[float]
    prompt_tokens: int
    seconds: float  # from admission to the last token


@dataclass(eq=False)
class Request:
    """One prompt to decode. ``shared``: how many leading tokens other prompts are likely to share
    (the guard's instructions), worth storing as a prefix when no stored one fits."""

    tokens: list[int]
    sampling: Sampling
    eos_ids: frozenset[int]
    grammar: Grammar | None = None
    shared: int = 0
    stop_loops: bool = True
    share_prefix: bool = True  # may start from (and add to) the stored prefixes
    on_token: Callable[[int], None] | None = None
    future: Future[Finished] = field(default_factory=Future)


class Row:
    """A request while it holds a slot."""

    def __init__(self, request: Request, device: Any) -> None:
        self.request = request
        grammar = request.grammar
        self.matcher = grammar.engine.new_matcher(grammar.compiled) if grammar is not None else None
        self.broken = False  # its matcher rejected a token: it can only end now
        self.generated: list[int] = []
        self.logprobs: list[float] = []
        self.generator = generator_for(request.sampling, device)
        self.seen: torch.Tensor | None = None  # token ids for the repetition penalty
        if request.sampling.repetition_penalty is not None:
            self.seen = torch.tensor(sorted(set(request.tokens)), dtype=torch.long, device=device)
        self.admitted = time.perf_counter()
        # The model's output at the row's last position: the next token's scores, or the hidden state
        # they come from when the scheduler scores only the allowed tokens (``head.SparseHead``).
        self.last: torch.Tensor | None = None
