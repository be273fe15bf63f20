"""logs: the log lines of the services' containers, from every node of the targets, or followed live.

A route through the layers::

    choose the nodes and services of the targets           (ops.targets.selection)
    per node, nodes in parallel:
      EngineSession: connect, read the node once           (engine.session)
        (a node that cannot be reached, among several:     (``unreachable``)
         reported once, the others go on)
      the running managed container of each service        (labels, engine.state)
    per container: its log, stdout and stderr apart         (engine.containers.LogStream)
      split into whole lines, handed to ``emit``            (engine.containers.LineSplitter)

Without ``follow`` the sources are read in parallel and handed over one source
after the other, in target order (held in memory until their turn; a single
source is handed over as it is read). With ``follow`` each source has a thread;
a source whose stream ends (its container stopped, its node went away) is
reported through ``ended`` with the reason and the others go on; ``follow`` returns when every
source ended, and on KeyboardInterrupt closes every stream and lets it through.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from deployer.engine.connect import describe
from deployer.engine.containers import LineSplitter, LogStream
from deployer.engine.session import EngineSession
from deployer.engine.state import ContainerState, read_container
from deployer.errors import DeployerError, NotRunning
from deployer.model import Infrastructure, Node
from deployer.ops.targets import DEFAULT_PARALLEL, node_failure, run_parallel, selection

#: emit(source, stream, line): one whole line (bytes, with its newline) of one source; stream 1 stdout, 2 stderr.
Emit = Callable[[str, int, bytes], None]


@dataclass
class Source:
    """One container whose log is read: ``target`` is dc/node/service."""

    target: str
    session: EngineSession
    container: ContainerState


@dataclass
class LogOptions:
    follow: bool = False
    tail: int | None = None  # None: all
    since: float | None = None  # unix time
    timestamps: bool = False


def open_sources(root: Path, infra: Infrastructure, targets: list[str], stack: ExitStack,
                 parallel: int = DEFAULT_PARALLEL,
                 unreachable: Callable[[str, DeployerError], None] | None = None) -> list[Source]:
    """The running container of every selected service, each node's session entered on ``stack``.

    A node that cannot be reached raises its failure; with ``unreachable`` and more than one node
    selected, it is handed to ``unreachable(node target, the error)`` instead (in node order, after
    every node was tried) and left out: the others go on (and the list may be empty).
    NotRunning names every selected service without a running container (on the nodes reached)."""
    chosen = [e for e in selection(infra, targets) if e[1]]
    sessions: dict[str, EngineSession] = {}
    failures: dict[str, DeployerError] = {}
    lock = threading.Lock()
    tolerate = unreachable is not None and len(chosen) > 1

    def open_node(entry: tuple[Node, list, bool]) -> None:
        node = entry[0]
        session = EngineSession(node, root)
        try:
            session.__enter__()
        except Exception as exc:
            if not tolerate:
                raise node_failure(node, exc) from None
            with lock:
                failures[node.target] = node_failure(node, exc)
            return
        with lock:
            sessions[node.target] = session
            stack.callback(session.close)

    run_parallel(open_node, chosen, parallel)
    sources: list[Source] = []
    missing: list[str] = []
    for node, services, _ in chosen:
        if node.target in failures:
            if unreachable is not None:
                unreachable(node.target, failures[node.target])
            continue
        for svc in services:
            session = sessions[node.target]
            running = [c for c in session.state.for_service(svc.name) if c.running]
            target = f"{node.target}/{svc.name}"
            if not running:
                found = session.state.for_service(svc.name)
                missing.append(f"{target} ({found[0].describe()})" if found else f"{target} (no container)")
            sources.extend(Source(target, session, c) for c in running)
    if missing:
        raise NotRunning(f"not running: {', '.join(missing)}")
    if not sources and not failures:
        raise NotRunning(f"no services in {', '.join(targets) or 'the repository'}")
    return sources


def read(sources: list[Source], options: LogOptions, emit: Emit, parallel: int = DEFAULT_PARALLEL) -> None:
    """Every source's log up to now, read in parallel, handed to ``emit`` source after source
    (one source: as it comes, nothing held)."""
    if len(sources) == 1:
        try:
            return _pump(sources[0], options, emit)
        except Exception as exc:
            raise node_failure(sources[0].session.node, exc) from None
    lines: dict[int, list[tuple[int, bytes]]] = {}

    def fetch(i: int) -> None:
        got: list[tuple[int, bytes]] = []
        try:
            _pump(sources[i], options, lambda _s, stream, line: got.append((stream, line)))
        except Exception as exc:
            raise node_failure(sources[i].session.node, exc) from None
        lines[i] = got

    run_parallel(fetch, list(range(len(sources))), parallel)
    for i, source in enumerate(sources):
        for stream, line in lines[i]:
            emit(source.target, stream, line)


def follow(sources: list[Source], options: LogOptions, emit: Emit, ended: Callable[[str, str | None], None]) -> None:
    """Every source followed on a thread of its own until it ends; ``ended(source, reason or None)`` for each.

    Ctrl-C (KeyboardInterrupt in the calling thread) closes the streams and propagates."""
    streams: list[LogStream] = []
    guard = threading.Lock()
    stopping = threading.Event()  # interrupted: the streams are closed under the readers, who say nothing

    def run(source: Source) -> None:
        try:
            _pump(source, options, emit, streams, guard)
        except Exception as exc:
            if not stopping.is_set():
                ended(source.target, describe(exc))
            return
        if not stopping.is_set():
            ended(source.target, _why_ended(source))

    threads = [threading.Thread(target=run, args=(s,), name=f"logs {s.target}", daemon=True) for s in sources]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    finally:
        stopping.set()
        with guard:
            for stream in streams:
                stream.close()


def _pump(source: Source, options: LogOptions, emit: Emit, streams: list | None = None,
          guard: threading.Lock | None = None) -> None:
    stream = LogStream(source.session.client, source.container.id, follow=options.follow, tail=options.tail,
                       since=options.since, timestamps=options.timestamps)
    if streams is not None and guard is not None:
        with guard:
            streams.append(stream)
    splitters = {1: LineSplitter(), 2: LineSplitter()}
    try:
        for kind, chunk in stream:
            for line in splitters[kind].feed(chunk):
                emit(source.target, kind, line)
    finally:
        stream.close()
        for kind, splitter in splitters.items():
            for line in splitter.flush():
                emit(source.target, kind, line)



def _why_ended(source: Source) -> str | None:
    """Why a followed log ended without an error: its container stopped, or its engine went away (None: unknown)."""
    try:
        state = read_container(source.session.client, source.container.id)
    except Exception as exc:  # gone, or its engine is
        if getattr(exc, "status_code", None) == 404:
            return "the container was removed"
        return f"node {source.session.node.target} went away ({describe(exc)})"
    return None if state.running else f"the container stopped ({state.describe()})"
