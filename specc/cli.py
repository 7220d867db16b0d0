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


def _excluded(path: str, patterns: list[str]) -> bool:
    """A file is excluded when a pattern matches its path (as found, or relative to the working directory)
    or one of its folders' names: `--exclude 'k8s/**'`, `--exclude '*.generated.yaml'`, `--exclude charts`."""
    if not patterns:
        return False
    import fnmatch

    candidates = {Path(path).as_posix()}
    try:
        candidates.add(Path(os.path.abspath(path)).relative_to(os.getcwd()).as_posix())
    except ValueError:
        pass
    parts = Path(path).parts
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            return True
        if pattern.endswith("/**") and any(c == pattern[:-3] or c.startswith(pattern[:-2]) for c in candidates):
            return True
        if any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def expand_paths(paths: list[str], exclude: list[str] | None = None) -> list[str]:
    """Files as given, directories searched for *.yaml/*.yml, glob patterns expanded, then the --exclude
    patterns taken out. Raises on a path that matches nothing."""
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
    return [f for f in files if not (f in seen or seen.add(f)) and not _excluded(f, exclude or [])]


def validate(
    paths: Annotated[list[str], typer.Argument(help="Spec files, directories (every *.yaml/*.yml below) or globs.")],
    fmt: Annotated[ErrorFormat, typer.Option("--format", "-f", help="text, json or github annotations.")] = ErrorFormat.text,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", metavar="GLOB", help="Skip files matching this pattern, or inside folders matching it (repeatable), e.g. --exclude 'charts/**'.")] = None,
) -> None:
    """Check specs: schema, names, graph and shapes. Prints every error with file:line:column.

    Example: specc validate specs/ --exclude 'specs/drafts/**' --format github
    """
    from .spec import load_spec, render

    files = expand_paths(paths, exclude)
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


def _load_or_exit(spec_path: str, fmt: str = "text", overrides: list[str] | None = None):
    from .spec import load_spec, render

    if not os.path.exists(spec_path):
        raise _usage(f"no such file: {spec_path}")
    if os.path.isdir(spec_path):
        raise _usage(f"{spec_path} is a directory; give one spec file")
    if overrides:
        from .spec.overrides import load_spec_with_overrides

        spec, errors = load_spec_with_overrides(spec_path, overrides)
    else:
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
    """Print the Keras-style summary of a spec: shapes and parameter counts, no data needed.

    Example: specc summary specs/digits_cnn.yaml --expand-nested
    """
    from .spec.schema import FitDef
    from .summary import summary_json, summary_text

    spec = _load_or_exit(spec_path, fmt.value)
    batch = (spec.fit or FitDef()).batch_size  # the schema holds the default
    if fmt is SummaryFormat.json:
        _echo(json.dumps(summary_json(spec.graph, batch, spec.instances), indent=2))
    else:
        _echo(summary_text(spec.graph, expand_nested, show_trainable, batch, instances=spec.instances), nl=False)


def expand(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="A spec file.")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a spec value first: --set vars.width=128 (repeatable).")] = None,
) -> None:
    """Print the spec with its blocks, repeats, variables, includes and shared layers expanded: the flat v1
    spec the compiler sees (generated names, every layer's `inputs`).

    Example: specc expand specs/zoo/resnet50.yaml --set vars.size=64
    """
    from .spec.expand import expanded_yaml

    _echo(expanded_yaml(_load_or_exit(spec_path, overrides=overrides or [])), nl=False)


def schema(
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of the spec format, for editor completion and checking.

    Example: specc schema -o specc.schema.json
    """
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
    procs: Annotated[int | None, typer.Option("--procs", min=1, help="Train data-parallel on this many processes (MPI; needs the mpi extra). Under mpiexec/srun, leave it out.")] = None,
) -> None:
    """Train a spec; results go to a new run directory (runs/<name>/<timestamp>/).

    Example: specc train specs/digits_mlp.yaml --set fit.epochs=3
    """
    if spec_path is None and resume is None:
        raise _usage("give a SPEC to train, or --resume RUN_DIR")
    if spec_path is not None and resume is not None:
        raise _usage("give either a SPEC or --resume RUN_DIR, not both")
    if resume is not None and not os.path.isdir(resume):
        raise _usage(f"no such run directory: {resume}")
    if seed is not None and seed < 0:
        raise _usage(f"--seed must be a non-negative integer (as a spec's `seed`), got {seed}")
    if procs is not None and procs > 1:
        raise SystemExit(_launch(procs, spec_path, overrides, out, resume, seed, threads, quiet))
    from .train.session import Options
    from .train.session import train as run_training

    code = run_training(Options(spec_path or "", overrides or [], out, resume, seed, threads, quiet))
    raise SystemExit(code)


def _launch(procs, spec_path, overrides, out, resume, seed, threads, quiet) -> int:
    """`specc train --procs N ...`: the same command as N MPI processes (specc/distributed.py)."""
    from . import distributed

    if distributed.launched_size() > 1:
        raise _usage("--procs starts the processes itself; under mpiexec or srun, leave it out")
    argv = ["train", *([spec_path] if spec_path else []), *[a for o in overrides or [] for a in ("--set", o)],
            "--out", out, *(["--resume", resume] if resume else []), *(["--seed", str(seed)] if seed is not None else []),
            *(["--threads", str(threads)] if threads else []), *(["--quiet"] if quiet else [])]
    try:
        return distributed.launch(procs, argv)
    except distributed.Unavailable as exc:
        raise _usage(str(exc)) from None


def evaluate(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="The spec the weights belong to.")],
    weights: Annotated[str, typer.Option("--weights", metavar="RUN_DIR", help="A run directory or a weights .npz.")],
    input_path: Annotated[str | None, typer.Option("--input", help="An .npz with arrays x and y (default: the spec's test data).")] = None,
    fmt: Annotated[SummaryFormat, typer.Option("--format", "-f", help="text or json.")] = SummaryFormat.text,
) -> None:
    """Print the loss and metrics of trained weights on the spec's test data (or a given file).

    Example: specc evaluate specs/digits_mlp.yaml --weights runs/digits_mlp/20261207T101500Z
    """
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
    """Write predictions (class labels and probabilities for classifiers) to .npz or .csv.

    Example: specc predict specs/digits_mlp.yaml --weights runs/digits_mlp/20261207T101500Z --input x.npz
    """
    if not os.path.isfile(spec_path):
        raise _usage(f"no such file: {spec_path}")
    from .train.session import predict as run_predict

    raise SystemExit(run_predict(spec_path, weights, input_path, out))


def export(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="The spec the weights belong to.")],
    weights: Annotated[str, typer.Option("--weights", metavar="RUN_DIR", help="A run directory or a weights .npz.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The .onnx file to write (never overwritten).")],
) -> None:
    """Export the model with trained weights (and the run's input normalisation) to an ONNX file.

    Example: specc export specs/digits_mlp.yaml --weights runs/digits_mlp/20261207T101500Z -o digits.onnx
    """
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
    inference: Annotated[bool, typer.Option("--inference", help="Time one inference batch (what predict runs) step by step instead.")] = False,
) -> None:
    """Time one training step, layer by layer, on synthetic inputs (no data, no training): forward and
    backward ms, GFLOP/s and % of the machine's measured peak, bytes moved (an estimate), share of the
    step; then the loss, the optimizer step and the framework overhead.

    Example: specc time specs/digits_cnn.yaml --batch 64 --threads 1
    """
    spec = _load_or_exit(spec_path, fmt.value)
    from .profile import DEFAULT_ITERS, run

    if inference:
        from .infer_profile import run
    raise SystemExit(run(spec, batch, iters or DEFAULT_ITERS, threads, fmt.value))


class DrawFormat(str, Enum):
    svg = "svg"
    png = "png"
    mermaid = "mermaid"
    dot = "dot"


class Direction(str, Enum):
    TB = "TB"
    LR = "LR"


def draw(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="A spec file.")],
    fmt: Annotated[DrawFormat | None, typer.Option("--format", "-f", help="svg, png, mermaid or dot (default: from --out's suffix, else svg).")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write to this file (replaced if it exists) instead of stdout; png needs it.")] = None,
    direction: Annotated[Direction, typer.Option("--direction", help="TB (top to bottom) or LR (left to right).")] = Direction.TB,
    expand_nested: Annotated[bool, typer.Option("--expand-nested", help="Draw the layers inside nested blocks, as clusters.")] = False,
    show_params: Annotated[bool, typer.Option("--show-params", help="Add each layer's parameter count.")] = False,
    show_trainable: Annotated[bool, typer.Option("--show-trainable", help="Mark each layer trainable or frozen.")] = False,
) -> None:
    """Draw the model: a box per layer with its name, type and output shape, edges for the graph.

    SVG and PNG are laid out by specc itself (no Graphviz needed); Mermaid renders in GitHub/GitLab
    Markdown; DOT is for Graphviz.

    Example: specc draw specs/functional_two_inputs.yaml --format mermaid
    """
    from .draw import drawing, format_for, png, render

    chosen = fmt.value if fmt else (format_for(out) or "svg")
    if chosen == "png" and not out:
        raise _usage("--format png writes a binary image: give the file with --out, e.g. -o model.png")
    spec = _load_or_exit(spec_path)
    picture = drawing(spec.graph, None, expand_nested, show_params, show_trainable, spec.instances)
    if out is None:
        _echo(render(picture, chosen, direction.value), nl=False)
        return
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        if chosen == "png":
            png(picture, tmp, direction.value)
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(render(picture, chosen, direction.value))
        os.replace(tmp, out)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _usage(f"cannot write {out}: {exc.strerror}") from None
    _echo(f"wrote {out} ({chosen})", err=True)


def import_(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="A Keras 3 model: a .keras archive, or the JSON of model.to_json() (or an archive's config.json).")],
    out: Annotated[str | None, typer.Option("--out", "-o", help="The spec to write (default: <model name>.yaml here).")] = None,
    weights: Annotated[str | None, typer.Option("--weights", metavar="FILE", help="Keras weights (.weights.h5) for a JSON config; a .keras archive carries its own.")] = None,
    weights_out: Annotated[str | None, typer.Option("--weights-out", metavar="FILE", help="Where the weights go, in specc's .npz format (default: next to the spec, <stem>.weights.npz).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the spec and weights files if they exist.")] = False,
    fmt: Annotated[SummaryFormat, typer.Option("--format", "-f", help="text or json (for the list of problems).")] = SummaryFormat.text,
) -> None:
    """Convert a Keras 3 model into a specc spec (and its weights into specc's .npz), or list every layer and argument specc cannot express, with its place in the Keras config.

    Example: specc import model.keras -o model.yaml
    """
    for path, what in ((source, "SOURCE"), (weights, "--weights")):
        if path is not None and not os.path.isfile(path):
            raise _usage(f"no such file: {path} ({what})")
    from .interop.keras_import import ImportFailed, import_model

    target = out
    try:
        imported = import_model(source, weights, os.path.basename(out) if out else "spec.yaml")
    except ImportFailed as exc:
        if fmt is SummaryFormat.json:
            _echo(json.dumps([{"file": exc.source, "where": p.where, "layer": p.layer, "message": p.message}
                              for p in exc.problems], indent=2))
        else:
            for p in exc.problems:
                _echo(f"{exc.source}: {p}", err=True)
        n = len(exc.problems)
        _echo(f"{n} problem{'s' * (n != 1)}: nothing written", err=True)
        raise SystemExit(EXIT_INVALID) from None
    except ImportError as exc:  # h5py missing for the weights
        raise _usage(str(exc)) from None
    target = out or f"{imported.spec.name}.yaml"
    stem = target[:-5] if target.endswith(".yaml") else target[:-4] if target.endswith(".yml") else target
    npz = weights_out or f"{stem}.weights.npz"
    written = [target] + ([npz] if imported.weights is not None else [])
    for path in written:
        if os.path.exists(path) and not force:
            raise _usage(f"{path} exists; give another --out/--weights-out, or --force to replace it")
    from .train.run import atomic_write_npz, atomic_write_text

    try:
        atomic_write_text(target, imported.spec_text)
        if imported.weights is not None:
            atomic_write_npz(npz, imported.weights)
    except OSError as exc:
        raise _usage(f"cannot write {exc.filename or target}: {exc.strerror}") from None
    layers = sum(len(n.leaves()) for n in imported.spec.graph.nodes)
    _echo(f"wrote {target}: {layers} layers, {imported.params:,} parameters"
          + (f"; weights in {npz}" if imported.weights is not None else " (no weights in the source)"), err=True)


COMMANDS = (validate, summary, expand, schema, train, evaluate, predict, export, time, draw, import_)


def _versions() -> str:
    """specc's and its numeric stack's versions, read from the installed metadata (no Numba import)."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("specc", "numpy", "numba", "llvmlite"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    import platform

    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def _version_callback(value: bool) -> None:
    if value:
        _echo(_versions())
        raise SystemExit(EXIT_OK)


def _root(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version_callback, is_eager=True, help="Print the versions of specc, NumPy, Numba and llvmlite, and exit.")] = False,
) -> None:
    """specc: declarative deep-learning models from YAML specs: validate, summarise, draw, train.

    Example: specc train specs/digits_mlp.yaml
    """


def _build_app() -> typer.Typer:
    global typer  # the commands' annotations name typer; they are read from this module's globals
    import typer

    app = typer.Typer(
        name="specc",
        add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    for command in COMMANDS:
        app.command(name=command.__name__.rstrip("_"))(command)
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
# command: (function, {option: (parameter, choices, or list for a repeatable text)} for options with a value,
#           {flag: parameter},
#           the positional parameter, whether it takes several)
_FAST = {
    "summary": (summary, {"--format": ("fmt", SummaryFormat), "-f": ("fmt", SummaryFormat)},
                {"--expand-nested": "expand_nested", "--show-trainable": "show_trainable"}, "spec_path", False),
    "validate": (validate, {"--format": ("fmt", ErrorFormat), "-f": ("fmt", ErrorFormat),
                            "--exclude": ("exclude", list)}, {}, "paths", True),
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
            if choices is list:  # repeatable, any text
                if value is None or value.startswith("-"):
                    return None
                kwargs.setdefault(parameter, []).append(value)
                continue
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
