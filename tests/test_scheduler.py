"""The continuous-batching decode loop on small randomly initialised models (nothing downloaded).

Each row must decode exactly as it would alone, whatever joins or leaves the batch around it:
the reference is transformers' own ``generate`` on the row alone. Llama has plain attention;
Mistral a sliding window shorter than the prompts; Gemma 3 alternates sliding and full layers.
The embedded model's own tests are in test_local_backend.py.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="needs torch and transformers",
)

PAD, END = 0, 127
PREFIX = list(range(10, 50))  # 40 tokens of "instructions"
ROWS = [[*PREFIX, 60, 61, 62], [*PREFIX, 70], [*PREFIX, 80, 81, 82, 83, 84], [5, 6, 7, 8, 9] * 9,
        [*PREFIX, *range(50, 90), 61]]


def tiny(kind: str) -> Any:
    import torch
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    torch.manual_seed(0)
    sizes = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": PAD}
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**sizes)).eval()
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**sizes, sliding_window=16)).eval()
    return Gemma3ForCausalLM(Gemma3TextConfig(**sizes, head_dim=8, sliding_window=16,
                                              layer_types=["sliding_attention", "full_attention"])).eval()


def alone(model: Any, row: list[int], steps: int) -> list[int]:
    """transformers' greedy decoding of one row, no padding, no cache tricks."""
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                             max_new_tokens=steps, do_sample=False, pad_token_id=PAD)
    return out[0, len(row):].tolist()  # type: ignore[no-any-return]


def scheduler(model: Any, slots: int, **options: Any) -> Any:
    from guardrail.backends.local.kv import PrefixStore
    from guardrail.backends.local.scheduler import Scheduler

    return Scheduler(model, PAD, slots=slots, prefixes=PrefixStore(min_tokens=options.pop("min_tokens", 8)),
                     **options)


def request(tokens: list[int], steps: int = 12, **options: Any) -> Any:
    from guardrail.backends.base import Sampling
    from guardrail.backends.local.scheduler import Request

    sampling = options.pop("sampling", Sampling(max_new_tokens=steps))
    return Request(tokens=tokens, sampling=sampling, eos_ids=frozenset({END}), stop_loops=options.pop("stop_loops", False),
                   shared=options.pop("shared", 40), **options)


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma"])
@pytest.mark.parametrize("slots", [1, 2, 16])
def test_every_row_decodes_as_it_would_alone(kind: str, slots: int) -> None:
    model = tiny(kind)
    expected = [alone(model, row, 12) for row in ROWS]
    loop = scheduler(model, slots)
    futures = [loop.submit(request(row)) for row in ROWS]
    assert [f.result(timeout=120).tokens for f in futures] == expected
    assert 40 in loop.prefixes.lengths()  # the rows' common prefix was stored...
    assert loop.prefixes.hits >= 3  # ...and used


def test_rows_of_different_lengths_leave_early_and_late_joiners_take_their_slots() -> None:
    model = tiny("llama")
    budgets = [3, 20, 5, 9, 1, 14]
    rows = [[*PREFIX, 60 + i, 61 + i] for i in range(len(budgets))]
    loop = scheduler(model, 2)  # six requests through two slots: four join a running batch
    futures = [loop.submit(request(row, steps)) for row, steps in zip(rows, budgets, strict=True)]
    done = [f.result(timeout=120) for f in futures]
    assert [d.tokens for d in done] == [alone(model, row, steps) for row, steps in zip(rows, budgets, strict=True)]
    assert [d.finish_reason for d in done] == ["length"] * len(budgets)
    # A leaves after 3 steps and C takes its slot at step 4, then D, E and F in turn, while B runs 20:
    # 32 steps for 52 tokens, where one slot would take 52 and a fixed batch of two would take 20 + 9 + 14.
    assert loop.admitted == len(budgets) and loop.steps == 32 and loop.busy_slot_steps == sum(budgets)


def test_a_request_admitted_mid_run_starts_from_the_stored_prefix() -> None:
    model = tiny("llama")
    loop = scheduler(model, 4)
    first = [loop.submit(request(row, 30)) for row in ROWS[:3]]  # stores the 40-token prefix
    started = threading.Event()
    late_row = [*PREFIX, 99, 98]

    def on_token(token: int) -> None:  # submit the late request while the first rows decode
        if not started.is_set():
            started.set()

    first.append(loop.submit(request(ROWS[0], 30, on_token=on_token)))
    assert started.wait(timeout=120)
    hits = loop.prefixes.hits
    late = loop.submit(request(late_row, 8, shared=0))
    assert late.result(timeout=120).tokens == alone(model, late_row, 8)
    assert loop.prefixes.hits == hits + 1 and loop.prefixes.prefills == 1
    assert [f.result(timeout=120).tokens for f in first[:3]] == [alone(model, row, 30) for row in ROWS[:3]]


def test_a_looping_row_is_stopped_and_the_others_run_on() -> None:
    model = tiny("llama")
    loop = scheduler(model, 4)
    steps = 120  # a random model settles into repeating itself well within this
    outputs = {tuple(row): alone(model, row, steps) for row in ROWS}
    futures = [loop.submit(request(row, steps, stop_loops=True)) for row in ROWS]
    done = [f.result(timeout=120) for f in futures]
    assert "repetition" in {d.finish_reason for d in done}
    for row, finished in zip(ROWS, done, strict=True):
        assert finished.tokens == outputs[tuple(row)][: len(finished.tokens)]  # cut, never changed
        if finished.finish_reason == "repetition":
            assert len(finished.tokens) < steps


class _Exploding:
    """A grammar engine stand-in whose matcher raises while masking: a bug inside one grammar."""

    def words(self, width: int) -> int:
        return (width + 31) // 32

    def new_matcher(self, compiled: Any) -> Any:
        return object()

    def fill(self, matcher: Any, bitmask: Any, row: int) -> None:
        raise RuntimeError("the grammar broke")

    def advance(self, matcher: Any, token: int) -> bool:
        return True


def test_a_row_whose_grammar_fails_ends_with_the_error_and_the_others_run_on() -> None:
    from guardrail.backends.local.scheduler import Grammar

    model = tiny("llama")
    loop = scheduler(model, 4)
    broken = loop.submit(request(ROWS[1], grammar=Grammar(_Exploding(), None)))  # type: ignore[arg-type]
    healthy = [loop.submit(request(row)) for row in (ROWS[0], ROWS[2])]
    with pytest.raises(RuntimeError, match="the grammar broke"):
        broken.result(timeout=120)
    assert [f.result(timeout=120).tokens for f in healthy] == [alone(model, ROWS[0], 12), alone(model, ROWS[2], 12)]


def test_a_cancelled_request_leaves_the_batch() -> None:
    model = tiny("llama")
    loop = scheduler(model, 1)
    running = loop.submit(request(ROWS[0], 40))
    waiting = loop.submit(request(ROWS[1], 40))
    assert waiting.cancel()  # still queued: it never takes a slot
    assert running.result(timeout=120).tokens == alone(model, ROWS[0], 40)
    assert waiting.cancelled() and loop.admitted == 1


def test_seeded_sampling_is_reproducible_per_row_whatever_the_batch() -> None:
    from guardrail.backends.base import Sampling

    model = tiny("llama")
    sampled = Sampling(temperature=1.0, top_p=0.9, top_k=50, seed=3, max_new_tokens=16)
    lone = scheduler(model, 1).submit(request(ROWS[2], sampling=sampled)).result(timeout=120)
    loop = scheduler(model, 8)
    others = [loop.submit(request(row, sampling=Sampling(temperature=1.0, seed=i, max_new_tokens=16)))
              for i, row in enumerate(ROWS)]
    crowded = loop.submit(request(ROWS[2], sampling=sampled))
    assert crowded.result(timeout=120).tokens == lone.tokens
    assert len({tuple(f.result(timeout=120).tokens) for f in others}) > 1  # seeds differ, so do samples


def test_repetition_penalty_matches_transformers() -> None:
    import torch

    from guardrail.backends.base import Sampling

    model = tiny("llama")
    with torch.inference_mode():
        out = model.generate(torch.tensor([ROWS[0]]), max_new_tokens=16, do_sample=False, pad_token_id=PAD,
                             repetition_penalty=1.3, attention_mask=torch.ones(1, len(ROWS[0]), dtype=torch.long))
    expected = out[0, len(ROWS[0]):].tolist()
    got = scheduler(model, 2).submit(request(ROWS[0], sampling=Sampling(max_new_tokens=16, repetition_penalty=1.3)))
    assert got.result(timeout=120).tokens == expected


class _EveryNth:
    """A grammar engine whose matcher allows the tokens ``t`` with ``t % n == step % n`` (and the end
    token): a small allowed set for large ``n``, most of the vocabulary for ``n`` = 2."""

    name = "every-nth"

    def words(self, width: int) -> int:
        return (width + 31) // 32

    def new_matcher(self, compiled: Any) -> Any:
        return {"n": compiled, "step": 0}

    def fill(self, matcher: Any, bitmask: Any, row: int) -> None:
        import torch

        width = bitmask.shape[1] * 32
        allowed = [t for t in range(width) if t % matcher["n"] == matcher["step"] % matcher["n"]] + [END]
        bits = torch.zeros(width, dtype=torch.bool)
        bits[allowed] = True
        words = (bits.view(-1, 32).long() << torch.arange(32)).sum(dim=1)
        bitmask[row] = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    def advance(self, matcher: Any, token: int) -> bool:
        matcher["step"] += 1
        return True


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_scoring_only_the_allowed_tokens_chooses_and_scores_as_the_full_layer(kind: str) -> None:
    from guardrail.backends.base import Sampling
    from guardrail.backends.local.scheduler import Grammar

    model = tiny(kind)
    grammars = [Grammar(_EveryNth(), 16), Grammar(_EveryNth(), 2), None, Grammar(_EveryNth(), 11), Grammar(_EveryNth(), 16)]
    samplings = [Sampling(max_new_tokens=14), Sampling(max_new_tokens=14), Sampling(max_new_tokens=14),
                 Sampling(max_new_tokens=14, temperature=0.9, top_k=5, seed=4),
                 Sampling(max_new_tokens=14, repetition_penalty=1.3)]
    outcomes = {}
    for sparse in (False, True):
        loop = scheduler(model, 4, sparse_head=sparse)
        assert (loop.head is not None) is sparse
        futures = [loop.submit(request(row, grammar=grammar, sampling=sampling))
                   for row, grammar, sampling in zip(ROWS, grammars, samplings, strict=True)]
        outcomes[sparse] = [f.result(timeout=120) for f in futures]
    full, sparse_rows = outcomes[False], outcomes[True]
    assert [r.tokens for r in sparse_rows] == [r.tokens for r in full]
    assert all(t % 16 == i % 16 or t == END for i, t in enumerate(full[0].tokens))  # the grammar held
    for a, b in zip(full, sparse_rows, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_the_sparse_head_is_used_only_for_large_vocabularies_and_plain_output_layers() -> None:
    from guardrail.backends.local.head import SparseHead

    model = tiny("llama")
    assert SparseHead.of(model) is None  # 128 tokens: the full layer is cheap
    assert SparseHead.of(model, min_vocabulary=0) is not None
    model.config.final_logit_softcapping = 30.0  # capped logits are not a plain linear map
    assert SparseHead.of(model, min_vocabulary=0) is None
