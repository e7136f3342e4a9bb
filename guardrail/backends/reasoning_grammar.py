"""The grammar that lets a local reasoning model think before it answers: free text, then the schema.

A reasoning model (Qwen3, DeepSeek-R1 distills, QwQ...) writes ``<think> ... </think>`` and then
its answer. Held to the JSON grammar from the first token it could not think at all. With
``reasoning=`` the local runtimes (``LocalBackend``, ``LlamaCppBackend``) use this llguidance
Lark grammar instead::

    start: "<think>" think "</think>" /\\n{0,2}/ answer
    think[stop="</think>", max_tokens=512]: /(.|\\n)*/
    answer: %json {... the decoding schema ...}

``think`` is a lazy lexeme: any text, ending at the first ``</think>`` (its ``stop``, which the
rule after it writes out again, so nothing is backtracked). ``max_tokens`` is the thinking
budget: once it is spent the grammar allows nothing but ``</think>``, so the model must answer.
Up to two newlines may follow the block (Qwen3 writes ``</think>\\n\\n``), then the answer is
held to the schema exactly as without reasoning. Chat templates that open the block in the
prompt (DeepSeek-R1's ``<think>\\n`` generation prompt) are recognised: the grammar then starts
inside the block (``think_opened``).

>>> print(reasoning_lark('{"type": "object"}', 64, opened=False))
start: "<think>" think "</think>" /\\n{0,2}/ answer
think[stop="</think>", max_tokens=64]: /(.|\\n)*/
answer: %json {"type": "object"}
<BLANKLINE>
"""

from __future__ import annotations

from guardrail.reasoning import CLOSE_TAG, OPEN_TAG

__all__ = ["DEFAULT_REASONING_TOKENS", "TAG_TOKENS", "reasoning_budget", "reasoning_lark", "think_opened"]

#: Tokens of thinking ``reasoning=True`` allows.
DEFAULT_REASONING_TOKENS = 512
#: Room for the tags and the newlines around the block, on top of the thinking budget.
TAG_TOKENS = 16


def reasoning_budget(option: bool | int) -> int:
    """Tokens of thinking for a ``reasoning=`` option (0: none); ``ValueError`` for anything else.

    >>> reasoning_budget(False), reasoning_budget(True), reasoning_budget(200)
    (0, 512, 200)
    """
    if option is False:
        return 0
    if option is True:
        return DEFAULT_REASONING_TOKENS
    if isinstance(option, int) and option >= 1:
        return option
    raise ValueError(f"reasoning must be True, False or a positive number of thinking tokens, got {option!r}")


def tag_room(budget: int) -> int:
    """Tokens an output may use on top of its answer budget: the thinking and its tags (0 without)."""
    return budget + TAG_TOKENS if budget else 0


def think_opened(prompt_text: str) -> bool:
    """Whether the rendered prompt already opens the thinking block (the output starts inside it)."""
    return prompt_text.rstrip().endswith(OPEN_TAG)


def reasoning_lark(schema_json: str, budget: int, *, opened: bool) -> str:
    """The Lark grammar: a thinking block of at most ``budget`` tokens, then JSON valid against ``schema_json``
    (a JSON Schema as JSON text, with its ``x-guidance`` layout options if any)."""
    if budget < 1:
        raise ValueError(f"the thinking budget must be at least 1 token, got {budget}")
    head = "" if opened else f'"{OPEN_TAG}" '
    return (f'start: {head}think "{CLOSE_TAG}" /\\n{{0,2}}/ answer\n'
            f'think[stop="{CLOSE_TAG}", max_tokens={budget}]: /(.|\\n)*/\n'
            f"answer: %json {schema_json}\n")
