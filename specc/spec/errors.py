"""Spec errors as values: what went wrong, where (file:line:col and the spec path), what was expected.

Every check in specc reports through `SpecError` so the CLI can print all of a file's mistakes at once in
text, JSON or GitHub-annotation form. No check raises a Python exception at the user.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PathItem = str | int
Path = tuple[PathItem, ...]

SHOWN_CHARS = 60  # a longer string from the spec is cut to this in messages
SHOWN_DIGITS = 20  # an integer with more digits is shown by its size


def format_path(path: Sequence[PathItem]) -> str:
    """('model', 'layers', 2, 'units') -> 'model.layers[2].units'."""
    out = ""
    for item in path:
        if isinstance(item, int) and not isinstance(item, bool):
            out += f"[{show_value(item)}]"  # a list index, or an integer mapping key (class_weight)
        elif isinstance(item, str) and len(item) <= SHOWN_CHARS and item.replace("_", "").replace("-", "").isalnum():
            out += ("." if out else "") + item
        else:  # a key with spaces, dots or newlines: quoted, so one error stays on one line
            text = item if isinstance(item, str) else show_value(item)
            out += f"[{json.dumps(cut_text(text))}]"
    return out or "<root>"


def cut_text(text: str) -> str:
    """`text`, or its start and its length when it is longer than SHOWN_CHARS."""
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS - 1]}… ({len(text):,} characters)"


def _digits(n: int) -> str:
    """The count of decimal digits of |n|, without str(n) (Python refuses it beyond 4,300 digits)."""
    n = abs(n)
    d = max(1, int(n.bit_length() * math.log10(2)))  # the count, or one less
    if n.bit_length() > 20_000:  # 10**d would take a while; nobody needs the last digit of this
        return f"about {d:,}"
    return f"{d + 1 if n >= 10**d else d:,}"


def show_value(value: Any) -> str:
    """A value from the spec for a one-line message: short and never raising, whatever its size (an integer
    of 10,000 digits cannot even be converted to text by Python)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, int):
        if abs(value) >= 10**SHOWN_DIGITS:
            return f"{'a negative' if value < 0 else 'an'} integer of {_digits(value)} digits"
        return str(value)
    if isinstance(value, str):
        return repr(cut_text(value))
    if isinstance(value, (list, tuple)):
        items = [show_value(v) for v in value[:8]] + ([f"… ({len(value):,} items)"] if len(value) > 8 else [])
        return "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        items = [f"{show_value(k)}: {show_value(v)}" for k, v in list(value.items())[:8]]
        return "{" + ", ".join(items + (["…"] if len(value) > 8 else [])) + "}"
    try:
        return cut_text(repr(value))
    except ValueError:
        return type(value).__name__


@dataclass(frozen=True)
class SpecError:
    file: str
    line: int
    column: int
    path: str
    message: str
    # Inside a block instance: for each block it came through (outermost first), where in the block's
    # definition, as {block, file, line, column, path}; the message names them too.
    context: tuple = field(default=(), hash=False)

    def text(self) -> str:
        # line 0: not from the file (a --set override on the command line)
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: error: {what}"

    def github(self) -> str:
        # GitHub workflow commands need '%', CR and LF escaped in the message part.
        msg = f"{self.path}: {self.message}" if self.path else self.message
        msg = msg.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return f"::error file={self.file},line={self.line},col={self.column}::{msg}"

    def as_dict(self) -> dict:
        out = asdict(self)
        if not self.context:  # only errors inside block instances carry it
            del out["context"]
        else:
            out["context"] = [dict(c) for c in self.context]
        return out


class SpecInvalid(Exception):
    """Raised by the Python API when a spec has errors; carries every error, not just the first."""

    def __init__(self, errors: Sequence[SpecError]):
        self.errors = list(errors)
        super().__init__("\n".join(e.text() for e in self.errors))


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for a near miss, else ''. Case-insensitive, so `dense` suggests `Dense`."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if isinstance(word, str) and word.lower() in lowered:
        return f" (did you mean {lowered[word.lower()]}?)"
    import difflib  # here, not at the top: only a spec with a mistake needs it (start-up of every command)

    close = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def render(errors: Sequence[SpecError], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([e.as_dict() for e in errors], indent=2)
    if fmt == "github":
        return "\n".join(e.github() for e in errors)
    return "\n".join(e.text() for e in errors)
