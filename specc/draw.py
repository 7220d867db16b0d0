"""`specc draw`: a picture of the model, from the inferred graph alone (no data, no weights, no Numba).

One drawing (boxes, edges, clusters) is written in four formats: Mermaid and DOT as text for other tools to
lay out, SVG and PNG laid out here so that no system binary (Graphviz) is needed. The layout is layered, as
Graphviz's `dot` does it: each layer sits on the rank of its longest path from an input, and a few
barycentre sweeps order each rank to cut edge crossings. Large graphs stay readable because a chain keeps
one column, a nested block is one box unless expanded, and the SVG scales without losing text.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from .graph import Graph, Node
from .summary import batch_shape

FORMATS = ("svg", "png", "mermaid", "dot")
SUFFIXES = {".svg": "svg", ".png": "png", ".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot"}

# SVG geometry in pixels: an average character of the 12 px sans-serif font, the box padding, gaps.
CHAR_W, LINE_H, PAD_X, PAD_Y, GAP_X, GAP_Y = 7.0, 16.0, 12.0, 8.0, 28.0, 36.0
CLUSTER_PAD = 10.0
COLOURS = {"input": "#e8f1fb", "layer": "#ffffff", "frozen": "#eeeeee", "block": "#fdf3e1"}


@dataclass
class Box:
    id: str
    name: str
    type: str
    shape: str
    params: int
    trainable: bool
    kind: str  # input, layer, frozen or block (a nested block drawn as one box)
    cluster: str | None = None

    def lines(self, show_params: bool, show_trainable: bool) -> list[str]:
        lines = [self.name, self.type, self.shape]
        if show_params and self.kind != "input":
            lines.append(f"params: {self.params:,}")
        if show_trainable and self.kind != "input":
            lines.append("trainable" if self.trainable else "frozen")
        return lines


@dataclass
class Cluster:
    id: str
    label: str
    parent: str | None
    boxes: list[str] = field(default_factory=list)


@dataclass
class Drawing:
    title: str
    boxes: list[Box]
    edges: list[tuple[str, str]]
    clusters: list[Cluster]
    show_params: bool = False
    show_trainable: bool = False


def drawing(graph: Graph, batch: int | None = None, expand_nested: bool = False, show_params: bool = False,
            show_trainable: bool = False, instances: list | None = None) -> Drawing:
    """The boxes and edges of a model: one box per input and layer. A nested Sequential block is one box,
    or (expanded) a cluster of its chain; a spec's block instances (`instances`, specc.spec.expand) are one
    box each, or (expanded) a cluster around their layers, which keep their own edges."""
    if instances and not expand_nested:
        from .summary import collapse

        graph = collapse(graph, instances)
    inputs = {id(n) for n in graph.inputs}
    boxes: list[Box] = []
    clusters: list[Cluster] = []
    edges: list[tuple[str, str]] = []

    def add_box(node: Node, cluster: Cluster | None, kind: str) -> str:
        box = Box(f"n{len(boxes)}", node.name, node.type, batch_shape(node.output_shape, batch),
                  node.params(), node.trainable, kind, cluster.id if cluster else None)
        boxes.append(box)
        if cluster:
            cluster.boxes.append(box.id)
        return box.id

    def add(node: Node, cluster: Cluster | None) -> tuple[str, str]:
        if id(node) in inputs:
            ident = add_box(node, cluster, "input")
            return ident, ident
        if not node.children or not expand_nested:
            kind = "block" if node.children else ("layer" if node.trainable or not node.weights else "frozen")
            ident = add_box(node, cluster, kind)
            return ident, ident
        inner = Cluster(f"c{len(clusters)}", f"{node.name} ({node.type})", cluster.id if cluster else None)
        clusters.append(inner)
        first = last = None
        for child in node.children:  # a nested block is a chain
            head, tail = add(child, inner)
            if last is not None:
                edges.append((last, head))
            first = first or head
            last = tail
        return first, last

    # Expanded instances: a cluster per instance (nested ones inside their parent's), around its layers.
    cluster_of: dict[str, Cluster] = {}

    def frame(inst, parent: Cluster | None) -> None:
        c = Cluster(f"c{len(clusters)}", f"{inst.name} ({inst.block})", parent.id if parent else None)
        clusters.append(c)
        for name in inst.layers:
            cluster_of[name] = c
        for child in inst.children:
            frame(child, c)

    if expand_nested:
        for inst in instances or []:
            frame(inst, None)
    by_name: dict[str, tuple[str, str]] = {}  # node name -> (box taking its inputs, box giving its output)
    for node in graph.inputs + graph.nodes:
        by_name[node.name] = add(node, cluster_of.get(node.name))
    for node in graph.nodes:
        for ref in node.inbound:
            if ref in by_name:
                edges.append((by_name[ref][1], by_name[node.name][0]))
    return Drawing(graph.name, boxes, edges, clusters, show_params, show_trainable)


# --- text formats ------------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    # Mermaid labels are quoted; quotes and angle brackets are written as entity codes.
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def mermaid(d: Drawing, direction: str = "TB") -> str:
    out = [f"flowchart {direction}"]
    children: dict[str | None, list[Cluster]] = {}
    for c in d.clusters:
        children.setdefault(c.parent, []).append(c)
    loose = [b for b in d.boxes if b.cluster is None]
    by_cluster = {c.id: [b for b in d.boxes if b.cluster == c.id] for c in d.clusters}

    def box_line(b: Box, indent: str) -> str:
        lines = [_mermaid_text(t) for t in b.lines(d.show_params, d.show_trainable)]
        label = f"<b>{lines[0]}</b><br/>" + "<br/>".join(lines[1:])
        shape = ('(["', '"])') if b.kind == "input" else ('["', '"]')
        return f"{indent}{b.id}{shape[0]}{label}{shape[1]}:::{b.kind}"

    def cluster_lines(c: Cluster, indent: str) -> None:
        out.append(f'{indent}subgraph {c.id} ["{_mermaid_text(c.label)}"]')
        for b in by_cluster[c.id]:
            out.append(box_line(b, indent + "  "))
        for inner in children.get(c.id, []):
            cluster_lines(inner, indent + "  ")
        out.append(f"{indent}end")

    for b in loose:
        out.append(box_line(b, "  "))
    for c in children.get(None, []):
        cluster_lines(c, "  ")
    out.extend(f"  {a} --> {b}" for a, b in d.edges)
    out.extend(f"  classDef {kind} fill:{colour},stroke:#555" for kind, colour in COLOURS.items())
    return "\n".join(out) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def dot(d: Drawing, direction: str = "TB") -> str:
    out = [f'digraph "{_dot_text(d.title)}" {{', f"  rankdir={direction};",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
           '  edge [color="#555555"];']
    children: dict[str | None, list[Cluster]] = {}
    for c in d.clusters:
        children.setdefault(c.parent, []).append(c)

    def box_line(b: Box, indent: str) -> str:
        label = "\\n".join(_dot_text(t) for t in b.lines(d.show_params, d.show_trainable))
        shape = ", shape=oval" if b.kind == "input" else ""
        return f'{indent}{b.id} [label="{label}", fillcolor="{COLOURS[b.kind]}"{shape}];'

    def cluster_lines(c: Cluster, indent: str) -> None:
        out.append(f"{indent}subgraph cluster_{c.id} {{")
        out.append(f'{indent}  label="{_dot_text(c.label)}"; style="rounded,dashed";')
        out.extend(box_line(b, indent + "  ") for b in d.boxes if b.cluster == c.id)
        for inner in children.get(c.id, []):
            cluster_lines(inner, indent + "  ")
        out.append(f"{indent}}}")

    out.extend(box_line(b, "  ") for b in d.boxes if b.cluster is None)
    for c in children.get(None, []):
        cluster_lines(c, "  ")
    out.extend(f"  {a} -> {b};" for a, b in d.edges)
    out.append("}")
    return "\n".join(out) + "\n"


# --- layout ------------------------------------------------------------------------------------------


@dataclass
class Layout:
    x: dict[str, float]  # box centre (dummy points of long edges included)
    y: dict[str, float]
    w: dict[str, float]
    h: dict[str, float]
    width: float
    height: float
    clusters: dict[str, tuple[float, float, float, float]]  # x0, y0, x1, y1
    routes: dict[tuple[str, str], list[str]]  # an edge -> the points it passes: its ends and dummies between


DUMMY = 10.0  # the width a long edge takes where it crosses a rank


def _ranks(ids: list[str], preds: dict[str, list[str]], succs: dict[str, list[str]]) -> dict[str, int]:
    """Longest path from a source, then each node that is not on it moved down next to its first consumer
    (a side input such as a metadata branch sits beside the layer that takes it, not at the top)."""
    rank: dict[str, int] = {}
    for i in ids:  # boxes are made in topological order
        rank[i] = max((rank[p] + 1 for p in preds[i]), default=0)
    for i in reversed(ids):
        if succs[i]:
            rank[i] = max(rank[i], min(rank[s] for s in succs[i]) - 1)
    return rank


def _pack(order: list[str], want: dict[str, float], size: dict[str, float], gap: float) -> dict[str, float]:
    """Centres as near the wanted ones as the order and the gaps allow: pushed right where they would
    overlap, then pulled back left where that pushed them past what they wanted."""
    x: dict[str, float] = {}
    for k, i in enumerate(order):
        x[i] = want[i] if k == 0 else max(want[i], x[order[k - 1]] + (size[order[k - 1]] + size[i]) / 2 + gap)
    for k in range(len(order) - 2, -1, -1):
        i, j = order[k], order[k + 1]
        x[i] = min(x[i], x[j] - (size[i] + size[j]) / 2 - gap) if x[i] > want[i] else x[i]
    return x


def layout(d: Drawing, direction: str = "TB") -> Layout:
    """Layered layout (top to bottom for TB, left to right for LR): ranks, long edges split by dummy points,
    rank order by barycentre sweeps, then positions pulled towards each node's neighbours."""
    ids = [b.id for b in d.boxes]
    preds: dict[str, list[str]] = {i: [] for i in ids}
    succs: dict[str, list[str]] = {i: [] for i in ids}
    for a, b in d.edges:
        preds[b].append(a)
        succs[a].append(b)
    rank = _ranks(ids, preds, succs)

    # Long edges pass through a dummy point on every rank they cross, so they take room and bend round boxes.
    routes: dict[tuple[str, str], list[str]] = {}
    up: dict[str, list[str]] = {i: [] for i in ids}
    down: dict[str, list[str]] = {i: [] for i in ids}
    for a, b in d.edges:
        route = [a]
        for r in range(rank[a] + 1, rank[b]):
            dummy = f"{a}>{b}@{r}"
            rank[dummy] = r
            up[dummy], down[dummy] = [], []
            route.append(dummy)
        route.append(b)
        routes[(a, b)] = route
        for p, q in zip(route, route[1:]):
            down[p].append(q)
            up[q].append(p)
    n_ranks = max(rank.values(), default=-1) + 1
    ranks: list[list[str]] = [[] for _ in range(n_ranks)]
    for i in rank:
        ranks[rank[i]].append(i)
    pos = {i: float(k) for r in ranks for k, i in enumerate(r)}
    for sweep in range(6):  # down, up, down...: order each rank by its neighbours' mean position
        near = up if sweep % 2 == 0 else down
        for r in range(1, n_ranks) if sweep % 2 == 0 else range(n_ranks - 2, -1, -1):
            ranks[r].sort(key=lambda i: sum(pos[j] for j in near[i]) / len(near[i]) if near[i] else pos[i])
            for k, i in enumerate(ranks[r]):
                pos[i] = float(k)

    lines = {b.id: b.lines(d.show_params, d.show_trainable) for b in d.boxes}
    w = {i: max(len(t) for t in ls) * CHAR_W + 2 * PAD_X for i, ls in lines.items()}
    h = {i: len(ls) * LINE_H + 2 * PAD_Y for i, ls in lines.items()}
    for i in rank:
        if i not in w:
            w[i] = h[i] = DUMMY
    across = w if direction == "TB" else h
    along = h if direction == "TB" else w
    gap = GAP_X if direction == "TB" else GAP_X / 2

    # Across the ranks: start packed, then pull every node towards the mean of its neighbours, a few times.
    x: dict[str, float] = {}
    for r in ranks:
        x.update(_pack(r, {i: 0.0 for i in r}, across, gap))
    for sweep in range(8):
        near = up if sweep % 2 == 0 else down
        for r in ranks if sweep % 2 == 0 else ranks[::-1]:
            want = {i: sum(x[j] for j in near[i]) / len(near[i]) if near[i] else x[i] for i in r}
            x.update(_pack(r, want, across, gap))
    margin = 2 * CLUSTER_PAD + LINE_H
    shift = margin - min((x[i] - across[i] / 2 for i in x), default=0.0)
    x = {i: v + shift for i, v in x.items()}
    y: dict[str, float] = {}
    cursor = margin
    for r in ranks:
        depth = max((along[i] for i in r if i in lines), default=DUMMY)
        for i in r:
            y[i] = cursor + depth / 2
        cursor += depth + GAP_Y
    if direction == "LR":
        x, y = y, x
    width = max((x[i] + w[i] / 2 for i in x), default=0.0) + margin
    height = max((y[i] + h[i] / 2 for i in x), default=0.0) + margin

    boxes_in: dict[str, list[str]] = {c.id: list(c.boxes) for c in d.clusters}
    for c in reversed(d.clusters):  # inner clusters come after their parent: fold them in
        if c.parent:
            boxes_in[c.parent].extend(boxes_in[c.id])
    level = {c.id: 0 for c in d.clusters}
    for c in d.clusters:
        if c.parent:
            level[c.id] = level[c.parent] + 1
    frames = {}
    for c in d.clusters:
        members = boxes_in[c.id]
        if members:
            pad = CLUSTER_PAD * (1 + max(level.values()) - level[c.id])
            frames[c.id] = (min(x[i] - w[i] / 2 for i in members) - pad,
                            min(y[i] - h[i] / 2 for i in members) - pad - LINE_H,
                            max(x[i] + w[i] / 2 for i in members) + pad,
                            max(y[i] + h[i] / 2 for i in members) + pad)
    return Layout(x, y, w, h, width, height, frames, routes)


def _edge_path(lay: Layout, a: str, b: str, direction: str) -> list[tuple[float, float]]:
    """A chain of cubic curves from box a's far side through the edge's dummy points to box b's near side:
    start, then (control, control, end) per piece, with tangents along the layout's direction."""
    route = lay.routes[(a, b)]
    if direction == "TB":
        points = [(lay.x[a], lay.y[a] + lay.h[a] / 2)] + [(lay.x[i], lay.y[i]) for i in route[1:-1]] + \
                 [(lay.x[b], lay.y[b] - lay.h[b] / 2)]
    else:
        points = [(lay.x[a] + lay.w[a] / 2, lay.y[a])] + [(lay.x[i], lay.y[i]) for i in route[1:-1]] + \
                 [(lay.x[b] - lay.w[b] / 2, lay.y[b])]
    path = [points[0]]
    for p, q in zip(points, points[1:]):
        if direction == "TB":
            mid = (p[1] + q[1]) / 2
            path += [(p[0], mid), (q[0], mid), q]
        else:
            mid = (p[0] + q[0]) / 2
            path += [(mid, p[1]), (mid, q[1]), q]
    return path


def svg(d: Drawing, direction: str = "TB") -> str:
    lay = layout(d, direction)
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width:.0f}" height="{lay.height:.0f}" '
           f'viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" font-family="Helvetica, Arial, sans-serif" '
           f'font-size="12">',
           f"<title>{esc(d.title)}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="{CLUSTER_PAD:.0f}" y="{CLUSTER_PAD + 12:.0f}" font-weight="bold">{esc(d.title)}</text>']
    for c in d.clusters:
        if c.id not in lay.clusters:
            continue
        x0, y0, x1, y1 = lay.clusters[c.id]
        out.append(f'<g class="cluster" id="{c.id}"><rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                   f'height="{y1 - y0:.1f}" rx="8" fill="#fafafa" stroke="#999" stroke-dasharray="5,3"/>'
                   f'<text x="{x0 + 8:.1f}" y="{y0 + 14:.1f}" fill="#555">{esc(c.label)}</text></g>')
    for a, b in d.edges:
        path = _edge_path(lay, a, b, direction)
        pieces = " ".join(f"C {path[k][0]:.1f} {path[k][1]:.1f} {path[k + 1][0]:.1f} {path[k + 1][1]:.1f} "
                          f"{path[k + 2][0]:.1f} {path[k + 2][1]:.1f}" for k in range(1, len(path), 3))
        out.append(f'<path class="edge" d="M {path[0][0]:.1f} {path[0][1]:.1f} {pieces}" fill="none" '
                   f'stroke="#555" marker-end="url(#arrow)"/>')
    for b in d.boxes:
        x0, y0 = lay.x[b.id] - lay.w[b.id] / 2, lay.y[b.id] - lay.h[b.id] / 2
        rx = lay.h[b.id] / 2 if b.kind == "input" else 6
        out.append(f'<g class="layer" id="{b.id}"><rect x="{x0:.1f}" y="{y0:.1f}" width="{lay.w[b.id]:.1f}" '
                   f'height="{lay.h[b.id]:.1f}" rx="{rx:.1f}" fill="{COLOURS[b.kind]}" stroke="#333"/>')
        for k, text in enumerate(b.lines(d.show_params, d.show_trainable)):
            weight = ' font-weight="bold"' if k == 0 else ' fill="#333"'
            out.append(f'<text x="{lay.x[b.id]:.1f}" y="{y0 + PAD_Y + LINE_H * (k + 0.75):.1f}" '
                       f'text-anchor="middle"{weight}>{esc(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


# PNG: matplotlib's Agg canvas refuses images above 2^16 pixels a side; a larger drawing is scaled down.
MAX_PNG_SIDE = 30000


def png(d: Drawing, path: str, direction: str = "TB", dpi: int = 96) -> None:
    """Rasterise the same layout with matplotlib's Agg backend (no display, no system binary)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
    from matplotlib.path import Path as MPath

    lay = layout(d, direction)
    scale = min(1.0, MAX_PNG_SIDE / max(lay.width, lay.height, 1.0))
    fig = Figure(figsize=(lay.width * scale / dpi, lay.height * scale / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, lay.width)
    ax.set_ylim(lay.height, 0)  # SVG's y axis points down
    ax.axis("off")
    font = 9 * scale  # 12 px at 96 dpi is 9 pt
    ax.text(CLUSTER_PAD, CLUSTER_PAD + 12, d.title, fontsize=font, weight="bold")
    for c in d.clusters:
        if c.id in lay.clusters:
            x0, y0, x1, y1 = lay.clusters[c.id]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=True, facecolor="#fafafa",
                                   edgecolor="#999999", linestyle="--"))
            ax.text(x0 + 8, y0 + 14, c.label, fontsize=font, color="#555555")
    for a, b in d.edges:
        verts = _edge_path(lay, a, b, direction)
        curve = MPath(verts, [MPath.MOVETO] + [MPath.CURVE4] * (len(verts) - 1))
        ax.add_patch(FancyArrowPatch(path=curve, arrowstyle="-|>", mutation_scale=10 * scale, color="#555555",
                                     linewidth=1.0 * scale))
    for b in d.boxes:
        x0, y0 = lay.x[b.id] - lay.w[b.id] / 2, lay.y[b.id] - lay.h[b.id] / 2
        ax.add_patch(FancyBboxPatch((x0, y0), lay.w[b.id], lay.h[b.id], boxstyle="round,pad=0,rounding_size=6",
                                    facecolor=COLOURS[b.kind], edgecolor="#333333", linewidth=1.0 * scale))
        for k, text in enumerate(b.lines(d.show_params, d.show_trainable)):
            ax.text(lay.x[b.id], y0 + PAD_Y + LINE_H * (k + 0.5), text, ha="center", va="center", fontsize=font,
                    weight="bold" if k == 0 else "normal")
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")


def render(d: Drawing, fmt: str, direction: str = "TB") -> str:
    """The drawing as text (svg, mermaid or dot); PNG goes through `png`."""
    return {"svg": svg, "mermaid": mermaid, "dot": dot}[fmt](d, direction)


def format_for(path: str | None) -> str | None:
    """The format an output file's suffix names, if any."""
    if path is None:
        return None
    m = re.search(r"\.[A-Za-z]+$", path)
    return SUFFIXES.get(m.group(0).lower()) if m else None
