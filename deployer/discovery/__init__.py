"""discovery: Consul.

The catalog: ``catalog`` (instances, their validation, the ``Catalog``
protocol, ``StaticCatalog``, the dependencies a template reads),
``consul_catalog`` (a Consul agent as a catalog, blocking queries),
``docker_catalog`` (a catalog built from the engines, without Consul) and
``watcher`` (follows dependencies). Registration: ``label_settings`` (the
``deployer.consul.*`` labels), ``registration`` (a container's registrations,
the agent calls), ``hooks`` (registration around a deploy's container
switches), ``registrator`` (follows Docker events) and ``report`` (``deployer
services``). Config templates: ``templates`` (render, check, swap, reload:
consul-template's steps), ``template_config`` (the watch config file) and
``template_runner`` (one pass, or watching). Health checks: ``catalog.ChecksQuery`` (every check with its output, for alerts). Locks: ``consul_lock`` (a node's lock as a Consul session
lock). May import engine, config and the
shared modules; never ops or cli.
"""
