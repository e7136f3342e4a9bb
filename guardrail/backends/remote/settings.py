"""What a ``RemoteBackend`` can be told, and the defaults it uses when it is told nothing."""

#: How the schema can reach the server; see ``guardrail.backends.remote``.
STRUCTURED_MODES: tuple[str, ...] = ("auto", "json_schema", "json_object", "vllm", "guided_json", "prompt")
DEFAULT_STRUCTURED = "auto"
#: What ``auto`` tries, in order, stepping down when the server refuses one.
AUTO_ORDER: tuple[str, ...] = ("json_schema", "json_object", "prompt")
#: The environment variable the API key is read from when ``api_key`` is not given.
API_KEY_ENV = "OPENAI_API_KEY"
#: Seconds to wait for a response when ``timeout_s`` is not given (a small model on a busy CPU
#: can take tens of seconds per answer); connecting gets at most ``CONNECT_TIMEOUT_S``.
DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
#: Requests kept in ``RemoteBackend.log``.
LOG_SIZE = 1000
