"""Test infrastructure: real Docker engines (engines.py) and tiny images (images.py).

The suite runs on several pytest-xdist workers at once (parallel.py: how many, which modules go
together, the order). Every worker shares the machine with the others, so anything a test starts
must be unique to it: ephemeral loopback ports (``consul.free_port``, ``nginx.free_tcp_port``),
networks from a ``Fleet`` or ``BuildEngine`` (random tags, subnets chosen under a host-wide lock),
files under ``tmp_path``, node names from ``repos.unique_node``; session-scoped fixtures run once per
worker; teardown by recorded PID. The full rule is in parallel.py's docstring and docs/testing.md.
"""
