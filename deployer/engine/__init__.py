"""engine: one Docker engine.

How to reach it (connect: unix, ssh with pinned host keys, tcp + TLS), what runs
on it (state: plain data), what must change (plan: pure, no I/O), carrying the
changes out health-gated (apply), and the session that ties them together for
one node and one command (connect once, read once, apply, close). May import
only the shared modules.
"""
