"""The guard loop: prompt → model → validate → re-ask, under a tenacity retry policy.

One ``_Episode`` follows one prompt through its attempts. It holds every decision (what to send
next, what an output means, whether to retry and after what pause) and does no I/O, so the sync
and async drivers below differ only in how they call the backend and how they sleep, and a
batch of episodes can share one batched model call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import heapq
import inspect
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import tenacity
from tenacity import DoAttempt, DoSleep, RetryCallState

from guardrail import confidence, events, feedback, messages, validation, voting
from guardrail.backends import Backend, Generation, Prompt, Sampling, resolve
from guardrail.backends.loops import RETRY_PENALTY
from guardrail.errors import GuardError
from guardrail.events import Event, RunEvents
from guardrail.extractive import Spans, extractive_fields, span_issues
from guardrail.leaves import schema_leaves
from guardrail.reasoning import split_reasoning
from guardrail.result import Attempt, Ending, Issue, Result
from guardrail.retry import InvalidOutput, build_policy
from guardrail.schema import Schema
from guardrail.streaming import StreamReader

T = TypeVar("T")

#: Decoding strategies: one greedy answer, one sampled answer, or a per-field vote over samples.
STRATEGIES = ("greedy", "sample", "vote")
#: The temperature ``sample`` and ``vote`` use when none is given.
DEFAULT_SAMPLE_TEMPERATURE = 0.7


class Guard(Generic[T]):
    """Validated structured output from an LLM, with re-asks.

    ``schema`` is a pydantic model class, a JSON Schema dict, a path to a ``.json`` file or the
    name of a shipped schema (``"invoice"``). ``llm`` is your function (prompt → text) or a
    ``Backend``; without it, ``model`` names a local transformers model whose decoding is
    constrained to the schema (default: the embedded Gemma 3 270M, or the embedded model named by
    ``$GUARDRAIL_EMBEDDED``, such as ``smollm2-135m``).

    >>> g = Guard({"type": "object", "required": ["n"]}, llm=lambda prompt: '{"n": 1}')
    >>> g.run("Give n").value
    {'n': 1}

    Options: ``retries`` (re-asks after the first attempt, or a ``tenacity.Retrying``),
    ``time_budget_s`` and ``token_budget`` (stop early across all attempts), ``timeout_s`` (per
    call), ``reask_template`` (``{issues}`` and ``{output}`` fields), ``reask_temperature``
    (a retry samples at least this hot so it can leave a bad greedy path), ``examples``
    (few-shot ``(input, output)`` pairs for the default instructions), ``instructions``
    (replace the default system prompt), and sampling defaults (``temperature``, ``top_p``,
    ``top_k``, ``seed``, ``max_new_tokens``, ``repetition_penalty``). Other keywords go to the local backend
    (``engine``, ``device``), or, with ``base_url=`` (an OpenAI-compatible server, ``model`` then
    being the server's model name), to ``guardrail.backends.remote.RemoteBackend``
    (``structured``, ``api_key`` ...).

    ``extractive``: string values copied verbatim from the input (``guardrail.extractive``):
    ``True`` for every free string field, a list of JSON Pointers for some, ``False`` (the default)
    for none. A local model is held to spans of the input while decoding; on every backend a value
    not in the input is an issue, re-asked. The input is the prompt's text (for chat messages, the
    last user message), or ``context={"input": ...}`` given to ``run``.

    ``strategy``: ``"greedy"`` (the default; temperature 0), ``"sample"`` (one answer drawn at
    ``temperature``, default 0.7, with ``top_p``/``top_k``/``seed``) or ``"vote"`` (self-consistency:
    ``samples`` answers are drawn per round, in one batched call for a batching backend, else as
    that many concurrent calls with seeds ``seed``, ``seed + 1``...; the answer is the per-field
    majority over the valid ones, see ``guardrail.voting``). A vote round is one attempt (its
    samples are in ``Attempt.samples``), its tokens count against ``token_budget``, and it is
    re-asked only when no sample is valid. ``Result.agreement`` and ``Result.confidence`` say how
    far to trust each field.

    ``reask_history``: what a re-ask carries, ``"last"`` (the default: the first request plus only
    the latest failed answer and its issues, so prompts do not grow with the attempts) or
    ``"all"`` (every failed answer so far; see ``guardrail.feedback.next_request``).

    ``hooks``, ``tracing``, ``tracer_provider``: who hears what happens during a run (attempts,
    retries, stream progress), as ``guardrail.events`` describes: hook callables or objects,
    and OpenTelemetry spans (``tracing=None``: when the application uses OpenTelemetry).

    Prompts: a str or chat messages, whose content may hold image parts (``guardrail.messages``);
    only backends that read images (a server, your own function) get them, a local model refuses
    them with a ``BackendError``. A reasoning model's thinking (a ``<think>`` block, or the
    server's ``reasoning_content``) is set apart in ``Attempt.reasoning`` and only the answer is
    validated; a local model thinks before answering with ``reasoning=True`` (see
    ``guardrail.backends.local.LocalBackend``).
    """

    def __init__(
        self,
        schema: Any,
        *,
        llm: Backend | Callable[..., Any] | None = None,
        model: str | None = None,
        retries: int | tenacity.BaseRetrying = 2,
        time_budget_s: float | None = None,
        token_budget: int | None = None,
        timeout_s: float | None = None,
        reask_template: str = feedback.DEFAULT_REASK_TEMPLATE,
        reask_temperature: float | None = None,
        examples: Sequence[tuple[str, Any]] = (),
        instructions: str | None = None,
        refs: dict[str, Any] | None = None,
        assert_formats: bool = True,
        strategy: str | None = None,
        samples: int = 5,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        max_new_tokens: int = 256,
        repetition_penalty: float | None = None,
        max_new_tokens_cap: int = 2048,
        extractive: bool | Sequence[str] = False,
        reask_history: str = feedback.DEFAULT_REASK_HISTORY,
        hooks: Iterable[Any] | Any = (),
        tracing: bool | None = None,
        tracer_provider: Any = None,
        **backend_options: Any,
    ) -> None:
        if reask_history not in feedback.REASK_HISTORIES:
            raise ValueError(f"reask_history must be one of {', '.join(map(repr, feedback.REASK_HISTORIES))}, "
                             f"got {reask_history!r}")
        self.reask_history = reask_history
        #: The hooks and tracing every run of this guard reports to (``guardrail.events``).
        self.observer = events.Observer(hooks, tracing=tracing, tracer_provider=tracer_provider)
        self.strategy, temperature = _check_strategy(strategy, samples, temperature)
        self.samples = samples if self.strategy == "vote" else 1
        self.schema = Schema.load(schema, refs=refs, assert_formats=assert_formats)
        #: The schema's leaf pointers: the fields that get an agreement and a confidence.
        self.leaves = schema_leaves(self.schema.json_schema)
        #: The fields held to spans of the input (empty: none).
        self.extractive = extractive_fields(self.schema.json_schema, extractive)
        if self.extractive and backend_options.get("base_url") is not None:
            raise ValueError("extractive= holds values to spans of the input while decoding, which an "
                             "OpenAI-compatible server cannot do; use a local model, or check the values yourself "
                             "with guardrail.extractive.span_issues")
        self.policy = build_policy(retries)
        self.backend = resolve(llm, model, timeout_s=timeout_s, **backend_options)
        self.time_budget_s = time_budget_s
        self.token_budget = token_budget
        self.reask_template = reask_template
        self.reask_temperature = reask_temperature
        self.examples = list(examples)
        self.instructions = instructions
        self.max_new_tokens_cap = max_new_tokens_cap
        self._instructions: list[dict[str, str]] | None = None
        self.sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                 max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
        _check_template(reask_template)
        self.backend.prepare(self.schema)
        self._engine = _engine_of(self.backend, self.schema)

    # -- public entry points ---------------------------------------------------------------

    def run(self, prompt: Prompt, *, context: dict[str, Any] | None = None, **sampling: Any) -> Result[T]:
        """Run one prompt to a validated value; raise ``GuardError`` (holding every attempt) if none.

        ``context``: what validation may consult, given to a pydantic model's validators as
        ``info.context``. It always holds ``"input"``, the caller's input (the prompt's text, or
        the last user message's; see ``guardrail.messages.user_input``), unless ``context`` gives
        its own; extractive fields are copied from it. ``sampling``: ``Sampling`` fields to
        change for this run (``temperature``, ``max_new_tokens``...).
        """
        episode = self._episode(prompt, sampling, context)
        if self.backend.queues:  # joins the model's running batch, beside other threads' prompts
            for _ in _iter_queued([episode], self.backend):
                pass
        else:
            self._drive([episode], self.backend)
        return episode.finished()

    async def arun(self, prompt: Prompt, *, context: dict[str, Any] | None = None, **sampling: Any) -> Result[T]:
        """Async ``run``: the same loop, awaiting the model and the backoff."""
        episode = self._episode(prompt, sampling, context)
        if self.backend.queues:
            async for _ in _aiter_queued([episode], self.backend):
                pass
        else:
            await self._adrive([episode], self.backend)
        return episode.finished()

    def stream(self, prompt: Prompt, *, context: dict[str, Any] | None = None, **sampling: Any) -> Iterator[Event]:
        """Run one prompt as ``run`` does, yielding what happens as it happens, the answer as it is written.

        The events are those hooks get (``guardrail.events``), in order: ``run_start``; per
        attempt ``attempt_start`` (a new attempt: discard what the previous one showed), one
        ``stream`` event (``StreamEvent``) per piece of the answer with the partial ``value``
        (the JSON data complete so far; for a pydantic schema too, as a dict) and the JSON
        Pointers it just ``completed``, then ``attempt_end`` (the ``Attempt``, validated) and,
        when it failed, ``retry``; last ``run_end``, whose ``result`` is the ``Result`` ``run``
        returns. A stream that ends invalid, or breaks off (a cut connection), is an attempt like
        any other: re-asked or retried, the re-ask streaming too. When no attempt is valid,
        ``give_up`` and ``run_end`` come, then the ``GuardError`` is raised, as ``run`` raises it.

        >>> g = Guard({"type": "object"}, llm=lambda prompt: iter(['{"a": 1,', ' "b": 2}']))
        >>> [(e.value, e.completed) for e in g.stream("Give a and b") if e.kind == "stream"]
        [({'a': 1}, ('/a',)), ({'a': 1, 'b': 2}, ('/b', '')), ({'a': 1, 'b': 2}, ())]

        Backends stream as they can: a local model token by token, a server by server-sent
        events, your function when it returns (or is) an iterator of chunks; any other backend
        as one piece when its answer is complete. ``strategy="vote"`` cannot stream (it picks
        each field after all samples have ended): a ``ValueError``.
        """
        pending: deque[Event] = deque()
        episode = self._stream_episode(prompt, sampling, context, pending)
        return _stream(episode, self.backend, pending)

    def astream(self, prompt: Prompt, *, context: dict[str, Any] | None = None,
                **sampling: Any) -> AsyncIterator[Event]:
        """Async ``stream``: ``async for event in guard.astream(prompt): ...``."""
        pending: deque[Event] = deque()
        episode = self._stream_episode(prompt, sampling, context, pending)
        return _astream(episode, self.backend, pending)

    def _stream_episode(self, prompt: Prompt, sampling: dict[str, Any], context: dict[str, Any] | None,
                        pending: deque[Event]) -> _Episode:
        if self.strategy == "vote":
            raise ValueError("strategy='vote' cannot stream: it draws several samples per round and picks each field "
                             "once all of them have ended; use run() for a vote, or strategy='greedy' or 'sample' "
                             "to stream")
        return self._episode(prompt, sampling, context, listener=pending.append)

    def run_many(self, prompts: Sequence[Prompt], *, concurrency: int = 4,
                 context: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
                 **sampling: Any) -> list[Result[T]]:
        """Run many prompts; failures come back as ``Result`` with ``ok`` false instead of raising.

        ``context``: one dict for every prompt, or one per prompt (see ``run``).

        A backend with a running batch of its own (the local model) gets every prompt at once and
        decodes up to its ``max_batch`` together, re-asks joining as soon as they are due; any
        other backend gets up to ``concurrency`` calls in flight at once.
        """
        episodes = self._episodes(prompts, concurrency, sampling, context)
        if self.backend.queues:
            for _ in _iter_queued(episodes, self.backend):
                pass
            return [e.result() for e in episodes]
        if self.backend.batches:  # no event loop needed: batches run one after another anyway
            for start in range(0, len(episodes), concurrency):
                self._drive(episodes[start : start + concurrency], self.backend)
            return [e.result() for e in episodes]
        _run_coroutine(self._adrive_bounded(episodes, concurrency))
        return [e.result() for e in episodes]

    async def arun_many(self, prompts: Sequence[Prompt], *, concurrency: int = 4,
                        context: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
                        **sampling: Any) -> list[Result[T]]:
        """Async ``run_many``."""
        episodes = self._episodes(prompts, concurrency, sampling, context)
        if self.backend.queues:
            async for _ in _aiter_queued(episodes, self.backend):
                pass
        elif self.backend.batches:
            for start in range(0, len(episodes), concurrency):
                await self._adrive(episodes[start : start + concurrency], self.backend)
        else:
            await self._adrive_bounded(episodes, concurrency)
        return [e.result() for e in episodes]

    def _episodes(self, prompts: Sequence[Prompt], concurrency: int, sampling: dict[str, Any],
                  context: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None) -> list[_Episode]:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if context is None or isinstance(context, dict):
            contexts: Sequence[dict[str, Any] | None] = [context] * len(prompts)
        else:
            contexts = list(context)
            if len(contexts) != len(prompts):
                raise ValueError(f"got {len(contexts)} contexts for {len(prompts)} prompts")
        return [self._episode(p, sampling, c) for p, c in zip(prompts, contexts, strict=True)]

    # -- drivers: the only places that do I/O ------------------------------------------------

    def _drive(self, episodes: list[_Episode], backend: Backend) -> None:
        while active := [e for e in episodes if not e.done]:
            for sampling, group in _by_sampling(active):
                for episode in group:
                    episode.begin()
                start = time.perf_counter()
                calls = _calls(group, sampling, backend.batches)
                if len(calls) == 1:
                    outcomes = [self._call(backend, *calls[0])]
                else:  # a vote's samples on a backend that does not batch: concurrent calls
                    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
                        outcomes = list(pool.map(lambda call: self._call(backend, *call), calls))
                _settle(calls, outcomes, time.perf_counter() - start)
            if pause := _pause(active):  # even sleep(0) costs about half a millisecond
                time.sleep(pause)

    def _call(self, backend: Backend, sampling: Sampling, owners: list[_Episode]) -> list[Generation] | BaseException:
        try:
            return backend.generate([e.request for e in owners], self.schema, sampling, **_spans_of(backend, owners))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, then judged by the policy
            return exc

    async def _adrive(self, episodes: list[_Episode], backend: Backend) -> None:
        while active := [e for e in episodes if not e.done]:
            for sampling, group in _by_sampling(active):
                for episode in group:
                    episode.begin()
                start = time.perf_counter()
                calls = _calls(group, sampling, backend.batches)
                outcomes = await asyncio.gather(*(self._acall(backend, *call) for call in calls))
                _settle(calls, list(outcomes), time.perf_counter() - start)
            if pause := _pause(active):
                await asyncio.sleep(pause)

    async def _acall(self, backend: Backend, sampling: Sampling,
                     owners: list[_Episode]) -> list[Generation] | BaseException:
        try:
            return await backend.agenerate([e.request for e in owners], self.schema, sampling,
                                           **_spans_of(backend, owners))
        except Exception as exc:  # noqa: BLE001
            return exc

    async def _adrive_bounded(self, episodes: list[_Episode], concurrency: int) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(episode: _Episode) -> None:
            async with gate:
                await self._adrive([episode], self.backend)

        await asyncio.gather(*(one(e) for e in episodes))

    def _episode(self, prompt: Prompt, overrides: dict[str, Any], context: dict[str, Any] | None = None,
                 listener: Callable[[Event], None] | None = None) -> _Episode:
        messages.check_prompt(prompt)
        unknown = set(overrides) - set(Sampling.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown sampling options {sorted(unknown)}; known: {sorted(Sampling.__dataclass_fields__)}")
        if context is not None and not isinstance(context, dict):
            raise TypeError(f"context must be a dict (what validation may consult), got {type(context).__name__}")
        # A runtime that reads text only gets one str per message, and refuses an image part by
        # its place in the caller's prompt (before the instructions are put in front of it).
        request = prompt if self.backend.reads_images else messages.text_only(prompt, type(self.backend).__name__)
        if self.backend.wants_instructions:
            from guardrail.prompting import instructions

            user = [{"role": "user", "content": request}] if isinstance(request, str) else list(request)
            if self.instructions is not None:
                ours = [{"role": "system", "content": self.instructions}]
            else:
                if self._instructions is None:  # the same for every prompt: built once
                    self._instructions = instructions(self.schema.json_schema, self.examples)
                ours = self._instructions
            if user[0].get("role") == "system" and isinstance(user[0].get("content"), str):
                # One system message: the prompt's own follows ours in it (chat templates expect one,
                # and a small model reads one block of instructions better than two).
                merged = {"role": "system", "content": f"{ours[0]['content']}\n\n{user[0]['content']}"}
                request = [merged, *ours[1:], *user[1:]]
            else:
                request = [*ours, *user]
        consulted = {"input": messages.user_input(prompt), **(context or {})}
        spans = None
        if self.extractive:
            text = consulted["input"]
            if not isinstance(text, str):
                raise TypeError(f"context['input'] must be the input text (a str), got {type(text).__name__}")
            spans = Spans(text, self.extractive)
        run = self.observer.run(prompt, schema=self.schema.name, backend=self.backend, engine=self._engine,
                                listener=listener)
        return _Episode(self, request, self.sampling.but(**overrides) if overrides else self.sampling, spans, consulted,
                        run)

    def __repr__(self) -> str:
        return f"Guard(schema={self.schema.name!r}, backend={type(self.backend).__name__})"


class _Episode:
    """One prompt's way through its attempts: decisions only, no I/O.

    It tells ``events`` what happens as it decides; the drivers call ``begin`` before each call
    (and ``progress`` for each piece of a streamed answer).
    """

    def __init__(self, guard: Guard[Any], request: Prompt, sampling: Sampling, spans: Spans | None,
                 context: dict[str, Any], run: RunEvents) -> None:
        self.guard = guard
        #: The first request: with ``reask_history="last"`` every re-ask is built from it.
        self.original = request
        self.request = request
        self.sampling = sampling
        self.spans = spans
        #: What validation may consult (``info.context`` of pydantic validators).
        self.context = context
        self.events = run
        self.attempts: list[Attempt] = []
        # A copy per episode: tenacity keeps per-run statistics on the policy object.
        self.policy = guard.policy.copy()
        self.policy.begin()
        self.state = RetryCallState(self.policy, fn=None, args=(), kwargs={})
        self.started = time.monotonic()
        self.value: Any = None
        self.raw: str | None = None
        self.error: GuardError | None = None
        self.agreement: dict[str, float] | None = None
        self.confidence: dict[str, float] | None = None
        #: Samples per round: ``samples`` for a vote, else 1.
        self.fanout = guard.samples if guard.strategy == "vote" else 1
        self.done = False
        self.pause = 0.0
        self._result: Result[Any] | None = None
        first = self.policy.iter(self.state)
        assert isinstance(first, DoAttempt), "a tenacity policy always starts with an attempt"

    def begin(self) -> None:
        """An attempt (a call, or a vote round) is about to be made."""
        self.events.attempt_started(self.request, self.sampling)

    def progress(self, event: events.StreamEvent) -> None:
        """A streamed attempt made progress."""
        self.events.stream(event)

    def record_round(self, outcomes: Sequence[Generation | BaseException], duration_s: float) -> None:
        """Judge one round: a single output, or the samples of a vote."""
        if self.fanout == 1 and len(outcomes) == 1:
            self.record(outcomes[0], duration_s)
        else:
            self._record_votes(outcomes, duration_s)

    def record(self, outcome: Generation | BaseException, duration_s: float) -> None:
        """Judge one model call and decide what comes next."""
        attempt, checked = self._judge(outcome, duration_s)
        self.attempts.append(attempt)
        if checked is None:
            assert isinstance(outcome, BaseException)
            self.state.set_exception((type(outcome), outcome, outcome.__traceback__))
            self._decide(outcome)
            return
        if checked.ok:
            self.value, self.raw, self.confidence = checked.value, attempt.output, attempt.confidence
            self.state.set_result(checked.value)
            self.events.attempt_ended(attempt)
            self._finish()
            return
        failure = InvalidOutput(checked.issues)
        self.state.set_exception((InvalidOutput, failure, None))
        self._decide(failure, output=attempt.output, issues=checked.issues, truncated=attempt.ended == "truncated",
                     looped=attempt.finish_reason == "repetition")

    def _judge(self, outcome: Generation | BaseException, duration_s: float,
               sample: int | None = None) -> tuple[Attempt, validation.Validation | None]:
        """The attempt for one output (validated; with field confidence when valid).

        A reasoning model's thinking is set apart first: only the answer is validated, recorded
        as the output and quoted by a re-ask.
        """
        prompt = self.request
        if isinstance(outcome, BaseException):
            ended: Ending = "timeout" if isinstance(outcome, TimeoutError) else "error"
            return Attempt(prompt=prompt, output=None, duration_s=duration_s, error=f"{type(outcome).__name__}: {outcome}",
                           ended=ended, sample=sample), None
        reasoning, answer = _reasoning_and_answer(outcome)
        checked = validation.validate(self.guard.schema, answer, self.context)
        if checked.ok and self.spans is not None:
            off_input = span_issues(checked.parsed, self.spans.fields, self.spans.text)
            if off_input:
                checked = validation.Validation(issues=off_input, extracted=checked.extracted, parsed=checked.parsed)
        truncated = checked.truncated or (not checked.ok and outcome.finish_reason == "length")
        attempt = Attempt(
            prompt=prompt, output=answer, issues=checked.issues, duration_s=outcome.duration_s or duration_s,
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
            ended="valid" if checked.ok else "truncated" if truncated else "invalid",
            extracted=checked.extracted, finish_reason=outcome.finish_reason,
            max_new_tokens=self.sampling.max_new_tokens, sample=sample, reasoning=reasoning,
        )
        if checked.ok and outcome.logprobs:
            tokens = _answer_tokens(outcome.logprobs, len(outcome.text) - len(answer)) if reasoning is not None \
                else outcome.logprobs
            attempt.confidence = confidence.field_confidence(answer, tokens, self.guard.leaves, checked.parsed)
        return attempt, checked

    def _record_votes(self, outcomes: Sequence[Generation | BaseException], duration_s: float) -> None:
        """Judge a vote round: one attempt holding every sample; re-ask only if none is valid."""
        judged = [self._judge(o, duration_s, sample=i) for i, o in enumerate(outcomes)]
        samples = [attempt for attempt, _ in judged]
        prompt_tokens = [a.prompt_tokens for a in samples if a.prompt_tokens is not None]
        completion_tokens = [a.completion_tokens for a in samples if a.completion_tokens is not None]
        round_ = Attempt(prompt=self.request, output=None, samples=samples,
                         duration_s=max((a.duration_s for a in samples), default=duration_s),
                         prompt_tokens=sum(prompt_tokens) if prompt_tokens else None,
                         completion_tokens=sum(completion_tokens) if completion_tokens else None,
                         max_new_tokens=self.sampling.max_new_tokens)
        self.attempts.append(round_)
        valid = [(a, c) for a, c in judged if c is not None and c.ok]
        if valid:
            schema = self.guard.schema
            ballots = [voting.Ballot(c.parsed, a.output, a.confidence) for a, c in valid]
            chosen = voting.vote(ballots, self.guard.leaves, self._acceptable)
            checked = validation.validate(schema, chosen.text, self.context)
            if not checked.ok:  # cannot happen for a text that was just checked; keep a sample then
                chosen = voting.vote(ballots[:1], self.guard.leaves)
                checked = valid[0][1]
            source = valid[chosen.sample][0] if chosen.sample is not None else None
            known = any(b.confidence is not None for b in ballots)  # else no backend logprobs: None, not {}
            round_.output, round_.ended = chosen.text, "valid"
            round_.confidence = chosen.confidence if known else None
            if source is not None:
                round_.extracted, round_.finish_reason = source.extracted, source.finish_reason
            self.value, self.raw = checked.value, chosen.text
            self.agreement, self.confidence = chosen.agreement, round_.confidence
            self.state.set_result(checked.value)
            self.events.attempt_ended(round_)
            self._finish()
            return
        answered = [(a, c) for a, c in judged if c is not None]
        if not answered:  # every call of the round raised
            failure = next(o for o in outcomes if isinstance(o, BaseException))
            round_.error, round_.ended = samples[0].error, samples[0].ended
            self.state.set_exception((type(failure), failure, failure.__traceback__))
            self._decide(failure)
            return
        # The re-ask quotes the most promising invalid sample: complete first, then fewest issues.
        attempt, checked = min(answered, key=lambda p: (p[0].ended == "truncated", len(p[1].issues), p[0].sample or 0))
        round_.output, round_.issues, round_.ended = attempt.output, attempt.issues, attempt.ended
        round_.extracted, round_.finish_reason = attempt.extracted, attempt.finish_reason
        failure = InvalidOutput(checked.issues)
        self.state.set_exception((InvalidOutput, failure, None))
        self._decide(failure, output=attempt.output, issues=checked.issues, truncated=attempt.ended == "truncated",
                     looped=attempt.finish_reason == "repetition")

    def _acceptable(self, data: Any) -> bool:
        """Whether parsed data is a valid answer: the schema, and the spans when extractive."""
        if validation.check(self.guard.schema, data, self.context):
            return False
        return self.spans is None or not span_issues(data, self.spans.fields, self.spans.text)

    def _decide(self, failure: BaseException, *, output: str | None = None, issues: Sequence[Issue] = (),
                truncated: bool = False, looped: bool = False) -> None:
        """After a failed attempt (the last in ``attempts``): retry, with what request and after what pause, or give up."""
        over_budget = self._over_budget()  # may mark the attempt as the one that spent the budget
        self.events.attempt_ended(self.attempts[-1], error=None if isinstance(failure, InvalidOutput) else failure)
        if over_budget:
            self._give_up(f"stopped: {over_budget}", failure)
            return
        if "idle_for" not in self.policy.statistics:
            # tenacity keeps its statistics per thread: an episode begun in one thread may be judged
            # in another (a worker of run_all). They are bookkeeping only; the state decides.
            self.policy.begin()
        try:
            action = self.policy.iter(self.state)
        except tenacity.RetryError:
            self._give_up(self._exhausted_message(failure), failure)
            return
        except Exception as exc:
            if exc is not failure:
                raise
            action = None
        if not isinstance(action, DoSleep):
            n = len(self.attempts)
            self._give_up(f"not retried (attempt {n}): {type(failure).__name__}: {failure}", failure)
            return
        self.pause = float(action)
        if self.guard.time_budget_s is not None and self._elapsed() + self.pause > self.guard.time_budget_s:
            self._give_up(f"stopped: the time budget of {self.guard.time_budget_s:g} s would be exceeded", failure)
            return
        self.state.prepare_for_next_attempt()
        self.events.retrying(self.pause, failure)
        self.request = feedback.next_request(self.original, self.request, output, issues, self.guard.reask_template,
                                             error=None if output is not None else str(failure),
                                             history=self.guard.reask_history)
        self.sampling = self._next_sampling(truncated, looped)

    def _next_sampling(self, truncated: bool, looped: bool) -> Sampling:
        sampling = self.sampling
        if looped:  # a bigger budget would buy more of the same loop: penalise repeats instead
            if (sampling.repetition_penalty or 1.0) < RETRY_PENALTY:
                sampling = sampling.but(repetition_penalty=RETRY_PENALTY)
        elif truncated:
            sampling = sampling.but(max_new_tokens=min(sampling.max_new_tokens * 2, self.guard.max_new_tokens_cap))
        hotter = self.guard.reask_temperature
        if hotter is not None and sampling.temperature < hotter:
            sampling = sampling.but(temperature=hotter)
        return sampling

    def _over_budget(self) -> str | None:
        budget = self.guard.token_budget
        if budget is not None:
            used = sum(a.tokens or 0 for a in self.attempts)
            if used >= budget:
                self.attempts[-1].ended = "budget" if self.attempts[-1].ended != "valid" else "valid"
                return f"the token budget of {budget} is spent ({used} tokens used)"
        if self.guard.time_budget_s is not None and self._elapsed() >= self.guard.time_budget_s:
            return f"the time budget of {self.guard.time_budget_s:g} s is spent"
        return None

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _exhausted_message(self, failure: BaseException) -> str:
        n = len(self.attempts)
        if isinstance(failure, InvalidOutput):
            listed = feedback.describe_issues(failure.issues, limit=3)
            return f"no valid output after {n} attempt{'s' * (n != 1)}; last issues:\n{listed}"
        return f"the LLM call failed {n} time{'s' * (n != 1)}; last error: {type(failure).__name__}: {failure}"

    def _give_up(self, message: str, failure: BaseException) -> None:
        error = GuardError(message, self.attempts)
        error.__cause__ = None if isinstance(failure, InvalidOutput) else failure
        self.error = error
        self.raw = next((a.output for a in reversed(self.attempts) if a.output is not None), None)
        self.events.gave_up(error)
        self._finish()

    def abandon(self) -> None:
        """The caller stopped reading a stream before the run ended: end it as given up."""
        if not self.done:
            self._give_up("stopped: the caller stopped reading the stream", RuntimeError("the stream was closed"))

    def _finish(self) -> None:
        self.done = True
        self._result = Result(self.value, self.raw, self.attempts, self.error, agreement=self.agreement,
                              confidence=self.confidence)
        self.events.finished(self._result)

    def result(self) -> Result[Any]:
        """The outcome, failure included (for ``run_many``)."""
        if self._result is None:
            raise RuntimeError("the run has not ended yet")
        return self._result

    def finished(self) -> Result[Any]:
        """The outcome for ``run``: the result, or raise the ``GuardError`` that ended the loop."""
        if self.error is not None:
            raise self.error
        return self.result()


def _calls(group: list[_Episode], sampling: Sampling, batches: bool) -> list[tuple[Sampling, list[_Episode]]]:
    """The backend calls of one round: ``(sampling, the episode each prompt belongs to)``.

    One call, in which an episode that votes appears once per sample (its rows adjacent), for a
    batching backend or when nobody votes. Otherwise call ``i`` carries the ``i``-th sample of
    every voting episode, with seed ``seed + i`` so that seeded calls do not repeat each other.
    """
    fanout = max(e.fanout for e in group)
    if fanout == 1 or batches:
        return [(sampling, [e for e in group for _ in range(e.fanout)])]
    return [(sampling if sampling.seed is None else sampling.but(seed=sampling.seed + i),
             [e for e in group if i < e.fanout]) for i in range(fanout)]


def _settle(calls: list[tuple[Sampling, list[_Episode]]], outcomes: list[list[Generation] | BaseException],
            duration_s: float) -> None:
    """Hand every output (or failure) of a round's calls to its episode, in sample order."""
    rows = sum(len(owners) for _, owners in calls)
    share = duration_s / max(rows, 1)
    collected: dict[int, tuple[_Episode, list[Generation | BaseException]]] = {}
    for (_, owners), outcome in zip(calls, outcomes, strict=True):
        if not isinstance(outcome, BaseException) and len(outcome) != len(owners):
            outcome = RuntimeError(f"backend returned {len(outcome)} outputs for {len(owners)} prompts")
        for row, episode in enumerate(owners):
            one = outcome if isinstance(outcome, BaseException) else outcome[row]
            collected.setdefault(id(episode), (episode, []))[1].append(one)
    for episode, outputs in collected.values():
        episode.record_round(outputs, share)


def _by_sampling(episodes: list[_Episode]) -> list[tuple[Sampling, list[_Episode]]]:
    """Group episodes that decode alike, so each group is one batched call."""
    groups: dict[Sampling, list[_Episode]] = {}
    for episode in episodes:
        groups.setdefault(episode.sampling, []).append(episode)
    return list(groups.items())


def _spans_of(backend: Backend, episodes: Sequence[_Episode]) -> dict[str, Any]:
    """The ``spans=`` argument for a backend that holds values to spans while decoding (else nothing)."""
    if not backend.spans or all(e.spans is None for e in episodes):
        return {}
    if len(episodes) == 1 and backend.queues:
        return {"spans": episodes[0].spans}
    return {"spans": [e.spans for e in episodes]}


def _reasoning_and_answer(outcome: Generation) -> tuple[str | None, str]:
    """A model's thinking (``None``: there was none) and its answer: the server's reasoning field, else
    a ``<think>`` block at the start of the text (``guardrail.reasoning``)."""
    if outcome.reasoning is None:
        return split_reasoning(outcome.text)
    inline, answer = split_reasoning(outcome.text, implicit_open=False)  # a server may leave an empty block
    return (f"{outcome.reasoning}\n{inline}" if inline else outcome.reasoning), answer


def _answer_tokens(tokens: list[tuple[str, float]], start: int) -> list[tuple[str, float]]:
    """The log-probabilities of the answer only: the tokens from character ``start`` of the output on
    (a token that straddles it keeps its part after ``start``)."""
    kept: list[tuple[str, float]] = []
    position = 0
    for piece, logprob in tokens:
        end = position + len(piece)
        if end > start:
            kept.append((piece[max(start - position, 0):], logprob))
        position = end
    return kept


def _engine_of(backend: Backend, schema: Schema) -> str | None:
    """The grammar engine that constrains ``schema`` on ``backend`` (for traces), when it says."""
    engine_for = getattr(backend, "engine_for", None)
    if not callable(engine_for):
        return None
    try:
        found = engine_for(schema)
    except Exception:  # noqa: BLE001 - naming the engine is best effort
        return None
    return found if isinstance(found, str) else None


def _pause(episodes: list[_Episode]) -> float:
    pending = [e.pause for e in episodes if not e.done]
    return max(pending, default=0.0)


def run_all(jobs: Iterable[tuple[Guard[Any], Prompt] | tuple[Guard[Any], Prompt, dict[str, Any] | None]], *,
            concurrency: int = 4, **sampling: Any) -> Iterator[tuple[int, Result[Any]]]:
    """Run prompts of several guards, yielding ``(job index, result)`` as each one finishes.

    A job is ``(guard, prompt)`` or ``(guard, prompt, context)`` (see ``Guard.run``).

    Guards that share a queueing backend (one local model) put every prompt in its running batch
    at once, so the batch stays full across guards (schemas) and re-asks; other backends get up to
    ``concurrency`` prompts in flight. Failures come back as results with ``ok`` false.

    >>> g = Guard({"type": "object"}, llm=lambda prompt: "{}")
    >>> sorted(i for i, r in run_all([(g, "a"), (g, "b")]))
    [0, 1]
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    episodes = [job[0]._episode(job[1], sampling, job[2] if len(job) > 2 else None) for job in jobs]  # type: ignore[misc]
    index = {id(e): i for i, e in enumerate(episodes)}
    queued = [e for e in episodes if e.guard.backend.queues]
    by_backend: dict[int, list[_Episode]] = {}
    for episode in queued:
        by_backend.setdefault(id(episode.guard.backend), []).append(episode)
    for members in by_backend.values():
        for done in _iter_queued(members, members[0].guard.backend):
            yield index[id(done)], done.result()
    rest = [e for e in episodes if not e.guard.backend.queues]
    if rest:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            pending = {pool.submit(e.guard._drive, [e], e.guard.backend): e for e in rest}
            try:
                for future in concurrent.futures.as_completed(pending):
                    future.result()
                    episode = pending[future]
                    yield index[id(episode)], episode.result()
            finally:
                for future in pending:
                    future.cancel()


_PENDING: Any = object()


class _InFlight:
    """Attempts submitted to a queueing backend: which episode each request belongs to, and when an
    episode submits again. Decisions only; ``_iter_queued`` and ``_aiter_queued`` do the waiting."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.owners: dict[concurrent.futures.Future[Generation], tuple[_Episode, int]] = {}
        self.rounds: dict[int, tuple[list[Any], float]] = {}  # episode -> (outcomes, submitted at)
        self.waiting: list[tuple[float, int, _Episode]] = []  # (due, tie-breaker, episode): backing off
        self._order = itertools.count()

    def launch(self, episode: _Episode) -> None:
        """Submit the episode's next attempt: one request, or one per sample of a vote."""
        episode.begin()
        samplings = [episode.sampling if episode.sampling.seed is None or i == 0
                     else episode.sampling.but(seed=episode.sampling.seed + i) for i in range(episode.fanout)]
        self.rounds[id(episode)] = ([_PENDING] * len(samplings), time.monotonic())
        for i, sampling in enumerate(samplings):
            try:
                future = self.backend.submit(episode.request, episode.guard.schema, sampling,
                                             **_spans_of(self.backend, [episode]))
            except Exception as exc:  # noqa: BLE001 - recorded as the attempt's failure, like a failed call
                future = concurrent.futures.Future()
                future.set_exception(exc)
            self.owners[future] = (episode, i)

    def settle(self, future: concurrent.futures.Future[Generation]) -> _Episode | None:
        """Record one finished request; returns its episode once the episode is done."""
        episode, sample = self.owners.pop(future)
        outcomes, submitted = self.rounds[id(episode)]
        if future.cancelled():
            outcomes[sample] = concurrent.futures.CancelledError("the request was cancelled")
        else:
            outcomes[sample] = future.exception() or future.result()
        if any(o is _PENDING for o in outcomes):
            return None
        del self.rounds[id(episode)]
        durations = [o.duration_s for o in outcomes if isinstance(o, Generation) and o.duration_s is not None]
        episode.record_round(outcomes, max(durations) if durations else time.monotonic() - submitted)
        if episode.done:
            return episode
        if episode.pause > 0:
            heapq.heappush(self.waiting, (time.monotonic() + episode.pause, next(self._order), episode))
        else:
            self.launch(episode)
        return None

    def launch_due(self) -> float | None:
        """Submit the episodes whose back-off is over; seconds until the next one is due (None: none)."""
        while self.waiting and self.waiting[0][0] <= time.monotonic():
            self.launch(heapq.heappop(self.waiting)[2])
        return max(self.waiting[0][0] - time.monotonic(), 0.0) if self.waiting else None

    def cancel(self) -> None:
        for future in self.owners:
            future.cancel()


def _iter_queued(episodes: Sequence[_Episode], backend: Backend) -> Iterator[_Episode]:
    """Drive episodes through a queueing backend, yielding each one as it finishes."""
    flight = _InFlight(backend)
    try:
        for episode in episodes:
            flight.launch(episode)
        while flight.owners or flight.waiting:
            timeout = flight.launch_due()
            if not flight.owners:
                time.sleep(timeout or 0.0)
                continue
            done, _ = concurrent.futures.wait(list(flight.owners), timeout=timeout,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                finished = flight.settle(future)
                if finished is not None:
                    yield finished
    finally:  # Ctrl-C, or the caller stopped iterating: the rows in the batch need not run on
        flight.cancel()


async def _aiter_queued(episodes: Sequence[_Episode], backend: Backend) -> AsyncIterator[_Episode]:
    """Async ``_iter_queued``: the same decisions, awaiting the futures instead of blocking."""
    flight = _InFlight(backend)
    waiting: dict[asyncio.Future[Any], concurrent.futures.Future[Generation]] = {}
    wrapped: set[int] = set()  # the requests already in ``waiting``
    try:
        for episode in episodes:
            flight.launch(episode)
        while flight.owners or flight.waiting:
            timeout = flight.launch_due()
            for future in flight.owners:
                if id(future) not in wrapped:
                    wrapped.add(id(future))
                    waiting[asyncio.wrap_future(future)] = future
            if not waiting:
                await asyncio.sleep(timeout or 0.0)
                continue
            done, _ = await asyncio.wait(list(waiting), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for one in done:
                future = waiting.pop(one)
                wrapped.discard(id(future))
                finished = flight.settle(future)
                if finished is not None:
                    yield finished
    finally:
        flight.cancel()


def _drain(pending: deque[Event]) -> Iterator[Event]:
    while pending:
        yield pending.popleft()


def _stream(episode: _Episode, backend: Backend, pending: deque[Event]) -> Iterator[Event]:
    """Drive one episode through a backend's ``stream``, yielding its events as they come."""
    schema = episode.guard.schema
    try:
        while True:
            yield from _drain(pending)
            if episode.done:
                break
            episode.begin()
            yield from _drain(pending)
            reader = StreamReader(episode.events.number)
            started = time.perf_counter()
            deltas: Iterator[Any] | None = None
            outcome: Generation | BaseException
            try:
                deltas = backend.stream(episode.request, schema, episode.sampling, **_spans_of(backend, [episode]))
                for delta in deltas:
                    episode.progress(reader.feed(delta))
                    yield from _drain(pending)
                outcome = reader.generation(time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - recorded as the attempt's failure, like a failed call
                outcome = exc
            finally:
                close = getattr(deltas, "close", None)
                if close is not None:
                    close()
            episode.record(outcome, time.perf_counter() - started)
            yield from _drain(pending)
            if not episode.done and episode.pause:
                time.sleep(episode.pause)
    except GeneratorExit:
        episode.abandon()
        raise
    if episode.error is not None:
        raise episode.error


async def _astream(episode: _Episode, backend: Backend, pending: deque[Event]) -> AsyncIterator[Event]:
    """Async ``_stream``: the same decisions, awaiting the backend's ``astream`` and the back-off."""
    schema = episode.guard.schema
    try:
        while True:
            for event in _drain(pending):
                yield event
            if episode.done:
                break
            episode.begin()
            for event in _drain(pending):
                yield event
            reader = StreamReader(episode.events.number)
            started = time.perf_counter()
            deltas: AsyncIterator[Any] | None = None
            outcome: Generation | BaseException
            try:
                deltas = backend.astream(episode.request, schema, episode.sampling, **_spans_of(backend, [episode]))
                async for delta in deltas:
                    episode.progress(reader.feed(delta))
                    for event in _drain(pending):
                        yield event
                outcome = reader.generation(time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001
                outcome = exc
            finally:
                close = getattr(deltas, "aclose", None)
                if close is not None:
                    await close()
            episode.record(outcome, time.perf_counter() - started)
            for event in _drain(pending):
                yield event
            if not episode.done and episode.pause:
                await asyncio.sleep(episode.pause)
    except (GeneratorExit, asyncio.CancelledError):
        episode.abandon()
        raise
    if episode.error is not None:
        raise episode.error


def _run_coroutine(coroutine: Awaitable[Any]) -> Any:
    """Run a coroutine from sync code, also when an event loop already runs (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]


def _check_strategy(strategy: str | None, samples: int, temperature: float | None) -> tuple[str, float]:
    """The strategy and temperature to use; ``ValueError`` for a combination that makes no sense."""
    chosen = strategy if strategy is not None else ("sample" if temperature else "greedy")
    if chosen not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if chosen == "greedy":
        if temperature:
            raise ValueError(f"strategy 'greedy' decodes at temperature 0, got temperature={temperature}; "
                             "use strategy='sample' or 'vote' to sample")
        return chosen, 0.0
    if temperature is None:
        temperature = DEFAULT_SAMPLE_TEMPERATURE
    if temperature <= 0:
        raise ValueError(f"strategy {chosen!r} samples: temperature must be above 0, got {temperature}")
    if chosen == "vote" and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"samples must be a positive number of samples per vote, got {samples!r}")
    return chosen, temperature


def _check_template(template: str) -> None:
    try:
        template.format(issues="", output="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"reask_template may only use the fields {{issues}} and {{output}} (double other braces): {exc}"
        ) from None


# -- the decorator ---------------------------------------------------------------------------


def guard(schema: Any, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap an LLM call so it returns a validated value, re-asking on invalid output.

    The function receives the prompt (a str or chat messages) as its first argument; further
    arguments are passed through on every attempt. Sync and async functions both work.

    >>> @guard({"type": "object", "required": ["city"]}, retries=1)
    ... def ask(prompt: str) -> str:
    ...     return '{"city": "Oslo"}'
    >>> ask("Where?")
    {'city': 'Oslo'}

    The ``Guard`` behind it is ``ask.guard``; options are those of ``Guard``. Two more ways to
    call it take the same arguments plus ``context=`` (what validation may consult, see
    ``Guard.run``; the plain call passes every argument to the function, so it has none):
    ``ask.run(prompt, ..., context=None)`` returns the whole ``Result``, and
    ``ask.stream(prompt, ..., context=None)`` yields the run's events as ``Guard.stream`` does
    (the function streams by returning, or being, an iterator of chunks). For an ``async def``
    function both are async (``await ask.run(...)``, ``async for event in ask.stream(...)``).

    >>> ask.run("Where?").attempts[0].ended
    'valid'
    >>> [event.kind for event in ask.stream("Where?")][-1]
    'run_end'
    """
    if "llm" in options or "model" in options:
        raise TypeError("guard() wraps the decorated function; do not pass llm= or model=")
    timeout_s = options.get("timeout_s")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        core: Guard[Any] = Guard(schema, llm=fn, **options)

        def bound(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Backend:
            if not args and not kwargs:
                return core.backend
            from guardrail.backends.callable import CallableBackend

            return CallableBackend(_partial_after_prompt(fn, args, kwargs), timeout_s=timeout_s)

        if inspect.iscoroutinefunction(fn):

            async def arun(prompt: Prompt, *args: Any, context: dict[str, Any] | None = None,
                           **kwargs: Any) -> Result[Any]:
                episode = core._episode(prompt, {}, context)
                await core._adrive([episode], bound(args, kwargs))
                return episode.finished()

            def astream(prompt: Prompt, *args: Any, context: dict[str, Any] | None = None,
                        **kwargs: Any) -> AsyncIterator[Event]:
                pending: deque[Event] = deque()
                episode = core._stream_episode(prompt, {}, context, pending)
                return _astream(episode, bound(args, kwargs), pending)

            @functools.wraps(fn)
            async def async_wrapper(prompt: Prompt, *args: Any, **kwargs: Any) -> Any:
                return (await arun(prompt, *args, **kwargs)).value

            async_wrapper.guard = core  # type: ignore[attr-defined]
            async_wrapper.run = arun  # type: ignore[attr-defined]
            async_wrapper.stream = astream  # type: ignore[attr-defined]
            return async_wrapper

        def run(prompt: Prompt, *args: Any, context: dict[str, Any] | None = None, **kwargs: Any) -> Result[Any]:
            episode = core._episode(prompt, {}, context)
            core._drive([episode], bound(args, kwargs))
            return episode.finished()

        def stream(prompt: Prompt, *args: Any, context: dict[str, Any] | None = None, **kwargs: Any) -> Iterator[Event]:
            pending: deque[Event] = deque()
            episode = core._stream_episode(prompt, {}, context, pending)
            return _stream(episode, bound(args, kwargs), pending)

        @functools.wraps(fn)
        def wrapper(prompt: Prompt, *args: Any, **kwargs: Any) -> Any:
            return run(prompt, *args, **kwargs).value

        wrapper.guard = core  # type: ignore[attr-defined]
        wrapper.run = run  # type: ignore[attr-defined]
        wrapper.stream = stream  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _partial_after_prompt(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        async def acall(prompt: Prompt) -> Any:
            return await fn(prompt, *args, **kwargs)

        return acall

    def call(prompt: Prompt) -> Any:
        return fn(prompt, *args, **kwargs)

    return call
