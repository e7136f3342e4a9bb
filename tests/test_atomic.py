"""Atomic replacement of files and directories (guardrail.atomic), the one helper every writer uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guardrail.atomic import replacing, write_atomic


def test_a_file_is_replaced_whole_with_ordinary_permissions(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old")
    write_atomic(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "report.md"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_directory_replaces_an_old_one(tmp_path: Path) -> None:
    entry = tmp_path / "models" / "abc"
    entry.mkdir(parents=True)
    (entry / "stale.bin").write_text("old")
    with replacing(entry, directory=True) as tmp:
        assert tmp.is_dir() and tmp.parent == entry.parent and tmp.name.startswith(".abc.")
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in entry.iterdir()) == ["weights"]
    assert [p.name for p in entry.parent.iterdir()] == ["abc"]  # neither ours nor the stale one is left


def test_an_entry_another_process_finished_is_kept(tmp_path: Path) -> None:
    entry = tmp_path / "abc"

    def finished(path: Path) -> bool:
        return (path / "done").exists()

    with replacing(entry, directory=True, keep_existing=finished) as tmp:
        (tmp / "ours").write_text("x")
        entry.mkdir()  # meanwhile another process renamed its complete entry into place
        (entry / "done").write_text("theirs")
    assert sorted(p.name for p in entry.iterdir()) == ["done"]
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]


def test_an_unfinished_entry_is_replaced(tmp_path: Path) -> None:
    entry = tmp_path / "abc"
    entry.mkdir()
    (entry / "partial").write_text("x")
    with replacing(entry, directory=True, keep_existing=lambda p: (p / "done").exists()) as tmp:
        (tmp / "done").write_text("ours")
    assert sorted(p.name for p in entry.iterdir()) == ["done"]


def test_writers_of_one_path_use_different_temporary_names(tmp_path: Path) -> None:
    path = tmp_path / "grammar.bin"
    with replacing(path) as first, replacing(path) as second:
        assert first != second
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert path.read_bytes() == b"1" and os.listdir(tmp_path) == ["grammar.bin"]

