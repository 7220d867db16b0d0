"""Keras-style progress: `Epoch 3/20`, then a bar with step count, elapsed/ETA, time per step and running
metrics, redrawn in place on a terminal; one plain line per epoch when output is not a terminal, so CI
logs stay readable."""

from __future__ import annotations

import sys
import time


def _fmt_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(seconds)}s"


def _fmt_per_step(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


def format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if isinstance(v, float))


class Progress:
    """verbose: 0 silent, 1 bar (plain lines when not a terminal), 2 one line per epoch."""

    WIDTH = 20

    def __init__(self, verbose: int | str = "auto", stream=None):
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.verbose = 1 if verbose == "auto" else int(verbose)
        self.bar = self.verbose == 1 and self.tty

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        self.steps, self.start, self.last_draw = steps, time.perf_counter(), 0.0
        if self.verbose:
            self._write(f"Epoch {epoch + 1}/{epochs}\n")

    def step(self, step: int, logs: dict) -> None:
        if not self.bar:
            return
        now = time.perf_counter()
        if step < self.steps and now - self.last_draw < 0.1:  # redraw at most 10 times a second
            return
        self.last_draw = now
        elapsed = now - self.start
        done = int(self.WIDTH * step / self.steps)
        bar = "━" * done + "\x1b[2m" + "━" * (self.WIDTH - done) + "\x1b[0m"
        per = elapsed / max(step, 1)
        when = _fmt_time(elapsed) if step == self.steps else f"{_fmt_time(per * (self.steps - step))} ETA"
        shown = f" - {format_logs(logs)}" if format_logs(logs) else ""
        self._write(f"\r{step}/{self.steps} {bar} {when} {_fmt_per_step(per)}{shown}\x1b[K")

    def epoch_end(self, logs: dict) -> None:
        if not self.verbose:
            return
        elapsed = time.perf_counter() - self.start
        line = f"{self.steps}/{self.steps} - {_fmt_time(elapsed)} {_fmt_per_step(elapsed / max(self.steps, 1))}"
        if format_logs(logs):
            line += f" - {format_logs(logs)}"
        self._write(("\r" + line + "\x1b[K\n") if self.bar else line + "\n")

    def begin(self, steps: int) -> None:
        """A bar without an epoch line: evaluate() and predict() (Keras prints just the bar)."""
        self.steps, self.start, self.last_draw = steps, time.perf_counter(), 0.0

    def end(self, logs: dict) -> None:
        self.epoch_end(logs)

    def message(self, text: str) -> None:
        if self.verbose:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
