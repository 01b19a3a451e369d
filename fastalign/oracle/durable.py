"""A durable, retrying front for any oracle: every answer is fsync'd to a log before it is used.

Oracle answers are the expensive, irreplaceable part of an online run (a judge model's time, an API's
money, a human's attention). `DurableOracle` appends each answered pair to a JSONL log and fsyncs it
before returning, and answers any pair already in the log from it instead of asking again. A run
killed between a query and its next checkpoint therefore loses nothing: on resume the loop re-runs the
rounds since the checkpoint and every query it repeats is answered from the log, unpaid.

Only the probabilities (and scores) are logged, keyed by a hash of (prompt, response a, response b);
the training labels are drawn by this wrapper's own seeded streams exactly as the wrapped oracle would
draw them, and those streams are part of the checkpoint, so a resumed run draws the same labels.

Failures of the wrapped oracle (an exception or a timeout) are retried with exponential back-off; after
the last retry an `OracleFailure` says what failed and how often. A `PermanentOracleError` (e.g. a server
that does not know the model asked for) is not retried: it would fail the same way again.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .base import Oracle, PermanentOracleError

log = logging.getLogger(__name__)


class OracleFailure(RuntimeError):
    """The oracle kept failing after every retry; the run stops (its state is checkpointed first)."""


def query_key(prompt: str, a: str, b: str) -> str:
    """Content address of one pairwise query (order matters: P(a ≻ b) ≠ P(b ≻ a))."""
    h = hashlib.sha256()
    for text in (prompt, a, b):
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


class DurableOracle(Oracle):
    """Wraps `inner`; labels like it (same preference mode, temperature and seed), pays only for new pairs.

    queries / eval_queries count every pair answered (as for any oracle: the x-axis of the curves);
    paid_queries / paid_eval_queries count the training / evaluation pairs actually sent to `inner` over
    the whole run (read back from the log), replayed_queries the pairs this process answered from the log.
    """

    def __init__(self, inner: Oracle, log_path: str | os.PathLike, *, retries: int = 3, timeout: float | None = None,
                 backoff: float = 1.0):
        super().__init__(preference=inner.preference, bt_temperature=inner.bt_temperature, seed=inner.seed)
        self.inner, self.name = inner, inner.name
        self.retries, self.timeout, self.backoff = int(retries), timeout, float(backoff)
        self.path = Path(log_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cache: dict[str, tuple[float, float | None, float | None]] = {}
        self.paid_queries, self.paid_eval_queries = self._load()
        self.replayed_queries = 0
        self._file = self.path.open("a", encoding="utf-8")
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ the log
    def _load(self) -> tuple[int, int]:
        """Read the log into the cache; a torn last line (killed mid-write) is cut off, nothing else is.
        Returns the paid (training, evaluation) queries it holds."""
        if not self.path.exists():
            return 0, 0
        raw = self.path.read_bytes()
        good_end, paid = 0, {"train": 0, "eval": 0}
        for line in raw.splitlines(keepends=True):
            try:
                row = json.loads(line)
                entry = (float(row["p"]), row.get("sa"), row.get("sb"))
            except (ValueError, KeyError, TypeError):
                if good_end + len(line) < len(raw):  # not the last line: the log was damaged, not torn
                    raise OracleFailure(f"{self.path}: unreadable entry at byte {good_end}; the oracle log is "
                                        "corrupted (move it away to re-query from scratch)") from None
                log.warning("%s: dropping a torn last entry (the run was killed while writing it)", self.path)
                break
            self.cache[row["k"]] = entry
            paid[row.get("kind", "train")] += 1
            good_end += len(line)
        if good_end < len(raw):
            with self.path.open("r+b") as f:
                f.truncate(good_end)
        return paid["train"], paid["eval"]

    def _append(self, keys: list[str], prob_a: np.ndarray, scores_a, scores_b, kind: str) -> None:
        lines = []
        for i, key in enumerate(keys):
            row: dict[str, Any] = {"k": key, "p": float(prob_a[i]), "kind": kind}
            if scores_a is not None:
                row["sa"], row["sb"] = float(scores_a[i]), float(scores_b[i])
            lines.append(json.dumps(row) + "\n")
            self.cache[key] = (row["p"], row.get("sa"), row.get("sb"))
        self._file.write("".join(lines))
        self._file.flush()
        os.fsync(self._file.fileno())
        if kind == "eval":
            self.paid_eval_queries += len(keys)
        else:
            self.paid_queries += len(keys)

    # ------------------------------------------------------------------ answering
    def compare(self, prompts, a, b, *, count: bool = True):
        self._kind = "train" if count else "eval"
        return super().compare(prompts, a, b, count=count)

    def _probabilities(self, prompts: list[str], a: list[str], b: list[str]):
        keys = [query_key(p, x, y) for p, x, y in zip(prompts, a, b)]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in self.cache}.values())
        if todo:
            prob, sa, sb = self._ask([prompts[i] for i in todo], [a[i] for i in todo], [b[i] for i in todo])
            self._append([keys[i] for i in todo], np.asarray(prob, dtype=np.float64), sa, sb, self._kind)
        self.replayed_queries += len(keys) - len(todo)
        rows = [self.cache[k] for k in keys]
        prob_a = np.array([r[0] for r in rows], dtype=np.float64)
        if any(r[1] is None for r in rows):
            return prob_a, None, None
        return prob_a, np.array([r[1] for r in rows]), np.array([r[2] for r in rows])

    def _ask(self, prompts: list[str], a: list[str], b: list[str]):
        """The wrapped oracle's answer, retried with back-off; its probabilities are validated here so a
        bad answer is never logged."""
        errors = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                prob, sa, sb = self._call(prompts, a, b)
                prob = np.asarray(prob, dtype=np.float64)
                if prob.shape != (len(prompts),) or not np.all((prob >= 0) & (prob <= 1)):
                    raise ValueError(f"invalid probabilities {prob!r:.200}")
                return prob, sa, sb
            except PermanentOracleError as exc:
                raise OracleFailure(f"the {self.name} oracle failed on a batch of {len(prompts)} pair(s) and "
                                    f"retrying cannot help: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 — any failure of user/model code is retried
                errors.append(f"{type(exc).__name__}: {exc}")
                log.warning("%s oracle failed (attempt %d of %d): %s", self.name, attempt + 1, self.retries + 1,
                            errors[-1])
        raise OracleFailure(f"the {self.name} oracle failed {len(errors)} time(s) on a batch of {len(prompts)} "
                            f"pair(s) (retries={self.retries}, back-off from {self.backoff}s); last error: "
                            f"{errors[-1]}")

    def _call(self, prompts, a, b):
        if self.timeout is None:
            return self.inner._probabilities(prompts, a, b)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="oracle")
        future = self._pool.submit(self.inner._probabilities, prompts, a, b)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            self._pool.shutdown(wait=False)  # a hung call cannot be killed: abandon its thread
            self._pool = None
            raise TimeoutError(f"no answer within oracle_timeout={self.timeout}s") from None

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "eval_queries": self.eval_queries,
                "rngs": {str(k): rng.bit_generator.state for k, rng in self._rngs.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queries, self.eval_queries = int(state["queries"]), int(state["eval_queries"])
        for key, rng in self._rngs.items():
            rng.bit_generator.state = state["rngs"][str(key)]

    def close(self) -> None:
        self._file.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        close_inner = getattr(self.inner, "close", None)
        if close_inner is not None:  # e.g. a served judge's request pool
            close_inner()
