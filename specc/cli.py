"""The `specc` command line: a thin typer app.

Exit codes (a contract for CI scripts): 0 success, 1 invalid spec (or data), 2 usage error.
`validate`, `summary` and `schema` never import Numba; heavy modules are imported inside the commands
that need them.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="specc",
    help="specc: declarative deep-learning models from YAML specs: validate, summarise, train.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
SPEC_SUFFIXES = (".yaml", ".yml")


class ErrorFormat(str, Enum):
    text = "text"
    json = "json"
    github = "github"


class SummaryFormat(str, Enum):
    text = "text"
    json = "json"


def _usage(message: str) -> typer.Exit:
    typer.echo(f"specc: error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


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


@app.command()
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
        typer.echo(render(errors, "json"))
    elif errors:
        typer.echo(render(errors, fmt.value))
    n = len(files)
    if errors:
        total = (f"{len(errors)} error{'s' * (len(errors) != 1)} in {bad_files} of {n} "
                 f"file{'s' * (n != 1)}")
    else:
        total = f"{n} spec{'s' * (n != 1)} valid" if n else "no spec files found"
    typer.echo(total, err=fmt is ErrorFormat.json)
    if not files:
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(EXIT_INVALID if errors else EXIT_OK)


def _load_or_exit(spec_path: str, fmt: str = "text"):
    from .spec import load_spec, render

    if not os.path.exists(spec_path):
        raise _usage(f"no such file: {spec_path}")
    if os.path.isdir(spec_path):
        raise _usage(f"{spec_path} is a directory; give one spec file")
    spec, errors = load_spec(spec_path)
    if errors:
        typer.echo(render(errors, "json" if fmt == "json" else "text"))
        typer.echo(f"{len(errors)} error{'s' * (len(errors) != 1)} in {spec_path}", err=True)
        raise typer.Exit(EXIT_INVALID)
    return spec


@app.command()
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
        typer.echo(json.dumps(summary_json(spec.graph, batch), indent=2))
    else:
        typer.echo(summary_text(spec.graph, expand_nested, show_trainable, batch), nl=False)


@app.command()
def schema(
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of the spec format, for editor completion and checking."""
    from .spec.jsonschema import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if out:
        tmp = f"{out}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    else:
        typer.echo(text, nl=False)


@app.command()
def train(
    spec_path: Annotated[str | None, typer.Argument(metavar="SPEC", help="The spec to train.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a spec value: --set fit.epochs=3 (repeatable).")] = None,
    out: Annotated[str, typer.Option("--out", help="Root folder for run directories.")] = "runs",
    resume: Annotated[str | None, typer.Option("--resume", metavar="RUN_DIR", help="Continue an interrupted run.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the spec's seed.")] = None,
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
    from .train.session import Options
    from .train.session import train as run_training

    code = run_training(Options(spec_path or "", overrides or [], out, resume, seed, threads, quiet))
    raise typer.Exit(code)


@app.command()
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

    raise typer.Exit(run_evaluate(spec_path, weights, input_path, fmt.value))


@app.command()
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

    raise typer.Exit(run_predict(spec_path, weights, input_path, out))


def main() -> None:
    """Console-script entry point: typer's usage errors exit 2; anything unexpected is reported, not dumped
    (SPECC_DEBUG=1 shows the traceback)."""
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, not a user error
        if os.environ.get("SPECC_DEBUG"):
            raise
        typer.echo(f"specc: internal error: {type(exc).__name__}: {exc}\nThis is a bug in specc; run again "
                   f"with SPECC_DEBUG=1 to see the traceback, and please report it.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
