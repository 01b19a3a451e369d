"""Run metrics: one JSONL row per event and TensorBoard scalars, with the oracle query count as x-axis.

Only the main process writes; the JSONL file is appended line by line and flushed, so a crash keeps
every row written before it.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """rebuild_tensorboard (on resume): metrics.jsonl was restored to the checkpoint's rows, so the
    TensorBoard log is rewritten from it; appending would repeat the rounds the resume re-runs."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, enabled: bool = True,
                 rebuild_tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._writer = None
        self._file = None
        self._start = time.time()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = Path(out_dir) / "tensorboard"
            if rebuild_tensorboard:
                shutil.rmtree(tb_dir, ignore_errors=True)
            self._writer = SummaryWriter(str(tb_dir))
            if rebuild_tensorboard and self.path.is_file():
                for row in read_metrics(self.path):
                    values = {k: v for k, v in row.items() if k not in ("kind", "queries", "time")}
                    self._to_tensorboard(row["kind"], row["queries"], values)

    def log(self, kind: str, queries: int, values: dict[str, Any]) -> None:
        """One row: kind ("train" / "eval" / ...), the oracle query count so far, and scalar values."""
        if not self.enabled:
            return
        row = {"kind": kind, "queries": queries, "time": round(time.time() - self._start, 3), **values}
        self._file.write(json.dumps(row, default=_jsonable) + "\n")
        self._file.flush()
        self._to_tensorboard(kind, queries, values)

    def _to_tensorboard(self, kind: str, queries: int, values: dict[str, Any]) -> None:
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, global_step=queries)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
