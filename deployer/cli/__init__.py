"""cli: the `deployer` command. Click commands by subject, output helpers, shared options.

Parses, calls ops/build/discovery, prints (tables or --json); errors print as
one line and exit with their code. Nothing below imports it.
"""
