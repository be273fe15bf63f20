"""cli: the `deployer` command. Click commands by subject, output helpers, shared options.

Parses, calls ops/build/discovery, prints (tables or --json); errors print as
one line and exit with their code. Nothing below imports it. ``main`` (the
group, error translation) imports a subject module when one of its commands
is asked for (its ``SUBJECTS`` table; listing them loads all) and adds their
commands: ``repo`` (init, validate, ls), ``compose_config`` (config: a node's
resolved compose file), ``deploy`` (deploy, rollback,
history), ``fleet`` (status, plan, apply), ``nodes`` (node add/rm), ``lock`` (lock
status, acquire, release), ``build``
(build, image, release, watch-builds, builders ls|build), ``discovery`` (services, registrator,
render, templates watch), ``completion`` (``deployer completion``, and what
target and image arguments complete to), ``service`` (logs, exec, restart;
``terminal``: the terminal of ``exec -it``), ``prune`` (prune), ``scale`` (scale), ``serve`` (serve; token add/ls/rm),
``alerts`` (alerts watch, alerts test). The subject modules import only
``options`` (every shared option and the duration type, defined once),
``output`` (tables, --json, a deploy's result, the command's progress sink),
``progress`` (the sinks ``--progress`` picks: plain lines, a live view drawn
with rich, JSON events; rich is imported only for the live one) and
``completion``'s callbacks, never ``main``; they import the layers below
inside the command functions, so ``deployer --help`` stays fast.
"""
