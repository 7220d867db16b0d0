"""Running mutants and counting what happened.

Spec mutants go through `validate --format json` in batches (one process checks many files, and its JSON
says which file had which errors); a batch that breaks the contract is run again file by file to find the
culprit. Every spec mutant that validates, and a sample of the others, then runs through `summary` and
through `validate` in text or GitHub form on its own. Every other mutant is one process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .mutants import TIMEOUT, Fixtures, Mutant, make, summary_args
from .runner import Outcome, cli_env, judge, run_cli

BATCH = 25  # spec mutants per validate process
SUMMARY_SHARE = 0.25  # of the invalid spec mutants, also run through summary (every valid one is)
TEXT_SHARE = 0.1  # of the spec mutants, also run through validate in text or github form


@dataclass
class Failure:
    signature: str
    key: str
    description: str
    args: list[str]
    problems: list[str]
    tail: str
    count: int = 1
    others: list[str] = field(default_factory=list)  # a few more mutants with the same signature
    debug_tail: str = ""  # the last lines of the traceback SPECC_DEBUG=1 shows

    def text(self) -> str:
        return (f"{self.signature}\n  mutant {self.key}: {self.description[:400]}\n  command: specc "
                f"{' '.join(self.args)[:300]}\n  problems: {', '.join(self.problems)}\n  reproduce: python -m "
                f"tests.fuzz --replay {self.key} --keep /tmp/specc-fuzz-{self.key.replace(':', '-')}\n"
                + "\n".join("    " + r for r in self.tail.splitlines()))


@dataclass
class Stats:
    tried: int = 0  # mutants
    runs: int = 0  # processes judged (a mutant may run through several commands)
    exits: Counter = field(default_factory=Counter)  # "command exit" -> count
    tracebacks: int = 0
    internal: int = 0
    hangs: int = 0
    signals: int = 0
    other: int = 0  # exit codes outside the contract, unpositioned errors, silent failures
    seconds: float = 0.0
    skipped: int = 0  # mutants the fuzzer could not prepare (its own bug; logged)
    slowest: tuple[float, str] = (0.0, "")


class Session:
    def __init__(self, workdir: Path, seed: int, log=print, debug_failures: bool = True, verbose: bool = False):
        self.workdir = workdir
        self.seed = seed
        self.fixtures = Fixtures(workdir / "fixtures")
        self.stats: dict[str, Stats] = {}
        self.failures: dict[str, Failure] = {}
        self.log = log
        self.debug_failures = debug_failures
        self.counter: dict[str, int] = {}
        self.verbose = verbose
        self.summary_share, self.text_share = SUMMARY_SHARE, TEXT_SHARE

    # --- bookkeeping ---

    def record(self, m: Mutant, o: Outcome, count_mutant: bool = True) -> None:
        st = self.stats.setdefault(m.target, Stats())
        st.tried += count_mutant
        st.runs += 1
        st.exits[f"{o.command} {o.exit_label()}"] += 1
        st.tracebacks += o.traceback
        st.internal += o.internal
        st.hangs += o.hang
        st.signals += bool(o.signal)
        st.other += bool(o.problems) and not (o.traceback or o.internal or o.hang or o.signal)
        if self.verbose:
            last = (o.stderr.strip() or o.stdout.strip()).splitlines()[-1:] or [""]
            self.log(f"{m.key} {o.command} -> {o.exit_label()} ({o.duration:.1f}s) {m.description[:150]!r}\n"
                     f"    {last[0][:200]}")
        if o.duration > st.slowest[0]:
            st.slowest = (o.duration, f"{m.key} ({o.command})")
        if not o.problems:
            return
        if o.signature in self.failures:
            f = self.failures[o.signature]
            f.count += 1
            if len(f.others) < 3 and m.key != f.key and m.key not in f.others:
                f.others.append(m.key)
            return
        f = Failure(o.signature, m.key, m.description, o.args, o.problems, o.tail())
        if self.debug_failures and (o.internal or o.traceback) and not o.hang:
            f.debug_tail = self.debug_traceback(m, o.args)
        self.failures[o.signature] = f
        self.log(f"FAILURE {f.text()}" + (f"\n  SPECC_DEBUG=1 traceback (last lines):\n{f.debug_tail}"
                                          if f.debug_tail else ""))

    def debug_traceback(self, m: Mutant, args: list[str]) -> str:
        """The traceback behind an internal error: the same command again with SPECC_DEBUG=1."""
        d = self.workdir / "debug" / m.key.replace(":", "-")
        shutil.rmtree(d, ignore_errors=True)
        m.prepare(d, self.fixtures)
        o = run_cli(args, d, TIMEOUT.get(args[0], 60.0), env=dict(cli_env(), **m.env, SPECC_DEBUG="1"))
        rows = [r for r in (o.stderr or o.stdout).rstrip().splitlines() if set(r.strip()) - set("^~")]
        return "\n".join("    " + r for r in rows[-7:])

    def next_key(self, target: str) -> str:
        i = self.counter.get(target, 0)
        self.counter[target] = i + 1
        return f"{target}:{self.seed}:{i}"

    # --- running ---

    def run_one(self, m: Mutant, args: list[str] | None = None, count_mutant: bool = True) -> Outcome | None:
        d = self.workdir / "m" / m.key.replace(":", "-")
        shutil.rmtree(d, ignore_errors=True)
        try:
            m.prepare(d, self.fixtures)
        except (OSError, ValueError, KeyError, IndexError) as exc:  # the fuzzer's own bug: say so, go on
            self.log(f"fuzz: cannot prepare {m.key} ({m.description}): {type(exc).__name__}: {exc}")
            self.stats.setdefault(m.target, Stats()).skipped += 1
            return None
        args = args or m.args
        try:
            o = run_cli(args, d, TIMEOUT[args[0]], env=dict(cli_env(), **m.env))
        except (OSError, ValueError) as exc:  # an argument no process can get (a NUL byte): the fuzzer's bug
            self.log(f"fuzz: cannot run {m.key} ({m.description}): {type(exc).__name__}: {exc}")
            self.stats.setdefault(m.target, Stats()).skipped += 1
            return None
        self.record(m, o, count_mutant)
        shutil.rmtree(d, ignore_errors=True)
        return o

    def run_spec_batch(self, mutants: list[Mutant]) -> None:
        """validate --format json over all the mutants at once, then summary/text validate on some."""
        d = self.workdir / "batch"
        shutil.rmtree(d, ignore_errors=True)
        paths = []
        for i, m in enumerate(mutants):
            sub = d / str(i)
            m.prepare(sub, self.fixtures)
            paths.append(f"{i}/{m.args[1]}")
        batch = run_cli(["validate", "--format", "json", *paths], d, TIMEOUT["validate"] * 2)
        per_file = self._split(batch, paths)
        for m, path in zip(mutants, paths):
            if per_file is None:  # the batch broke the contract: find the mutant that did, one by one
                o = run_cli(["validate", "--format", "json", path], d, TIMEOUT["validate"])
            else:
                o = per_file[path]
            self.record(m, o)
            rng = random.Random(m.key + ":follow")
            if o.code == 0 or rng.random() < self.summary_share:
                self.record(m, run_cli(summary_args(rng, path), d, TIMEOUT["summary"]), count_mutant=False)
            if rng.random() < self.text_share:
                fmt = rng.choice([[], ["--format", "github"], ["-f", "text"]])
                self.record(m, run_cli(["validate", *fmt, path], d, TIMEOUT["validate"]), count_mutant=False)
        shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def _split(batch: Outcome, paths: list[str]) -> dict[str, Outcome] | None:
        """One outcome per file from a batch's JSON, or None when the batch itself broke the contract."""
        if batch.problems or batch.code not in (0, 1):
            return None
        try:
            errors = json.loads(batch.stdout)
        except ValueError:
            return None
        by_file: dict[str, list] = {p: [] for p in paths}
        for e in errors:
            if not isinstance(e, dict) or e.get("file") not in by_file:
                return None
            by_file[e["file"]].append(e)
        out = {}
        for p, errs in by_file.items():
            o = Outcome(["validate", "--format", "json", p], 1 if errs else 0, batch.duration / len(paths),
                        json.dumps(errs, indent=2), f"{len(errs)} errors" if errs else "1 spec valid")
            judge(o)
            out[p] = o
        return out

    def run_target(self, target: str, count: int) -> None:
        """`count` more mutants of `target`."""
        mutants = [make(self.next_key(target), self.fixtures) for _ in range(count)]
        if target == "spec":
            self.run_spec_batch(mutants)
        else:
            for m in mutants:
                self.run_one(m)

    def run_for(self, seconds: float, targets: list[str]) -> None:
        """Share `seconds` equally between `targets`, interleaved: always run the one with the least time."""
        spent = {t: 0.0 for t in targets}
        end = time.monotonic() + seconds
        last_note = time.monotonic()
        while time.monotonic() < end:
            target = min(targets, key=lambda t: spent[t])
            start = time.monotonic()
            self.run_target(target, BATCH if target == "spec" else 1)
            spent[target] += time.monotonic() - start
            self.stats[target].seconds = spent[target]
            if time.monotonic() - last_note > 60:
                last_note = time.monotonic()
                self.log(self.progress_line(end))

    def progress_line(self, end: float) -> str:
        parts = [f"{t}: {s.tried} mutants, {sum(1 for f in self.failures.values() if f.key.startswith(t))} "
                 f"failures" for t, s in self.stats.items()]
        return f"[{max(0, end - time.monotonic()) / 60:.1f} min left] " + "; ".join(parts)


def default_workdir() -> Path:
    root = Path(os.environ.get("TMPDIR", "/tmp"))
    return root / f"specc-fuzz-{os.getpid()}"
