"""The `specc` command line: a thin typer app.

Exit codes (a contract for CI scripts): 0 success, 1 invalid spec (or data), 2 usage error, 130 interrupted
(Ctrl-C or SIGTERM).
`validate`, `summary` and `schema` never import Numba; heavy modules are imported inside the commands
that need them. A plain `specc summary SPEC` or `specc validate PATHS` does not import typer either (see
`_fast_call`); typer builds the app (`app`) for everything else, help and usage errors included.
"""

from __future__ import annotations

import gc
import glob
import importlib
import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

if TYPE_CHECKING:
    import typer  # the annotations below are strings until typer reads them; _build_app imports it

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
SPEC_SUFFIXES = (".yaml", ".yml")


class ErrorFormat(str, Enum):
    text = "text"
    json = "json"
    github = "github"


class SummaryFormat(str, Enum):
    text = "text"
    json = "json"


_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")


def _echo(text: str, err: bool = False, nl: bool = True) -> None:
    """typer.echo without importing typer: write, flush, and drop ANSI codes when not on a terminal."""
    stream = sys.stderr if err else sys.stdout
    text = text + "\n" if nl else text
    try:
        on_terminal = stream.isatty()
    except (AttributeError, ValueError):
        on_terminal = False
    if not on_terminal:
        text = _ANSI.sub("", text)
    stream.write(text)
    stream.flush()


def _usage(message: str) -> SystemExit:
    _echo(f"specc: error: {message}", err=True)
    return SystemExit(EXIT_USAGE)


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given, directories searched for *.yaml/*.yml, glob patterns expanded. Raises on a path
    that matches nothing."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*") if f.suffix in SPEC_SUFFIXES and f.is_file())
            files.extend(found)
        elif os.path.exists(p):
            files.append(p)
        elif any(ch in p for ch in "*?["):
            matched = sorted(glob.glob(p, recursive=True))
            if not matched:
                raise _usage(f"no files match {p!r}")
            files.extend(m for m in matched if os.path.isfile(m))
        else:
            raise _usage(f"no such file or directory: {p}")
    seen: set[str] = set()
    return [f for f in files if not (f in seen or seen.add(f))]


def validate(
    paths: Annotated[list[str], typer.Argument(help="Spec files, directories (every *.yaml/*.yml below) or globs.")],
    fmt: Annotated[ErrorFormat, typer.Option("--format", "-f", help="text, json or github annotations.")] = ErrorFormat.text,
) -> None:
    """Check specs: schema, names, graph and shapes. Prints every error with file:line:column."""
    from .spec import load_spec, render

    files = expand_paths(paths)
    errors = []
    bad_files = 0
    for f in files:
        _, errs = load_spec(f)
        errors.extend(errs)
        bad_files += bool(errs)
    if fmt is ErrorFormat.json:
        _echo(render(errors, "json"))
    elif errors:
        _echo(render(errors, fmt.value))
    n = len(files)
    if errors:
        total = (f"{len(errors)} error{'s' * (len(errors) != 1)} in {bad_files} of {n} "
                 f"file{'s' * (n != 1)}")
    else:
        total = f"{n} spec{'s' * (n != 1)} valid" if n else "no spec files found"
    _echo(total, err=fmt is ErrorFormat.json)
    if not files:
        raise SystemExit(EXIT_USAGE)
    raise SystemExit(EXIT_INVALID if errors else EXIT_OK)


def _load_or_exit(spec_path: str, fmt: str = "text"):
    from .spec import load_spec, render

    if not os.path.exists(spec_path):
        raise _usage(f"no such file: {spec_path}")
    if os.path.isdir(spec_path):
        raise _usage(f"{spec_path} is a directory; give one spec file")
    spec, errors = load_spec(spec_path)
    if errors:
        _echo(render(errors, "json" if fmt == "json" else "text"))
        _echo(f"{len(errors)} error{'s' * (len(errors) != 1)} in {spec_path}", err=True)
        raise SystemExit(EXIT_INVALID)
    return spec


def summary(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="A spec file.")],
    fmt: Annotated[SummaryFormat, typer.Option("--format", "-f", help="text or json.")] = SummaryFormat.text,
    expand_nested: Annotated[bool, typer.Option("--expand-nested", help="Show the layers inside nested blocks.")] = False,
    show_trainable: Annotated[bool, typer.Option("--show-trainable", help="Add a Trainable column.")] = False,
) -> None:
    """Print the Keras-style summary of a spec: shapes and parameter counts, no data needed."""
    from .summary import summary_json, summary_text

    spec = _load_or_exit(spec_path, fmt.value)
    batch = spec.fit.batch_size if spec.fit else 32
    if fmt is SummaryFormat.json:
        _echo(json.dumps(summary_json(spec.graph, batch), indent=2))
    else:
        _echo(summary_text(spec.graph, expand_nested, show_trainable, batch), nl=False)


def schema(
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of the spec format, for editor completion and checking."""
    from .spec.jsonschema import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if out:
        tmp = f"{out}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, out)
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise _usage(f"cannot write {out}: {exc.strerror}") from None
    else:
        _echo(text, nl=False)


def train(
    spec_path: Annotated[str | None, typer.Argument(metavar="SPEC", help="The spec to train.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a spec value: --set fit.epochs=3 (repeatable).")] = None,
    out: Annotated[str, typer.Option("--out", help="Root folder for run directories.")] = "runs",
    resume: Annotated[str | None, typer.Option("--resume", metavar="RUN_DIR", help="Continue an interrupted run.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the spec's seed (a non-negative integer).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Threads for Numba and BLAS (default: all cores given to the process).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a spec; results go to a new run directory (runs/<name>/<timestamp>/)."""
    if spec_path is None and resume is None:
        raise _usage("give a SPEC to train, or --resume RUN_DIR")
    if spec_path is not None and resume is not None:
        raise _usage("give either a SPEC or --resume RUN_DIR, not both")
    if resume is not None and not os.path.isdir(resume):
        raise _usage(f"no such run directory: {resume}")
    if seed is not None and seed < 0:
        raise _usage(f"--seed must be a non-negative integer (as a spec's `seed`), got {seed}")
    from .train.session import Options
    from .train.session import train as run_training

    code = run_training(Options(spec_path or "", overrides or [], out, resume, seed, threads, quiet))
    raise SystemExit(code)


def evaluate(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="The spec the weights belong to.")],
    weights: Annotated[str, typer.Option("--weights", metavar="RUN_DIR", help="A run directory or a weights .npz.")],
    input_path: Annotated[str | None, typer.Option("--input", help="An .npz with arrays x and y (default: the spec's test data).")] = None,
    fmt: Annotated[SummaryFormat, typer.Option("--format", "-f", help="text or json.")] = SummaryFormat.text,
) -> None:
    """Print the loss and metrics of trained weights on the spec's test data (or a given file)."""
    if not os.path.isfile(spec_path):
        raise _usage(f"no such file: {spec_path}")
    from .train.session import evaluate as run_evaluate

    raise SystemExit(run_evaluate(spec_path, weights, input_path, fmt.value))


def predict(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="The spec the weights belong to.")],
    weights: Annotated[str, typer.Option("--weights", metavar="RUN_DIR", help="A run directory or a weights .npz.")],
    input_path: Annotated[str, typer.Option("--input", help="An .npz with an array x.")],
    out: Annotated[str | None, typer.Option("--out", help="Output .npz or .csv (default: INPUT.predictions.npz).")] = None,
) -> None:
    """Write predictions (class labels and probabilities for classifiers) to .npz or .csv."""
    if not os.path.isfile(spec_path):
        raise _usage(f"no such file: {spec_path}")
    from .train.session import predict as run_predict

    raise SystemExit(run_predict(spec_path, weights, input_path, out))


def export(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="The spec the weights belong to.")],
    weights: Annotated[str, typer.Option("--weights", metavar="RUN_DIR", help="A run directory or a weights .npz.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The .onnx file to write (never overwritten).")],
) -> None:
    """Export the model with trained weights (and the run's input normalisation) to an ONNX file."""
    if not os.path.isfile(spec_path):
        raise _usage(f"no such file: {spec_path}")
    from .export.command import run as run_export

    raise SystemExit(run_export(spec_path, weights, out))


def time(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="The spec to time.")],
    batch: Annotated[int | None, typer.Option("--batch", min=1, help="Batch size (default: the spec's fit.batch_size, else 32).")] = None,
    iters: Annotated[int | None, typer.Option("--iters", min=1, help="Timed steps, after a few untimed ones; figures are their medians (default 10).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Threads for Numba and BLAS (default: $SPECC_THREADS, else all cores given to the process).")] = None,
    fmt: Annotated[SummaryFormat, typer.Option("--format", "-f", help="text or json.")] = SummaryFormat.text,
) -> None:
    """Time one training step, layer by layer, on synthetic inputs (no data, no training): forward and
    backward ms, GFLOP/s and % of the machine's measured peak, bytes moved (an estimate), share of the
    step; then the loss, the optimizer step and the framework overhead."""
    spec = _load_or_exit(spec_path, fmt.value)
    from .profile import DEFAULT_ITERS, run

    raise SystemExit(run(spec, batch, iters or DEFAULT_ITERS, threads, fmt.value))


COMMANDS = (validate, summary, schema, train, evaluate, predict, export, time)


def _build_app() -> typer.Typer:
    global typer  # the commands' annotations name typer; they are read from this module's globals
    import typer

    app = typer.Typer(
        name="specc",
        help="specc: declarative deep-learning models from YAML specs: validate, summarise, train.",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    for command in COMMANDS:
        app.command()(command)
    return app


def __getattr__(name: str):
    # PEP 562: `from specc.cli import app` (tests, embedding) builds the typer app on first use.
    if name == "app":
        globals()["app"] = value = _build_app()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `specc summary SPEC` and `specc validate PATHS` are what editors, CI jobs and pre-commit hooks run over and
# over, and importing typer and building the parsers of all six commands took ~30 ms of their ~0.3 s. So a
# plain call of these two is parsed here: known options, each at most once, values among their choices,
# positionals that do not start with "-". Anything else (--help, a typo, `-fjson`, `--`) goes to typer,
# whose help and error messages stay the only ones. tests/test_startup.py checks this table against the
# typer app and the results of both ways against each other.
# command: (function, {option: (parameter, choices)} for options with a value, {flag: parameter},
#           the positional parameter, whether it takes several)
_FAST = {
    "summary": (summary, {"--format": ("fmt", SummaryFormat), "-f": ("fmt", SummaryFormat)},
                {"--expand-nested": "expand_nested", "--show-trainable": "show_trainable"}, "spec_path", False),
    "validate": (validate, {"--format": ("fmt", ErrorFormat), "-f": ("fmt", ErrorFormat)}, {}, "paths", True),
}


def _fast_call(argv: list[str]):
    """(function, keyword arguments) for a plain summary/validate call, else None (typer parses it)."""
    if not argv or argv[0] not in _FAST or _ascii_stream(sys.stdout) or _ascii_stream(sys.stderr):
        return None  # typer's echo re-encodes a stream misconfigured as ASCII; leave that to it
    function, valued, flags, positional, several = _FAST[argv[0]]
    kwargs: dict = {}
    values: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in valued:
            value = value if eq else next(args, None)
            parameter, choices = valued[name]
            if parameter in kwargs or value not in {c.value for c in choices}:
                return None
            kwargs[parameter] = choices(value)
        elif arg in flags and flags[arg] not in kwargs:
            kwargs[flags[arg]] = True
        elif arg.startswith("-"):
            return None
        else:
            values.append(arg)
    if not values or (len(values) > 1 and not several):
        return None
    kwargs[positional] = values if several else values[0]
    return function, kwargs


def _preload() -> None:
    """Import what a plain summary/validate call needs with the garbage collector off. Imports create only
    long-lived objects (modules, classes, pydantic's machinery): the ~70 collections they triggered freed
    nothing and took ~10 ms. Those objects are then frozen out of later collections, and the collector runs
    as usual while specs are checked (each spec leaves ~20 KB of cyclic garbage)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for module in ("specc.spec.validate", "specc.summary"):
            importlib.import_module(module)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _ascii_stream(stream) -> bool:
    import codecs

    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "ascii"
    except LookupError:
        return True


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (schedulers, containers, `kill`) stops a command as Ctrl-C does


def main() -> None:
    """Console-script entry point: typer's usage errors exit 2; SIGTERM is handled as Ctrl-C (exit 130;
    `specc train` checkpoints first); running out of memory is reported as such; anything unexpected is
    reported, not dumped (SPECC_DEBUG=1 shows the traceback)."""
    import signal

    from .runtime import prepare_process

    prepare_process()  # before anything loads NumPy or Numba's thread pool
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (embedded): signals are not ours to take
        _main()
        return
    try:
        _main()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main() -> None:
    try:
        fast = _fast_call(sys.argv[1:])
        if fast is None:
            _build_app()(standalone_mode=True)
        else:
            function, kwargs = fast
            _preload()
            try:
                function(**kwargs)
            except BrokenPipeError:
                # as typer (click) does when the reader goes away (`specc validate . | head -1`): exit 1 quietly
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                sys.exit(1)
            finally:
                # Interpreter shutdown spent ~30 ms (a tenth of the command) walking pydantic's and typing's
                # object graphs for a last garbage collection; frozen objects are skipped. Safe here: these
                # two commands write only to stdout/stderr, flushed by _echo, so no buffer waits on a cycle.
                gc.freeze()
            sys.exit(EXIT_OK)
    except KeyboardInterrupt:
        _echo("interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        _echo("specc: error: out of memory (MemoryError). `specc summary SPEC` estimates the memory training "
              "needs; a smaller fit.batch_size, a smaller model or less data needs less.", err=True)
        sys.exit(EXIT_INVALID)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, not a user error
        if os.environ.get("SPECC_DEBUG"):
            raise
        _echo(f"specc: internal error: {type(exc).__name__}: {exc}\nThis is a bug in specc; run again "
              f"with SPECC_DEBUG=1 to see the traceback, and please report it.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
