"""`specc train` with the layers added after v1, through the real CLI in a subprocess: the example spec
with attention, Bidirectional and TimeDistributed, and a variant whose attention takes a mask input, train
on synthetic data; the run's resolved.yaml loads back to the same model (wrapped layers and named
attention inputs survive the round trip)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import yaml

from specc.spec import load_spec
from specc.summary import summary_text

from .test_train_cli import ENV, REPO, output

SPEC = REPO / "specs" / "synthetic_attention.yaml"


def test_attention_spec_trains_and_its_resolved_spec_loads_back(tmp_path):
    masked = yaml.safe_load(SPEC.read_text())
    masked["name"] = "masked_attention"
    masked["model"]["inputs"]["pad"] = [12, 12]
    attention = next(layer for layer in masked["model"]["layers"] if layer["name"] == "attention")
    attention["inputs"] = {"query": "embed", "value": "embed", "attention_mask": "pad"}
    masked_path = tmp_path / "masked.yaml"
    masked_path.write_text(yaml.safe_dump(masked, sort_keys=False))
    procs = [subprocess.Popen([sys.executable, "-m", "specc.cli", "train", str(path), "--out", str(tmp_path / "out"),
                               "--set", "fit.epochs=2", "--set", "data.samples=96", "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)
             for path in (SPEC, masked_path)]
    for proc, name in zip(procs, ("synthetic_attention", "masked_attention")):
        out, err = proc.communicate(timeout=600)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert proc.returncode == 0, output(done)
        (run,) = (tmp_path / "out" / name).iterdir()
        history = json.loads((run / "history.json").read_text())
        losses = history["loss"] if "loss" in history else [e["loss"] for e in history]
        assert len(losses) == 2 and all(np.isfinite(losses))
        resolved, errors = load_spec(run / "resolved.yaml")
        original, _ = load_spec(SPEC if name == "synthetic_attention" else masked_path)
        assert not errors, [e.text() for e in errors]
        assert summary_text(resolved.graph).replace(resolved.name, "") == summary_text(original.graph).replace(
            original.name, "")
        if name == "masked_attention":
            node = resolved.graph.node("attention")
            assert node.inbound == ["embed", "embed", "pad"]
            assert node.layer.input_roles == ("query", "value", "attention_mask")
