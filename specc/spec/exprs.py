"""`${...}` references in spec values: a name, or simple arithmetic on names and numbers.

    value = evaluate("width * 2", {"width": 64})   # 128

Grammar (Python's precedence): expr := term (('+' | '-') term)*; term := unary (('*' | '/' | '//' | '%')
unary)*; unary := '-' unary | '+' unary | atom; atom := NUMBER | NAME | '(' expr ')'. `/` divides to a
number (6 / 2 is 3.0, which an integer argument refuses); `//` and `%` floor as Python does. A
recursive-descent parser over a token list: nothing is ever handed to Python's eval, names only read the
mapping given, and every intermediate result is bounded, so no expression can run long or grow large.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import show_value, suggest

MAX_EXPRESSION = 200  # characters inside one ${...}
LIMIT = 2**63 - 1  # the largest integer a spec holds (types.MAX_INT64)
# A whole ${...} value, and the references inside a longer string (`conv${i}`).
WHOLE = re.compile(r"\$\{([^{}]*)\}")
_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>//|[-+*/%()]))")


class ExprError(ValueError):
    """An expression that cannot be evaluated; the message says why, in the user's terms."""


def references(text: str) -> list[re.Match]:
    """The `${...}` references in a string value."""
    return list(WHOLE.finditer(text))


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            stripped = len(text[pos:]) - len(text[pos:].lstrip())
            raise ExprError(f"unexpected {text[pos + stripped]!r} at character {pos + stripped + 1}; expressions "
                            f"use names, numbers, + - * / // % and parentheses")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "number":
            value = float(value) if any(c in value for c in ".eE") else int(value)
        out.append((kind, value, m.start(kind) + 1))
        pos = m.end()
    return out


def _check(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, int) and abs(value) > LIMIT:
        raise ExprError(f"the result is out of range (beyond {LIMIT:,}, 2**63 - 1)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError("the result is not a finite number")
    return value


class _Parser:
    def __init__(self, text: str, names: Mapping[str, Any]):
        self.text, self.names = text, names
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, Any, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, Any, int]:
        token = self.peek()
        if token is None:
            raise ExprError("the expression ends too early")
        self.i += 1
        return token

    def parse(self) -> Any:
        if not self.tokens:
            raise ExprError("empty ${}; write a variable or parameter name, e.g. ${width}")
        value = self.expr()
        extra = self.peek()
        if extra is not None:
            raise ExprError(f"unexpected {show_value(extra[1])} at character {extra[2]}")
        return value

    def expr(self) -> Any:
        value = self.term()
        while (token := self.peek()) is not None and token[1] in ("+", "-"):
            self.take()
            value = _arith(token[1], value, self.term())
        return value

    def term(self) -> Any:
        value = self.unary()
        while (token := self.peek()) is not None and token[1] in ("*", "/", "//", "%"):
            self.take()
            value = _arith(token[1], value, self.unary())
        return value

    def unary(self) -> Any:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in ("-", "+"):
            self.take()
            value = self.unary()
            _number(value, token[1])
            return _check(-value if token[1] == "-" else value)
        return self.atom()

    def atom(self) -> Any:
        kind, value, at = self.take()
        if kind == "number":
            return _check(value)
        if kind == "name":
            if value not in self.names:
                known = ", ".join(sorted(self.names)) or "none"
                raise ExprError(f"unknown name {value!r}{suggest(value, self.names)}; known: {known}")
            return self.names[value]
        if value == "(":
            inner = self.expr()
            close = self.take()
            if close[1] != ")":
                raise ExprError(f"expected ')' at character {close[2]}")
            return inner
        raise ExprError(f"unexpected {value!r} at character {at}")


def _number(value: Any, op: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError(f"`{op}` needs numbers, got {show_value(value)}")


def _arith(op: str, a: Any, b: Any) -> Any:
    _number(a, op)
    _number(b, op)
    if op in ("/", "//", "%") and b == 0:
        raise ExprError(f"division by zero ({show_value(a)} {op} 0)")
    if op == "+":
        return _check(a + b)
    if op == "-":
        return _check(a - b)
    if op == "*":
        return _check(a * b)
    if op == "/":
        return _check(a / b)
    if op == "//":
        return _check(a // b)
    return _check(a % b)


def evaluate(text: str, names: Mapping[str, Any]) -> Any:
    """The value of the expression `text` with `names` bound. Raises ExprError."""
    if len(text) > MAX_EXPRESSION:
        raise ExprError(f"an expression of {len(text):,} characters; at most {MAX_EXPRESSION}")
    return _Parser(text, names).parse()


def substitute(text: str, names: Mapping[str, Any]) -> Any:
    """A string value with its references replaced: `${expr}` alone gives the expression's value (any
    type: a number, a list); references inside a longer string are formatted into it (`conv${i}`)."""
    if "${" not in text:
        return text
    whole = WHOLE.fullmatch(text)
    if whole:
        return evaluate(whole.group(1), names)

    def text_of(m: re.Match) -> str:
        value = evaluate(m.group(1), names)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ExprError(f"${{{m.group(1)}}} inside a longer string must be a number or a string, "
                            f"got {show_value(value)}")
        return str(value)

    if "${" in WHOLE.sub("", text):
        raise ExprError("an unclosed or nested `${`; a reference is ${name} or ${expression}")
    return WHOLE.sub(text_of, text)
