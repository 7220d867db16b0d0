"""Damaged and odd .npz, .npy and .csv files: the bytes a data, input or weights file can hold."""

from __future__ import annotations

import io
import random
import zipfile

import numpy as np


def npz(compressed: bool = False, **arrays) -> bytes:
    """An .npz archive of `arrays` in memory (object arrays are pickled, as np.savez does)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npz_members(members: dict[str, bytes]) -> bytes:
    """A zip of raw members, for archives np.savez would never write (bad headers, odd names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def npy_header(shape: tuple, dtype: str = "<f4", fortran: bool = False, body: bytes = b"") -> bytes:
    """A .npy file whose header claims `shape` and `dtype`, followed by `body` (which may be too short)."""
    header = f"{{'descr': '{dtype}', 'fortran_order': {fortran}, 'shape': {shape}, }}".encode("latin-1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body


def damage(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    """`raw` truncated, with bytes flipped, zeroed or inserted, or emptied."""
    if not raw:
        junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 64])))
        return junk, f"{len(junk)} random bytes in an empty file"
    kind = rng.choice(["truncate", "truncate", "flip", "zero", "insert", "empty", "tail"])
    if kind == "truncate":
        cut = rng.randrange(len(raw))
        return raw[:cut], f"truncated at byte {cut} of {len(raw)}"
    if kind == "tail":
        cut = rng.randrange(len(raw))
        return raw[cut:], f"first {cut} bytes of {len(raw)} removed"
    if kind == "empty":
        return b"", "empty file"
    data = bytearray(raw)
    n = rng.choice([1, 4, 64])
    at = rng.randrange(len(data))
    if kind == "flip":
        for i in range(at, min(at + n, len(data))):
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data), f"{n} bytes flipped at {at}"
    if kind == "zero":
        data[at:at + n] = bytes(min(n, len(data) - at))
        return bytes(data), f"{n} bytes zeroed at {at}"
    junk = bytes(rng.randrange(256) for _ in range(n))
    return bytes(data[:at]) + junk + bytes(data[at:]), f"{n} bytes inserted at {at}"


def odd_array(rng: random.Random, like: np.ndarray) -> tuple[object, str]:
    """An array that stands where `like` should: other dtypes, shapes, sizes and values."""
    like = like.reshape(1) if like.ndim == 0 else like  # a scalar (an optimizer's step count) as one row
    n = like.shape[0] if like.ndim else 1
    kind = rng.choice(["object", "complex", "str", "bytes", "bool", "float16", "float64", "int8", "uint64",
                       "datetime", "timedelta", "structured", "void", "big-endian", "fortran", "empty", "0-d",
                       "nan", "inf", "huge", "tiny", "transposed", "flat", "extra-axis", "fewer-rows", "more-rows",
                       "negative", "wide", "scalar-rows"])
    if kind == "object":
        return np.array([[1.0, "a"]] * n, dtype=object), kind
    if kind == "complex":
        return like.astype(np.complex64) + 1j, kind
    if kind == "str":
        return like.astype(str), kind
    if kind == "bytes":
        return like.astype("S8"), kind
    if kind == "bool":
        return like != 0, kind
    if kind in ("float16", "float64", "int8", "uint64"):
        return like.astype(kind), kind
    if kind == "datetime":
        return np.zeros(like.shape, "datetime64[s]"), kind
    if kind == "timedelta":
        return np.zeros(like.shape, "timedelta64[ms]"), kind
    if kind == "structured":
        return np.zeros(n, dtype=[("a", "<f4"), ("b", "<i4")]), kind
    if kind == "void":
        return np.zeros(n, dtype="V4"), kind
    if kind == "big-endian":
        return like.astype(like.dtype.newbyteorder(">")), kind
    if kind == "fortran":
        return np.asfortranarray(like), kind
    if kind == "empty":
        return like[:0], kind
    if kind == "0-d":
        return np.asarray(like.flat[0] if like.size else 0), kind
    if kind in ("nan", "inf", "huge", "tiny"):
        value = {"nan": np.nan, "inf": -np.inf, "huge": 3e38, "tiny": 1e-45}[kind]
        out = like.astype(np.float32)
        out.flat[rng.randrange(max(out.size, 1))] = value
        return out, kind
    if kind == "transposed":
        return like.T, kind
    if kind == "flat":
        return like.reshape(-1), kind
    if kind == "extra-axis":
        return like[..., None], kind
    if kind == "fewer-rows":
        return like[: max(n // 2, 1)], kind
    if kind == "more-rows":
        return np.concatenate([like, like]), kind
    if kind == "negative":
        return -np.abs(like) - 1, kind
    if kind == "wide":
        return np.ones((n, rng.choice([1, 3, 5, 1000])), like.dtype), kind
    return like.reshape(n, *([1] * rng.randint(1, 4)), -1), kind


def odd_csv(rng: random.Random, header: list[str], rows: list[list[str]]) -> tuple[bytes, str]:
    """A CSV table with one fault: encodings, huge cells, ragged rows, quoting, odd cells."""
    kind = rng.choice(["latin-1", "utf-16", "nul", "huge-cell", "ragged-short", "ragged-long", "quote",
                       "empty", "header-only", "no-header", "bom", "crlf", "cr", "nan-cell", "inf-cell", "text-cell",
                       "1e999", "huge-int-label", "negative-label", "string-labels", "dup-header", "blank-lines",
                       "one-column", "many-columns", "semicolons", "long-line", "float-labels"])
    table = [list(header)] + [list(r) for r in rows]
    row = rng.randrange(1, len(table))
    col = rng.randrange(len(header))
    encoding = "utf-8"
    if kind == "huge-cell":
        table[row][col] = "1" * rng.choice([131_073, 2_000_000])
    elif kind == "ragged-short":
        table[row] = table[row][:-1]
    elif kind == "ragged-long":
        table[row] = table[row] + ["1", "2"]
    elif kind == "quote":
        table[row][col] = '"1,2'
    elif kind == "empty":
        table = []
    elif kind == "header-only":
        table = table[:1]
    elif kind == "no-header":
        table = table[1:]
    elif kind in ("nan-cell", "inf-cell", "text-cell", "1e999"):
        table[row][col] = {"nan-cell": "nan", "inf-cell": "-inf", "text-cell": "abc", "1e999": "1e999"}[kind]
    elif kind == "huge-int-label":
        table[row][-1] = "9" * rng.choice([19, 400])
    elif kind == "negative-label":
        table[row][-1] = "-1"
    elif kind == "string-labels":
        for r in table[1:]:
            r[-1] = rng.choice(["cat", "dog", "名前", ""])
    elif kind == "float-labels":
        for r in table[1:]:
            r[-1] = str(rng.random())
    elif kind == "dup-header":
        table[0][0] = table[0][-1]
    elif kind == "blank-lines":
        table.insert(row, [""] * len(header))
        table.insert(row, [])
    elif kind == "one-column":
        table = [[r[-1]] for r in table]
    elif kind == "many-columns":
        table = [r[:1] * 50 + r for r in table]
    elif kind == "long-line":
        table[row] = table[row] + ["0"] * 100_000
    elif kind == "latin-1":
        table[0][0] = "größe"
        encoding = "latin-1"
    elif kind == "utf-16":
        encoding = "utf-16"
    text = "\n".join(",".join(r) for r in table) + ("\n" if table else "")
    if kind == "semicolons":
        text = text.replace(",", ";")
    if kind == "crlf":
        text = text.replace("\n", "\r\n")
    if kind == "cr":
        text = text.replace("\n", "\r")
    raw = text.encode(encoding)
    if kind == "nul":
        raw = raw.replace(b",", b",\x00", 1)
    if kind == "bom":
        raw = b"\xef\xbb\xbf" + raw
    return raw, f"csv {kind}"
