"""`--set KEY=VALUE` overrides of a spec, applied to the loaded YAML before validation.

    spec, errors = apply_overrides(text, ["fit.epochs=3", "model.layers[0].units=5"], "spec.yaml")

KEY is a path of mapping keys separated by dots, with list items as `[i]` (`model.layers[0].units`) or as
a numeric segment (`model.layers.0.units`); VALUE is read as the spec file would read it (`3` an integer,
`1e-3` a number, `[8, 8]` a list, `relu` a string). An error in an overridden value points at its `--set`
argument, not at the line of the spec it replaced: the file is no longer what was validated there.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import Path, SpecError, cut_text, format_path, show_value
from .yamlpos import load_yaml

# One segment of a KEY: a name, optionally followed by list indices: `layers`, `layers[0]`, `x[1][2]`.
_SEGMENT = re.compile(r"(?P<key>[^.\[\]]+)(?P<index>(?:\[-?\d+\])*)")
_INDEX = re.compile(r"\[(-?\d+)\]")


class OverrideError(ValueError):
    """A `--set` argument that cannot be applied; the message says why."""


def origin(item: str) -> str:
    """How an error in an override names its source: `--set fit.epochs=abc`."""
    return f"--set {cut_text(item)}"


def parse_key(key: str) -> list[str | int]:
    """`model.layers[0].units` -> ['model', 'layers', 0, 'units']. A segment of digits stays a string here
    (`layers.0`): whether it is a list index or an integer key depends on what it is applied to."""
    if not key:
        raise OverrideError("the key is empty; expected KEY.PATH=VALUE, e.g. fit.epochs=3")
    parts: list[str | int] = []
    for segment in key.split("."):
        m = _SEGMENT.fullmatch(segment)
        if m is None:
            what = "an empty segment" if not segment else f"segment {show_value(segment)}"
            raise OverrideError(f"{what} in key {show_value(key)}; expected names separated by single dots, "
                                f"with list items as [0], e.g. model.layers[0].units")
        parts.append(m["key"])
        parts.extend(int(i) for i in _INDEX.findall(m["index"]))
    return parts


def parse_value(text: str) -> Any:
    """VALUE read as the spec file reads a value (the same safe loader and limits); text that is not valid
    YAML on its own (`a: b: c`) stays the string it is."""
    if not text.strip():
        return ""
    data, _, errors = load_yaml(text, "--set")
    return text if errors else data


def _step(node: Any, part: str | int, done: Path) -> tuple[Any, str | int]:
    """The container key or index `part` addresses in `node` (`done` is the path of `node`, for messages)."""
    where = format_path(done)
    if isinstance(node, list):
        if isinstance(part, str):
            if not part.lstrip("-").isdigit():
                raise OverrideError(f"{where} is a list; address its items as {where}[0], not .{part}")
            part = int(part)
        if not -len(node) <= part < len(node):
            raise OverrideError(f"{where} has {len(node)} item{'s' * (len(node) != 1)}; there is no item {part}")
        return node, part % len(node)
    if isinstance(node, dict):
        if isinstance(part, int):
            raise OverrideError(f"{where} is a mapping, not a list; address its keys with a dot")
        if part in node or not part.isdigit():
            return node, part
        return node, int(part)  # `fit.class_weight.0`: YAML reads the key `0:` as an integer, new or not
    raise OverrideError(f"{where} is {show_value(node)}, not a mapping or a list, so it has no "
                        f"{'item' if isinstance(part, int) else 'key'} {show_value(part)}")


def apply_one(data: dict, item: str) -> Path:
    """Applies `item` (KEY=VALUE) to `data` in place; returns the path it set. Raises OverrideError."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise OverrideError("expected KEY.PATH=VALUE, e.g. fit.epochs=3")
    parts = parse_key(key.strip())
    value = parse_value(raw)
    node: Any = data
    done: Path = ()
    for i, part in enumerate(parts):
        container, k = _step(node, part, done)
        done += (k,)
        if i == len(parts) - 1:
            container[k] = value
        else:
            if isinstance(container, dict) and k not in container:
                container[k] = {}  # a section or mapping the file does not have yet: --set data.source=digits
            node = container[k]
    return done


def apply_overrides(text: str | bytes, overrides: list[str], filename: str) -> tuple[Any, list[SpecError]]:
    """Load the spec text with `--set a.b=value` overrides applied, then validate it: (Spec or None, errors)."""
    from .validate import contained, validate_data

    data, positions, errors = load_yaml(text.encode() if isinstance(text, str) else text, filename)
    if errors:
        return None, errors
    if not isinstance(data, dict):
        return contained(validate_data, data, positions, filename)
    bad = []
    for item in overrides:
        try:
            path = apply_one(data, item)
        except OverrideError as exc:
            bad.append(SpecError(origin(item), 0, 0, "", str(exc)))
            continue
        positions.set_by(path, origin(item))
    if bad:
        return None, bad
    return contained(validate_data, data, positions, filename)


def load_spec_with_overrides(path: str, overrides: list[str]) -> tuple[Any, list[SpecError]]:
    """load_spec(path) with `--set` overrides applied (`specc expand --set vars.width=128`)."""
    from .files import NotRegularFile, open_regular_file

    try:
        with open_regular_file(path) as fh:
            text = fh.read(4_000_000)
    except (NotRegularFile, OSError) as exc:
        return None, [SpecError(path, 1, 1, "", f"cannot read the file: {getattr(exc, 'strerror', None) or exc}")]
    return apply_overrides(text, overrides, path)
