"""discovery: Consul.

Registration hooks around container switches, the registrator, the catalog
(Consul or Docker-backed) with its blocking-query watcher, and config templates
(render, check, swap, reload: consul-template's steps). May import engine,
config and the shared modules; never ops or cli.
"""
