"""Few-shot examples chosen for each input: the nearest ones by a cheap lexical similarity.

A small model copies the shape of the examples it is shown, keys included: shown how to fill
"playlist" for "add X to my Y playlist", it fills "playlist" for the next such request. So a
prompt shows the ``k`` examples of the task's pool most like its input, by TF-IDF weighted word
overlap (cosine over lower-cased word counts, each word weighted by how rare it is in the pool),
the nearest last, right before the input. Ties keep the pool's order, so the choice is
deterministic. Only the pool is searched (a suite's ``examples``), never its cases.

>>> pool = [("play some jazz", 1), ("book a table for two", 2), ("play the album Blue", 3)]
>>> [value for _, value in nearest(pool, "play the song Yellow", 2, text=lambda e: e[0])]
[1, 3]
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["nearest", "similarity"]

T = TypeVar("T")
_WORD = re.compile(r"\w+")


def _words(text: str) -> Counter[str]:
    return Counter(w.lower() for w in _WORD.findall(text))


def similarity(query: str, candidates: Sequence[str]) -> list[float]:
    """Cosine similarity of TF-IDF word vectors between ``query`` and each candidate (IDF over the candidates)."""
    bags = [_words(c) for c in candidates]
    count = len(bags)
    documents: Counter[str] = Counter()
    for bag in bags:
        documents.update(bag.keys())
    weight = {w: math.log((1 + count) / (1 + n)) + 1.0 for w, n in documents.items()}
    unseen = math.log(1 + count) + 1.0  # a word no candidate has: the rarest weight

    def vector(bag: Counter[str]) -> dict[str, float]:
        return {w: n * weight.get(w, unseen) for w, n in bag.items()}

    target = vector(_words(query))
    target_norm = math.sqrt(sum(v * v for v in target.values())) or 1.0
    scores = []
    for bag in bags:
        other = vector(bag)
        norm = math.sqrt(sum(v * v for v in other.values())) or 1.0
        scores.append(sum(v * other.get(w, 0.0) for w, v in target.items()) / (target_norm * norm))
    return scores


def nearest(pool: Sequence[T], query: str, k: int, *, text: Callable[[T], str]) -> list[T]:
    """The ``k`` items of ``pool`` most similar to ``query`` (``text(item)`` is compared), least
    similar first, so the nearest one comes last."""
    scores = similarity(query, [text(item) for item in pool])
    chosen = sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:k]
    return [pool[i] for i in reversed(chosen)]
