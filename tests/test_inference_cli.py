"""`specc time SPEC --inference`: the step-by-step profile of one inference batch (what predict runs),
through the real CLI: every layer in exactly one row, a convolution's row covering its folded
BatchNormalization and fused ReLU / residual Add, the figures consistent; a model without convolutions is
profiled by the engine's own steps."""

from __future__ import annotations

import json
import math
import textwrap

from specc.spec import load_spec

from .test_time import SPECS, leaves, run

RESIDUAL = textwrap.dedent("""\
    specc: 1
    name: tiny_resnet
    seed: 0
    model:
      inputs: {image: [8, 8, 3]}
      layers:
        - {type: Conv2D, filters: 8, kernel_size: 3, padding: same, use_bias: false, name: c0, inputs: image}
        - {type: BatchNormalization, name: bn0, inputs: c0}
        - {type: Activation, activation: relu, name: r0, inputs: bn0}
        - {type: Conv2D, filters: 8, kernel_size: 3, padding: same, use_bias: false, name: c1, inputs: r0}
        - {type: BatchNormalization, name: bn1, inputs: c1}
        - {type: Add, name: add, inputs: [bn1, r0]}
        - {type: Activation, activation: relu, name: r1, inputs: add}
        - {type: GlobalAveragePooling2D, name: gap, inputs: r1}
        - {type: Dense, units: 3, activation: softmax, name: head, inputs: gap}
      outputs: [head]
    """)


def test_inference_profile_json(tmp_path):
    spec = tmp_path / "tiny_resnet.yaml"
    spec.write_text(RESIDUAL)
    proc = run("time", spec, "--batch", "4", "--iters", "2", "--format", "json", "--inference", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["plan"] is True and report["batch_size"] == 4 and report["inputs"] == {"image": [4, 8, 8, 3]}
    assert [row["layers"] for row in report["steps"]] == [["c0", "bn0", "r0"], ["c1", "bn1", "add", "r1"], ["gap"],
                                                          ["head"]]
    assert sorted(n for row in report["steps"] for n in row["layers"]) == sorted(leaves(spec))
    loaded, errors = load_spec(str(spec))
    assert not errors
    # 2 x multiply-adds: a 3x3 convolution of 8 channels over 8 x 8 positions, 3 then 8 channels in
    assert report["steps"][0]["flops"] == 2 * 4 * 64 * 9 * 3 * 8
    assert report["steps"][1]["flops"] == 2 * 4 * 64 * 9 * 8 * 8
    for row in report["steps"]:
        assert row["ms"] > 0 and 0 < row["share"] < 1
        if row["flops"]:
            assert math.isclose(row["gflops"], row["flops"] / row["ms"] / 1e6)
    assert math.isclose(sum(r["ms"] for r in report["steps"]), report["total_ms"])
    assert report["batch_ms"] > 0 and report["forward_ms"] > 0


def test_inference_profile_text_and_models_without_a_plan():
    proc = run("time", SPECS / "digits_mlp.yaml", "--batch", "4", "--iters", "2", "--inference", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "one inference batch of 4" in proc.stdout and "Engine.forward(training=False)" in proc.stdout
    for name in leaves(SPECS / "digits_mlp.yaml"):
        assert name in proc.stdout
