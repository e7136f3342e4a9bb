"""Replace a file or a directory in one step, so no reader (and no crash) ever sees half of it.

Everything guardrail writes for later (report files, the results store's ``run.json``, compiled
grammars, converted model weights) is written to a temporary sibling first and renamed over the
old one: a rename within a directory is atomic, so the path holds either the old content or the
new. The temporary name is unique per writer, so two processes writing the same path do not
write into each other's file, and it starts with a dot and ends in ``.tmp``, so it is easy to
ignore (and to clean up after a crash).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
>>> write_atomic(path, "hello").read_text()
'hello'
>>> with replacing(path) as tmp:
...     _ = tmp.write_text("bye")
>>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
('bye', ['note.txt'])
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "write_atomic"]


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Replace ``path``'s content with ``data`` (text is written as UTF-8) in one step."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def replacing(path: str | os.PathLike[str], *, directory: bool = False,
              keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A temporary sibling of ``path`` to fill; it replaces ``path`` when the block ends.

    For a file the temporary path does not exist yet (write it any way you like); with
    ``directory`` it is an empty directory, and an old directory at ``path`` is moved aside and
    deleted. If the block raises, the temporary path is removed and nothing is replaced.
    ``keep_existing(path)`` true when the block ends (another process finished the same entry
    meanwhile, or won the race to rename) keeps that one and discards ours.
    """
    target = Path(path)
    tag = f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix=tag, suffix=".tmp", dir=target.parent)) if directory else \
        target.with_name(f"{tag}.tmp")
    try:
        yield tmp
        if keep_existing is not None and target.exists() and keep_existing(target):
            return
        if directory and target.exists():
            _move_aside_and_delete(target, tag)
        try:
            os.replace(tmp, target)
        except OSError:
            if keep_existing is None or not keep_existing(target):  # a real failure, not a lost race
                raise
    finally:
        _remove(tmp)


def _move_aside_and_delete(target: Path, tag: str) -> None:
    # A directory cannot be renamed over a non-empty one: rename the old one away first.
    stale = target.with_name(f"{tag}.stale")
    try:
        os.replace(target, stale)
    except OSError:
        return  # then the rename that follows fails too, and says why
    shutil.rmtree(stale, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
