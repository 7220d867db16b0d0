"""Values at and beyond the limits of the spec format: each becomes a positioned error naming its field,
never an internal error, and whatever `validate` accepts, `summary` summarises.

Limits (specc.spec.types): sizes and counts at most 2**31 - 1, seeds at most 2**63 - 1, a sample's values
and a model's parameters and multiply-adds at most 2**63 - 1; model names are safe file names; callback
files stay inside the run directory; paths that are not regular files (FIFOs, devices) are refused; a
`--set` override that is wrong is reported at its command-line argument.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from specc.cli import app
from specc.spec import load_spec_text
from specc.summary import summary_json, summary_text

REPO = Path(__file__).resolve().parent.parent
ERROR_AT = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): error: (?P<path>[^:]+): (?P<message>.*)$", re.M)
HUGE_HEX = "0x" + "f" * 400  # 482 decimal digits: beyond float range
MAX_SIZE, MAX_INT64 = 2**31 - 1, 2**63 - 1  # the documented limits (README, specc.spec.types)
ENV = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="100", NO_COLOR="1")


def run(*args, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=ENV, timeout=timeout)


def output(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def no_internal_error(proc) -> None:
    text = proc.stdout + proc.stderr
    assert "internal error" not in text and "Traceback" not in text and "bug in specc" not in text, output(proc)


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def spec_text(layers: str = "    - {type: Dense, units: 3}\n", input_shape: str = "[4]", extra: str = "") -> str:
    return f"specc: 1\nmodel:\n  input: {input_shape}\n  layers:\n{layers}{extra}"


GOOD = spec_text()
OUT_OF_RANGE = {  # file name: (spec text, the token the error points at, its spec path)
    "learning_rate.yaml": (spec_text(extra=f"compile:\n  optimizer: {{type: adam, learning_rate: {HUGE_HEX}}}\n"
                                           f"  loss: mse\n"), HUGE_HEX, "compile.optimizer.learning_rate"),
    "batch_size.yaml": (spec_text(extra=f"fit: {{batch_size: {HUGE_HEX}}}\n"), HUGE_HEX, "fit.batch_size"),
    "input.yaml": (spec_text(input_shape=f"[{HUGE_HEX}]"), "[", "model.input.shape"),
    "units.yaml": (spec_text(layers=f"    - {{type: Dense, units: {MAX_SIZE + 1}}}\n"), str(MAX_SIZE + 1),
                   "model.layers[0].units"),
}


@pytest.fixture(scope="module")
def out_of_range(tmp_path_factory):
    """The out-of-range specs and a valid one in one folder, validated in one call (text and JSON)."""
    root = tmp_path_factory.mktemp("bounds")
    for name, (text, _, _) in OUT_OF_RANGE.items():
        (root / name).write_text(text)
    (root / "good.yaml").write_text(GOOD)
    files = [*OUT_OF_RANGE, "good.yaml"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        text_run = pool.submit(run, "validate", *files, cwd=root)
        json_run = pool.submit(run, "validate", "--format", "json", *files, cwd=root)
        return root, text_run.result(), json_run.result()


def test_validate_reports_each_out_of_range_value_at_its_field_and_checks_every_file(out_of_range):
    root, proc, _ = out_of_range
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    found = {m["file"]: m for m in ERROR_AT.finditer(proc.stdout)}
    assert set(found) == set(OUT_OF_RANGE), output(proc)
    for name, (text, token, path) in OUT_OF_RANGE.items():
        m = found[name]
        assert int(m["line"]) == line_of(text, token) and m["path"] == path, output(proc)
        assert "must be" in m["message"] and len(m["message"]) < 200, output(proc)
    assert f"{len(OUT_OF_RANGE)} errors in {len(OUT_OF_RANGE)} of {len(OUT_OF_RANGE) + 1} files" in proc.stdout


def test_validate_json_lists_every_file_error(out_of_range):
    _, _, proc = out_of_range
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    errors = json.loads(proc.stdout)
    assert sorted(e["file"] for e in errors) == sorted(OUT_OF_RANGE)
    assert all(e["line"] >= 1 and e["path"] for e in errors)


@pytest.mark.parametrize("name", ["batch_size.yaml", "input.yaml"])
def test_summary_refuses_what_validate_refuses(out_of_range, name):
    root, _, _ = out_of_range
    proc = run("summary", name, cwd=root)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    m = ERROR_AT.search(proc.stdout)
    assert m and m["file"] == name and m["path"] == OUT_OF_RANGE[name][2], output(proc)


def test_integer_beyond_pythons_digit_limit_is_a_positioned_error(tmp_path):
    text = spec_text(extra="fit: {epochs: 1" + "0" * 5000 + "}\n")
    (tmp_path / "digits.yaml").write_text(text)
    (tmp_path / "good.yaml").write_text(GOOD)
    proc = run("validate", "digits.yaml", "good.yaml", cwd=tmp_path)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    m = ERROR_AT.search(proc.stdout)
    assert m and m["file"] == "digits.yaml" and int(m["line"]) == line_of(text, "epochs") and m["path"] == "fit.epochs"
    assert "5,001 digits" in m["message"] and len(proc.stdout) < 1000, output(proc)
    assert "1 error in 1 of 2 files" in proc.stdout


def test_summary_at_the_largest_valid_sizes(tmp_path):
    text = spec_text(layers=f"    - {{type: Dense, units: {MAX_SIZE}}}\n", input_shape=f"[{MAX_SIZE}]",
                     extra=f"seed: {MAX_INT64}\nfit: {{batch_size: {MAX_SIZE}, epochs: {MAX_SIZE}}}\n")
    (tmp_path / "max.yaml").write_text(text)
    proc = run("summary", "max.yaml", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    params = MAX_SIZE * MAX_SIZE + MAX_SIZE
    assert f"Total params: {params:,}" in proc.stdout, output(proc)


# --- every large value, in process ---------------------------------------------------------------------

M = MAX_SIZE
# layer type -> (input shape, arguments): a valid layer to push one size at a time
LAYERS = {
    "Dense": ([4], {"units": 3}), "Conv1D": ([8, 3], {"filters": 2, "kernel_size": 3}),
    "Conv2D": ([8, 8, 3], {"filters": 2, "kernel_size": 3}),
    "Conv2DTranspose": ([8, 8, 3], {"filters": 2, "kernel_size": 3}),
    "DepthwiseConv2D": ([8, 8, 3], {"kernel_size": 3}),
    "SeparableConv2D": ([8, 8, 3], {"filters": 2, "kernel_size": 3}),
    "Embedding": ([5], {"input_dim": 10, "output_dim": 4}), "Dropout": ([4], {"rate": 0.5}),
    "BatchNormalization": ([4], {}), "LayerNormalization": ([4], {}),
    "MaxPooling1D": ([8, 3], {}), "MaxPooling2D": ([8, 8, 3], {}),
    "AveragePooling1D": ([8, 3], {"pool_size": 2}), "AveragePooling2D": ([8, 8, 3], {"pool_size": 2}),
    "GlobalAveragePooling2D": ([8, 8, 3], {}),
    "SimpleRNN": ([5, 3], {"units": 2}), "LSTM": ([5, 3], {"units": 2}), "GRU": ([5, 3], {"units": 2}),
    "Flatten": ([2, 3], {}), "Reshape": ([2, 3], {"target_shape": [6]}), "Permute": ([2, 3], {"dims": [2, 1]}),
    "RepeatVector": ([4], {"n": 2}), "ZeroPadding1D": ([8, 3], {}), "ZeroPadding2D": ([8, 8, 3], {}),
    "Cropping1D": ([8, 3], {}), "Cropping2D": ([8, 8, 3], {}), "UpSampling1D": ([8, 3], {"size": 2}),
    "UpSampling2D": ([8, 8, 3], {"size": 2}),
}
SIZE_ARGS = ("units", "filters", "kernel_size", "strides", "dilation_rate", "depth_multiplier", "input_dim",
             "output_dim", "n", "size", "pool_size", "padding", "cropping")
LARGE = (M, M + 1, 2**40, 2**1100)


def large_variants():
    from specc.layers import REGISTRY

    for layer_type, (shape, args) in LAYERS.items():
        shapes = [shape, [M] * len(shape)] + [[v if j == i else d for j, d in enumerate(shape)]
                                             for i in range(len(shape)) for v in LARGE]
        for s in shapes:
            yield layer_type, s, args
        for key in SIZE_ARGS:
            if key in REGISTRY[layer_type].model_fields:
                for value in LARGE:
                    yield layer_type, shape, {**args, key: value}
                    yield layer_type, [M] * len(shape), {**args, key: value}


def test_summary_never_fails_on_a_spec_validate_accepts():
    """Every size argument of every layer family, and every input size, at and beyond the limit, under a
    Dense head as wide as allowed: either positioned errors, or a summary (text and JSON) without error."""
    checked = accepted = 0
    for layer_type, shape, args in large_variants():
        head = [] if layer_type in ("Dense", "Dropout", "BatchNormalization", "LayerNormalization") else \
            [{"type": "Flatten"}] if layer_type not in ("Flatten", "GlobalAveragePooling2D", "SimpleRNN", "LSTM",
                                                        "GRU") else []
        for batch in (M, 2**1100):
            spec = {"specc": 1, "model": {"input": shape, "layers": [{"type": layer_type, **args}, *head,
                                                                    {"type": "Dense", "units": M}]},
                    "fit": {"batch_size": batch}}
            text = yaml.safe_dump(spec)
            parsed, errors = load_spec_text(text, "s.yaml")
            checked += 1
            if errors:
                for e in errors:
                    assert e.line >= 1 and e.path and len(e.message) < 500, e.text()
                continue
            accepted += 1
            summary_text(parsed.graph, True, True, parsed.fit.batch_size)
            json.dumps(summary_json(parsed.graph, parsed.fit.batch_size))
    assert accepted > 50 and checked > accepted  # both kinds happened


def test_int64_products_are_positioned_errors(errors_of, at):
    text = spec_text(layers=f"    - {{type: Flatten}}\n    - {{type: Dense, units: {M}}}\n",
                     input_shape=f"[{M}, 3]")
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].path == "model.layers[1]", [e.text() for e in errors]
    assert (errors[0].line, errors[0].column) == at(text, "{type: Dense")
    assert "parameters" in errors[0].message and "2**63 - 1" in errors[0].message
    text = spec_text(input_shape=f"[{M}, {M}, {M}]")
    e = errors_of(text)[0]
    assert e.path == "model.input.shape" and "values per sample" in e.message


def test_huge_values_in_keys_and_names_do_not_break_messages(errors_of):
    huge = "0x" + "f" * 5000  # Python cannot even print this integer in decimal
    cases = [f"specc: {huge}\n", f"specc: 1\n{huge}: 1\n", f"specc: 1\nseed: {huge}\n",
             spec_text(layers=f"    - {{type: {huge}}}\n"), spec_text(extra=f"fit: {{class_weight: {{{huge}: 1}}}}\n"),
             spec_text(extra=f"fit: {{verbose: {huge}}}\n"),
             spec_text(layers=f"    - {{type: Reshape, target_shape: [{huge}]}}\n")]
    for text in cases:
        errors = errors_of(text)
        assert errors and all(len(e.text()) < 400 for e in errors), [e.text() for e in errors]


def test_a_bug_in_one_file_does_not_stop_the_others(tmp_path, monkeypatch):
    """`validate` reports every file even when checking one of them fails inside specc."""
    import specc.spec.validate as validate_module

    real = validate_module.validate_data

    def failing_for_bad(data, positions, file):
        if file.endswith("bad.yaml"):
            raise ValueError("boom")
        return real(data, positions, file)

    monkeypatch.setattr(validate_module, "validate_data", failing_for_bad)
    (tmp_path / "bad.yaml").write_text(GOOD)
    (tmp_path / "wrong.yaml").write_text(spec_text(layers="    - {type: Dense, units: -3}\n"))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "bad.yaml"), str(tmp_path / "wrong.yaml")])
    assert result.exit_code == 1, result.output
    assert "bad.yaml:1:1: error: specc could not check this file (a bug in specc: ValueError" in result.output
    assert "wrong.yaml:5:" in result.output and "2 errors in 2 of 2 files" in result.output


# --- paths that are not regular files ------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "f.yaml")
    (tmp_path / "good.yaml").write_text(GOOD)
    proc = run("validate", "f.yaml", "good.yaml", cwd=tmp_path, timeout=30)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    assert "f.yaml:1:1: error: not a regular file but a FIFO (named pipe)" in proc.stdout, output(proc)
    assert "1 error in 1 of 2 files" in proc.stdout
    proc = run("summary", "f.yaml", cwd=tmp_path, timeout=30)
    assert proc.returncode == 1 and "FIFO" in proc.stdout, output(proc)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_is_refused():
    proc = run("validate", "/dev/zero", timeout=30)
    assert proc.returncode == 1, output(proc)
    assert "/dev/zero:1:1: error: not a regular file but a device" in proc.stdout, output(proc)


def test_directory_walking_still_works(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yml").write_text(GOOD)
    proc = run("validate", tmp_path)
    assert proc.returncode == 0 and "2 specs valid" in proc.stdout, output(proc)


# --- model names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped_run", "/tmp/absolute", ".hidden", "a/b", "a\\\\b", "x" * 101,
                                  "with space", "-dash", ".."])
def test_unsafe_model_name_is_a_positioned_error(errors_of, at, name):
    text = f"specc: 1\nname: \"{name}\"\nmodel:\n  input: [4]\n  layers:\n    - {{type: Dense, units: 3}}\n"
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].path == "name", [e.text() for e in errors]
    assert (errors[0].line, errors[0].column) == at(text, '"' + name[:5])
    assert "file name" in errors[0].message


@pytest.mark.parametrize("name", ["digits_mlp", "run-2.v1", "A1", "x" * 100])
def test_safe_model_names_are_accepted(errors_of, name):
    assert not errors_of(f"specc: 1\nname: {name}\nmodel:\n  input: [4]\n  layers:\n    - {{type: Dense, units: 3}}\n")


def test_default_name_from_an_odd_file_name_is_safe():
    spec, errors = load_spec_text(GOOD, "some dir/.my model (2).yaml")
    assert not errors and spec.name == "my_model__2_"


def test_train_never_writes_outside_out(tmp_path):
    """`name: ../../escaped_run` would put the run two folders above --out; it is refused before training."""
    out = tmp_path / "a" / "b" / "out"
    text = ("specc: 1\nname: ../../escaped_run\nmodel:\n  input: [4]\n  layers:\n"
            "    - {type: Dense, units: 3, activation: softmax}\n"
            "data: {source: iris}\ncompile: {loss: sparse_categorical_crossentropy}\n")
    (tmp_path / "escape.yaml").write_text(text)
    proc = run("train", "escape.yaml", "--out", out, "-q", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, output(proc)
    no_internal_error(proc)
    m = ERROR_AT.search(proc.stderr)
    assert m and m["path"] == "name" and int(m["line"]) == 2, output(proc)
    assert not list(tmp_path.rglob("escaped_run")), list(tmp_path.rglob("*"))


def test_train_refuses_an_unsafe_name_given_with_set(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    text = ("specc: 1\nmodel:\n  input: [4]\n  layers:\n    - {type: Dense, units: 3, activation: softmax}\n"
            "data: {source: iris}\ncompile: {loss: sparse_categorical_crossentropy}\n")
    (tmp_path / "plain.yaml").write_text(text)
    proc = run("train", "plain.yaml", "--set", "name=../../escaped_run", "--out", out, "-q", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "name: must be a file name" in proc.stderr, output(proc)
    no_internal_error(proc)
    assert not list(tmp_path.rglob("escaped_run")), list(tmp_path.rglob("*"))


# --- callback files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("callback, value", [
    ("ModelCheckpoint", "../../escaped.npz"), ("ModelCheckpoint", "/tmp/x.npz"),
    ("ModelCheckpoint", "x_{epoch.__class__}.npz"), ("ModelCheckpoint", "x_{loss:d}.npz"),
    ("ModelCheckpoint", "x_{epoch:>999999999}.npz"), ("ModelCheckpoint", "x_{epoch.npz"),
    ("CSVLogger", "../log.csv"), ("CSVLogger", ".hidden.csv"),
])
def test_callback_files_stay_inside_the_run_directory(errors_of, at, callback, value):
    key = "filepath" if callback == "ModelCheckpoint" else "filename"
    text = spec_text(extra=f"fit:\n  callbacks:\n    - {{type: {callback}, {key}: '{value}'}}\n")
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].path == f"fit.callbacks[0].{key}", [e.text() for e in errors]
    assert (errors[0].line, errors[0].column) == at(text, f"'{value}'")


@pytest.mark.parametrize("value", ["checkpoints/epoch_{epoch:03d}.npz", "best-{epoch}-{val_loss:.2f}.npz",
                                   "ckpt.npz"])
def test_callback_file_patterns_keras_users_write_are_accepted(errors_of, value):
    assert not errors_of(spec_text(extra=f"fit:\n  callbacks:\n    - {{type: ModelCheckpoint, filepath: "
                                         f"'{value}'}}\n"))


# --- --set overrides -----------------------------------------------------------------------------------

SET_SPEC = """specc: 1
name: tiny
model:
  input: [4]
  layers:
    - {type: Dense, units: 8, activation: relu}
    - {type: Dense, units: 3, activation: softmax}
compile: {optimizer: adam, loss: sparse_categorical_crossentropy}
fit: {epochs: 2, class_weight: {0: 1.0}}
"""


def overridden(*items):
    from specc.spec.overrides import apply_overrides

    return apply_overrides(SET_SPEC, list(items), "tiny.yaml")


@pytest.mark.parametrize("item, path, words", [
    ("fit.epochs=abc", "fit.epochs", ["must be a positive integer", "'abc'"]),
    (f"fit.batch_size={HUGE_HEX}", "fit.batch_size", ["at most 2,147,483,647"]),
    ("fit.epochz=3", "fit.epochz", ["unknown key", "did you mean epochs"]),
    ("name=../../x", "name", ["file name"]),
    ("model.layers[1].units=-1", "model.layers[1].units", ["positive integer"]),
])
def test_bad_override_value_points_at_its_argument(item, path, words):
    spec, errors = overridden(item)
    assert spec is None and len(errors) == 1, [e.text() for e in errors]
    e = errors[0]
    assert (e.line, e.column, e.path) == (0, 0, path), e.text()
    if len(item) <= 60:
        assert e.file == f"--set {item}" and e.text().startswith(f"--set {item}: error: {path}: "), e.text()
    else:  # a long argument is cut short in the message
        assert e.file.startswith(f"--set {item[:40]}") and len(e.text()) < 400, e.text()
    for w in words:
        assert w in e.message, e.text()


@pytest.mark.parametrize("item, words", [
    ("fit..epochs=1", ["empty segment", "fit..epochs"]),
    (".fit.epochs=1", ["empty segment"]),
    ("fit.epochs.=1", ["empty segment"]),
    ("=3", ["key is empty"]),
    ("fit.epochs", ["KEY.PATH=VALUE"]),
    ("model.layers[7].units=5", ["model.layers has 2 items", "no item 7"]),
    ("model.layers.units=5", ["model.layers is a list", "[0]"]),
    ("fit.epochs.x=1", ["fit.epochs is 2", "no key 'x'"]),
    ("fit[0]=1", ["fit is a mapping"]),
])
def test_malformed_override_is_an_error_of_its_argument(item, words):
    spec, errors = overridden(item)
    assert spec is None and len(errors) == 1, [e.text() for e in errors]
    assert errors[0].file == f"--set {item}" and errors[0].line == 0, errors[0].text()
    for w in words:
        assert w in errors[0].message, errors[0].text()


def test_override_list_items_as_users_write_them():
    spec, errors = overridden("model.layers[0].units=5", "model.layers.1.activation=sigmoid",
                              "model.layers[-1].units=4", "fit.class_weight.0=2.5", "fit.class_weight.2=0.5",
                              "model.input=[4]", "seed=7")
    assert not errors, [e.text() for e in errors]
    assert [layer.units for layer in spec.layers] == [5, 4] and spec.layers[1].activation == "sigmoid"
    assert spec.fit.class_weight == {0: 2.5, 2: 0.5} and spec.seed == 7


def test_override_creates_a_missing_section():
    spec, errors = overridden("data.source=iris", "data.test_split=0.3")
    assert not errors and spec.data.source == "iris" and spec.data.test_split == 0.3


def test_later_override_wins_and_owns_the_error():
    spec, errors = overridden("fit.epochs=abc", "fit={epochs: 0}")
    assert [e.file for e in errors] == ["--set fit={epochs: 0}"], [e.text() for e in errors]


def test_error_under_an_untouched_key_keeps_the_spec_position():
    text = SET_SPEC.replace("units: 3", "units: -3")
    from specc.spec.overrides import apply_overrides

    _, errors = apply_overrides(text, ["fit.epochs=3"], "tiny.yaml")
    assert [(e.file, e.line) for e in errors] == [("tiny.yaml", line_of(text, "units: -3"))]


def test_train_applies_overrides_with_the_spec_module():
    from specc.spec.overrides import apply_overrides
    from specc.train import session

    assert session.apply_overrides is apply_overrides


@pytest.mark.parametrize("item, needle", [
    ("fit.epochs=abc", "--set fit.epochs=abc: error: fit.epochs: must be a positive integer, got 'abc'"),
    ("fit..epochs=1", "--set fit..epochs=1: error: an empty segment"),
])
def test_train_reports_a_bad_override_at_its_argument(tmp_path, item, needle):
    (tmp_path / "tiny.yaml").write_text(SET_SPEC)
    proc = run("train", "tiny.yaml", "--set", item, "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 1 and needle in proc.stderr, output(proc)
    no_internal_error(proc)
    assert not (tmp_path / "out").exists()


def test_train_accepts_list_indexing_in_overrides(tmp_path):
    (tmp_path / "tiny.yaml").write_text(SET_SPEC + "data: {source: iris}\n")
    proc = run("train", "tiny.yaml", "--set", "model.layers[0].units=5", "--set", "fit.epochs=1", "-q",
               "--threads", "1", "--out", tmp_path / "out", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, output(proc)
    resolved = yaml.safe_load(next((tmp_path / "out").rglob("resolved.yaml")).read_text())
    assert resolved["model"]["layers"][0]["units"] == 5
