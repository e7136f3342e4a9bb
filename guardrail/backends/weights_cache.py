"""The converted-weights cache: an embedded GGUF model dequantized once, kept as safetensors.

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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import platformdirs

from guardrail.atomic import replacing

__all__ = ["CACHE_FORMAT", "MARKER", "QuietTransformers", "cache_is_valid", "cache_root", "embedded_cache_dir",
           "file_digest", "load_verified", "manifest", "write_cache"]

MARKER = "guardrail-cache.json"
# Bump when the layout of a cache entry changes, so older entries are rebuilt.
CACHE_FORMAT = 2



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



def load_verified(cache_dir: Path, manifest: dict[str, Any]) -> tuple[Any, Any] | None:
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
    return manifest(cache_dir, digest) is not None


def manifest(cache_dir: Path, digest: str) -> dict[str, Any] | None:
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


def write_cache(model: Any, tokenizer: Any, cache_dir: Path, digest: str, *, gguf_file: str) -> None:
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
        with QuietTransformers():
            model.save_pretrained(directory)
    finally:
        model.hf_quantizer = quantizer
        if had_config:
            model.config.quantization_config = quant_config


def _load_converted(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with QuietTransformers():
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, use_safetensors=True)
    model.eval()
    return model, tokenizer



class QuietTransformers:
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
