"""gitrepo: the infrastructure repository as git. The only code that runs git.

Commits and their trailers, history reads (deploy log, service versions,
rollback resolution), team sync with the remote (pull, push with rebase-retry),
the deploy lock and its crash journal, and the one repository transaction every
changing command goes through. May import only the shared modules.
"""
