"""ops: what a user asks for.

``deploy`` (deploy, rollback, and ``Deployer``, the front door the CLI and
``release`` use), ``rollout`` (fleet rollouts: batches, canary, what a failure
does, and which images undo a whole deploy), ``fleet`` (status, plan, apply across nodes), ``nodes`` (node
add / rm), ``scaffold`` (init), ``release`` (build, push, deploy; watch-builds),
``build_queue`` (watch-builds' queue: its record, order, concurrency, events) and ``build_claims``
(claims on the build engine so two watchers build a commit once),
``build_engine`` (which engine builds: --engine, datacenter.yml builder:, the local socket; builders ls / build),
``logs`` (the services' log lines, read or followed across nodes),
``service`` (exec's target, restart health-gated without a commit),
``prune`` (old images off the nodes), ``scale`` (a service's replica count, committed), ``locks`` (the node
locks a command takes before the pull, and ``deployer lock``), ``targets`` (choosing services and nodes, parallel work, one-line node failures)
and ``results`` (what they return, as plain data). Every operation is built on
the two seams: the repository transaction (``gitrepo.transaction``) and the
engine session (``engine.session``). Printing is the CLI's job. May import
everything below it: build, discovery, engine, config, gitrepo and the shared
modules.
"""
