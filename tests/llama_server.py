"""Start llama-cpp-python's OpenAI-compatible server on loopback (for tests and benchmarks).

``llama_server(gguf)`` runs ``python -m llama_cpp.server --model GGUF --host 127.0.0.1 --port P``
on a free port with one thread (the test machine has two cores, shared), waits until
``GET /v1/models`` answers, yields the base URL (``http://127.0.0.1:P/v1``) and terminates the
server at the end. ``server_missing()`` says why it cannot run here (``None`` when it can).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

#: The name the server gives the model (``--model_alias``), as in the issue's example.
MODEL_ALIAS = "smollm2"


def server_missing() -> str | None:
    """Why the server cannot be started here, or ``None``."""
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install 'llama-cpp-python[server]==0.3.36' (in the dev extra)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def llama_server(gguf: Path, *, threads: int = 1, n_ctx: int = 2048, ready_within_s: float = 120.0,
                 extra_args: Sequence[str] = ()) -> Iterator[str]:
    """Run the server on a free loopback port; yield its base URL (``.../v1``)."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--verbose", "false", *extra_args]
    log = tempfile.NamedTemporaryFile("w+b", prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + ready_within_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited with {process.returncode}: "
                                   f"{Path(log.name).read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(base_url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the llama.cpp server did not answer within {ready_within_s:g} s (log: {log.name})")
            time.sleep(0.25)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)
