"""An interactive exec on our terminal (``deployer exec -it``): raw mode, keys to the command, its output to us.

The terminal is the CLI's: it is put in raw mode for the session and restored
after, whatever happens. The engine's socket (unix, TLS or an SSH channel) and
our stdin are watched with ``select``; the command's terminal is sized as ours.
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import termios
import tty

CHUNK = 4096


def interactive_exec(client, cid: str, command: list[str], forward_stdin: bool) -> int:
    """Run ``command`` in the container on a terminal of its own, wired to ours; its exit code."""
    from deployer.engine import containers

    exec_id, sock = containers.exec_socket(client, cid, command, tty=True, stdin=forward_stdin)
    size = shutil.get_terminal_size()
    try:
        client.api.exec_resize(exec_id, height=size.lines, width=size.columns)
    except Exception:  # the command may have ended already; the size is a courtesy
        pass
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    out = sys.stdout.buffer
    try:
        tty.setraw(fd)
        watched = [sock, fd] if forward_stdin else [sock]
        while True:
            ready, _, _ = select.select(watched, [], [])
            if sock in ready:
                data = sock.recv(CHUNK)
                if not data:
                    break
                out.write(data)
                out.flush()
            if fd in ready:
                data = os.read(fd, CHUNK)
                if not data:
                    watched = [sock]
                    continue
                sock.sendall(data)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sock.close()
    return containers.exit_code(client, exec_id)
