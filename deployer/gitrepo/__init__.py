"""gitrepo: the infrastructure repository as git. The only code that runs git.

``git`` starts every git process (timeouts, no hook variables); ``base`` opens a
repository and runs git in it; ``commit`` is the message format, its trailers and
committing exactly the written files; ``history`` reads the deploy log, service
versions and rollback targets; ``remote`` syncs with the team's remote (pull,
push with rebase-retry); ``repo`` puts those together as ``InfraRepo``; ``lock``
is the deploy lock and its crash journal; ``transaction`` is the one repository
transaction every command that changes the repository goes through; ``source``
reads the source repositories builds and releases start from, and ``create``
makes the first commit of a new repository (``deployer init``). May import only
the shared modules.
"""
