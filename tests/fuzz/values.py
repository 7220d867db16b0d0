"""Hostile values and the YAML writer that can put them in a spec.

A `Raw` value is written into the YAML text as is, for what `yaml.safe_dump` cannot produce: hexadecimal
integers of 400 digits, integers Python cannot print, tags, aliases, `.nan`, bracket towers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import yaml

HUGE_HEX = "0x" + "f" * 400  # ~1,600 bits
HUGE_DECIMAL = "9" * 5000  # more digits than Python's int/str conversion allows by default (4,300)

UNICODE = ["Dеnse",  # Cyrillic е
           "ｕｎｉｔｓ", "dense\u200b", "💥" * 8, "\u202eesneD", "e\u0301\u0301\u0301", "ß", "İ", "\u00a0",
           "\ufeffspecc", "名前", "a\x00b", "\x1b[31mred", "\t", "\\", "\"'", "../../etc/passwd", "/dev/zero",
           "%s%n{0}{epoch}", "${HOME}", "C:\\x", "a" * 300]


@dataclass(frozen=True)
class Raw:
    """A YAML fragment written verbatim (on one line, so it fits both block and flow context)."""

    text: str


def deep(rng: random.Random) -> Raw:
    depth = rng.choice([50, 199, 201, 1000, 20_000, 200_000])
    if rng.random() < 0.5:
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw("{a: " * depth + "1" + "}" * depth)


def hostile(rng: random.Random) -> object:
    """One value from every corner a spec parser meets: sizes at and past the limits, wrong types, special
    floats, long and strange strings, nested and tagged values."""
    kind = rng.choice(["int", "int", "float", "str", "str", "null", "bool", "nested", "raw", "raw", "deep"])
    if kind == "int":
        return rng.choice([0, -1, 1, 2, 3, -3, 7, 2**31 - 1, 2**31, -(2**31), 2**32, 2**53 + 1, 2**63 - 1,
                           2**63, -(2**63) - 1, 2**64, 10**20, 10**100, rng.randrange(-10**6, 10**6)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.5, 1.0, 3.0, -1.5, 1e-300, 5e-324, 1.7976931348623157e308, 1e10, 0.999999,
                           1.0000001, float(2**31), -1e-7])
    if kind == "str":
        return rng.choice(["", " ", "10", "relu", "Dense", "null", "x" * rng.choice([61, 1000, 100_000]),
                           rng.choice(UNICODE), "softmax", "valid", "same", "causal", "-1", "1e3", "val_loss"])
    if kind == "null":
        return None
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "nested":
        return rng.choice([{}, [], [[]], [None], {"a": {"b": [1, {"c": None}]}}, [1, "a", None, 2.5],
                           list(range(rng.choice([3, 100, 20_000]))), {str(i): i for i in range(rng.choice([5, 3000]))},
                           {"type": "Dense", "units": 4}, [[1, 1], [1, 1]], {1: 2}, {True: 1}])
    if kind == "deep":
        return deep(rng)
    return Raw(rng.choice([
        HUGE_HEX, "-" + HUGE_HEX, HUGE_DECIMAL, "-" + HUGE_DECIMAL, "0o" + "7" * 300, "0b" + "1" * 2000,
        "1_000_000", "+12", "1:30", "190:20:30", "0x_ff", "1.0e+999", "-1.0e+999", ".inf", "-.inf", ".nan",
        ".NaN", "~", "yes", "off", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "!!binary aGVsbG8=",
        "!!set {a, b}", "!!omap [{a: 1}]", "!!python/object/apply:os.getcwd []", "!!python/name:os.getcwd ''",
        "!!python/tuple [1, 2]", "!custom 3", "!!int '3'", f"!!int '{HUGE_HEX}'", "!!float 'nan'", "!!str 3",
        "!!bool 'yes'", "!!null ''", "!!timestamp 2001-12-14", "'\\u0000'", '"\\ud800"', '"\\x00"', '"\\N"',
        '"\\U0010ffff"', "&a [*a]", "&a {k: *a}", "*undefined", "!<tag:yaml.org,2002:int> 3", "'a\nb'",
        '"a\\nb"', "? complex", "[a, b]: 1", "{[1]: 2}", "{? [1] : 2}", "|-\n  a", ">\n  a",
    ]))


def value_of_other_type(rng: random.Random, value: object) -> object:
    """`value` in another YAML type: 3 -> '3', 3.0, [3], {3: 3}; 'x' -> ['x']; a list -> a mapping ..."""
    if isinstance(value, bool):
        return rng.choice([int(value), str(value).lower(), [value]])
    if isinstance(value, int):
        return rng.choice([str(value), float(value), [value], {"value": value}, value + 0.5, True])
    if isinstance(value, float):
        return rng.choice([str(value), int(value) if value == value and abs(value) < 1e18 else 1, [value]])
    if isinstance(value, str):
        return rng.choice([[value], {value: value}, len(value), value.upper(), value + "_x", None])
    if isinstance(value, list):
        return rng.choice([{str(i): v for i, v in enumerate(value)}, value[0] if value else None,
                           [value], tuple_text(value)])
    if isinstance(value, dict):
        return rng.choice([list(value.values()), list(value), [value], str(value)])
    return rng.choice([0, "", [], {}])


def tuple_text(value: list) -> str:
    return "(" + ", ".join(map(str, value)) + ")"


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # the C emitter when PyYAML has it
    pass


def _raw(dumper: yaml.SafeDumper, data: Raw):
    return dumper.represent_scalar("tag:yaml.org,2002:str", f"\0RAW{id(data)}\0")


_Dumper.add_representer(Raw, _raw)
_HUGE_INT_LIMIT = 4000  # digits: Python cannot print more without sys.set_int_max_str_digits


def dump(data: object) -> str:
    """YAML text of `data` (block style at the top, flow for small leaves), with every Raw written as is."""
    raws: dict[str, str] = {}

    def collect(node):
        if isinstance(node, Raw):
            raws[f"\0RAW{id(node)}\0"] = node.text
        elif isinstance(node, dict):
            for k, v in node.items():
                collect(k)
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(data)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True,
                     width=10**9)
    # The dumper quotes the placeholder; it holds NULs, so it is written as a double-quoted escape.
    for token, raw in raws.items():
        escaped = token.replace("\0", "\\0")
        text = text.replace(f'"{escaped}"', raw).replace(f"'{token}'", raw).replace(token, raw)
    return text


INT_TOKEN = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
