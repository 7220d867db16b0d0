"""Spec errors as values: what went wrong, where (file:line:col and the spec path), what was expected.

Every check in specc reports through `SpecError` so the CLI can print all of a file's mistakes at once in
text, JSON or GitHub-annotation form. No check raises a Python exception at the user.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

PathItem = str | int
Path = tuple[PathItem, ...]


def format_path(path: Sequence[PathItem]) -> str:
    """('model', 'layers', 2, 'units') -> 'model.layers[2].units'."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        elif str(item).replace("_", "").replace("-", "").isalnum():
            out += ("." if out else "") + str(item)
        else:  # a key with spaces, dots or newlines: quoted, so one error stays on one line
            out += f"[{json.dumps(str(item))}]"
    return out or "<root>"


@dataclass(frozen=True)
class SpecError:
    file: str
    line: int
    column: int
    path: str
    message: str

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
        return asdict(self)


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
