"""ops: what a user asks for.

deploy, rollback, status, plan/apply, node add/rm, init, release and
watch-builds, each built on the two seams: the repository transaction
(gitrepo) and the engine session (engine). Results are plain data; printing is
the CLI's job. May import everything below it: build, discovery, engine,
config, gitrepo and the shared modules.
"""
