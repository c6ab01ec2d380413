"""accounting.durable: a file is replaced whole or not at all, and nothing is left behind."""

from __future__ import annotations

import pytest

from accounting import atomic_file, write_atomically


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "search.json"
    target.write_text("old")
    assert write_atomically(target, "new") == target
    assert target.read_text() == "new"
    write_atomically(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write("half of a new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_two_writers_of_one_target_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "features.pt"
    with atomic_file(target, "wb") as first, atomic_file(target, "wb") as second:
        assert first.name != second.name
        first.write(b"first")
        second.write(b"second")
    assert target.read_bytes() == b"first"  # the last rename wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.pt"]


def test_only_whole_file_modes():
    with pytest.raises(ValueError, match="whole files"), atomic_file("x", "a"):
        pass
