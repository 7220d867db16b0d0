"""The fuzzing report: counts per target and each distinct failure with its reproducer, in Markdown."""

from __future__ import annotations

import platform
import subprocess
import sys

from .runner import REPO


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _order(failure) -> tuple:
    target, seed, index = failure.key.split(":")
    return target, int(seed), int(index)


def markdown(session, seconds: float) -> str:
    rows = ["| target | mutants | runs | exit codes (command code: count) | tracebacks | internal errors | hangs "
            "| signal deaths | other | slowest run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for target, st in session.stats.items():
        exits = ", ".join(f"{k}: {v}" for k, v in sorted(st.exits.items()))
        rows.append(f"| {target} | {st.tried} | {st.runs} | {exits} | {st.tracebacks} | {st.internal} | {st.hangs} "
                    f"| {st.signals} | {st.other} | {st.slowest[0]:.1f} s ({st.slowest[1]}) |")
    skipped = {t: st.skipped for t, st in session.stats.items() if st.skipped}
    lines = [f"Fuzzed for {seconds / 60:.1f} min with seed {session.seed} at commit {_commit()} "
             f"(Python {platform.python_version()}, {sys.platform}).", "", *rows, ""]
    if skipped:
        lines += [f"Mutants the fuzzer could not prepare (its own bug, see the log): {skipped}", ""]
    if not session.failures:
        lines.append("No failures: no traceback, internal error, hang, signal death or other break of the contract.")
    else:
        lines.append(f"{len(session.failures)} distinct failures (by last traceback / error line):")
        for f in sorted(session.failures.values(), key=_order):
            also = f" (also {', '.join(f.others)})" if f.others else ""
            lines += ["", f"- `{f.signature}` ({f.count}x); first mutant `{f.key}`{also}: {f.description[:300]}",
                      f"  - command: `specc {' '.join(f.args)[:300]}`",
                      f"  - reproduce: `python -m tests.fuzz --replay {f.key} --keep /tmp/fuzz-{f.key.replace(':', '-')}`",
                      "  - output:", "", "```", f.tail, "```"]
            if f.debug_tail:
                lines += ["", "  - with SPECC_DEBUG=1:", "", "```", f.debug_tail, "```"]
    return "\n".join(lines) + "\n"


