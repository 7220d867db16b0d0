"""The `specc` command line: exit codes (0 valid, 1 invalid, 2 usage), output formats, path expansion,
summaries, the schema, no tracebacks, no Numba import for validate/summary, and speed.

Most tests run the real CLI in a subprocess (`python -m specc.cli`), as CI scripts do; a few use typer's
CliRunner where only the output of one command matters.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specc.cli import app

REPO = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO / "specs"
CNN = str(SPECS_DIR / "digits_cnn.yaml")
ERROR_LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): error: (?P<rest>.*)$")

BAD = """specc: 1
model:
  input: [8]
  layers:
    - {type: Dense, units: -3}
"""
BAD_TWO = """specc: 1
model:
  input: [8]
  layers:
    - {type: Dnese, units: 4}
    - {type: Dense, units: 4, activation: rleu}
"""
GOOD = """specc: 1
model:
  input: [8]
  layers:
    - {type: Dense, units: 4}
"""


def run(*args, cwd=None, timeout=60):
    """Run `python -m specc.cli ARGS` and return the CompletedProcess (text mode)."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="100", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "specc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)


def no_traceback(proc):
    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr, proc.stdout + proc.stderr


# --- exit codes ---------------------------------------------------------------------------------------


def test_valid_spec_exits_0(write_spec):
    proc = run("validate", write_spec(GOOD))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "1 spec valid"
    no_traceback(proc)


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS_DIR.glob("*.yaml")))
def test_bundled_specs_are_valid(spec):
    result = CliRunner().invoke(app, ["validate", str(SPECS_DIR / spec)])
    assert result.exit_code == 0, result.output


def test_invalid_spec_exits_1_and_prints_the_error(write_spec):
    path = write_spec(BAD)
    proc = run("validate", path)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines == [f"{path}:5:28: error: model.layers[0].units: must be a positive integer, got -3",
                     "1 error in 1 of 1 file"]
    no_traceback(proc)


def test_nonexistent_path_exits_2(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = run("validate", missing)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr
    no_traceback(proc)


def test_nonexistent_path_among_valid_ones_exits_2(write_spec, tmp_path):
    proc = run("validate", write_spec(GOOD), tmp_path / "nope.yaml")
    assert proc.returncode == 2
    no_traceback(proc)


def test_bad_format_exits_2(write_spec):
    proc = run("validate", "--format", "xml", write_spec(GOOD))
    assert proc.returncode == 2
    assert "xml" in proc.stderr
    no_traceback(proc)


def test_validate_without_paths_exits_2():
    proc = run("validate")
    assert proc.returncode == 2
    no_traceback(proc)


def test_no_command_exits_2():
    proc = run()
    assert proc.returncode == 2
    assert "validate" in proc.stdout + proc.stderr  # the help lists the commands
    no_traceback(proc)


def test_unknown_command_exits_2():
    proc = run("compile-it", CNN)
    assert proc.returncode == 2
    no_traceback(proc)


def test_empty_directory_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run("validate", tmp_path / "empty")
    assert proc.returncode == 2
    assert "no spec files" in proc.stdout + proc.stderr


def test_glob_matching_nothing_exits_2(tmp_path):
    proc = run("validate", tmp_path / "*.yaml")
    assert proc.returncode == 2
    assert "no files match" in proc.stderr
    no_traceback(proc)


# --- output formats -----------------------------------------------------------------------------------


def test_json_format_has_exactly_the_error_fields(write_spec):
    path = write_spec(BAD_TWO)
    proc = run("validate", "--format", "json", path)
    assert proc.returncode == 1
    errors = json.loads(proc.stdout)  # stdout is pure JSON; the total goes to stderr
    assert isinstance(errors, list) and len(errors) == 2
    for e in errors:
        assert set(e) == {"file", "line", "column", "path", "message"}
        assert e["file"] == str(path)
        assert isinstance(e["line"], int) and isinstance(e["column"], int)
    assert {(e["line"], e["path"]) for e in errors} == {(5, "model.layers[0].type"), (6, "model.layers[1].activation")}
    assert "2 errors in 1 of 1 file" in proc.stderr


def test_json_format_of_valid_spec_is_an_empty_list(write_spec):
    proc = run("validate", "-f", "json", write_spec(GOOD))
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == []


def test_github_format(write_spec):
    path = write_spec(BAD_TWO)
    proc = run("validate", "--format", "github", path)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    annotations, total = lines[:-1], lines[-1]
    assert len(annotations) == 2
    for line in annotations:
        assert line.startswith(f"::error file={path},line=")
        assert re.match(r"^::error file=[^,]+,line=\d+,col=\d+::\S", line), line
    assert annotations[0].startswith(f"::error file={path},line=5,col=")
    assert total == "2 errors in 1 of 1 file"


def test_text_format_and_one_line_total_for_several_files(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD_TWO)
    proc = run("validate", tmp_path / "good.yaml", tmp_path / "bad.yaml")
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines[:2]:
        m = ERROR_LINE.match(line)
        assert m and m["file"] == str(tmp_path / "bad.yaml"), line
    assert lines[-1] == "2 errors in 1 of 2 files"


def test_total_for_several_valid_files(tmp_path):
    for i in range(3):
        (tmp_path / f"s{i}.yaml").write_text(GOOD)
    proc = run("validate", tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == "3 specs valid"


# --- path expansion -----------------------------------------------------------------------------------


def test_directory_is_searched_recursively_for_yaml_and_yml(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "b.yml").write_text(BAD)
    (tmp_path / "notes.txt").write_text("not a spec: [")  # ignored: wrong suffix
    (tmp_path / "data.json").write_text("{}")
    proc = run("validate", tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(str(tmp_path / "deep" / "er" / "b.yml") + ":5:28: error:")
    assert lines[-1] == "1 error in 1 of 2 files"


def test_glob_pattern(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "one.yml").write_text(BAD)
    (tmp_path / "x" / "two.yaml").write_text(BAD)
    proc = run("validate", str(tmp_path / "**" / "*.yml"))
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "1 error in 1 of 1 file"
    assert lines[0].startswith(str(tmp_path / "x" / "one.yml"))


def test_same_file_twice_is_validated_once(write_spec):
    path = write_spec(BAD)
    proc = run("validate", path, path)
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "1 error in 1 of 1 file"


# --- summary ------------------------------------------------------------------------------------------


def test_summary_text():
    proc = run("summary", CNN)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'Model: "digits_cnn"' in out
    assert "(None, 8, 8, 16)" in out
    assert "Total params: 9,930" in out
    assert "Trainable params: 9,930" in out
    assert "Non-trainable params: 0" in out
    no_traceback(proc)


def test_summary_json():
    proc = run("summary", "--format", "json", CNN)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"name", "layers", "total_params", "trainable_params", "non_trainable_params"} <= set(data)
    assert data["name"] == "digits_cnn"
    assert (data["total_params"], data["trainable_params"], data["non_trainable_params"]) == (9930, 9930, 0)
    assert [layer["type"] for layer in data["layers"]] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dropout", "Dense"]
    for layer in data["layers"]:
        assert {"name", "type", "output_shape", "params", "trainable_params"} <= set(layer)
        assert layer["output_shape"][0] is None
    assert data["layers"][0]["output_shape"] == [None, 8, 8, 16]
    assert data["layers"][-1]["name"] == "head"
    assert sum(layer["params"] for layer in data["layers"]) == 9930


def test_summary_of_invalid_spec_prints_the_validate_errors(write_spec):
    path = write_spec(BAD_TWO)
    summary = run("summary", path)
    validate = run("validate", path)
    assert summary.returncode == 1
    summary_errors = [line for line in summary.stdout.splitlines() if ERROR_LINE.match(line)]
    validate_errors = [line for line in validate.stdout.splitlines() if ERROR_LINE.match(line)]
    assert len(validate_errors) == 2
    assert summary_errors == validate_errors
    assert "Total params" not in summary.stdout
    no_traceback(summary)


def test_summary_of_missing_file_exits_2(tmp_path):
    proc = run("summary", tmp_path / "nope.yaml")
    assert proc.returncode == 2
    no_traceback(proc)


def test_summary_of_directory_exits_2(tmp_path):
    proc = run("summary", tmp_path)
    assert proc.returncode == 2
    no_traceback(proc)


# --- schema -------------------------------------------------------------------------------------------


def test_schema_is_json_with_layer_defs():
    proc = run("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert "Dense" in schema["$defs"]
    assert "units" in schema["$defs"]["Dense"]["properties"]
    assert schema["required"] == ["specc", "model"] or set(schema["required"]) >= {"specc", "model"}


def test_schema_out_file(tmp_path):
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Dense" in json.loads(out.read_text())["$defs"]


def test_schema_out_under_a_regular_file_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run("schema", "--out", blocker / "schema.json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    no_traceback(proc)
    assert f"cannot write {blocker / 'schema.json'}" in proc.stderr and "internal error" not in proc.stderr


# --- no tracebacks, whatever the input ----------------------------------------------------------------

BOMB = "specc: 1\nl0: &l0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
    f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 10))

BAD_INPUTS = {
    "empty": b"",
    "whitespace": b"  \n\t\n",
    "binary-nul": bytes(range(256)),
    "invalid-utf8": b"specc: 1\nname: \xff\xfe\n",
    "yaml-syntax": b"specc: 1\nmodel: {input: [8\n",
    "top-level-list": b"- 1\n- 2\n",
    "python-tag": b"specc: 1\nname: !!python/object/apply:os.system ['true']\n",
    "alias-bomb": BOMB.encode(),
    "deep-brackets": b"[" * 100_000,
    "deep-blocks": "".join("  " * i + "- \n" for i in range(2000)).encode(),
    "cycle": textwrap.dedent("""\
        specc: 1
        model:
          inputs: {x: [8]}
          layers:
            - {type: Dense, name: a, units: 4, inputs: b}
            - {type: Dense, name: b, units: 4, inputs: a}
          outputs: b
        """).encode(),
    "shape": b"specc: 1\nmodel:\n  input: [3, 3, 1]\n  layers:\n    - {type: Conv2D, filters: 1, kernel_size: 5}\n",
    "compile": b"specc: 1\nmodel:\n  input: [8]\n  layers: [{type: Dense, units: 1}]\ncompile: {loss: nope}\n",
}
CRASHERS = {
    "bool-tag": b"specc: 1\nseed: !!bool maybe\n",
    "merge-in-nested-block": textwrap.dedent("""\
        specc: 1
        model:
          input: [8]
          layers:
            - type: Sequential
              layers:
                - {type: Dense, units: 4}
                - {type: Add}
        """).encode(),
}
@pytest.mark.parametrize("command", ["validate", "summary"])
@pytest.mark.parametrize("content", [pytest.param(v, id=k) for k, v in BAD_INPUTS.items()] +
                         [pytest.param(v, id=k) for k, v in CRASHERS.items()])
def test_no_traceback_for_bad_input(tmp_path, command, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    proc = run(command, path)
    no_traceback(proc)
    assert proc.returncode == 1
    assert ERROR_LINE.match(proc.stdout.splitlines()[0]), proc.stdout


def test_directory_named_like_a_spec_is_skipped(tmp_path):
    (tmp_path / "looks_like.yaml").mkdir()
    (tmp_path / "real.yaml").write_text(GOOD)
    proc = run("validate", tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0
    assert proc.stdout.strip() == "1 spec valid"


# --- light imports ------------------------------------------------------------------------------------

_IN_PROCESS = """
import runpy, sys
sys.argv = ["specc"] + sys.argv[1:]
code = None
try:
    runpy.run_module("specc.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("EXIT", code, file=sys.stderr)
print("NUMBA_LOADED", "numba" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["validate", CNN], ["validate", "--format", "json", CNN, str(SPECS_DIR / "functional_two_inputs.yaml")],
                                  ["summary", CNN], ["summary", "--format", "json", CNN]],
                         ids=["validate", "validate-two-json", "summary", "summary-json"])
def test_validate_and_summary_do_not_import_numba(args):
    pytest.importorskip("numba")  # otherwise the check below proves nothing
    proc = subprocess.run([sys.executable, "-c", _IN_PROCESS, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert "EXIT 0" in proc.stderr, proc.stderr
    assert "NUMBA_LOADED False" in proc.stderr, proc.stderr


def test_validate_of_invalid_spec_does_not_import_numba(write_spec):
    proc = subprocess.run([sys.executable, "-c", _IN_PROCESS, "validate", str(write_spec(BAD))],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "EXIT 1" in proc.stderr, proc.stderr
    assert "NUMBA_LOADED False" in proc.stderr, proc.stderr


# --- speed --------------------------------------------------------------------------------------------


def test_validating_100_specs_is_fast(tmp_path):
    source = SPECS_DIR / "functional_two_inputs.yaml"
    for i in range(100):
        shutil.copy(source, tmp_path / f"spec_{i:03}.yaml")
    # The child's CPU seconds, not wall time: on a loaded machine (CI's other pass, other jobs) the wall time
    # measures the queue for a core, and this bound is about the work validate does.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run("validate", tmp_path)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "100 specs valid"
    assert cpu < 3.0, f"validating 100 specs took {cpu:.2f} s of CPU"
