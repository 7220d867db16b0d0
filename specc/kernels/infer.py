"""Inference kernels (specc/infer.py): a convolution whose BatchNormalization is folded into its kernel and
bias, with the residual Add and the ReLU that follow it applied to each chunk of its output while the chunk
is in cache, instead of as passes of their own over the whole output.

The convolution itself is conv.py's chunk kernel (`_forward_rows`: the direct tiles where they take the
layer, else im2col + sgemm), called per chunk of samples as conv.py's `_forward_range` does.
"""

from __future__ import annotations

import numba

from . import JIT, conv


@numba.njit(**JIT)
def conv_residual_range(x, kernel, bias, g, spc, t0, t1, scratch, residual, add, relu, out):
    """Chunks t0:t1 of spc samples each of out (N, Ho, Wo, F) = conv(x (N, H, W, C), kernel (K, F)) + bias
    (F,), then (with `add`) + residual (N, Ho, Wo, F), then (with `relu`) max(., 0); scratch (>= spc*Ho*Wo*K,)
    is this thread's. Without `add`, residual is not read and the ReLU is the convolution's own epilogue."""
    n_, ho, wo, f = out.shape
    per = ho * wo
    rows = out.reshape(n_ * per, f)
    res = residual.reshape(residual.size // f, f)
    zero = out.dtype.type(0)
    for t in range(t0, t1):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        o = rows[n0 * per: n1 * per]
        conv._forward_rows(x, kernel, bias, True, relu and not add, g, n0, n1, ho, wo, scratch, o)
        if add:
            r = res[n0 * per: n1 * per]
            for i in range(o.shape[0]):
                for q in range(f):
                    v = o[i, q] + r[i, q]
                    o[i, q] = max(v, zero) if relu else v
