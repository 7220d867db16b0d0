"""specc's own fuzzers: mutants of specs, data files, weights files and run directories run through the real
CLI in subprocesses, each judged against the CLI's contract (tests/fuzz/runner.py).

`python -m tests.fuzz --minutes 30` runs them for a while and reports counts and failures (see
tests/fuzz/__main__.py); tests/test_fuzz_cli.py runs a fixed set of them in CI.
"""
