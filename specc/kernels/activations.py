"""Elementwise activations and softmax, forward and backward, selected by an integer code.

One kernel per direction (not one per activation) keeps the number of compiled functions, and so the
cold-start compile time, small. Arrays are viewed 2-D (rows, last axis) because softmax needs the last
axis; the elementwise activations ignore the split.

Every value is computed in float64 from the pre-activation and rounded once when stored, in forms that
neither overflow nor cancel (exp only of -|x|), so float32 results are exact to its rounding over its
whole range (tests/test_activation_range.py). Values convert with np.float64, not float(): Numba's
float() keeps a float32 a float32, and under run_eagerly NumPy computes np.float32 - 1.0 in float32. The
helpers are plain calls, which LLVM inlines into the vector loops (inlined in Numba's IR everywhere, they
tripled backward's cold compile).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba.extending import overload

from . import JIT, native

NAMES = ("linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh",
         "softmax", "log_softmax", "softplus", "softsign", "silu", "exponential")
CODE = {name: i for i, name in enumerate(NAMES)}
LINEAR, SOFTMAX, LOG_SOFTMAX = CODE["linear"], CODE["softmax"], CODE["log_softmax"]
RELU, SIGMOID, TANH = CODE["relu"], CODE["sigmoid"], CODE["tanh"]

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805
LEAKY_SLOPE = 0.2  # Keras 3's leaky_relu default negative_slope
INV_SQRT_2 = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


def _float32_from_bits(bits):
    """The float32 whose bits are the int32 `bits`, as _float64_from_bits."""
    return np.int32(bits).view(np.float32)


@overload(_float32_from_bits, jit_options=JIT)
def _float32_from_bits_compiled(bits):
    if native.internals is not None:
        bitcast = native.internals.float32_from_bits
        return lambda bits: bitcast(bits)
    # Portable: the bits _exp_parts32 builds are those of 2^k, (k + 127) << 23
    return lambda bits: np.float32(math.ldexp(1.0, (bits >> 23) - 127))


def _fmax(a, b):
    """max(a, b) of two floats of one type; in compiled code, with the native package, a maximum that
    a reducing loop vectorises (internals.fmax)."""
    return max(a, b)


@overload(_fmax, jit_options=JIT)
def _fmax_compiled(a, b):
    if native.internals is not None:
        maxnum = native.internals.fmax
        return lambda a, b: maxnum(a, b)
    return lambda a, b: max(a, b)


# exp as arithmetic, so that the loops around it vectorise (math.exp is a libm call per value, which no
# loop vectorises): 2^k from its bits times a degree-12 polynomial of the remainder, relative error below
# 1e-13 in float64 (fastmath lets LLVM merge the two-part ln 2 of the reduction; float32 rounds at 6e-8).
# recurrent._exp's arithmetic (the LSTM's gates), for x <= 0 only and down through float64's subnormals.
def _float64_from_bits(bits):
    """The float64 whose bits are the int64 `bits`: a bitcast in compiled code (the overload below); a
    NumPy view when the kernels run as Python (run_eagerly)."""
    return np.int64(bits).view(np.float64)


@overload(_float64_from_bits, jit_options=JIT)
def _float64_from_bits_compiled(bits):
    if native.internals is not None:
        bitcast = native.internals.float64_from_bits
        return lambda bits: bitcast(bits)
    # Portable: the bits _exp builds are those of 2^k, (k + 1023) << 52 (a libm call per value: no vector loop)
    return lambda bits: math.ldexp(1.0, (bits >> 52) - 1023)


_LOG2E, _LN2_HI, _LN2_LO = 1.4426950408889634, 6.93147180369123816490e-01, 1.90821492927058770002e-10


@numba.njit(**JIT)
def _exp(x):
    """exp(x) for float64 x <= 0 (x above 0 is taken as 0), without a call or a branch. Below -708 the
    result is subnormal, and 2^k is applied in two factors so that it rounds once; below -745.2 it rounds
    to 0, which is returned as such (fastmath may multiply a caller's huge factor in before 2^-600)."""
    v = np.float64(x)
    x = min(max(v, -746.0), 0.0)
    k = math.floor(x * _LOG2E + 0.5)  # in [-1076, 0]
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2: the series' next term is below 2e-16
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (1 / 39916800 + r / 479001600)))))))))))
    low = k < -1000  # 2^k is not a normal float64: 2^(k + 600) * 2^-600
    scale = _float64_from_bits((np.int64(k + 600 if low else k) + 1023) << 52)
    return p * scale * (2.0**-600 if low else 1.0) if v > -745.2 else 0.0


# exp in float32 arithmetic for float32 loops (the recurrent gates, attention's softmax): twice the lanes
# of float64 and no conversions. exp(y) for y <= 0 from y = k ln 2 + r, |r| <= ln(2) / 2, 2^k from its
# bits and expm1(r) from its series to r^7 / 7! (the next term is below 2e-8 of the result).
F32 = np.float32
_L2E32, _HI32, _LO32 = F32(1.4426950408889634), F32(0.693145751953125), F32(1.4286068203094172e-06)
_C2, _C3, _C4, _C5, _C6, _C7 = (F32(1 / 2), F32(1 / 6), F32(1 / 24), F32(1 / 120), F32(1 / 720), F32(1 / 5040))
_ONE32, _HALF32 = F32(1), F32(0.5)


@numba.njit(inline="always", **dict(JIT, fastmath={"contract"}))
def _exp_parts32(y):
    """(s, m) with exp(y) = s * (1 + m): s = 2^k, m = expm1(r), for float32 y in [-87.3, 0] (2^k a
    normal float32)."""
    kf = np.floor(y * _L2E32 + _HALF32)
    r = (y - kf * _HI32) - kf * _LO32
    m = r * (_ONE32 + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    s = _float32_from_bits((np.int32(kf) + np.int32(127)) << np.int32(23))
    return s, m


@numba.njit(**JIT)
def _sigmoid(x):
    """1 / (1 + exp(-x)) in float64 from e = exp(-|x|) in (0, 1]: nothing overflows (exp(-x) is inf in
    float32 below x = -88.7, which made 1 / (1 + inf) NaN under fastmath's reciprocal), and for x < 0 it
    is e / (1 + e), exact in the tail."""
    v = np.float64(x)
    e = _exp(-abs(v))
    return (1.0 if v >= 0 else e) / (1.0 + e)


@numba.njit(**JIT)
def _sigmoid_derivative(x):
    """sigmoid(x) * sigmoid(-x) = e / (1 + e)^2 with e = exp(-|x|): from x, not from the output y, whose
    1 - y is 0 once y rounds to 1 (x > 17 in float32) and loses digits well before."""
    e = _exp(-abs(np.float64(x)))
    return e / ((1.0 + e) * (1.0 + e))


@numba.njit(inline="always", **JIT)
def _tanh(x):
    """tanh(x) in float64 from t = exp(-2|x|): (1 - t) / (1 + t), or its Taylor series below |x| = 1/32
    where 1 - t would cancel (truncated there below 1e-20 relative); copysign keeps tanh(-0) = -0. A
    vector loop, where math.tanh is a libm call per value; inlined in Numba's IR,
    as LLVM leaves a function this size a call, and the loop scalar."""
    v = np.float64(x)
    a = min(abs(v), 20.0)  # tanh(20) is 1 in float64
    a2 = a * a
    series = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0)))))
    t = _exp(-2.0 * a)
    return math.copysign(series if a < 0.03125 else (1.0 - t) / (1.0 + t), v)


@numba.njit(**JIT)
def _tanh_derivative(x):
    """1 - tanh(x)^2 = 4t / (1 + t)^2 with t = exp(-2|x|): from x, as 1 - y^2 is 0 once y rounds to +-1."""
    t = _exp(-2.0 * abs(np.float64(x)))
    return 4.0 * t / ((1.0 + t) * (1.0 + t))


@numba.njit(**JIT)
def _exponential(v):
    """exp(v) for float64 v, inf past float64's range: Python's math.exp (run_eagerly) raises there."""
    e = math.exp(min(v, 709.0))
    return e if v <= 709.0 else e * math.exp(min(v - 709.0, 1.0))


@numba.njit(**JIT)
def _scalar_forward(code, x):
    """act(x) in float64 (x: the array's dtype), rounded once when stored."""
    v = np.float64(x)
    if code == 1:
        return max(v, 0.0)
    if code == 2:
        return min(max(v, 0.0), 6.0)
    if code == 3:
        return v if v > 0 else LEAKY_SLOPE * v
    if code == 4:
        return v if v > 0 else math.expm1(v)
    if code == 5:
        return SELU_SCALE * (v if v > 0 else SELU_ALPHA * math.expm1(v))
    if code == 6:  # Keras 3's default gelu is exact (approximate=False): x * Phi(x), Phi by erfc, which
        return 0.5 * v * math.erfc(-v * INV_SQRT_2)  # keeps its digits for x << 0 where 1 + erf(x) is 0
    if code == 7:
        return _sigmoid(v)
    if code == 8:  # Keras 3: relu6(x + 3) / 6
        return min(max(v + 3.0, 0.0), 6.0) / 6.0
    if code == 9:
        return math.tanh(v)
    if code == 12:
        return max(v, 0.0) + math.log1p(_exp(-abs(v)))
    if code == 13:
        return v / (1.0 + abs(v))
    if code == 14:
        return v * _sigmoid(v)
    if code == 15:
        return _exponential(v)
    return v


@numba.njit(**JIT)
def _scalar_derivative(code, x, y):
    """d activation / dx at pre-activation x, in float64. From x alone: the output y (still taken, for the
    callers' sake) has lost the digits the derivative needs in the tails of elu, selu, sigmoid and tanh,
    and is inf where exponential's overflows float32 but dy * exp(x) need not."""
    v = np.float64(x)
    if code == 1:
        return 1.0 if v > 0 else 0.0
    if code == 2:
        return 1.0 if 0 < v < 6 else 0.0
    if code == 3:
        return 1.0 if v > 0 else LEAKY_SLOPE
    if code == 4:
        return 1.0 if v > 0 else _exp(v)
    if code == 5:
        return SELU_SCALE if v > 0 else SELU_SCALE * SELU_ALPHA * _exp(v)
    if code == 6:  # Phi(x) + x phi(x)
        return 0.5 * math.erfc(-v * INV_SQRT_2) + v * _exp(-0.5 * v * v) * INV_SQRT_2PI
    if code == 7:
        return _sigmoid_derivative(v)
    if code == 8:
        return 1.0 / 6.0 if -3.0 < v < 3.0 else 0.0
    if code == 9:
        return _tanh_derivative(v)
    if code == 12:
        return _sigmoid(v)
    if code == 13:
        d = 1.0 + abs(v)
        return 1.0 / (d * d)
    if code == 14:  # s (1 + x (1 - s)), with 1 - s = sigmoid(-x) computed as such
        return _sigmoid(v) * (1.0 + v * _sigmoid(-v))
    if code == 15:  # from x: the output is inf past float32's range where dy * exp(x) may not be
        return _exponential(v)
    return 1.0


@numba.njit(**JIT)
def _argmax(a, r):
    """The first column holding the maximum of row r of a (the maximum by a vector loop, then a search)."""
    n = a.shape[1]
    m = a[r, 0]
    for j in range(1, n):
        m = max(m, a[r, j])
    for j in range(n):
        if a[r, j] == m:
            return j
    return 0


@numba.njit(**JIT)
def _row_max(a, r):
    """The maximum of row r of a, as float64."""
    m = a[r, 0]
    for j in range(1, a.shape[1]):
        m = max(m, a[r, j])
    return np.float64(m)


@numba.njit(**JIT)
def softmax(log, z, y):
    """y = softmax(z) (log_softmax with `log`) over each row; z, y: (rows, features). A kernel of its own
    too, so a model whose only activation outside its layers' products is a softmax (a classifier's last
    Dense) compiles this instead of every activation in `forward` (a shorter cold start).

    In float64, with m the row's maximum, reached `ties` times, and rest = sum of exp(z - m) below it:
    softmax = exp(z - m) / (ties + rest), log_softmax = (z - m) - log1p(ties - 1 + rest), which keeps
    the digits of a probability that rounds to 1 (log_softmax -1e-30, not 0)."""
    rows, n = z.shape
    e = np.empty(n, np.float64)  # one row's exp(z - m), each computed once
    for r in range(rows):
        m = _row_max(z, r)
        rest = 0.0
        ties = 0  # an integer: fastmath would take (ties - 1.0) + rest as (ties + rest) - 1.0
        for j in range(n):
            d = np.float64(z[r, j]) - m
            e[j] = 1.0 if d == 0 else _exp(d)
            rest += 0.0 if d == 0 else e[j]
            ties += 1 if d == 0 else 0
        if not log:
            inv = 1.0 / (ties + rest)
            for j in range(n):
                y[r, j] = e[j] * inv
        else:
            lse = math.log1p(np.float64(ties - 1) + rest)
            for j in range(n):
                y[r, j] = (np.float64(z[r, j]) - m) - lse
            # fastmath computes the loop above as z - (m + lse), hoisting m + lse: within float64's
            # rounding of m where z != m (z - m is then a float32 spacing of m at least), but where z is
            # the maximum that rounding is the whole result (-lse lost in m = 1e30 + lse)
            for j in range(n):
                if z[r, j] == m:
                    y[r, j] = -lse


@numba.njit(**JIT)
def forward(code, z, y):
    """y = act(z); z, y: (rows, features)."""
    rows, n = z.shape
    if code == SOFTMAX or code == LOG_SOFTMAX:
        softmax(code == LOG_SOFTMAX, z, y)
        return
    # The common activations get their own loops: choosing the function per element (the generic loop
    # below) keeps LLVM from vectorising, which made ReLU several times slower than NumPy.
    zero = z.dtype.type(0)
    if code == RELU:
        for r in range(rows):
            for j in range(n):
                y[r, j] = max(z[r, j], zero)
    elif code == SIGMOID:
        for r in range(rows):
            for j in range(n):
                y[r, j] = _sigmoid(z[r, j])
    elif code == TANH:
        for r in range(rows):
            for j in range(n):
                y[r, j] = _tanh(z[r, j])
    else:
        for r in range(rows):
            for j in range(n):
                y[r, j] = _scalar_forward(code, z[r, j])


@numba.njit(**JIT)
def backward(code, z, y, dy, dz):
    """dz = dy * act'(z); z, y, dy, dz: (rows, features). dz may alias dy."""
    if code == SOFTMAX or code == LOG_SOFTMAX:
        softmax_backward(code == LOG_SOFTMAX, z, y, dy, dz)
        return
    if dy.ctypes.data != dz.ctypes.data:
        rows, n = z.shape
        for r in range(rows):
            for j in range(n):
                dz[r, j] = dy[r, j]
    scale_by_derivative(code, z, y, dz)


@numba.njit(**JIT)
def softmax_backward(log, z, y, dy, dz):
    """dz = J(z).T @ dy per row, for softmax (y = softmax(z)) or log_softmax; dz may alias dy.

    In float64, with the sums split so that nothing cancels where a probability rounds to 1:
    softmax: dz_j = y_j sum_i y_i (dy_j - dy_i), summed as y_a (dy_j - dy_a) + dy_j rest - sum y_i dy_i
        with the sums over the other columns, y_a the probability above 1/2 (there is at most one; where
        there is none, no probability is near 1, and y_a = 0 leaves the plain dy_j - sum_i y_i dy_i);
    log_softmax: dz_j = dy_j - p_j sum_i dy_i, with the probabilities from z (exp of the float32 output
        has lost their digits), and at a single maximum (p = 1 / s, s = 1 + rest)
        dy_j (1 - p) - p (sum of the other dy) = (dy_j rest - the other dy) / s."""
    rows, n = z.shape
    for r in range(rows):
        if not log:
            ya = 0.0
            da = 0.0
            rest = 0.0
            weighted = 0.0
            for j in range(n):
                p, d = np.float64(y[r, j]), np.float64(dy[r, j])
                top = p > 0.5
                ya += p if top else 0.0
                da += d if top else 0.0
                rest += 0.0 if top else p
                weighted += 0.0 if top else p * d
            for j in range(n):
                d = np.float64(dy[r, j])
                dz[r, j] = np.float64(y[r, j]) * (ya * (d - da) + d * rest - weighted)
        else:
            m = _row_max(z, r)
            rest = 0.0
            ties = 0
            others = 0.0  # the dy below the maximum
            at_top = 0.0  # and at it
            for j in range(n):
                x, d = np.float64(z[r, j]) - m, np.float64(dy[r, j])
                rest += 0.0 if x == 0 else _exp(x)
                ties += 1 if x == 0 else 0
                others += 0.0 if x == 0 else d
                at_top += d if x == 0 else 0.0
            inv = 1.0 / (ties + rest)
            total = others + at_top
            single = ties == 1  # tied maxima have p <= 1/2: the plain form does not cancel there
            for j in range(n):
                x, d = np.float64(z[r, j]) - m, np.float64(dy[r, j])
                top = (d * rest - others) * inv if single else d - inv * total
                dz[r, j] = top if x == 0 else d - _exp(x) * inv * total


@numba.njit(**JIT)
def scale_by_derivative(code, z, y, dz):
    """dz *= act'(z) in place, for the elementwise activations. In place on purpose: a loop that reads dy
    and writes dz, when they are the same array, fails LLVM's run-time overlap check and runs scalar (the
    ReLU's branch then mispredicts half the time)."""
    rows, n = z.shape
    zero = z.dtype.type(0)
    if code == RELU:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = dz[r, j] if z[r, j] > zero else zero
    elif code == SIGMOID:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = np.float64(dz[r, j]) * _sigmoid_derivative(z[r, j])
    elif code == TANH:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = np.float64(dz[r, j]) * _tanh_derivative(z[r, j])
    else:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = np.float64(dz[r, j]) * _scalar_derivative(code, z[r, j], y[r, j])


def as_rows(a: np.ndarray) -> np.ndarray:
    """(..., features) -> (rows, features) view."""
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a
