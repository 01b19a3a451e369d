"""What can stop a run part-way, and how each stop is reported: a signal asking to stop, a generation
engine that failed on a batch. (An oracle that keeps failing raises `oracle.durable.OracleFailure`; too
many NaN/inf steps raise `learner.learner.NonFiniteLossError`.)

Signals only raise a flag: the loop finishes the round in flight, checkpoints, and stops with a message
saying how to resume, so a SIGTERM from a scheduler never leaves a half-written state behind. A second
signal of the same kind stops at once (the last checkpoint and the oracle log still hold everything).
"""
from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from types import FrameType

from .types import Prompt


class RunInterrupted(Exception):
    """SIGTERM/SIGINT: the run checkpointed and stopped; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, round_: int, checkpoint: Path | None):
        self.signum, self.round, self.checkpoint = signum, round_, checkpoint
        self.exit_code = 128 + signum
        where = f"state saved to {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"interrupted by {signal.Signals(signum).name} after round {round_}; {where}; "
                         "continue with the same command plus `--resume auto`")


class GenerationError(RuntimeError):
    """The generation engine failed; the message names the round and the prompt batch (also written to disk)."""

    def __init__(self, round_: int, prompts: list[Prompt], cause: BaseException, batch_file: Path | None):
        self.round, self.prompts, self.batch_file = round_, prompts, batch_file
        ids = ", ".join(p.id for p in prompts[:8]) + (", …" if len(prompts) > 8 else "")
        saved = f"; the batch is in {batch_file}" if batch_file else ""
        super().__init__(f"generation engine failed in round {round_} on a batch of {len(prompts)} prompt(s) "
                         f"[{ids}] (longest {max(len(p.token_ids) for p in prompts)} tokens){saved}: "
                         f"{type(cause).__name__}: {cause}")


def write_failed_batch(path: Path, prompts: list[Prompt]) -> Path:
    """The prompts of a failed generation call, one JSON row each, to reproduce the failure alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in prompts:
            f.write(json.dumps({"id": p.id, "prompt": p.instruction, "prompt_tokens": len(p.token_ids)}) + "\n")
    return path


class StopSignals:
    """Catch SIGTERM/SIGINT as a request to stop at the next round boundary (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signum:  # asked twice: stop now
            self.restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.received = signum
        print(f"fastalign: {signal.Signals(signum).name} received: finishing this round, then checkpointing "
              "(send it again to stop at once)", flush=True)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
