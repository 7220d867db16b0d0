"""The Keras 3 model summary, from the inferred graph alone (no data, no weights, no Numba).

Layout follows Keras 3's `print_summary`: a rich table with columns Layer (type) / Output Shape / Param #
(plus Connected to for Functional models, Trainable with --show-trainable), Sequential at 88 columns and
Functional at 108, then the Total / Trainable / Non-trainable lines with sizes in float32 bytes. Beyond
Keras, like torchinfo, it adds forward multiply-adds and an estimate of the memory training needs.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .graph import Graph, Node

BYTES_PER_VALUE = 4  # float32
DEFAULT_BATCH = 32  # the spec schema's fit.batch_size default (FitDef; tests/test_summary.py checks they agree)


def readable_size(n_bytes: float) -> str:
    """Keras's readable_memory_size: 1024-based, two decimals."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes / 1024 < 1:
            return f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} PB"


def batch_shape(shape: tuple | None, batch: int | None = None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("None" if d is None else str(d) for d in (batch, *shape)) + ")"


@dataclass
class BlockNode(Node):
    """A block instance as one row (a spec's `{block: ...}`): its layers are its children."""

    block: str = ""
    shapes: list = field(default_factory=list)  # of each output, for more than one

    @property
    def type(self) -> str:
        return self.block


def collapse(graph: Graph, instances: list | None) -> Graph:
    """`graph` with each block instance (specc.spec.expand.Instance) as one node, as Keras shows a nested
    model: its inputs are the instance's, its output its block's output, its parameters its layers'."""
    if not instances:
        return graph
    by_name = {n.name: n for n in graph.inputs + graph.nodes}
    position = {n.name: k for k, n in enumerate(graph.nodes)}
    owner: dict[str, str] = {}  # layer name -> the top-level instance that made it

    def make(inst) -> BlockNode:
        children = [by_name[n] for n in inst.layers if n in by_name]
        children += [make(c) for c in inst.children]
        children.sort(key=lambda n: min((position.get(m, 0) for m in _members(n)), default=0))
        outs = [by_name[o].output_shape for o in inst.outputs if o in by_name]
        return BlockNode(inst.name, None, list(inst.inputs), (), output_shape=outs[0] if outs else None,
                         children=children, trainable=any(c.trainable for c in children), block=inst.block,
                         shapes=outs)

    blocks = []
    for inst in instances:
        for member in inst.members():
            owner[member] = inst.name
        blocks.append(make(inst))
    first = {}
    for k, node in enumerate(graph.nodes):
        first.setdefault(owner.get(node.name, node.name), k)
    kept = {n.name: n for n in graph.nodes if n.name not in owner}
    nodes = sorted(list(kept.values()) + blocks, key=lambda n: first.get(n.name, 0))
    rows = []
    for node in nodes:
        if not isinstance(node, BlockNode):
            node = Node(node.name, node.layer, [owner.get(r, r) for r in node.inbound], node.path,
                        node.input_shape, node.output_shape, node.weights, node.trainable, node.children)
        else:
            node.inbound = [owner.get(r, r) for r in node.inbound]
        rows.append(node)
    return Graph(graph.name, graph.kind, graph.inputs, rows, [owner.get(o, o) for o in graph.outputs],
                 graph.batch_size)


def _members(node: Node) -> list[str]:
    return [m for c in node.children for m in _members(c)] if isinstance(node, BlockNode) else [node.name]


def keras_order(graph: Graph) -> list[Node]:
    """Rows of a Functional model in Keras's order: by depth (longest path to an output) descending,
    ties broken by depth-first pre-order from the outputs, inputs included."""
    by_name = {n.name: n for n in graph.inputs + graph.nodes}
    pre: dict[str, int] = {}
    post: list[str] = []

    def visit(root: str) -> None:
        # depth-first with a stack of its own: a chain of thousands of layers (a long repeat) would
        # exceed Python's recursion limit
        if root in pre:
            return
        pre[root] = len(pre)
        stack = [(root, iter(by_name[root].inbound))]
        while stack:
            name, refs = stack[-1]
            ref = next(refs, None)
            if ref is None:
                stack.pop()
                post.append(name)
            elif ref not in pre:
                pre[ref] = len(pre)
                stack.append((ref, iter(by_name[ref].inbound)))

    for out in graph.outputs:
        visit(out)
    depth: dict[str, int] = {}
    for name in reversed(post):
        d = depth.setdefault(name, 0)
        for ref in by_name[name].inbound:
            depth[ref] = max(depth.get(ref, 0), d + 1)
    return [by_name[n] for n in sorted(depth, key=lambda n: (-depth[n], pre[n]))]


def _rows(graph: Graph, expand_nested: bool) -> list[tuple[Node, int]]:
    """(node, nesting level) in display order, as Keras lists a model's layers."""
    out: list[tuple[Node, int]] = []

    def add(node: Node, level: int) -> None:
        out.append((node, level))
        if expand_nested:
            for child in node.children:
                add(child, level + 1)

    for node in keras_order(graph) if graph.kind == "functional" else graph.nodes:
        add(node, 0)
    return out


def _sequential_like(graph: Graph) -> bool:
    """Keras drops the Connected to column for a Functional model that is a single chain."""
    if graph.kind == "sequential":
        return True
    return len(graph.inputs) == 1 and len(graph.outputs) == 1 and all(len(n.inbound) == 1 for n in graph.nodes) \
        and len({r for n in graph.nodes for r in n.inbound}) == len(graph.nodes)


def layer_range_bounds(names: list[str], layer_range) -> tuple[int, int]:
    """Keras's layer_range: [first, last] layer names (regular expressions matched at the start of a name),
    both inclusive -> the slice of `names` (the top-level rows) to show."""
    if not isinstance(layer_range, (list, tuple)) or len(layer_range) != 2:
        n = len(layer_range) if isinstance(layer_range, (list, tuple)) else "?"
        raise ValueError(f"layer_range must be a list or tuple of length 2. Received: layer_range = {layer_range} of "
                         f"length {n}")
    if not all(isinstance(p, str) for p in layer_range):
        raise ValueError(f"layer_range should contain string type only. Received: {layer_range}")
    import re

    lower = [k for k, name in enumerate(names) if re.match(layer_range[0], name)]
    upper = [k for k, name in enumerate(names) if re.match(layer_range[1], name)]
    if not lower or not upper:
        raise ValueError(f"Passed layer_names do not match the layer names in the model. Received: {layer_range}")
    if min(lower) > max(upper):
        return min(upper), max(lower) + 1
    return min(lower), max(upper) + 1


def summary_rows_names(graph: Graph) -> list[str]:
    """The names of the top-level rows of the summary, in order (what layer_range indexes)."""
    return [node.name for node, _ in _rows(graph, False)]


def summary_text(graph: Graph, expand_nested: bool = False, show_trainable: bool = False,
                 batch_size: int = DEFAULT_BATCH, line_length: int | None = None, positions: list | None = None,
                 layer_range: tuple[int, int] | None = None, instances: list | None = None) -> str:
    """Keras 3's print_summary: `line_length` and `positions` (fractions of the line, or absolute columns)
    as Keras takes them; `layer_range` the slice of the top-level rows to show (layer_range_bounds);
    `instances` (a spec's block instances) are one row each."""
    full, graph = graph, collapse(graph, instances)
    sequential = _sequential_like(graph)
    if sequential:
        default_length, default_positions = 88, [0.45, 0.80, 1.0]
        header, justify = ["Layer (type)", "Output Shape", "Param #"], ["left", "left", "right"]
    else:
        default_length, default_positions = 108, [0.3, 0.56, 0.74, 1.0]
        header = ["Layer (type)", "Output Shape", "Param #", "Connected to"]
        justify = ["left", "left", "right", "left"]
    line_length = line_length or default_length
    positions = list(positions or default_positions)
    if positions[-1] > 1:  # absolute columns
        positions = [p / line_length for p in positions]
    if show_trainable:
        line_length += 12
        positions = [p * 0.90 for p in positions] + [1.0]
        header.append("Trainable")
        justify.append("center")
    widths, current = [], 0
    for pos in positions:
        width = int(pos * line_length) - current
        widths.append(width)
        current += width

    rows = []
    shown = _rows(graph, expand_nested)
    if layer_range is not None:
        top = [k for k, (_, level) in enumerate(shown) if level == 0] + [len(shown)]
        shown = shown[top[layer_range[0]]: top[layer_range[1]]]
    for node, level in shown:
        prefix = ("   " * level + "└ ") if level else ""
        shapes = node.shapes if isinstance(node, BlockNode) and len(node.shapes) > 1 else [node.output_shape]
        cells = [f"{prefix}{node.name} ({_type(node)})", ", ".join(batch_shape(s, graph.batch_size) for s in shapes),
                 f"{node.params():,}"]
        if not sequential:
            cells.append(", ".join(f"{r}[0][0]" for r in node.inbound) or "-")
        if show_trainable:
            has_weights = bool(node.weights) or any(c.weights for c in node.leaves() if c is not node)
            cells.append(("Y" if node.trainable else "N") if has_weights else "-")
        rows.append(cells)
    if all(_PLAIN.fullmatch(cell) for cells in (header, *rows) for cell in cells):
        table = box_table(header, justify, widths, line_length, rows)
    else:
        table = _rich_table(header, justify, widths, line_length, rows)

    total, trainable = full.params(), full.params(trainable=True)
    lines = [f'Model: "{graph.name}"', table]
    lines.append(f" Total params: {total:,} ({readable_size(total * BYTES_PER_VALUE)})")
    lines.append(f" Trainable params: {trainable:,} ({readable_size(trainable * BYTES_PER_VALUE)})")
    lines.append(f" Non-trainable params: {total - trainable:,} ({readable_size((total - trainable) * BYTES_PER_VALUE)})")
    est = estimates(full, batch_size)
    lines.append(f" Forward mult-adds per sample: {est['macs_per_sample']:,}")
    lines.append(f" Activations per sample: {est['activation_values_per_sample']:,} values "
                 f"({readable_size(est['activation_bytes_per_sample'])})")
    lines.append(f" Estimated training memory at batch {batch_size}: "
                 f"{readable_size(est['training_bytes'])} (weights, gradients, optimizer moments, "
                 f"activations and their gradients)")
    return "\n".join(lines) + "\n"


def _type(node: Node) -> str:
    """The layer type shown: a shared layer's use (`{use: encoder}`) shows the used layer's."""
    return getattr(node.layer, "shared_type", None) or node.type


def estimates(graph: Graph, batch_size: int) -> dict[str, int]:
    """Per-sample compute and an upper-bound memory estimate for training with Adam at `batch_size`."""
    values = graph.activation_values()
    params = graph.params()
    inputs = sum(math.prod(d or 1 for d in n.output_shape) for n in graph.inputs)
    return {
        "macs_per_sample": graph.macs(),
        "activation_values_per_sample": values,
        "activation_bytes_per_sample": values * BYTES_PER_VALUE,
        "weight_bytes": params * BYTES_PER_VALUE,
        # parameters + gradients + two Adam moments, and each activation kept plus its gradient
        "training_bytes": (4 * params + batch_size * (2 * values + inputs)) * BYTES_PER_VALUE,
    }


def _layer_json(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": node.name,
        "type": _type(node),
        "output_shape": None if node.output_shape is None else [None, *node.output_shape],
        "params": node.params(),
        "trainable_params": node.params(trainable=True),
        "trainable": node.trainable,
        "connected_to": list(node.inbound),
    }
    if node.children:
        out["layers"] = [_layer_json(c) for c in node.children]
    return out


def summary_json(graph: Graph, batch_size: int = DEFAULT_BATCH, instances: list | None = None) -> dict[str, Any]:
    nodes = [node for node, _ in _rows(collapse(graph, instances), expand_nested=False)]
    total, trainable = graph.params(), graph.params(trainable=True)
    return {
        "name": graph.name,
        "kind": graph.kind,
        "layers": [_layer_json(n) for n in nodes],
        "inputs": {n.name: [None, *n.output_shape] for n in graph.inputs},
        "outputs": list(graph.outputs),
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        **estimates(graph, batch_size),
    }


# --- the table ---------------------------------------------------------------------------------------------
# Keras prints its summary with rich. Importing rich is a large share of `specc summary`'s time, so plain text
# is laid out here by rich's rules for this one table shape (rich/table.py, rich/_wrap.py, rich/text.py):
# fixed column widths plus one space of padding a side, shrunk evenly to fit between the borders; words
# wrapped onto new lines; a word longer than its column cut short with "…". tests/test_summary.py checks
# this against rich itself. Other text (wide or combining characters, whose cell widths rich measures from
# its own tables) still goes through rich.

_PLAIN = re.compile(r"[ -~└]*")  # printable ASCII and the nesting mark: one cell per character
_WORD = re.compile(r"\s*\S+\s*")  # a word with the spaces around it, as rich wraps
# HEAVY_HEAD: (left, fill, between, right) for each rule; the header's and the rows' vertical bars
_TOP, _HEAD_RULE, _ROW_RULE, _BOTTOM = ("┏", "━", "┳", "┓"), ("┡", "━", "╇", "┩"), ("├", "─", "┼", "┤"), ("└", "─", "┴", "┘")
_HEAD_BAR, _ROW_BAR = "┃", "│"


def box_table(header: list[str], justify: list[str], widths: list[int], line_length: int,
              rows: list[list[str]]) -> str:
    """The table rich draws for Table(Column(h, justify=j, width=w)..., width=line_length,
    show_lines=True, box=HEAVY_HEAD), for cells of plain text (see _PLAIN)."""
    # rich: each column takes width + 2 (padding); the excess over the room between the borders is taken
    # from the columns in turn, round(excess left / columns left) each
    room = line_length - (len(widths) + 1)
    cells = [min(w + 2, room) for w in widths]
    excess = sum(cells) - room
    if excess > 0:
        for i in range(len(cells)):
            take = min(cells[i], round(excess / (len(cells) - i)))
            cells[i] -= take
            excess -= take

    def rule(parts: tuple[str, str, str, str]) -> str:
        left, fill, between, right = parts
        return left + between.join(fill * c for c in cells) + right

    def row(texts: list[str], bar: str) -> list[str]:
        blocks = [_wrap(t, c - 2, j) for t, c, j in zip(texts, cells, justify)]
        height = max(len(b) for b in blocks)
        return [bar + bar.join(" " + (b[i] if i < len(b) else " " * (c - 2)) + " " for b, c in zip(blocks, cells))
                + bar for i in range(height)]

    out = [rule(_TOP), *row(header, _HEAD_BAR), rule(_HEAD_RULE)]
    for i, texts in enumerate(rows):
        if i:
            out.append(rule(_ROW_RULE))
        out.extend(row(texts, _ROW_BAR))
    out.append(rule(_BOTTOM))
    return "\n".join(out)


def _wrap(text: str, width: int, justify: str) -> list[str]:
    """rich's Text.wrap with overflow="ellipsis": lines of exactly `width` characters."""
    breaks: list[int] = []  # rich's divide_line(text, width, fold=False)
    offset = 0
    for match in _WORD.finditer(text):
        start, word = match.start(), match.group()
        length = len(word.rstrip())
        if width - offset >= length:
            offset += len(word)
        elif length > width:  # too long for any line: alone on one, cut below
            if start:
                breaks.append(start)
            offset = len(word)
        elif offset and start:
            breaks.append(start)
            offset = len(word)
    lines = []
    for a, b in zip([0, *breaks], [*breaks, len(text)]):
        line = text[a:b]
        if len(line) > width:  # spaces past the edge go first
            spaces = len(line) - len(line.rstrip())
            line = line[: len(line) - min(spaces, len(line) - width)]
        if justify != "left":
            line = line.rstrip()
        if len(line) > width:
            line = line[: width - 1] + "…"
        if justify == "right":
            line = line.rjust(width)
        elif justify == "center":
            pad = (width - len(line)) // 2
            line = (" " * pad + line).ljust(width)
        lines.append(line.ljust(width))
    return lines


def _rich_table(header: list[str], justify: list[str], widths: list[int], line_length: int,
                rows: list[list[str]]) -> str:
    import rich.box
    import rich.console
    import rich.table
    from rich.text import Text

    columns = [rich.table.Column(h, justify=j, width=w) for h, j, w in zip(header, justify, widths)]
    table = rich.table.Table(*columns, width=line_length, show_lines=True, box=rich.box.HEAVY_HEAD)
    for cells in rows:
        table.add_row(*(Text(c) for c in cells))  # Text: names are shown as they are, never read as markup
    buf = io.StringIO()
    console = rich.console.Console(file=buf, width=line_length, no_color=True, force_terminal=False,
                                   highlight=False, legacy_windows=False, emoji=False)
    console.print(table)
    return buf.getvalue().rstrip("\n")
