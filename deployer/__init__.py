"""deployer: deploy Docker containers from an infrastructure git repository.

The package is one folder per layer; imports go one way, down (docs/design.md
has the map, the import rule and the deploy path as a route through it):

    cli/        the `deployer` command: parse, call the layers below, print
    ops/        what a user asks for: deploy, rollback, status, plan/apply, nodes, init, release
    build/      builders, the image builder, the registry client
    discovery/  Consul: registration around deploys, the registrator, catalogs, config templates
    engine/     one Docker engine: connect, state, plan (pure), apply (health-gated), the session
    config/     the repository on disk -> the model: loader, compose check and spec, YAML edits
    gitrepo/    the repository as git: commits, history, remote, lock, the transaction

and the shared modules every layer may use: errors.py (every error type),
model.py (plain data), labels.py (container label names), values.py (the one
duration/size/port grammar), spec.py (the container spec), imageref.py (image
references), files.py (durable writes).
"""

__version__ = "0.1.0"
