"""`python -m tests.fuzz --minutes N [--seed S] [--targets spec,data,weights,rundir]` from the repository root.

Runs mutants of each target through the real CLI for N minutes (shared equally between the targets),
prints every new failure as it is found (deduplicated by its last traceback or error line) and a report
at the end; `--report FILE` also writes it as Markdown. `--replay KEY` runs one mutant again (the key is
printed with each failure) and `--keep DIR` leaves its files there. Exits 1 when anything broke the
contract (see tests/fuzz/runner.py).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

from .mutants import TARGETS, TIMEOUT, FixtureError, make
from .report import markdown
from .runner import cli_env, run_cli
from .session import Session, default_workdir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0, help="how long to fuzz (default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed of the mutants (default: random, printed)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--report", metavar="FILE", help="also write the report as Markdown to FILE")
    p.add_argument("--replay", metavar="KEY", help="run the mutant KEY (target:seed:index) and show its output")
    p.add_argument("--keep", metavar="DIR", help="with --replay: leave the mutant's files in DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="print every run's outcome")
    p.add_argument("--workdir", metavar="DIR", help="scratch folder (default: a new one under $TMPDIR)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else default_workdir()
    try:
        if args.replay:
            return replay(args.replay, Path(args.keep) if args.keep else None, workdir)
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            p.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
        seed = args.seed if args.seed is not None else random.randrange(10**6)
        print(f"fuzzing {', '.join(targets)} for {args.minutes:g} min, seed {seed}, scratch {workdir}", flush=True)
        session = Session(workdir, seed, log=lambda s: print(s, flush=True), verbose=args.verbose)
        start = time.monotonic()
        try:
            session.run_for(args.minutes * 60, targets)
        finally:  # an interrupted session still reports what it found
            text = markdown(session, time.monotonic() - start)
            print(text)
            if args.report:
                Path(args.report).write_text(text, encoding="utf-8")
        return 1 if session.failures else 0
    except FixtureError as exc:
        print(f"fuzz: cannot make the trained runs the file faults start from:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def replay(key: str, keep: Path | None, workdir: Path) -> int:
    from .session import Session

    session = Session(workdir, 0)
    m = make(key, session.fixtures)
    d = keep or workdir / "replay"
    shutil.rmtree(d, ignore_errors=True)
    m.prepare(d, session.fixtures)
    commands = [m.args]
    if m.target == "spec":
        commands.append(["summary", m.args[1]])
    print(f"mutant {key}: {m.description}\nin {d}" + "".join(f"\n{k}={v!r}" for k, v in m.env.items()))
    failed = False
    for args in commands:
        o = run_cli(args, d, TIMEOUT[args[0]], env=dict(cli_env(), **m.env))
        print(f"\n$ specc {' '.join(args)}\n{o.tail(40)}\nproblems: {', '.join(o.problems) or 'none'}")
        failed |= bool(o.problems)
    if keep:
        (d / "command.txt").write_text("".join(f"specc {' '.join(a)}\n" for a in commands))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
