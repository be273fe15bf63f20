"""A running container's logs and commands run in it, over the node's normal connection.

``log_frames`` streams a container's log as (stream, bytes) frames, stdout
and stderr kept apart (the engine multiplexes them; a container with a tty
has only one stream, reported as stdout). ``LineSplitter`` turns the chunks
into whole lines (a chunk may end mid-line, or hold many lines). ``run_exec``
runs a command in a container, its output streamed, and returns its exit code;
``exec_socket`` opens one for an interactive session (the caller forwards the
terminal).

docker-py's ``logs`` merges the two streams; here the response body is read
frame by frame (``read_frames``) so each line goes where it came from.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Callable, Iterator

from deployer.engine.connect import import_docker

if TYPE_CHECKING:  # pragma: no cover
    import docker as docker_types

docker = import_docker()

STDOUT, STDERR = 1, 2
CHUNK = 65536


class LineSplitter:
    """Bytes in chunks -> whole lines (with their newline); what is left after the last newline waits."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._rest + chunk
        if b"\n" not in data:
            self._rest = data
            return []
        head, _, self._rest = data.rpartition(b"\n")
        return [line + b"\n" for line in head.split(b"\n")]

    def flush(self) -> list[bytes]:
        """The last line when the stream ended without a newline (given one)."""
        rest, self._rest = self._rest, b""
        return [rest + b"\n"] if rest else []


def read_frames(read: Callable[[int], bytes]) -> Iterator[tuple[int, bytes]]:
    """The engine's multiplexed stream as (stream, data): each frame is an 8-byte header (stream type,
    three zero bytes, big-endian length) and that many bytes. Ends at end of stream (or a cut-off frame)."""
    while True:
        header = _read_exactly(read, 8)
        if len(header) < 8:
            return
        length = int.from_bytes(header[4:8], "big")
        data = _read_exactly(read, length)
        if data:
            yield (STDERR if header[0] == STDERR else STDOUT), data
        if len(data) < length:
            return


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        part = read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class LogStream:
    """One container's log, opened: iterate for (stream, chunk); ``close`` ends a followed stream from another thread."""

    def __init__(self, client: "docker_types.DockerClient", cid: str, *, follow: bool, tail: int | None,
                 since: float | None, timestamps: bool):
        api = client.api
        tty = bool((api.inspect_container(cid).get("Config") or {}).get("Tty"))
        params = {"stdout": 1, "stderr": 1, "follow": int(follow), "timestamps": int(timestamps),
                  "tail": "all" if tail is None else str(tail)}
        if since is not None:
            params["since"] = f"{since:.9f}"
        self._response = api._get(api._url("/containers/{0}/logs", cid), params=params, stream=True)
        api._raise_for_status(self._response)
        if follow:  # a followed log may be quiet for longer than any call timeout
            api._disable_socket_timeout(api._get_raw_response_socket(self._response))
        self._tty = tty

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        raw = self._response.raw  # the body, HTTP chunking undone
        if self._tty:
            while True:
                data = raw.read1(CHUNK) if hasattr(raw, "read1") else raw.read(CHUNK)
                if not data:
                    return
                yield STDOUT, data
        yield from read_frames(raw.read)

    def close(self) -> None:
        try:
            self._response.close()
        except Exception:  # closing from another thread while it reads: the reader ends either way
            pass


#: How the engine's own error begins when it could not start an exec'd command (written into its output).
ENGINE_EXEC_ERROR = (b"OCI runtime exec failed", b"exec failed")


def run_exec(client: "docker_types.DockerClient", cid: str, cmd: list[str],
             write: Callable[[int, bytes], None], stdin: bytes | None = None) -> tuple[int, str | None]:
    """Run ``cmd`` in the container; its output goes to ``write(stream, chunk)``.

    Returns (exit code, None), or (exit code, the engine's message) when the command could not be started
    (a missing or not executable command: the engine writes its error into the output and never starts a
    process). With ``stdin`` (bytes), the command reads them, then end of file."""
    api = client.api
    exec_id = api.exec_create(cid, cmd, stdin=stdin is not None, tty=False)["Id"]
    held: list[bytes] = []  # output that may be the engine's error, until the exec says whether it started
    wrote = False

    def take(kind: int, data: bytes) -> None:
        nonlocal wrote
        if kind == STDOUT and (held or (not wrote and data.startswith(ENGINE_EXEC_ERROR))):
            held.append(data)
            return
        wrote = True
        write(kind, data)

    if stdin is None:
        for out, err in api.exec_start(exec_id, stream=True, demux=True):
            if out:
                take(STDOUT, out)
            if err:
                take(STDERR, err)
    else:
        sock = api.exec_start(exec_id, socket=True)
        raw = getattr(sock, "_sock", sock)
        try:
            _send_all(raw, stdin)
            _shutdown_write(raw)
            for kind, data in docker.utils.socket.frames_iter(sock, False):
                take(STDERR if kind == STDERR else STDOUT, data)
        finally:
            sock.close()
    info = api.exec_inspect(exec_id)
    code = 126 if info.get("ExitCode") is None else int(info["ExitCode"])
    if held and not info.get("Pid"):  # never started: what it wrote is the engine's error
        return code, b"".join(held).decode("utf-8", "replace")
    for data in held:
        write(STDOUT, data)
    return code, None


def exec_socket(client: "docker_types.DockerClient", cid: str, cmd: list[str], *, tty: bool, stdin: bool):
    """(exec id, raw socket) of a command started in the container for an interactive session."""
    api = client.api
    exec_id = api.exec_create(cid, cmd, stdin=stdin, tty=tty)["Id"]
    sock = api.exec_start(exec_id, socket=True, tty=tty)
    return exec_id, getattr(sock, "_sock", sock)


def exit_code(client: "docker_types.DockerClient", exec_id: str) -> int:
    """The exit code of a finished exec (126/127 as the engine set it when the command could not start)."""
    code = client.api.exec_inspect(exec_id).get("ExitCode")
    return 126 if code is None else int(code)


def _send_all(sock, data: bytes) -> None:
    send = getattr(sock, "sendall", None)
    if send is not None:
        send(data)
    else:  # pragma: no cover - a socket-like object with write only
        sock.write(data)


def _shutdown_write(sock) -> None:
    """Tell the command its stdin ended (a socket: shut the write side; a paramiko channel: shutdown_write)."""
    if hasattr(sock, "shutdown_write"):
        sock.shutdown_write()
        return
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
