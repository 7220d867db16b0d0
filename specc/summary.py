"""The Keras 3 model summary, from the inferred graph alone (no data, no weights, no Numba).

Layout follows Keras 3's `print_summary`: a rich table with columns Layer (type) / Output Shape / Param #
(plus Connected to for Functional models, Trainable with --show-trainable), Sequential at 88 columns and
Functional at 108, then the Total / Trainable / Non-trainable lines with sizes in float32 bytes. Beyond
Keras, like torchinfo, it adds forward multiply-adds and an estimate of the memory training needs.
"""

from __future__ import annotations

import io
import math
from typing import Any

from .graph import Graph, Node

BYTES_PER_VALUE = 4  # float32


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


def keras_order(graph: Graph) -> list[Node]:
    """Rows of a Functional model in Keras's order: by depth (longest path to an output) descending,
    ties broken by depth-first pre-order from the outputs, inputs included."""
    by_name = {n.name: n for n in graph.inputs + graph.nodes}
    pre: dict[str, int] = {}
    post: list[str] = []

    def visit(name: str) -> None:
        if name in pre:
            return
        pre[name] = len(pre)
        for ref in by_name[name].inbound:
            visit(ref)
        post.append(name)

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


def summary_text(graph: Graph, expand_nested: bool = False, show_trainable: bool = False,
                 batch_size: int = 32) -> str:
    import rich.box
    import rich.console
    import rich.markup
    import rich.table

    sequential = _sequential_like(graph)
    if sequential:
        line_length, positions = 88, [0.45, 0.80, 1.0]
        header, justify = ["Layer (type)", "Output Shape", "Param #"], ["left", "left", "right"]
    else:
        line_length, positions = 108, [0.3, 0.56, 0.74, 1.0]
        header = ["Layer (type)", "Output Shape", "Param #", "Connected to"]
        justify = ["left", "left", "right", "left"]
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

    columns = [rich.table.Column(h, justify=j, width=w) for h, j, w in zip(header, justify, widths)]
    table = rich.table.Table(*columns, width=line_length, show_lines=True, box=rich.box.HEAVY_HEAD)
    for node, level in _rows(graph, expand_nested):
        prefix = ("   " * level + "└ ") if level else ""
        cells = [f"{rich.markup.escape(prefix + node.name)} ({node.type})", batch_shape(node.output_shape, graph.batch_size),
                 f"{node.params():,}"]
        if not sequential:
            cells.append(", ".join(f"{rich.markup.escape(r)}[0][0]" for r in node.inbound) or "-")
        if show_trainable:
            has_weights = bool(node.weights) or any(c.weights for c in node.leaves() if c is not node)
            cells.append(("Y" if node.trainable else "N") if has_weights else "-")
        table.add_row(*cells)

    buf = io.StringIO()
    console = rich.console.Console(file=buf, width=line_length, no_color=True, force_terminal=False,
                                   highlight=False, legacy_windows=False, emoji=False)
    console.print(table)
    total, trainable = graph.params(), graph.params(trainable=True)
    lines = [f'Model: "{graph.name}"', buf.getvalue().rstrip("\n")]
    lines.append(f" Total params: {total:,} ({readable_size(total * BYTES_PER_VALUE)})")
    lines.append(f" Trainable params: {trainable:,} ({readable_size(trainable * BYTES_PER_VALUE)})")
    lines.append(f" Non-trainable params: {total - trainable:,} ({readable_size((total - trainable) * BYTES_PER_VALUE)})")
    est = estimates(graph, batch_size)
    lines.append(f" Forward mult-adds per sample: {est['macs_per_sample']:,}")
    lines.append(f" Activations per sample: {est['activation_values_per_sample']:,} values "
                 f"({readable_size(est['activation_bytes_per_sample'])})")
    lines.append(f" Estimated training memory at batch {batch_size}: "
                 f"{readable_size(est['training_bytes'])} (weights, gradients, optimizer moments, "
                 f"activations and their gradients)")
    return "\n".join(lines) + "\n"


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
        "type": node.type,
        "output_shape": None if node.output_shape is None else [None, *node.output_shape],
        "params": node.params(),
        "trainable_params": node.params(trainable=True),
        "trainable": node.trainable,
        "connected_to": list(node.inbound),
    }
    if node.children:
        out["layers"] = [_layer_json(c) for c in node.children]
    return out


def summary_json(graph: Graph, batch_size: int = 32) -> dict[str, Any]:
    nodes = [node for node, _ in _rows(graph, expand_nested=False)]
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
