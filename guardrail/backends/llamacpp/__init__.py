"""Local generation with llama.cpp (``llama-cpp-python``), constrained to a JSON Schema by llguidance.

``LlamaCppBackend`` runs a GGUF model in this process through ``llama_cpp.Llama``: by default
the embedded model ``DEFAULT_EMBEDDED``, Gemma 3 270M (``guardrail.backends.embedded``; the
environment variable ``GUARDRAIL_EMBEDDED`` names another, such as ``smollm2-135m``), read
straight from its quantized GGUF file, nothing dequantized or converted; or any GGUF file on
disk. On a CPU it answers one request two to three times faster than the transformers path
(``guardrail.backends.local``): llama.cpp computes with the quantized weights and its own
kernels, where transformers dequantizes to float32 and pays PyTorch's per-operator overhead at
every token. See ``benchmarks/BENCHMARKS.md`` ("llama.cpp local runtime") for figures and for
when to pick which; in short, this one for single requests on a CPU, transformers for batches,
GPUs and Hugging Face models. Select it with ``Guard(schema, runtime="llamacpp")``
(``pip install 'guardrail-llm[llamacpp]'``).

How decoding is constrained. The decode loop is ours (prompt → ``Llama.eval`` → logits →
mask → pick → feed the token back), and the mask comes from llguidance, the engine the
transformers path tries first, driven through its llama.cpp tokenizer adapter
(``llguidance.llamacpp``): the same engine, the same *decoding schema* (``decoding_schema``:
capped strings without newlines, closed objects) and the same one-line layout (``SEPARATORS``),
so both runtimes allow exactly the same outputs. Alternatives considered:

* llama.cpp's own GBNF grammars (``LlamaGrammar.from_json_schema``) are fast, but
  llama-cpp-python 0.3.36's converter silently drops what it does not know: ``minimum``,
  ``maximum``, ``multipleOf``, ``format`` other than dates, times and UUIDs (so ``email`` and
  ``uri``), ``uniqueItems``, ``not``, ``maxLength`` beside a ``pattern`` (so the decoding
  schema's capped no-newline strings), and it reads ``oneOf`` as ``anyOf``; its sampler chain
  reports no per-token probabilities either;
* ``outlines.from_llamacpp`` returns text only (no token counts, finish reason or logprobs),
  rebuilds its logits processor per call and samples through llama.cpp's sampler chain, whose
  defaults (top-k 40, min-p 0.05) would have to be undone.

Owning the loop also gives: greedy or seeded sampling identical in meaning to the transformers
path (temperature, then top-k, then top-p, drawn from a NumPy generator seeded with
``Sampling.seed``), the same repetition penalty, ``logprobs`` under the *constrained
distribution* (see ``guardrail.backends.local._TokenLogprobs``), and snapshots of the KV cache for
prompt prefixes that requests share (the system prompt, the schema, the examples): later prompts
only evaluate what is new, with outputs identical bit for bit to a cold evaluation.

A schema llguidance refuses is generated unconstrained, with a warning; validation still runs.

``stream`` yields the output token by token from this loop (run in a worker thread, so a slow
reader never holds the model), ``reasoning=`` lets a reasoning model think before it answers
(``guardrail.backends.reasoning_grammar``), as in the transformers runtime.

The package: ``model`` loads each GGUF file once per process (``unload_llamacpp_models``
forgets them), ``grammars`` compiles and keeps the llguidance grammars, ``decode`` holds the
pieces of the token loop (prompt, KV-cache snapshots, mask, draw) and ``backend`` the
``LlamaCppBackend`` that runs it.

>>> backend = LlamaCppBackend(n_threads=1)  # doctest: +SKIP
>>> [g.text for g in backend.generate(["Ada Lovelace, London"], Schema.load("contact"), Sampling())]  # doctest: +SKIP
['{"name": "Ada Lovelace", ...}']
"""

from guardrail.backends.llamacpp.backend import LlamaCppBackend
from guardrail.backends.llamacpp.model import LLAMACPP_HINT, unload_llamacpp_models

__all__ = ["LLAMACPP_HINT", "LlamaCppBackend", "unload_llamacpp_models"]
