"""Safe YAML loading that remembers where every value came from.

PyYAML composes the document into nodes (which carry line/column marks) without constructing any object;
we then convert the nodes to plain dicts/lists/scalars ourselves. That gives us:
- positions for every value and every mapping key, keyed by the spec path, for error messages;
- safety: only the core YAML tags are accepted, a `!!python/...` tag is an error and is never executed;
- bounded work: alias expansion is counted, so a "billion laughs" document fails fast instead of
  eating memory, and recursion depth is capped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from .errors import Path, SpecError, cut_text, format_path, show_value


class _Loader(yaml.SafeLoader):
    """The pure-Python composer (libyaml's recursive C composer segfaults on deep nesting), with YAML 1.2's
    float syntax: PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string, while editors and the JSON
    Schema treat it as the number a user means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)

MAX_BYTES = 2_000_000  # a model spec is a few KB; anything this large is not one
MAX_NODES = 20_000  # after alias expansion; composing takes ~40 us a value, so the limit is ~1 s of work
# (the largest Keras Applications model written out layer by layer, NASNetMobile, is well under it)
MAX_DEPTH = 200

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = _CORE + "timestamp"
_MERGE = _CORE + "merge"


@dataclass
class Positions:
    """Where each spec path starts in the file; 1-based line and column."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # paths whose value a command-line override replaced -> that override (`--set fit.epochs=3`)
    overridden: dict[Path, str] = field(default_factory=dict)

    def set_by(self, path: Path, source: str) -> None:
        """The value at `path` (and everything under it) now comes from `source`, not from the file."""
        path = tuple(path)
        for p in [p for p in self.overridden if p[: len(path)] == path]:
            del self.overridden[p]
        self.overridden[path] = source

    def source_of(self, path: Path) -> str | None:
        """The override that set `path` or a mapping/list around it, if any."""
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.overridden:
                return self.overridden[path[:n]]
        return None

    def of(self, path: Path, prefer_key: bool = False) -> tuple[int, int]:
        """Position of the longest known prefix of `path` (a missing field points at its parent)."""
        path = tuple(path)
        for n in range(len(path), -1, -1):
            p = path[:n]
            if prefer_key and n == len(path) and p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
        return (1, 1)


class _Abort(Exception):
    def __init__(self, line: int, col: int, message: str, path: Path = ()):
        self.line, self.col, self.message, self.path = line, col, message, path


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Converter:
    def __init__(self) -> None:
        self.positions = Positions()
        self.count = 0
        self.scalars = yaml.constructor.SafeConstructor()

    def convert(self, node: yaml.Node, path: Path, depth: int = 0):
        self.count += 1
        if self.count > MAX_NODES:
            raise _Abort(*_pos(node), f"document expands to more than {MAX_NODES:,} values "
                                      "(an alias bomb?); specs must be small")
        if depth > MAX_DEPTH:
            raise _Abort(*_pos(node), f"nesting deeper than {MAX_DEPTH} levels")
        self.positions.values.setdefault(path, _pos(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, _CORE + "seq")
            return [self.convert(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            self._check_tag(node, _CORE + "map")
            return self._mapping(node, path, depth)
        raise _Abort(*_pos(node), "unsupported YAML node")  # pragma: no cover

    def _check_tag(self, node: yaml.Node, expected: str) -> None:
        if node.tag != expected:
            raise _Abort(*_pos(node), f"YAML tag {node.tag!r} is not allowed in a spec "
                                      "(only plain values, lists and mappings)")

    def _scalar(self, node: yaml.ScalarNode, path: Path):
        if node.tag == _TIMESTAMP:  # a date-like string such as 2024-01-01 stays a string
            return node.value
        if node.tag not in _SCALAR_TAGS:
            raise _Abort(*_pos(node), f"YAML tag {cut_text(node.tag)!r} is not allowed in a spec "
                                      "(only plain values, lists and mappings)")
        try:
            return self.scalars.construct_object(node, deep=True)
        except (ValueError, TypeError, KeyError, IndexError, yaml.YAMLError):
            kind = node.tag.rsplit(":", 1)[-1]
            digits = sum(c.isdigit() for c in node.value)
            if kind == "int" and digits > 4000:  # Python reads at most 4,300 decimal digits
                raise _Abort(*_pos(node), f"an integer of {digits:,} digits is out of range; integers in a spec "
                                          f"are at most {2**63 - 1:,} (2**63 - 1)", path) from None
            raise _Abort(*_pos(node), f"{cut_text(node.value)!r} is not a valid {kind}") from None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        out: dict = {}
        explicit: set = set()
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:  # `<<: *defaults` - explicit keys win, as in YAML 1.1
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        raise _Abort(*_pos(src), "a `<<` merge needs a mapping or a list of mappings")
                    merged.extend(src.value)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Abort(*_pos(key_node), "mapping keys must be plain scalars")
            key = self._scalar(key_node, path)
            if key is None or isinstance(key, (list, dict)):
                raise _Abort(*_pos(key_node), "mapping keys must be plain scalars")
            if key in explicit:
                raise _Abort(*_pos(key_node), f"duplicate key {show_value(key)} in the same mapping")
            explicit.add(key)
            self.positions.keys[path + (key,)] = _pos(key_node)
            out[key] = self.convert(value_node, path + (key,), depth + 1)
        for key_node, value_node in merged:
            key = self._scalar(key_node, path)
            if key in out:
                continue
            self.positions.keys.setdefault(path + (key,), _pos(key_node))
            out[key] = self.convert(value_node, path + (key,), depth + 1)
        return out


def _flow_too_deep(text: str) -> tuple[int, int] | None:
    """Position where `[`/`{` nesting first exceeds MAX_DEPTH, found without recursion.

    PyYAML's parser recurses per level, so 100k opening brackets would take seconds to fail; this
    linear scan rejects them at once. Brackets inside quotes or comments are skipped roughly, which
    can only under-count.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth, line, col, quote = 0, 1, 0, ""
    comment = False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, comment = line + 1, 0, False
            continue
        if comment:
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, col
        elif ch in "]}":
            depth -= 1
    return None


def load_yaml(text: str | bytes, filename: str) -> tuple[object, Positions, list[SpecError]]:
    """Parse one YAML document. Returns (data, positions, errors); data is None when errors is non-empty."""

    def fail(line: int, col: int, message: str):
        return None, Positions(), [SpecError(filename, line, col, "", message)]

    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            return fail(1, 1, f"file is {len(text):,} bytes; a spec must be under {MAX_BYTES:,}")
        if b"\x00" in text:
            return fail(1, 1, "not a text file (it contains NUL bytes); expected a YAML spec")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            line_start = text.rfind(b"\n", 0, exc.start) + 1
            col = len(text[line_start: exc.start].decode("utf-8", errors="replace")) + 1  # characters, not bytes
            return fail(line, col, "not UTF-8 text (a binary file?); expected a YAML spec")
    if len(text) > MAX_BYTES:
        return fail(1, 1, f"file is {len(text):,} characters; a spec must be under {MAX_BYTES:,}")
    if not text.strip():
        return fail(1, 1, "the file is empty; expected a spec mapping starting with `specc: 1`")
    too_deep = _flow_too_deep(text)
    if too_deep:
        return fail(*too_deep, f"brackets nested deeper than {MAX_DEPTH} levels")
    # Every value of a document takes a line or a comma of its own: a text with more of them than values
    # allowed is refused before it is composed, which is what takes the time.
    for separator, what in (("\n", "lines"), (",", "comma-separated values")):
        if text.count(separator) > MAX_NODES:
            at = -1
            for _ in range(MAX_NODES + 1):
                at = text.index(separator, at + 1)
            line = text.count("\n", 0, at) + 1
            col = at - (text.rfind("\n", 0, at) + 1) + 1
            return fail(line, col, f"more than {MAX_NODES:,} {what}; a spec has at most {MAX_NODES:,} values")

    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{exc.problem} ({exc.context})"
        return fail(line, col, f"YAML syntax error: {problem}")
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return fail(line, col, f"character {char} is not allowed in YAML text (a binary file?); expected a YAML spec")
    except yaml.YAMLError as exc:
        return fail(1, 1, f"YAML error: {exc}")
    except RecursionError:
        return fail(1, 1, "YAML nesting is too deep")

    if root is None:
        return fail(1, 1, "the file is empty; expected a spec mapping starting with `specc: 1`")
    conv = _Converter()
    try:
        data = conv.convert(root, ())
    except _Abort as exc:
        return None, Positions(), [SpecError(filename, exc.line, exc.col, format_path(exc.path) if exc.path else "",
                                             exc.message)]
    except RecursionError:
        return fail(1, 1, "YAML nesting is too deep")
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # a scalar the safe constructor refuses
        return fail(1, 1, f"YAML error: {exc}")
    return data, conv.positions, []


def parse_scalar(text: str):
    """A command-line value (`--set fit.epochs=3`) read as the spec file would read it."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text
