"""Inference of a chain of Dense layers (an MLP) on several threads, with one fork and one join per batch.

Every layer of the chain is row by row, so the batch is split once, into one range of rows per thread,
and each thread runs the whole chain (kernels/fused.forward_rows: products on the calling thread, then
the activations) on its rows. A split of each product instead (kernels/fused.forward) joins the threads
after every layer and runs the small last layer and its softmax on one thread. On sgemm's products each
row goes through the same instructions either way, so the output has the same bits at every thread
count (DenseChain.predict splits only there: BLAS's products round a row according to its neighbours).

Threads after the first may read their own copy of the weights (`replicas`): two cores reading the same
weights slow each other on CPUs whose last-level cache does not keep lines that a core's L2 still holds
(Xeons since Skylake-SP), and the weights of an MLP are read again for every block of rows.
"""

from __future__ import annotations

import numba

from . import JIT
from .fused import forward_rows


@numba.njit(parallel=True, **JIT)
def forward_split(x, params, replicas, plan, work, out, parts):
    """forward_rows over all rows of x (batch, in), on `parts` threads, each on batch / parts contiguous
    rows. Thread t > 0 reads the weights from replicas[t - 1] (copies of params' first replicas.shape[1]
    values, which hold the chain's) when there is such a row, else from params. The output goes into out
    (batch, units out) when it has the batch's rows, else into `work` where forward leaves it."""
    batch = x.shape[0]
    for t in numba.prange(parts):
        i0, i1 = batch * t // parts, batch * (t + 1) // parts
        if i1 > i0:
            weights = replicas[t - 1] if 0 < t <= replicas.shape[0] else params
            forward_rows(x, weights, plan, work, i0, i1, out)
