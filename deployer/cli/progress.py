"""Where a long command's progress goes: plain lines, a live view, or JSON events (``--progress``).

The operations report progress through a plain callable, ``progress(text)``;
a node's steps go through ``ops.targets.target_progress(progress, target)``,
which asks the sink for a per-target callable (``for_target``) and else
prefixes the text with ``target: ``. A per-target callable may also take a
pull's or push's layer progress (``layer(layer, status, current, total)``);
the engine reports docker's streamed pull events there when it is present.

The sinks, picked by ``--progress`` (:func:`choose_mode`):

- ``plain``: the lines the commands always printed, on stderr, indented by two
  spaces (``  dc/node: step``). The default when stderr is not a terminal, or
  ``CI`` is set.
- ``live``: on a terminal, one line per target updated in place (a spinner,
  the target, its current step, a bar while layers are pulled or pushed, the
  time it has taken), drawn by ``rich`` on stderr; a summary line per target
  at the end. ``rich`` is imported only here, and only when this sink is made.
- ``json``: one JSON object a line on stderr per event (stdout keeps the
  result, ``--json``'s document included):
  ``{"t": unix time, "target": "dc/node" or null, "event": "step"|"layer"|"done"|"failed", "step": text}``,
  ``layer`` events also carry ``layer``, ``status``, ``current``, ``total``
  (bytes, null when docker gave none); at the end one ``done`` or ``failed``
  event per target and one with ``"target": null`` for the whole command.
  Printed even with ``--json``/``-q``: it was asked for by name.

Colour: none when ``NO_COLOR`` is set to anything non-empty (https://no-color.org)
or ``--no-color`` was given (:func:`colour_allowed`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from typing import Any, Callable, TextIO

import click

from deployer.cli.options import NO_COLOR_META, PROGRESS_META, SINK_META, colour_allowed

__all__ = ["NO_COLOR_META", "PROGRESS_META", "SINK_META", "colour_allowed", "choose_mode", "make_sink",
           "PlainSink", "JsonSink", "LiveSink", "NullSink"]

#: A line an operation prefixed with its target itself (``dc/node: ...``, ``dc/node/service: ...``).
TARGET_PREFIX = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+(?:/[\w.-]+)?): (.*)$", re.S)


def choose_mode(mode: str, stream: Any = None, environ: dict | None = None) -> str:
    """``auto`` -> ``live`` when ``stream`` (stderr) is a terminal, TERM is not ``dumb`` and CI is unset; else ``plain``."""
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if tty and not environ.get("CI") and environ.get("TERM", "") != "dumb":
        return "live"
    return "plain"


class NullSink:
    """Nothing shown (``-q``, ``--json``)."""

    def __call__(self, text: str) -> None:
        pass

    def close(self, error: str | None = None, failed: list[str] | None = None) -> None:
        pass


class PlainSink:
    """Today's lines: each message indented by two spaces on stderr (a target's with ``target: `` before it)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def __call__(self, text: str) -> None:
        click.echo(f"  {text}", err=True, file=self.stream)

    def close(self, error: str | None = None, failed: list[str] | None = None) -> None:
        pass


class _TargetProgress:
    """A sink's callable for one target: steps, and the layer progress of pulls and pushes."""

    def __init__(self, sink: "_EventSink", target: str):
        self.sink, self.target = sink, target

    def __call__(self, text: str) -> None:
        self.sink.step(self.target, text)

    def layer(self, layer: str, status: str, current: int | None, total: int | None) -> None:
        self.sink.layer(self.target, layer, status, current, total)


class _EventSink:
    """What the JSON and live sinks share: a message is a step of its target (or of the command)."""

    def __call__(self, text: str) -> None:
        m = TARGET_PREFIX.match(text)
        if m:
            self.step(m.group(1), m.group(2))
        else:
            self.step(None, text)

    def for_target(self, target: str) -> Callable[[str], None]:
        return _TargetProgress(self, target)

    def step(self, target: str | None, text: str) -> None:
        raise NotImplementedError

    def layer(self, target: str, layer: str, status: str, current: int | None, total: int | None) -> None:
        raise NotImplementedError


class JsonSink(_EventSink):
    """One JSON object a line per event, on stderr; layer events at most one a second per layer and status."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.time):
        self.stream = stream
        self.clock = clock
        self.targets: list[str] = []
        self._layers: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _emit(self, doc: dict) -> None:
        with self._lock:
            if doc.get("target") and doc["target"] not in self.targets:
                self.targets.append(doc["target"])
            click.echo(json.dumps({"t": round(self.clock(), 3), **doc}), err=True, file=self.stream)

    def step(self, target: str | None, text: str) -> None:
        self._emit({"target": target, "event": "step", "step": text})

    def layer(self, target: str, layer: str, status: str, current: int | None, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:  # nodes report from their own threads
            last, when = self._layers.get((target, layer), ("", 0.0))
            if status == last and now - when < 1.0:
                return
            self._layers[(target, layer)] = (status, now)
        self._emit({"target": target, "event": "layer", "step": f"{layer}: {status}", "layer": layer,
                    "status": status, "current": current, "total": total})

    def close(self, error: str | None = None, failed: list[str] | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        failed = failed or []
        for target in list(self.targets):
            bad = target in failed or bool(error and error.startswith((f"{target}:", f"{target}/")))
            self._emit({"target": target, "event": "failed" if bad else "done", "step": "failed" if bad else "done"})
        self._emit({"target": None, "event": "failed" if error or failed else "done", "step": error or "done"})


def _only_with_total(column: Any) -> Any:
    """``column`` (a bar, bytes done/total) drawn only while the task has a total: a pull or a push."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class WhileLayers(ProgressColumn):
        def render(self, task: Any) -> Any:
            return column.render(task) if task.total else Text("")

    return WhileLayers()


class LiveSink(_EventSink):
    """One line per target, updated in place by rich on stderr; a summary line per target at the end."""

    COMMAND = "deployer"  # the line of steps that belong to no target (the lock, the pull, the commit)

    def __init__(self, console: Any = None, colour: bool = True, refresh: float = 8):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True, no_color=not colour, highlight=False)
        self.progress = Progress(
            SpinnerColumn(finished_text="-"),
            TextColumn("[bold]{task.fields[target]}[/]" if colour else "{task.fields[target]}"),
            TextColumn("{task.description}"),
            _only_with_total(BarColumn(bar_width=20)),
            _only_with_total(DownloadColumn()),
            TimeElapsedColumn(),
            console=self.console, refresh_per_second=refresh, transient=True, redirect_stdout=False,
            redirect_stderr=False)
        self.colour = colour
        self._tasks: dict[str, Any] = {}
        self._steps: dict[str, str] = {}
        self._started: dict[str, float] = {}
        self._layers: dict[str, dict[str, tuple[int, int]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.progress.start()

    def _task(self, target: str, text: str = "") -> Any:
        if target not in self._tasks:
            self._tasks[target] = self.progress.add_task(text, target=target, total=None)
            self._started[target] = time.monotonic()
            self._layers[target] = {}
        return self._tasks[target]

    def step(self, target: str | None, text: str) -> None:
        from rich.markup import escape

        target = target or self.COMMAND
        with self._lock:
            if self._closed:
                return
            line = escape(" ".join(text.split()))
            task = self._task(target, line)
            self._steps[target] = text
            self._layers[target] = {}  # a new step: the bar of the last pull or push is done
            self.progress.update(task, description=line, total=None, completed=0)

    def layer(self, target: str, layer: str, status: str, current: int | None, total: int | None) -> None:
        from rich.markup import escape

        with self._lock:
            if self._closed:
                return
            task = self._task(target)
            layers = self._layers[target]
            done, size = layers.get(layer, (0, 0))
            if total:
                size = total
            if current is not None:
                done = current
            if status.lower() in ("download complete", "pull complete", "pushed", "layer already exists",
                                  "already exists", "mounted from"):
                done = size
            layers[layer] = (done, size)
            completed = sum(d for d, _ in layers.values())
            whole = sum(s for _, s in layers.values()) or None
            verb = self._steps.get(target, "layers")
            self.progress.update(task, description=escape(f"{verb} ({len(layers)} layers)"), total=whole,
                                 completed=completed)

    def above(self, text: str) -> None:
        """A line of the result while the view runs: above it when stdout is the terminal too, else on stdout."""
        if sys.stdout.isatty():
            from rich.markup import escape

            self.progress.console.print(escape(text), highlight=False)
        else:
            click.echo(text)

    def close(self, error: str | None = None, failed: list[str] | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.progress.stop()
        failed = failed or []
        for target in self._tasks:
            seconds = time.monotonic() - self._started[target]
            step = self._steps.get(target, "")
            bad = target in failed or bool(error and error.startswith((f"{target}:", f"{target}/")))
            from rich.markup import escape

            if self.colour:
                mark, name = ("[red]FAILED[/]" if bad else "[green]done[/]"), f"[bold]{escape(target)}[/]"
            else:
                mark, name = ("FAILED" if bad else "done"), escape(target)
            self.console.print(f"  {mark} {name} {escape(step)} ({seconds:.1f}s)", highlight=False)


def make_sink(mode: str, quiet: bool) -> Any:
    """The sink for ``--progress mode``; ``quiet`` (-q, --json) shows nothing unless ``json`` was asked for."""
    chosen = choose_mode(mode)
    if chosen == "json":
        return JsonSink()
    if quiet:
        return NullSink()
    if chosen == "live":
        return LiveSink(colour=colour_allowed())
    return PlainSink()
