"""specc inside the tools users already run: the pre-commit hooks (through `pre-commit try-repo` on a sample
repository), `validate --exclude`, the GitHub Actions snippet's `--format github` output, shell completion,
`--version` and the examples in every command's help."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BAD = "specc: 1\nname: bad\nmodel:\n  input: [4]\n  layers:\n    - {type: Dense, units: -3}\n"


def specc(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specc.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env=env)


@pytest.fixture
def sample_repo(tmp_path):
    """A user's repository: specs under models/ (one broken), other YAML under k8s/ that is not a spec."""
    root = tmp_path / "sample"
    (root / "models").mkdir(parents=True)
    (root / "k8s").mkdir()
    shutil.copy(REPO / "specs" / "iris_mlp.yaml", root / "models" / "iris.yaml")
    (root / "models" / "bad.yaml").write_text(BAD)
    (root / "k8s" / "deploy.yaml").write_text("apiVersion: v1\nkind: Pod\n")
    return root


def test_validate_exclude(sample_repo):
    r = specc("validate", ".", cwd=sample_repo)
    assert r.returncode == 1 and "deploy.yaml" in r.stdout  # not a spec: reported without --exclude
    r = specc("validate", ".", "--exclude", "k8s/**", cwd=sample_repo)
    assert r.returncode == 1 and "deploy.yaml" not in r.stdout and "bad.yaml:6:" in r.stdout
    assert "1 error in 1 of 2 files" in r.stdout + r.stderr
    r = specc("validate", ".", "--exclude", "k8s", "--exclude", "bad.yaml", cwd=sample_repo)
    assert r.returncode == 0 and "1 spec valid" in r.stdout + r.stderr
    r = specc("validate", "models", "--exclude", "*.yaml", cwd=sample_repo)
    assert r.returncode == 2 and "no spec files found" in r.stdout + r.stderr


def test_github_format_for_actions(sample_repo):
    r = specc("validate", "models", "--format", "github", cwd=sample_repo)
    assert r.returncode == 1
    assert re.search(r"^::error file=models/bad\.yaml,line=6,col=\d+(,[a-zA-Z]+=[^,:]*)*::", r.stdout, re.M), r.stdout


def test_readme_actions_snippet_is_valid_and_runs_validate():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n(# \.github/workflows/specc\.yml\n.*?)```", text, re.S)
    assert block, "README has no GitHub Actions workflow snippet"
    workflow = yaml.safe_load(block.group(1))
    steps = workflow["jobs"]["validate"]["steps"]
    assert any("specc validate" in s.get("run", "") and "--format github" in s.get("run", "") for s in steps)


def test_pre_commit_hooks_manifest():
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    by_id = {h["id"]: h for h in hooks}
    assert set(by_id) == {"specc-validate", "specc-validate-system"}
    for h in hooks:
        assert h["entry"] == "specc validate" and re.search(h["files"], "models/a.yml")
        assert not re.search(h["files"], "README.md")


def _try_repo(sample_repo: Path, hook: str, tmp_path: Path) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # try-repo needs the hooks file in a commit: a throwaway clone of the working tree, committed.
    source = tmp_path / "specc-src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "runs", "__pycache__", "*.egg-info",
                                                                   ".pytest_cache", "bench"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    for cwd in (source, sample_repo):
        subprocess.run(["git", "init", "-q"], cwd=cwd, check=True, env=env)
        subprocess.run(["git", "add", "-A"], cwd=cwd, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "src"], cwd=source, check=True, env=env)
    return subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(source), hook, "--files",
                           "models/iris.yaml", "models/bad.yaml"], cwd=sample_repo, capture_output=True,
                          text=True, env=env, timeout=900)


def test_pre_commit_try_repo_system_hook(sample_repo, tmp_path):
    pytest.importorskip("pre_commit")
    if shutil.which("specc") is None:
        pytest.skip("the specc command is not on PATH")
    r = _try_repo(sample_repo, "specc-validate-system", tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "models/bad.yaml:6:" in r.stdout and "Failed" in r.stdout and "Traceback" not in r.stdout


@pytest.mark.skipif(not os.environ.get("SPECC_TEST_PRECOMMIT_ENV"),
                    reason="builds the hook's own virtual environment (numba, scipy...: minutes); "
                           "set SPECC_TEST_PRECOMMIT_ENV=1 to run")
def test_pre_commit_try_repo_python_hook(sample_repo, tmp_path):
    pytest.importorskip("pre_commit")
    r = _try_repo(sample_repo, "specc-validate", tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "models/bad.yaml:6:" in r.stdout and "Failed" in r.stdout


def test_version_names_the_numeric_stack():
    r = specc("--version")
    assert r.returncode == 0
    for name in ("specc", "numpy", "numba", "llvmlite", "Python"):
        assert re.search(rf"\b{name} \d+\.\d+", r.stdout), r.stdout
    # Read from package metadata: printing versions does not import Numba.
    probe = ("import sys, runpy; sys.argv = ['specc', '--version']\ntry:\n"
             "    runpy.run_module('specc.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('NUMBA' if 'numba' in sys.modules else 'CLEAN')")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip().endswith("CLEAN")


COMMANDS = ("validate", "summary", "expand", "schema", "train", "evaluate", "predict", "export", "time", "draw", "import")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_shows_an_example(command):
    r = specc(command, "--help", env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0
    assert re.search(rf"Example: specc {command} ", r.stdout), r.stdout


def test_completion_script_and_install(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash", "COLUMNS": "200"}
    specc_bin = shutil.which("specc")
    if specc_bin is None:
        pytest.skip("the specc command is not on PATH")
    # The script for bash, then the completions it asks for (typer's protocol: _SPECC_COMPLETE).
    shown = subprocess.run([specc_bin, "--show-completion", "bash"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "_SPECC_COMPLETE" in shown.stdout and "complete" in shown.stdout
    words = subprocess.run([specc_bin], capture_output=True, text=True, env={
        **env, "_SPECC_COMPLETE": "complete_bash", "COMP_WORDS": "specc dr", "COMP_CWORD": "1"})
    assert "draw" in words.stdout.split()
    options = subprocess.run([specc_bin], capture_output=True, text=True, env={
        **env, "_SPECC_COMPLETE": "complete_bash", "COMP_WORDS": "specc validate --ex", "COMP_CWORD": "2"})
    assert "--exclude" in options.stdout.split()
    installed = subprocess.run([specc_bin, "--install-completion", "bash"], capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stderr
    assert "specc" in (tmp_path / ".bashrc").read_text()
