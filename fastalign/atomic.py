"""Writes that a crash cannot leave half done: a reader sees the old file or folder, or the new one.

Everything a later run or a sweep reads back (a run's config, a converted model, a saved adapter, a
bench's results) goes through here: written beside its destination, then renamed over it in one step.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` (parents created) through a synced temporary sibling and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # opened like any new file (so the umask sets its mode, as for a plain write), named per process and thread
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """`data` as indented JSON with a final newline, written by `write_text_atomic`."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


@contextmanager
def atomic_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces `out_dir` in one rename,
    on failure it is removed, so readers only ever see a complete directory (or the previous one)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    try:
        yield tmp
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
