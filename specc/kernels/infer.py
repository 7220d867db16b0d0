"""Inference kernels (specc/infer.py): a convolution whose BatchNormalization is folded into its kernel and
bias, with the residual Add and the ReLU that follow it applied to each chunk of its output while the chunk
is in cache, instead of as passes of their own over the whole output.

The convolution itself is conv.py's chunk kernel (`_forward_rows`: the direct tiles where they take the
layer, else im2col + sgemm), called per chunk of samples as conv.py's `_forward_range` does; or
(`in_place`, a 1 x 1 convolution of stride 1 and no padding) x's rows times the kernel by one product
(gemm.affine, bias and ReLU in its epilogue): the direct tiles run such a layer with many input channels
per filter slower than a product reading x in place.
"""

from __future__ import annotations

import numba

from . import JIT, conv, gemm


@numba.njit(**JIT)
def _pointwise_rows(x, kernel, bias, relu, n0, n1, o):
    """o ((n1 - n0)*H*W, F) = the rows of samples n0:n1 of x (N, H, W, C) times kernel (C, F) + bias (F,),
    then max(., 0) if relu, on the calling thread: a pointwise convolution's windows are x's rows."""
    n_, h_, w_, c_ = x.shape
    per = h_ * w_
    gemm.affine(x.reshape(n_ * per, c_)[n0 * per: n1 * per], kernel, bias, True, relu, o, False)


@numba.njit(**JIT)
def conv_residual_range(x, kernel, bias, g, spc, t0, t1, scratch, residual, add, relu, in_place, out):
    """Chunks t0:t1 of spc samples each of out (N, Ho, Wo, F) = conv(x (N, H, W, C), kernel (K, F)) + bias
    (F,), then (with `add`) + residual (N, Ho, Wo, F), then (with `relu`) max(., 0); scratch (>= spc*Ho*Wo*K,)
    is this thread's. Without `add`, residual is not read and the bias and ReLU are the convolution's own
    epilogue."""
    n_, ho, wo, f = out.shape
    per = ho * wo
    rows = out.reshape(n_ * per, f)
    res = residual.reshape(residual.size // f, f)
    zero = out.dtype.type(0)
    for t in range(t0, t1):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        o = rows[n0 * per: n1 * per]
        if in_place:
            _pointwise_rows(x, kernel, bias, relu and not add, n0, n1, o)
        else:
            conv._forward_rows(x, kernel, bias, True, relu and not add, g, n0, n1, ho, wo, scratch, o)
        if add:
            r = res[n0 * per: n1 * per]
            for i in range(o.shape[0]):
                for q in range(f):
                    v = o[i, q] + r[i, q]
                    o[i, q] = max(v, zero) if relu else v


@numba.njit(parallel=True, **JIT)
def conv_residual_split(x, kernel, bias, g, spc, chunks, parts, scratch, residual, add, relu, in_place, out):
    """conv_residual_range over `chunks` in `parts` contiguous ranges on Numba's threads, range t with
    scratch[t] (see conv._split)."""
    for t in numba.prange(parts):
        conv_residual_range(x, kernel, bias, g, spc, chunks * t // parts, chunks * (t + 1) // parts, scratch[t],
                            residual, add, relu, in_place, out)
