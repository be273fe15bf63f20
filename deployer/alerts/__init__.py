"""alerts: Consul health changes, deploy events and drift, sent to webhooks.

``config`` (``alerts.yml``: sinks, threshold, reminder, drift; secrets from a file outside the
repository), ``rules`` (pure: the change threshold, once per (check, state), reminders, back to
normal; ``OncePer``), ``messages`` (what an alert says), ``sinks`` (Slack-compatible and generic
JSON webhooks, each on its own queue and thread, with a timeout and retries), ``health`` (one
Consul's checks followed with blocking queries through ``discovery.watcher``; inside serve its
``live`` owns them), ``locks`` (the node locks followed: Consul's lock keys with a blocking query,
engine locks read at an interval; taken / released / released (expired), pure diffing and
once-keys), ``drift`` (plan
across the fleet, announce drift once per change, self-heal through ``ops``) and ``service``
(``AlertService``: all of it together, leader election included, for ``deployer alerts watch``
and ``deployer serve``). May import ops, discovery, build, engine, config, gitrepo and the shared
modules; never serve or cli.
"""
