"""A check that a JSON document carries no array shaped like one of the pool's matrices.

Used by the tests and the load test on every response body: the service must answer with
losses, names and text, never with ``A`` ``[r, d_in]``, ``B`` ``[d_out, r]``, their stacks, or a
dense ``ΔW`` ``[d_out, d_in]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from evojax_merge.lora import LoraPool


def adapter_matrix_shapes(pools: Iterable[LoraPool]) -> set[tuple[int, ...]]:
    """Every shape a pool tensor has: ``A``, ``B`` (alone and stacked) and the dense ``B A``."""
    shapes: set[tuple[int, ...]] = set()
    for pool in pools:
        for m in pool.stack.A:
            a, b = tuple(np.shape(pool.stack.A[m])), tuple(np.shape(pool.stack.B[m]))
            shapes |= {a, a[1:], b, b[1:], (b[1], a[2])}
    return shapes


def _shape(x) -> tuple[int, ...] | None:
    """The shape of a rectangular nested list of numbers, else None."""
    if not isinstance(x, list):
        return () if isinstance(x, (int, float)) and not isinstance(x, bool) else None
    if not x:
        return (0,)
    inner = [_shape(v) for v in x]
    if inner[0] is None or any(s != inner[0] for s in inner):
        return None
    return (len(x), *inner[0])


def nested_array_shapes(doc) -> Iterator[tuple[int, ...]]:
    """Shapes of every numeric nested list anywhere in a parsed JSON document."""
    if isinstance(doc, Mapping):
        for v in doc.values():
            yield from nested_array_shapes(v)
    elif isinstance(doc, list):
        shape = _shape(doc)
        if shape is not None:
            yield shape
        for v in doc:
            yield from nested_array_shapes(v)


def matrix_leaks(doc, shapes: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The shapes in ``doc`` that match a pool matrix (empty when the document is clean)."""
    return [s for s in nested_array_shapes(doc) if len(s) >= 2 and s in shapes]
