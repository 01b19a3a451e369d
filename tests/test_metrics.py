"""MetricsLogger: JSONL rows, TensorBoard scalars, and the TensorBoard log rebuilt on resume."""
from __future__ import annotations

from fastalign.metrics import MetricsLogger, read_metrics


def scalars(out, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def test_rows_and_scalars(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log("train", 8, {"loss": 0.5, "note": "text", "flag": True, "bad": float("nan")})
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl", kind="train")[0]["note"] == "text"
    assert scalars(tmp_path, "train/loss") == [(8, 0.5)]


def test_resume_rebuilds_tensorboard_from_the_restored_rows(tmp_path):
    log = MetricsLogger(tmp_path)
    for queries, loss in ((8, 0.7), (16, 0.6), (24, 0.5)):
        log.log("train", queries, {"loss": loss})
    log.close()
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows[:2]) + "\n")  # restored to the round-16 checkpoint
    resumed = MetricsLogger(tmp_path, rebuild_tensorboard=True)
    resumed.log("train", 24, {"loss": 0.45})  # the re-run round
    resumed.close()
    assert scalars(tmp_path, "train/loss") == [(8, 0.7), (16, 0.6), (24, 0.45)]  # once each, no stale 0.5
