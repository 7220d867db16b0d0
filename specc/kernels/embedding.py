"""Embedding lookup (gather) and its gradient (scatter-add into the table)."""

from __future__ import annotations

import numba

from . import JIT


@numba.njit(**JIT)
def gather(ids, table, out):
    """ids (n,) int64 already range-checked, table (input_dim, dim) -> out (n, dim)."""
    n, d = out.shape
    for r in range(n):
        k = ids[r]
        for j in range(d):
            out[r, j] = table[k, j]


@numba.njit(**JIT)
def scatter_add(ids, dy, dtable):
    """dtable = 0, then dtable[ids[r]] += dy[r] (repeated ids accumulate)."""
    rows, d = dtable.shape
    for k in range(rows):
        for j in range(d):
            dtable[k, j] = 0
    for r in range(ids.shape[0]):
        k = ids[r]
        for j in range(d):
            dtable[k, j] += dy[r, j]
