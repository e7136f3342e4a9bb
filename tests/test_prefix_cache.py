"""The shared-prefix cache on small randomly initialised transformers models (nothing downloaded).

The embedded model's own equivalence test is ``test_shared_prefix_changes_no_output`` in
test_local_backend.py; these cover the layouts around it: common prefixes, reuse, and models
whose cache is not plain key/value states.
"""

from __future__ import annotations

import importlib.util

import pytest

from guardrail.backends.prefix_cache import PrefixCache, _common_prefix

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="needs torch and transformers",
)

PAD = 0
PREFIX = list(range(10, 50))  # 40 tokens of "instructions"
ROWS = [[*PREFIX, 60, 61, 62], [*PREFIX, 70], [*PREFIX, 80, 81, 82, 83, 84]]


def tiny(kind: str):  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    sizes = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": PAD}
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**sizes)).eval()
    return MistralForCausalLM(MistralConfig(**sizes, sliding_window=16)).eval()


def greedy(model, inputs):  # type: ignore[no-untyped-def]
    import torch

    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=PAD)
    return out[:, inputs["input_ids"].shape[1]:].tolist()


def test_common_prefix() -> None:
    assert _common_prefix(ROWS) == 40
    assert _common_prefix([[1, 2], [1, 2]]) == 2
    assert _common_prefix([[1], [2]]) == 0


def test_prefix_reuse_decodes_like_left_padding() -> None:
    model = tiny("llama")
    plain = PrefixCache(model, min_tokens=10**6)  # never shares: plain left padding
    shared = PrefixCache(model)
    expected = greedy(model, plain.inputs(ROWS, PAD))
    assert greedy(model, shared.inputs(ROWS, PAD)) == expected
    assert (shared.prefills, shared.hits) == (1, 0)
    # One row alone: the stored prefix is reused, and the result matches its row of the batch.
    assert greedy(model, shared.inputs(ROWS[1:2], PAD, lambda: 40)) == expected[1:2]
    assert (shared.prefills, shared.hits) == (1, 1)
    # A row that does not start with the prefix is not given it.
    other = [list(range(60, 110))]
    assert greedy(model, shared.inputs(other, PAD)) == greedy(model, plain.inputs(other, PAD))


def test_a_prefix_shorter_than_the_minimum_is_not_cached() -> None:
    cache = PrefixCache(tiny("llama"), min_tokens=64)
    inputs = cache.inputs(ROWS, PAD)
    assert cache.prefills == 0 and "cache" not in inputs and "past_key_values" not in inputs


def test_a_sliding_window_model_decodes_without_the_cache() -> None:
    model = tiny("mistral")
    cache = PrefixCache(model)
    plain = PrefixCache(model, min_tokens=10**6)
    assert greedy(model, cache.inputs(ROWS, PAD)) == greedy(model, plain.inputs(ROWS, PAD))
    assert cache.supported is False and cache.prefills == 0


def test_a_batch_sharing_more_stores_a_longer_prefix_and_a_re_ask_reuses_it() -> None:
    model = tiny("llama")
    cache = PrefixCache(model)
    plain = PrefixCache(model, min_tokens=10**6)
    cache.inputs([ROWS[0]], PAD, lambda: 40)  # a single call stores its instructions
    assert cache.prefills == 1
    # A batch whose rows share 40 more tokens (few-shot turns, say) gets a longer prefix of its own.
    longer = [[*PREFIX, *range(50, 90), 60 + i] for i in range(2)]
    assert greedy(model, cache.inputs(longer, PAD)) == greedy(model, plain.inputs(longer, PAD))
    assert cache.prefills == 2 and max(len(p) for p in cache._entries) == 80
    # A re-ask of one row ("instructions" now include its earlier answer) reuses the longest stored prefix.
    hits = cache.hits
    re_ask = [[*PREFIX, *range(50, 90), 61, 99, 98, 97]]
    asked: list[int] = []  # the instructions' end costs a template rendering: only asked when needed
    reused = cache.inputs(re_ask, PAD, lambda: asked.append(1) or 83)
    assert greedy(model, reused) == greedy(model, plain.inputs(re_ask, PAD))
    assert cache.prefills == 2 and cache.hits == hits + 1 and asked == []
