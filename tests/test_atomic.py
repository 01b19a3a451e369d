"""Atomic writes: a reader sees the old file or folder or the new one, never a half-written one."""
import json

import pytest

from fastalign.atomic import atomic_directory, write_json_atomic, write_text_atomic


def test_write_text_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    assert write_text_atomic(path, "first\n") == path
    write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]  # no temporary left beside it


def test_mode_is_that_of_a_plain_write(tmp_path):
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    write_text_atomic(atomic, "x")
    assert atomic.stat().st_mode == plain.stat().st_mode  # not a private temporary file's 0600


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write_text_atomic(path, b"bytes are not text")  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_json_round_trip_and_indent(tmp_path):
    data = {"a": [1, 2], "b": {"c": None}}
    path = write_json_atomic(tmp_path / "x.json", data, indent=1)
    text = path.read_text()
    assert json.loads(text) == data and text.endswith("\n") and '\n "a"' in text


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"kept": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"kept": True}


def test_atomic_directory_replaces_on_success_and_keeps_the_old_on_failure(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    assert (out / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "weights").write_text("v2, half")
            raise RuntimeError("crash mid-save")
    assert (out / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
