"""Running one CLI invocation in a subprocess and judging its outcome against the CLI's contract.

The contract (README, "Command-line reference"; specc/cli.py): every command exits 0 (success), 1 (invalid
spec or data, a diverged run) or 2 (usage: a missing path, a bad option); 130 only after Ctrl-C, which the
fuzzer never sends. Whatever the input, no Python traceback and no "internal error" reaches the user, the
process is not killed by a signal, and it ends within the timeout (a hang is a timeout); `validate` and
`summary` take seconds at most. An exit 1 or 2 says
why on stdout or stderr; `validate`/`summary` name the file, line and column of every error.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRACEBACK = "Traceback (most recent call last)"
INTERNAL = ("internal error", "a bug in specc")  # also in validate's "specc could not check this file (a bug in specc: ...)"
ALLOWED_EXITS = {"validate": {0, 1, 2}, "summary": {0, 1, 2}, "train": {0, 1, 2}, "evaluate": {0, 1, 2},
                 "predict": {0, 1, 2}}
# `file:line:col: error: ...`, the positioned form of every validate/summary error in text
POSITIONED = re.compile(r"^.+?:(\d+):(\d+): error: \S")
# validate/summary report hostile files "in well under a second" (README); this is far beyond that and far
# above a loaded machine's start-up time, so it only flags real slowness
SLOW = {"validate": 5.0, "summary": 5.0}
MEMORY_LIMIT = 6 * 2**30  # bytes of address space per run: a runaway allocation fails instead of swapping


def cli_env() -> dict[str, str]:
    """The environment of every run: this checkout's specc, UTF-8 streams, no colour, no debug tracebacks
    (they are what the fuzzer looks for: SPECC_DEBUG=1 would print one for every internal error)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8", NO_COLOR="1", COLUMNS="100")
    env.pop("SPECC_DEBUG", None)
    return env


def _limit_memory() -> None:  # runs in the child between fork and exec
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass


@dataclass
class Outcome:
    """What one run did, and which parts of the contract it broke (`problems`, empty when none)."""

    args: list[str]  # the command line after `specc`
    code: int | None  # None: killed after the timeout
    duration: float
    stdout: str
    stderr: str
    problems: list[str] = field(default_factory=list)
    signature: str = ""  # one line that identifies the failure, for deduplication

    @property
    def command(self) -> str:
        return self.args[0] if self.args else ""

    @property
    def hang(self) -> bool:
        return self.code is None

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.stdout or TRACEBACK in self.stderr

    @property
    def internal(self) -> bool:
        text = self.stdout + self.stderr
        return any(marker in text for marker in INTERNAL)

    @property
    def signal(self) -> int | None:
        return -self.code if self.code is not None and self.code < 0 else None

    def exit_label(self) -> str:
        if self.hang:
            return "timeout"
        if self.signal:
            return f"signal {_signal_name(self.signal)}"
        return str(self.code)

    def tail(self, lines: int = 12) -> str:
        def last(text: str) -> str:
            rows = text.rstrip("\n").splitlines()
            return "\n".join(rows[-lines:]) + (f"\n... ({len(rows) - lines} earlier lines)" if len(rows) > lines
                                                else "")
        return f"exit {self.exit_label()} after {self.duration:.1f}s\n--- stdout\n{last(self.stdout)}\n" \
               f"--- stderr\n{last(self.stderr)}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def run_cli(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None,
            prefix: list[str] | None = None) -> Outcome:
    """Run `python -m specc.cli ARGS` in `cwd`; on timeout kill its whole process group (only ours)."""
    argv = (prefix or [sys.executable, "-m", "specc.cli"]) + [str(a) for a in args]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env or cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_limit_memory if os.name == "posix" else None)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, err = proc.communicate()
        code = None
    duration = time.monotonic() - start
    outcome = Outcome([str(a) for a in args], code, duration, out.decode("utf-8", "replace"),
                      err.decode("utf-8", "replace"))
    judge(outcome)
    return outcome


def judge(o: Outcome) -> None:
    """Fill `o.problems` and `o.signature` from the contract in this module's docstring."""
    problems = []
    if o.hang:
        problems.append("hang")
    elif o.signal:
        problems.append(f"killed by signal {_signal_name(o.signal)}")
    if o.traceback:
        problems.append("traceback")
    if o.internal:
        problems.append("internal error")
    if o.code is not None and o.code >= 0 and o.code not in ALLOWED_EXITS.get(o.command, {0, 1, 2}):
        problems.append(f"exit code {o.code} (the contract allows {sorted(ALLOWED_EXITS[o.command])})")
    if not o.hang and o.duration > SLOW.get(o.command, float("inf")):
        problems.append(f"slow: {o.command} took {o.duration:.0f} s")
    if o.code in (1, 2) and not (o.stdout.strip() or o.stderr.strip()):
        problems.append(f"exit {o.code} without a message")
    if o.code == 1 and o.command in ("validate", "summary") and not o.internal and not o.traceback:
        unpositioned = unpositioned_error(o)
        if unpositioned is not None:
            problems.append(f"an error without file:line:column: {unpositioned[:200]}")
    o.problems = problems
    o.signature = signature(o) if problems else ""


GITHUB = re.compile(r"^::error file=.+?,line=(\d+),col=(\d+)::\S")
TOTAL = re.compile(r"^\d+ errors? in \d+ of \d+ files?$")


def unpositioned_error(o: Outcome) -> str | None:
    """The first error line of a failed validate/summary that does not name file:line:column (line and
    column from 1), or None when every one does. The format is read from the command line."""
    fmt = "json" if "json" in o.args else "github" if "github" in o.args else "text"
    if fmt == "json":
        try:
            errors = json.loads(o.stdout)
        except ValueError:
            return "stdout is not JSON: " + o.stdout[:100]
        if not errors:
            return "(no errors in the JSON)"
        for e in errors:
            if not (isinstance(e, dict) and isinstance(e.get("line"), int) and isinstance(e.get("column"), int)
                    and e["line"] >= 1 and e["column"] >= 1 and e.get("file") and e.get("message")):
                return json.dumps(e)[:200]
        return None
    rows = [r for r in o.stdout.splitlines() if r.strip()]
    if o.command == "validate":
        if not rows or not TOTAL.match(rows[-1]):
            return "(no total line)" if not rows else rows[-1]
        rows = rows[:-1]
    if not rows:
        return "(no error lines)"
    pattern = GITHUB if fmt == "github" else POSITIONED
    for r in rows:
        m = pattern.match(r)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            return r
    return None


POSITION_PREFIX = re.compile(r'^.*?:\d+:\d+: error: |^\s*"message": "')
_VOLATILE = [
    (re.compile(r"/tmp/[^\s'\":,)]+"), "<tmp>"),  # scratch paths
    (re.compile(r"0x[0-9a-fA-F]+"), "0x…"),
    (re.compile(r"\d+"), "N"),
]


def signature(o: Outcome) -> str:
    """The line that names a failure: the last line of a traceback or the internal-error line (the same bug
    through evaluate and predict is one failure), else the command and the kind of problem; numbers and
    scratch paths are blanked so one bug gives one signature."""
    text = o.stderr + "\n" + o.stdout
    line = ""
    if o.traceback:
        after = text[text.rindex(TRACEBACK):].splitlines()
        line = next((r for r in reversed(after) if r.strip() and not r.startswith(" ")), "")
    elif o.internal:
        line = next((r for r in text.splitlines() if any(m in r for m in INTERNAL)), "")
        line = POSITION_PREFIX.sub("", line).strip().strip('",')
    if not line:
        line = f"{o.command}: {o.problems[0] if o.problems else ''}"
    for pattern, repl in _VOLATILE:
        line = pattern.sub(repl, line)
    return line.strip()[:300]
