"""Stop a row that repeats itself: small models loop inside lists until the token budget runs out.

The embedded 135M model, asked for a list, sometimes writes the same item again and again
(``"playlist_owner": ["my", "The Hallway Lights Flicker", "The Hallway Lights Flicker", ...``).
Such a row runs to ``max_new_tokens``, holds its whole batch for that long, and its retry used to
double the budget for the same loop. A row whose newest tokens are one unit of 2-32 tokens
repeated back to back (at least 4 times, and over at least 24 tokens) is stopped instead: its
``Generation`` ends with ``finish_reason="repetition"``, and the guard re-asks with a repetition
penalty rather than a bigger budget.

The cost is that a genuine answer with one item repeated that often (``[0, 0, 0, 0, 0, 0, 0, 0,
0, 0, 0, 0, 0]``) is cut as well; ``LocalBackend(stop_loops=False)`` turns the check off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

MIN_UNIT, MAX_UNIT = 2, 32
MIN_REPEATS = 4
MIN_SPAN = 24  # tokens: a short unit must repeat more often before it counts as a loop
# The penalty of the re-ask after a loop: the value the README recommends for the embedded model's
# list loops, and the one the schema-valid-rate benchmark runs with.
RETRY_PENALTY = 1.15


def ends_in_loop(tokens: Sequence[int]) -> bool:
    """Whether ``tokens`` end with one unit repeated back to back often enough to be a loop.

    >>> ends_in_loop([7, 1, 2, 3, 4, 5, 6] * 5)
    True
    >>> ends_in_loop([1, 2, 3, 4, 5, 6] * 3)
    False
    """
    n = len(tokens)
    for unit in range(MIN_UNIT, MAX_UNIT + 1):
        repeats = max(MIN_REPEATS, -(-MIN_SPAN // unit))
        span = unit * repeats
        if span > n:
            continue
        tail = tokens[n - span:]
        if all(tail[i] == tail[i - unit] for i in range(unit, span)):
            return True
    return False


class LoopStop:
    """A transformers stopping criterion: True for the rows whose new tokens end in a loop.

    ``stopped`` maps a row to how many new tokens it had when it was stopped (the padding
    transformers appends afterwards is not the model's). A row that has produced an end token is
    finished already: the padding after it repeats one token, and is not a loop.
    """

    def __init__(self, prompt_width: int, end_ids: Iterable[int]) -> None:
        self.prompt_width = prompt_width
        self.end_ids = frozenset(end_ids)
        self.stopped: dict[int, int] = {}
        self._ended: set[int] = set()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for row, tokens in enumerate(input_ids[:, self.prompt_width:].tolist()):
            if row not in self.stopped and row not in self._ended:
                if tokens and tokens[-1] in self.end_ids:
                    self._ended.add(row)
                elif ends_in_loop(tokens):
                    self.stopped[row] = len(tokens)
            done.append(row in self.stopped)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
