"""`specc draw`: every spec in every format through the CLI, the drawing's content (every layer, every edge,
shapes, clusters), a layout without overlaps on a DenseNet-sized graph, no Numba import, usage errors, and
the SVG rendered by a real browser (headless Chromium, skipped where it is not installed)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from specc.draw import drawing, layout, mermaid
from specc.spec import load_spec, load_spec_text

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "specs").rglob("*.yaml"))
SVG_NS = "{http://www.w3.org/2000/svg}"


def specc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specc.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def svg_texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG_NS}text")]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", head[16:24])


def graph_of(path: Path):
    spec, errors = load_spec(str(path))
    assert not errors, errors
    return spec.graph


def all_names(graph, expand: bool) -> list[str]:
    names = [n.name for n in graph.inputs]

    def walk(node):
        if node.children and expand:
            for c in node.children:
                walk(c)
        else:
            names.append(node.name)

    for n in graph.nodes:
        walk(n)
    return names


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_spec_draws_in_every_format(spec, tmp_path):
    graph = graph_of(spec)
    names = all_names(graph, expand=True)
    for fmt in ("svg", "mermaid", "dot"):
        r = specc("draw", str(spec), "--format", fmt, "--expand-nested")
        assert r.returncode == 0, r.stderr
        for name in names:
            assert name in r.stdout, (fmt, name)
    svg = specc("draw", str(spec), "--expand-nested").stdout
    texts = svg_texts(svg)  # well-formed XML, every layer's name as text
    assert set(names) <= set(texts)
    out = tmp_path / "m.png"
    r = specc("draw", str(spec), "-o", str(out))
    assert r.returncode == 0, r.stderr
    w, h = png_size(out)
    assert w > 100 and h > 100


def test_functional_edges_and_shapes_in_mermaid():
    text = specc("draw", str(REPO / "specs" / "functional_two_inputs.yaml"), "-f", "mermaid").stdout
    ids = dict(re.findall(r"^\s+(n\d+)\S*?<b>(\w+)</b>", text, re.M))
    edges = {(ids[a], ids[b]) for a, b in re.findall(r"^\s+(n\d+) --> (n\d+)$", text, re.M)}
    graph = graph_of(REPO / "specs" / "functional_two_inputs.yaml")
    expected = {(ref, n.name) for n in graph.nodes for ref in n.inbound}
    assert edges == expected
    assert text.startswith("flowchart TB\n")
    assert "(None, 16, 16, 8)" in text and "(None, 3)" in text


def test_nested_block_is_one_box_or_a_cluster():
    spec = REPO / "specs" / "transfer_frozen_base.yaml"
    folded = specc("draw", str(spec), "-f", "dot").stdout
    assert "subgraph cluster_" not in folded and 'label="base\\nSequential' in folded
    expanded = specc("draw", str(spec), "-f", "dot", "--expand-nested", "--show-params", "--show-trainable").stdout
    assert 'label="base (Sequential)"' in expanded
    assert "params: 4,160" in expanded and "frozen" in expanded  # the base is trainable: false
    # The cluster's first layer takes the model input; its last feeds the dropout.
    d = drawing(graph_of(spec), expand_nested=True)
    by_name = {b.name: b.id for b in d.boxes}
    assert (by_name["input_layer"], by_name["dense"]) in d.edges
    assert (by_name["dense_1"], by_name["dropout"]) in d.edges


def dense_net_text(blocks: int, layers_per_block: int) -> str:
    """A DenseNet-shaped Functional spec, as Keras's DenseNet121 is wired: each layer of a block
    concatenates the block's running features with its own output."""
    lines = ["specc: 1", "name: densenet_like", "model:", "  inputs: {image: [32, 32, 3]}", "  layers:",
             "    - {type: Conv2D, name: stem, filters: 8, kernel_size: 3, padding: same, inputs: image}"]
    prev = "stem"
    for b in range(blocks):
        for k in range(layers_per_block):
            lines.append(f"    - {{type: BatchNormalization, name: bn_{b}_{k}, inputs: {prev}}}")
            lines.append(f"    - {{type: Conv2D, name: conv_{b}_{k}, filters: 4, kernel_size: 3, padding: same, "
                         f"activation: relu, inputs: bn_{b}_{k}}}")
            lines.append(f"    - {{type: Concatenate, name: cat_{b}_{k}, inputs: [{prev}, conv_{b}_{k}]}}")
            prev = f"cat_{b}_{k}"
    lines.append(f"    - {{type: GlobalAveragePooling2D, name: pool, inputs: {prev}}}")
    lines.append("    - {type: Dense, name: label, units: 10, inputs: pool}")
    lines.append("  outputs: label")
    return "\n".join(lines) + "\n"


def test_large_graph_layout_has_no_overlaps():
    text = dense_net_text(blocks=4, layers_per_block=36)  # ~430 layers, as DenseNet121
    spec, errors = load_spec_text(text, "densenet_like.yaml")
    assert not errors, errors[:3]
    assert len(spec.graph.nodes) > 420
    d = drawing(spec.graph)
    lay = layout(d)
    boxes = sorted(d.boxes, key=lambda b: lay.y[b.id])
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if lay.y[b.id] - lay.h[b.id] / 2 >= lay.y[a.id] + lay.h[a.id] / 2:
                break  # sorted by y: nothing further down can overlap a
            apart_x = abs(lay.x[a.id] - lay.x[b.id]) >= (lay.w[a.id] + lay.w[b.id]) / 2
            assert apart_x, (a.name, b.name)
    # Every edge goes down the page (layered: a producer above its consumer).
    for a, b in d.edges:
        assert lay.y[a] < lay.y[b]
    for b in d.boxes:
        assert 0 <= lay.x[b.id] - lay.w[b.id] / 2 and lay.x[b.id] + lay.w[b.id] / 2 <= lay.width


def test_left_to_right_swaps_the_axes():
    d = drawing(graph_of(REPO / "specs" / "digits_mlp.yaml"))
    lay = layout(d, "LR")
    xs = [lay.x[b.id] for b in d.boxes]
    assert xs == sorted(xs) and len({round(lay.y[b.id]) for b in d.boxes}) == 1
    assert mermaid(d, "LR").startswith("flowchart LR")


def test_draw_does_not_import_numba(tmp_path):
    probe = ("import sys, runpy; sys.argv = ['specc', 'draw', %r, '-o', %r]\n"
             "try:\n    runpy.run_module('specc.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('NUMBA' if any(m.split('.')[0] == 'numba' for m in sys.modules) else 'CLEAN', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", probe % (str(REPO / "specs" / "digits_cnn.yaml"), str(tmp_path / "m.svg"))],
                       capture_output=True, text=True, timeout=120)
    assert r.stderr.strip().endswith("CLEAN"), r.stderr


def test_usage_errors(tmp_path):
    spec = str(REPO / "specs" / "digits_mlp.yaml")
    r = specc("draw", spec, "--format", "png")
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr
    r = specc("draw", spec, "--format", "gif")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = specc("draw", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = specc("draw", spec, "-o", str(tmp_path / "no" / "such" / "dir" / "m.svg"))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("specc: 1\nmodel:\n  input: [4]\n  layers:\n    - {type: Dense, units: -3}\n")
    r = specc("draw", str(bad))
    assert r.returncode == 1 and "bad.yaml:5:" in r.stdout + r.stderr


def test_format_from_the_suffix_and_atomic_replace(tmp_path):
    spec = str(REPO / "specs" / "iris_mlp.yaml")
    for suffix, marker in ((".mmd", "flowchart"), (".dot", "digraph"), (".svg", "<svg")):
        out = tmp_path / f"m{suffix}"
        out.write_text("old")
        assert specc("draw", spec, "-o", str(out)).returncode == 0
        assert out.read_text().lstrip().startswith(marker)
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
@pytest.mark.parametrize("name", ["functional_two_inputs", "transfer_frozen_base"])
def test_svg_renders_in_headless_chromium(name, tmp_path):
    svg = tmp_path / f"{name}.svg"
    r = specc("draw", str(REPO / "specs" / f"{name}.yaml"), "--expand-nested", "-o", str(svg))
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(svg.read_text())
    width, height = int(root.get("width")), int(root.get("height"))
    graph = graph_of(REPO / "specs" / f"{name}.yaml")
    assert set(all_names(graph, expand=True)) <= set(svg_texts(svg.read_text()))
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
             f"--screenshot={shot}", svg.as_uri()]
    subprocess.run([CHROMIUM, *flags], capture_output=True, timeout=120)
    assert shot.exists(), "Chromium wrote no screenshot"
    assert png_size(shot) == (width, height)
    # The page is not blank: the boxes' outlines and text are dark pixels (decoded with matplotlib).
    from matplotlib.image import imread

    pixels = imread(str(shot))
    dark = (pixels[..., :3].mean(axis=-1) < 0.5).mean()
    assert 0.005 < dark < 0.5, dark


def test_summary_json_and_draw_agree_on_layers():
    spec = str(REPO / "specs" / "two_outputs.yaml")
    layers = [row["name"] for row in json.loads(specc("summary", spec, "-f", "json").stdout)["layers"]]
    texts = set(svg_texts(specc("draw", spec).stdout))
    assert set(layers) <= texts


BLOCKS = """specc: 1
name: tiny_res
blocks:
  res:
    params: [filters]
    inputs: x
    layers:
      - {type: Conv2D, name: a, filters: "${filters}", kernel_size: 3, padding: same, activation: relu, inputs: x}
      - {type: Conv2D, name: b, filters: "${filters}", kernel_size: 3, padding: same, inputs: a}
      - {type: Add, name: add, inputs: [x, b]}
    outputs: add
model:
  input: [8, 8, 8]
  layers:
    - {repeat: 2, block: res, filters: 8}
    - {type: GlobalAveragePooling2D}
    - {type: Dense, units: 3}
"""


def test_block_instances_fold_into_one_box_or_frame_their_layers(tmp_path):
    spec_file = tmp_path / "blocks.yaml"
    spec_file.write_text(BLOCKS)
    folded = specc("draw", str(spec_file), "-f", "dot").stdout
    assert 'label="res\\nres\\n(None, 8, 8, 8)"' in folded and "res_1_add" not in folded
    assert folded.count(" -> ") == 4  # input -> res -> res_1 -> pooling -> dense
    spec, errors = load_spec(str(spec_file))
    assert not errors
    d = drawing(spec.graph, expand_nested=True, instances=spec.instances)
    labels = {c.label: c for c in d.clusters}
    assert set(labels) == {"res (res)", "res_1 (res)"}
    ids = {b.name: b for b in d.boxes}
    assert {ids[n].cluster for n in ("res_a", "res_b", "res_add")} == {labels["res (res)"].id}
    ids_by = {b.id: b.name for b in d.boxes}
    edges = {(ids_by[a], ids_by[b]) for a, b in d.edges}
    # The residual edge inside each instance is drawn, not a chain through the block.
    assert ("input_layer", "res_add") in edges and ("res_add", "res_1_add") in edges
    assert ("res_a", "res_b") in edges and ("res_b", "res_add") in edges
    svg = specc("draw", str(spec_file), "--expand-nested").stdout
    assert {"res_a", "res_1_add", "res (res)", "res_1 (res)"} <= set(svg_texts(svg))
