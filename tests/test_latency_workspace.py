"""workspace.aligned_empty: np.empty's shapes and dtypes, its data on a 64-byte boundary (sgemm's vector loads),
and np.empty's error for a negative size."""

from __future__ import annotations

import numpy as np
import pytest

from specc.workspace import ALIGN, aligned_empty, aligned_zeros, empty


@pytest.mark.parametrize("shape", [(1, 13, 13, 32), (3, 0, 4), (), (7,), [2, 3], 5, np.int64(9), (np.int64(2), 3)])
@pytest.mark.parametrize("dtype", [np.float32, "float64", np.dtype(np.int8), np.int64])
def test_shape_dtype_and_alignment(shape, dtype):
    arrays = [aligned_empty(shape, dtype) for _ in range(4)]
    want = np.empty(shape, dtype)
    for a in arrays:
        assert a.shape == want.shape and a.dtype == want.dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % ALIGN == 0  # an empty array has no data to align
    for a, b in zip(arrays, arrays[1:]):
        assert a.size == 0 or not np.shares_memory(a, b)


def test_zeros_and_empty_outside_a_workspace():
    z = aligned_zeros((4, 5), np.float32)
    assert z.ctypes.data % ALIGN == 0 and not z.any()
    e = empty("out", (3, 17), np.float32)
    assert e.shape == (3, 17) and e.ctypes.data % ALIGN == 0


@pytest.mark.parametrize("shape", [(2, -3), (-2, -3), -1])
def test_negative_sizes_are_an_error_as_in_numpy(shape):
    with pytest.raises(ValueError, match="negative dimensions are not allowed"):
        np.empty(shape, np.float32)
    with pytest.raises(ValueError, match="negative dimensions are not allowed"):
        aligned_empty(shape, np.float32)
