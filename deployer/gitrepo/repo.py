"""``InfraRepo``: the infrastructure repository as git, put together from its parts.

Plumbing (``base``), committing (``commit``), history reads (``history``) and
team sync (``remote``) each live in a module of their own; this class is all of
them on one object, opened once per command.
"""

from __future__ import annotations

from deployer.gitrepo.commit import CommitMixin
from deployer.gitrepo.history import HistoryMixin
from deployer.gitrepo.remote import RemoteMixin


class InfraRepo(CommitMixin, HistoryMixin, RemoteMixin):
    """The infrastructure git repository, opened at its work-tree root.

    Paths taken and returned are repo-relative POSIX strings
    (``datacenters/dev/dev1/docker-compose.yml``); absolute paths inside the
    root are accepted too. Call ``close()`` (or use ``with``) to stop the
    ``git cat-file`` helper processes early.
    """
