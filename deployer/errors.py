"""Every error the deployer reports, as types.

Each error renders as one line that names what is wrong and where (file, line,
field, node, URL). ``exit_code`` is what the CLI exits with.
"""

from __future__ import annotations


class DeployerError(Exception):
    """Base of every error the deployer raises on purpose."""

    exit_code = 1

    def one_line(self) -> str:
        return " ".join(str(self).split())


class ConfigError(DeployerError):
    """Something written in the infrastructure repo is wrong.

    ``path`` is relative to the repo root where possible, ``line`` is 1-based,
    ``field`` is a dotted path inside the file (``services.web.ports[0]``).
    """

    exit_code = 2

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = f"{self.field}: {self.message}" if self.field else self.message
        return f"{where}: {what}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigError) and self.render() == other.render()

    def __hash__(self) -> int:
        return hash(self.render())


class ValidationFailed(DeployerError):
    """The repo has one or more ConfigErrors; all of them are listed."""

    exit_code = 2

    def __init__(self, problems: list[ConfigError]):
        self.problems = list(problems)
        first = self.problems[0].render() if self.problems else "invalid repository"
        more = f" (and {len(self.problems) - 1} more problems; run 'deployer validate')" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class TargetError(DeployerError):
    """A target (dc, dc/node, dc/node/service) that does not exist or is ambiguous."""

    exit_code = 2


class ImageReferenceError(DeployerError):
    """A string that is not a valid Docker image reference."""

    exit_code = 2


class ServiceMatchError(DeployerError):
    """An image could not be matched to exactly one service on a node."""

    exit_code = 2


class RepoError(DeployerError):
    """The infrastructure repository is not usable (not git, dirty file, conflict...)."""


class DirtyFileError(RepoError):
    """The file a command must change has uncommitted edits."""


class LockHeld(DeployerError):
    """Another deployer holds the repository's deploy lock."""


class RollbackError(DeployerError):
    """No older version to go back to, or a revision that did not touch the service."""

    exit_code = 2


class HostError(DeployerError):
    """A Docker engine could not be reached or answered with an error."""

    def __init__(self, node: str, url: str, message: str):
        self.node = node
        self.url = url
        self.message = message
        super().__init__(f"node {node} ({url}): {message}")


class HostUnreachable(HostError):
    """Connection refused, timeout, DNS, auth or TLS failure."""


class ImageNotFound(DeployerError):
    """The image is not on the node and could not be pulled."""


class ContainerConflict(DeployerError):
    """A container name the deployer needs is taken by a container it does not manage."""


class HealthCheckFailed(DeployerError):
    """The new container did not become healthy; the old one was restored."""

    def __init__(self, message: str, container: str = "", logs: str = ""):
        self.container = container
        self.logs = logs
        super().__init__(message)
