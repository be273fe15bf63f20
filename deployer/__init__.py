"""deployer: deploy Docker containers from an infrastructure git repository.

The deploy path reads top to bottom (docs/design.md has the whole layout):

    cli.py        click commands: parse, call the API, print
    api.py        the operations a user asks for: deploy, rollback, status, plan, apply
    loader.py     the infrastructure repo on disk -> model.py dataclasses
    compose.py    a compose service -> the container spec the engine is asked for
    yamledit.py   surgical, byte-preserving edits of compose files
    hosts.py      how to reach a Docker engine (unix socket, SSH, TLS)
    state.py      what actually runs on an engine, as plain data
    plan.py       wanted vs actual -> changes (no side effects)
    apply.py      carries out changes, health-gated, restoring on failure
    history.py    git: commits with trailers, history, older images, sync and push
    lock.py       the deploy lock on a repository and its crash journal

Beside it: nodes.py (node add/rm), build.py, registry.py and release.py (builders,
images, releases), catalog.py, templates.py and discovery.py (Consul, config
templates, registration), errors.py (every error type).
"""

__version__ = "0.1.0"
