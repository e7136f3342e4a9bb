"""Choosing each row's next token: repetition penalty, grammar mask, log-probability, then a draw.

Every row of the running batch decodes with its own options (``Sampling``), its own grammar state
and its own random generator, so a row's output does not depend on what it was batched with:
greedy rows take the argmax, sampled rows draw from a generator seeded with the request's seed.
The order is the one transformers' ``generate`` used: repetition penalty, the grammar mask, then
temperature, top-k and top-p. The log-probability recorded for the chosen token is taken after
the mask and before temperature/top-k/top-p: the model's distribution at temperature 1
restricted to what the grammar allows and renormalised, the *constrained distribution*. It is the
same whether the token was then picked greedily or sampled, so confidences are comparable across
strategies (the warped distribution would make every greedy choice look certain).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from guardrail.backends.base import Sampling
from guardrail.backends.local.engines import bitmask_bias
from guardrail.backends.local.head import SparseHead


def choose(rows: Sequence[Any], device: Any, fail: Callable[[Any, BaseException], None],
           head: SparseHead | None = None) -> dict[int, int]:
    """Each running row's next token (keyed by ``id(row)``), its log-probability recorded on the
    row. ``rows`` are the scheduler's ``rows.Row`` objects, each holding the model's output at
    its last position: the next token's scores, or with ``head`` the hidden state they come from
    (``guardrail.backends.local.head``: only the tokens the grammar allows are scored). A row
    whose grammar raises is handed to ``fail`` and gets only end tokens."""
    width = head.vocabulary if head is not None else int(rows[0].last.shape[-1])
    mask = grammar_mask(rows, width, fail)
    if head is None:
        scores = torch.stack([row.last for row in rows]).float()
    else:
        allowed = [(mask[i] == 0).nonzero().squeeze(1).to(device) if bool(torch.isinf(mask[i]).any()) else None
                   for i in range(len(rows))]
        scores = head.scores(torch.stack([row.last for row in rows]), allowed).float()
    for i, row in enumerate(rows):
        penalty = row.request.sampling.repetition_penalty
        if penalty is not None and row.seen is not None:
            penalise(scores[i], row.seen, penalty)
    scores = scores + mask.to(device)
    logprobs = torch.log_softmax(scores, dim=-1)
    chosen: dict[int, int] = {}
    for i, row in enumerate(rows):
        token = draw(scores[i], row.request.sampling, row.generator)
        chosen[id(row)] = token
        row.logprobs.append(float(logprobs[i, token]))
    return chosen


def grammar_mask(rows: Sequence[Any], width: int, fail: Callable[[Any, BaseException], None]) -> torch.Tensor:
    """The additive mask of every row: its grammar's allowed tokens; only end tokens for a broken
    row or one whose grammar allows nothing (validation will say why)."""
    bias = torch.zeros((len(rows), width))
    by_engine: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        if row.matcher is not None and not row.broken:
            by_engine.setdefault(id(row.request.grammar.engine), []).append(i)
    for members in by_engine.values():
        engine = rows[members[0]].request.grammar.engine
        bitmask = torch.zeros((len(members), engine.words(width)), dtype=torch.int32)
        for j, i in enumerate(members):
            try:
                engine.fill(rows[i].matcher, bitmask, j)
            except Exception as exc:  # noqa: BLE001 - this row's grammar failed: end the row with it
                fail(rows[i], exc)
        bias[members] = bitmask_bias(bitmask, width)
    for i, row in enumerate(rows):
        stuck = not row.broken and row.matcher is not None and bool(torch.isinf(bias[i]).all())
        if row.broken or stuck:
            bias[i] = float("-inf")
            bias[i, [t for t in row.request.eos_ids if t < width]] = 0.0
    return bias


def penalise(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """transformers' repetition penalty, in place on one row: every token already in the row
    (prompt included) is divided by ``penalty`` when positive, multiplied when negative."""
    picked = scores.gather(0, seen)
    scores.scatter_(0, seen, torch.where(picked < 0, picked * penalty, picked / penalty))


def draw(scores: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """One token from one row's masked scores: argmax at temperature 0, else a seeded draw."""
    if sampling.temperature <= 0:
        return int(torch.argmax(scores))
    logits = scores / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, logits.shape[0])
        threshold = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - sampling.top_p)
        drop[-1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def generator_for(sampling: Sampling, device: Any) -> torch.Generator | None:
    """A generator seeded with the request's seed (None: greedy, or unseeded sampling)."""
    if sampling.temperature <= 0 or sampling.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(sampling.seed)
    return generator


def token_logprobs(tokenizer: Any, tokens: list[int], logprobs: Sequence[float],
                   text: str) -> list[tuple[str, float]] | None:
    """``(token text, log-probability)`` per token, the texts joining exactly to ``text``.

    A token's text is what it adds to the decoded prefix: ``decode(tokens[:i + 1])`` minus
    ``decode(tokens[:i])``. A token that ends inside a multi-byte character adds nothing until
    the token that completes the character (which gets the whole character), so characters are
    never split or replaced. ``None`` when the pieces cannot be made to join to ``text`` (a
    tokenizer whose decoding of a prefix is not a prefix of the decoding).
    """
    pieces: list[str] = []
    done = ""  # decoded text already handed out
    for i in range(len(tokens)):
        current = tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)
        if current.endswith("\ufffd") and i + 1 < len(tokens):
            pieces.append("")  # an unfinished character: wait for the token that completes it
            continue
        if not current.startswith(done):
            return None
        pieces.append(current[len(done):])
        done = current
    if "".join(pieces) != text or len(logprobs) < len(tokens):
        return None
    return [(piece, float(value)) for piece, value in zip(pieces, logprobs, strict=False)]
