"""A running container's logs and commands run in it, over the node's normal connection.

``LogStream`` streams a container's log as (stream, bytes) frames, stdout
and stderr kept apart (the engine multiplexes them; a container with a tty
has only one stream, reported as stdout). ``LineSplitter`` turns the chunks
into whole lines (a chunk may end mid-line, or hold many lines). ``run_exec``
runs a command in a container, its output streamed, and returns its exit code;
with input, ours is copied to the command as it comes (``ExecConnection``: the
attach connection of each transport, unix, TLS or an SSH channel, and how each
says "end of input" while the output goes on). ``exec_socket`` opens one for an
interactive session on a terminal (the caller forwards the terminal).

docker-py's ``logs`` merges the two streams; here the response body is read
frame by frame (``read_frames``) so each line goes where it came from.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import docker as docker_types

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
             write: Callable[[int, bytes], None], stdin: Callable[[], bytes] | None = None) -> tuple[int, str | None]:
    """Run ``cmd`` in the container; its output goes to ``write(stream, chunk)`` as it arrives.

    Returns (exit code, None), or (exit code, the engine's message) when the command could not be started
    (a missing or not executable command: the engine writes its error into the output and never starts a
    process). With ``stdin`` (a function giving the next chunk of our input as soon as there is some, b""
    at its end), the command reads it as it comes (copied on a thread of its own), then end of file."""
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
        conn = ExecConnection(api, api.exec_start(exec_id, socket=True))
        feeder = threading.Thread(target=conn.feed, args=(stdin,), name=f"exec stdin {exec_id[:12]}", daemon=True)
        try:
            feeder.start()
            for kind, data in read_frames(conn.recv):
                take(kind, data)
        finally:
            conn.close()  # a feeder still waiting for our input finds the connection closed
    info = _finished(api, exec_id)
    code = 126 if info.get("ExitCode") is None else int(info["ExitCode"])
    if held and not info.get("Pid"):  # never started: what it wrote is the engine's error
        return code, b"".join(held).decode("utf-8", "replace")
    for data in held:
        write(STDOUT, data)
    return code, None


def _finished(api, exec_id: str, wait: float = 10.0) -> dict:
    """The exec's inspect once it has stopped running (its output ends a moment before the engine records
    the exit code); after ``wait`` seconds, as it is."""
    deadline = time.monotonic() + wait
    while True:
        info = api.exec_inspect(exec_id)
        if not info.get("Running") or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


class ExecConnection:
    """The connection of an attached exec (``exec_start(socket=True)``), whichever the transport:

    * unix: docker-py gives the ``SocketIO`` of the HTTP response; its ``_sock`` is the socket;
    * tcp+TLS: the ``SSLSocket`` itself. End of input is a TCP half-close under the TLS layer
      (``socket.socket.shutdown``): ``SSLSocket.shutdown`` would drop the TLS layer for reading too,
      and the engine (Go's TLS) reads a half-close at a record boundary as end of file;
    * ssh: the paramiko ``Channel``; end of input is ``shutdown_write`` (an SSH EOF, which
      ``docker system dial-stdio`` on the node passes on as a half-close to the engine).

    ``recv`` reads in one thread while ``feed`` writes in another (sockets and paramiko channels
    allow that)."""

    def __init__(self, api, handle) -> None:
        self._handle = handle  # holds the HTTP response (docker-py sets handle._response): closed with it
        self.sock = getattr(handle, "_sock", handle)
        api._disable_socket_timeout(handle)  # an interactive command may be quiet for longer than any timeout
        self._closed = threading.Event()

    def recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except (ssl.SSLEOFError, ConnectionResetError):  # the engine went without a TLS close: the end
            return b""
        except OSError:
            if self._closed.is_set():
                return b""
            raise

    def feed(self, read: Callable[[], bytes]) -> None:
        """Copy ``read()``'s chunks to the command until b"", then end its input. Stops quietly when the
        command ended first (the engine closed the connection) or the connection was closed."""
        try:
            while not self._closed.is_set():
                data = read()
                if not data:
                    break
                self.sock.sendall(data)
            if not self._closed.is_set():
                self.close_stdin()
        except (OSError, EOFError):
            pass
        except Exception:  # paramiko's SSHException on a closed channel
            if not self._closed.is_set():
                raise

    def close_stdin(self) -> None:
        """Tell the command its input ended; reading its output goes on."""
        sock = self.sock
        if hasattr(sock, "shutdown_write"):  # paramiko
            sock.shutdown_write()
        elif isinstance(sock, ssl.SSLSocket):
            socket.socket.shutdown(sock, socket.SHUT_WR)
        else:
            sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        for thing in (self.sock, self._handle, getattr(self._handle, "_response", None)):
            try:
                if thing is not None:
                    thing.close()
            except Exception:  # closing what the engine closed already
                pass


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
