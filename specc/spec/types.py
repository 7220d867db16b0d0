"""Field types for spec schemas, each with an error message a user can act on.

Pydantic's lax mode would turn "3" into 3 and 2.7 into an error about "int_from_float"; a spec is a
contract, so these types are strict (no strings for numbers, no floats for integers, no 1/0 for booleans)
and say what they expected: "must be a positive integer, got -3".
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Union

from pydantic import BeforeValidator, Discriminator, Tag, WithJsonSchema
from pydantic_core import PydanticCustomError

from .errors import show_value, suggest

# Upper bounds, so that whatever validates can be summarised and trained: sizes become NumPy int64 products
# and Numba int64 indices, and Python cannot even print an integer of more than 4,300 digits.
MAX_SIZE = 2**31 - 1  # a dimension, a count of units, filters, steps, samples, epochs, ...: an int32 index
MAX_INT64 = 2**63 - 1  # elements of one tensor, parameters of a model, seeds
MAX_RANK = 31  # axes of a sample: NumPy arrays have at most 32 (its older limit), the batch axis included


def _got(value: Any) -> str:
    return show_value(value)


def _fail(expected: str, value: Any):
    raise PydanticCustomError("spec", "must be {expected}, got {got}", {"expected": expected, "got": _got(value)})


def _too_large(maximum: int, value: Any):
    raise PydanticCustomError("spec", "must be at most {limit}, got {got}",
                              {"limit": limit_text(maximum), "got": _got(value)})


def limit_text(maximum: int) -> str:
    """2147483647 -> '2,147,483,647 (2**31 - 1)'."""
    for bits in (31, 32, 63):
        if maximum == 2**bits - 1:
            return f"{maximum:,} (2**{bits} - 1)"
    return f"{maximum:,}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(minimum: int, expected: str, maximum: int = MAX_SIZE):
    def check(v: Any) -> int:
        if not _is_int(v) or v < minimum:
            _fail(expected, v)
        if v > maximum:
            _too_large(maximum, v)
        return v

    return check


def _check_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        _fail("true or false", v)
    return v


def _float(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False, expected="a number"):
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(expected, v)
        try:
            number = float(v)  # an integer beyond float range (1e308) overflows
        except OverflowError:
            _fail(expected, v)
        if math.isnan(number) or math.isinf(number):
            _fail(expected, v)
        if lo is not None and (number < lo or (lo_open and number == lo)):
            _fail(expected, v)
        if hi is not None and (number > hi or (hi_open and number == hi)):
            _fail(expected, v)
        return number

    return check


def _int_schema(minimum: int, maximum: int = MAX_SIZE) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


PositiveInt = Annotated[int, BeforeValidator(_int(1, "a positive integer")), WithJsonSchema(_int_schema(1))]
NonNegInt = Annotated[int, BeforeValidator(_int(0, "a non-negative integer")), WithJsonSchema(_int_schema(0))]
StrictInt = Annotated[int, BeforeValidator(_int(-MAX_INT64, "an integer", MAX_INT64)),
                      WithJsonSchema(_int_schema(-MAX_INT64, MAX_INT64))]
Bool = Annotated[bool, BeforeValidator(_check_bool), WithJsonSchema({"type": "boolean"})]
Number = Annotated[float, BeforeValidator(_float()), WithJsonSchema({"type": "number"})]
PositiveFloat = Annotated[float, BeforeValidator(_float(0, lo_open=True, expected="a positive number")),
                          WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]
NonNegFloat = Annotated[float, BeforeValidator(_float(0, expected="a non-negative number")),
                        WithJsonSchema({"type": "number", "minimum": 0})]
Rate = Annotated[float, BeforeValidator(_float(0, 1, hi_open=True, expected="a number in [0, 1)")),
                 WithJsonSchema({"type": "number", "minimum": 0, "exclusiveMaximum": 1})]
Fraction = Annotated[float, BeforeValidator(_float(0, 1, expected="a number in [0, 1]")),
                     WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1})]
OpenFraction = Annotated[float, BeforeValidator(_float(0, 1, True, True, expected="a number in (0, 1)")),
                         WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})]


def _check_name(v: Any) -> str:
    if not isinstance(v, str) or not v or not all(c.isalnum() or c in "_-./" for c in v):
        _fail("a non-empty name of letters, digits, '_', '-', '.' or '/'", v)
    return v


Name = Annotated[str, BeforeValidator(_check_name), WithJsonSchema({"type": "string", "minLength": 1})]


def int_tuple(n: int, minimum: int = 1, what: str = "positive integer"):
    """An int (repeated n times) or a list of n ints >= minimum, as Keras accepts for kernel_size etc."""
    noun = f"a {what} or a list of {n} {what}s" if n > 1 else f"a {what}"

    def check(v: Any) -> tuple[int, ...]:
        items = (v,) * n if _is_int(v) else v
        if not isinstance(items, (list, tuple)) or len(items) != n or not all(_is_int(x) and x >= minimum
                                                                               for x in items):
            _fail(noun, v)
        for x in items:
            if x > MAX_SIZE:
                _too_large(MAX_SIZE, x)
        return tuple(items)

    item = _int_schema(minimum)
    schema = {"anyOf": [item, {"type": "array", "items": item, "minItems": n, "maxItems": n}]}
    return Annotated[tuple[int, ...], BeforeValidator(check), WithJsonSchema(schema)]


def pad_pairs(n: int, what: str):
    """Keras padding/cropping forms: int, n ints (symmetric per axis), or n pairs (before, after)."""
    noun = (f"a non-negative integer, a list of {n} non-negative integers, or a list of {n} "
            f"[before, after] pairs")

    def ok(x):
        return _is_int(x) and x >= 0

    def bounded(pairs: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        for x in (x for p in pairs for x in p):
            if x > MAX_SIZE:
                _too_large(MAX_SIZE, x)
        return pairs

    def check(v: Any) -> tuple[tuple[int, int], ...]:
        if ok(v):
            return bounded(((v, v),) * n)
        if isinstance(v, (list, tuple)) and len(v) == n:
            if all(ok(x) for x in v):
                return bounded(tuple((x, x) for x in v))
            if all(isinstance(p, (list, tuple)) and len(p) == 2 and ok(p[0]) and ok(p[1]) for p in v):
                return bounded(tuple((p[0], p[1]) for p in v))
        if n == 1 and isinstance(v, (list, tuple)) and len(v) == 2 and all(ok(x) for x in v):
            return bounded(((v[0], v[1]),))  # Keras 1D form: (before, after)
        _fail(noun, v)

    item = _int_schema(0)
    pair = {"type": "array", "items": item, "minItems": 2, "maxItems": 2}
    schema = {"anyOf": [item, {"type": "array", "items": {"anyOf": [item, pair]}}]}
    return Annotated[tuple[tuple[int, int], ...], BeforeValidator(check), WithJsonSchema(schema)]


def choice(options: tuple[str, ...], what: str, aliases: dict[str, str] | None = None, none_as: str | None = None):
    """A string from `options` (case-insensitive, aliases resolved), with a did-you-mean on typos."""
    aliases = aliases or {}
    lookup = {o.lower(): o for o in options} | {a.lower(): t for a, t in aliases.items()}

    def check(v: Any) -> str:
        if v is None and none_as is not None:
            return none_as
        if isinstance(v, str) and v.lower() in lookup:
            return lookup[v.lower()]
        hint = suggest(v, list(options) + list(aliases)) if isinstance(v, str) else ""
        listing = ", ".join(options)
        raise PydanticCustomError("spec", "unknown {what} {got}{hint}; expected one of: {listing}",
                                  {"what": what, "got": _got(v), "hint": hint, "listing": listing})

    names = list(options) + list(aliases)
    schema: dict = {"type": "string", "enum": names}
    if none_as is not None:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return Annotated[str, BeforeValidator(check), WithJsonSchema(schema)]


def shape_list(v: Any) -> tuple[int | None, ...]:
    """A tensor shape without the batch axis: positive ints, `null` for a size known only at run time."""
    noun = "a shape: a list of positive integers (null for a variable size)"
    shape = (v,) if _is_int(v) else v
    if not isinstance(shape, (list, tuple)) or not shape or not all(x is None or (_is_int(x) and x >= 1)
                                                                     for x in shape):
        _fail(noun, v)
    if len(shape) > MAX_RANK:
        raise PydanticCustomError("spec", "must have at most {n} axes (the batch axis not counted), got {got}",
                                  {"n": MAX_RANK, "got": len(shape)})
    for x in shape:
        if x is not None and x > MAX_SIZE:
            raise PydanticCustomError("spec", "each size must be at most {limit}, got {got}",
                                      {"limit": limit_text(MAX_SIZE), "got": _got(x)})
    values = math.prod(x for x in shape if x is not None)
    if values > MAX_INT64:
        raise PydanticCustomError("spec", "has {values} values per sample; a sample may have at most {limit}",
                                  {"values": f"{values:,}", "limit": limit_text(MAX_INT64)})
    return tuple(shape)


Shape = Annotated[tuple[int | None, ...], BeforeValidator(shape_list),
                  WithJsonSchema({"type": "array", "minItems": 1, "maxItems": MAX_RANK,
                                  "items": {"anyOf": [_int_schema(1), {"type": "null"}]}})]


def by_kind(expected: str, **branches):
    """A union chosen by the YAML kind of the value (str, number, map, list), so a user gets the errors of
    the branch they meant instead of one error per branch. Branch tags start with '~' and are dropped from
    error paths."""

    def kind(v: Any) -> str | None:
        if isinstance(v, bool) or v is None:
            k = None
        elif isinstance(v, str):
            k = "str"
        elif isinstance(v, (int, float)):
            k = "number"
        elif isinstance(v, dict):
            k = "map"
        elif isinstance(v, (list, tuple)):
            k = "list"
        else:
            k = None
        return "~" + k if k in branches else None

    members = tuple(Annotated[t, Tag("~" + k)] for k, t in branches.items())
    return Annotated[Union[members], Discriminator(kind, custom_error_type="spec",  # noqa: UP007
                                                   custom_error_message=f"must be {expected}")]
