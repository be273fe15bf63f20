"""Loopback helpers for connection-failure tests: traffic stays on 127.0.0.1."""

from __future__ import annotations

import socket
import threading


def silent_port() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback server that accepts connections and never sends a byte: (server, accepted sockets).

    Close the server to stop it; its port is ``server.getsockname()[1]``.
    """
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, accepted
