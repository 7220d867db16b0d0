"""`specc export SPEC --weights RUN_DIR|weights.npz -o model.onnx`: the spec's graph with trained weights (and
the run's input normalisation, `data.normalize`) as one ONNX file that takes raw features."""

from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def run(spec_path: str, weights: str, out: str) -> int:
    from ..train.run import out_problem
    from ..train.session import Failed, _model_from_run, _print_errors, _spec_error

    try:
        if os.path.lexists(out):  # before any work
            raise Failed(f"specc: error: -o {out} exists; choose another path or remove it first (specc never "
                         f"overwrites files)", EXIT_USAGE)
        if os.path.isdir(out) or out.endswith(os.sep):
            raise Failed(f"specc: error: -o {out} is a directory; give a file name such as model.onnx", EXIT_USAGE)
        folder = os.path.dirname(os.path.abspath(out))
        problem = out_problem(folder) if os.path.isdir(folder) else f"no such directory: {folder}"
        if problem:
            raise Failed(f"specc: error: -o {out}: {problem}", EXIT_USAGE)
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise Failed("specc: error: specc export needs the onnx package: pip install 'specc[onnx]'",
                         EXIT_USAGE) from None
        if not os.path.exists(weights):
            raise Failed(f"specc: error: --weights: no such file or run directory: {weights}", EXIT_USAGE)
        spec, engine, normalization = _model_from_run(spec_path, weights)
        from . import ExportError
        from .to_onnx import build_model, write_new

        try:
            model = build_model(engine, spec.name, normalization)
        except ExportError as exc:
            path = _layer_path(spec, exc.layer)
            if path is None:
                raise Failed(f"specc: error: {exc}") from None
            _print_errors([_spec_error(spec, path, f"{exc}; nothing was written")])
            return EXIT_INVALID
        try:
            write_new(out, model)
        except FileExistsError:
            raise Failed(f"specc: error: -o {out} exists; choose another path or remove it first (specc never "
                         f"overwrites files)", EXIT_USAGE) from None
        except OSError as exc:
            raise Failed(f"specc: error: cannot write {out}: {exc.strerror or exc}", EXIT_INVALID) from None
    except Failed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    inputs = ", ".join(n.name for n in spec.graph.inputs)
    norm = " (with the run's input normalisation)" if normalization else ""
    print(f"Exported {spec.name} to {out}: inputs {inputs}{norm}; outputs {', '.join(spec.graph.outputs)}")
    return EXIT_OK


def _layer_path(spec, layer_name: str | None):
    """Where the layer `layer_name` is in the spec (nested blocks searched), or None."""
    if layer_name is None:
        return None
    for node in spec.graph.nodes:
        for leaf in [node, *node.leaves()]:
            if leaf.name == layer_name:
                return leaf.path
    return None
