"""Helpers shared by the model-backed oracles: padded batches."""
from __future__ import annotations


def length_sorted_chunks(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by similar length, so a padded batch wastes little compute on padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


