"""Every error the deployer reports, as types.

Each error renders as one line that names what is wrong and where (file, line,
field, node, URL). ``exit_code`` is what the CLI exits with, one of the four
codes below (docs/cli.md, "Exit codes", is generated from them and from the classes).
"""

from __future__ import annotations

import re

# What a terminal must not be handed raw: control characters (C0, DEL, C1), lone
# surrogates (not encodable, they crash printing), line and paragraph separators
# and the bidirectional overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every character a terminal should not get raw written as an escape (\\n, \\x1b, \\ud800)."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    c = match.group()
    escaped = c.encode("unicode_escape", "backslashreplace").decode("ascii")
    return escaped if escaped != c else f"\\x{ord(c):02x}"


#: The command did what was asked; plan/status found nothing to change.
EXIT_OK = 0
#: Something failed: a node, an engine, a registry, Consul, a build, a health check, the lock.
EXIT_FAILED = 1
#: The command worked and found the nodes differ from the repository (plan: changes pending; status, services: drift).
EXIT_CHANGES = 2
#: Bad input, nothing was tried: an invalid repository, an unknown target, a bad image reference or
#: option value, a usage error (the CLI gives click's usage errors this code too).
EXIT_BAD_INPUT = 3


class DeployerError(Exception):
    """Base of every error the deployer raises on purpose."""

    exit_code = EXIT_FAILED

    def one_line(self) -> str:
        return printable(" ".join(str(self).split()))


class ConfigError(DeployerError):
    """Something written in the infrastructure repo is wrong.

    ``path`` is relative to the repo root where possible, ``line`` is 1-based,
    ``field`` is a dotted path inside the file (``services.web.ports[0]``).
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        """``path:line: field: message``, one printable line whatever the file held."""
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = f"{self.field}: {self.message}" if self.field else self.message
        return printable(f"{where}: {what}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigError) and self.render() == other.render()

    def __hash__(self) -> int:
        return hash(self.render())


class EditVerificationError(DeployerError):
    """Internal error: an edit would have changed more (or other) data than intended.

    This is the safety net behind every edit (``config.yamledit``); seeing it
    means a bug in the editor or a YAML construct it does not understand. The
    file is not changed.
    """


class ValidationFailed(DeployerError):
    """The repo has one or more ConfigErrors; all of them are listed."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[ConfigError]):
        self.problems = list(problems)
        first = self.problems[0].render() if self.problems else "invalid repository"
        more = f" (and {len(self.problems) - 1} more problems; run 'deployer validate')" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class BadTemplate(DeployerError):
    """A compose interpolation that cannot be resolved: an unset variable, a required one, a malformed ``${``.

    ``config.interpolate`` raises it with the message; the loader puts file, line and field in front.
    """

    exit_code = EXIT_BAD_INPUT


class TargetError(DeployerError):
    """A target (dc, dc/node, dc/node/service) that does not exist or is ambiguous."""

    exit_code = EXIT_BAD_INPUT


class ImageReferenceError(DeployerError):
    """A string that is not a valid Docker image reference."""

    exit_code = EXIT_BAD_INPUT


class ServiceMatchError(DeployerError):
    """An image could not be matched to exactly one service on a node."""

    exit_code = EXIT_BAD_INPUT


class RepoError(DeployerError):
    """The infrastructure repository is not usable (not git, dirty file, conflict...)."""


class DirtyFileError(RepoError):
    """The file a command must change has uncommitted edits."""


class LockHeld(DeployerError):
    """Another deployer holds the repository's deploy lock."""


class NodeLockHeld(LockHeld):
    """Another deployer (or an operator's manual lock) holds a node's lock, in Consul or on its engine."""

    def __init__(self, node: str, message: str, holder: dict | None = None):
        self.node = node
        self.holder = holder or {}
        self.message = message
        super().__init__(f"node {node} is locked by {message}")


class LockLost(DeployerError):
    """A node lock this deployer held is gone (session expired, Consul or the engine unreachable, broken
    by another deployer after it expired): the deployer stopped before its next container step."""

    def __init__(self, node: str, message: str):
        self.node = node
        self.message = message
        super().__init__(f"lost the lock of node {node}: {message}; stopped before the next container step")


class LockError(DeployerError):
    """A node lock cannot be taken, read or released for a reason other than another holder
    (releasing a lock this deployer does not hold without --force, an unusable lock object)."""


class RollbackError(DeployerError):
    """No older version to go back to, or a revision that did not touch the service."""

    exit_code = EXIT_BAD_INPUT


class BadRollout(DeployerError):
    """Rollout options that contradict each other (``deploy --max-fail`` with ``--on-failure continue``)."""

    exit_code = EXIT_BAD_INPUT


class PartialDeploy(DeployerError):
    """Some targets of a multi-node deploy failed; ``result`` (an ops.results.DeployResult) says what happened to each."""

    def __init__(self, result: object, message: str):
        self.result = result
        super().__init__(message)


class HostError(DeployerError):
    """A Docker engine could not be reached or answered with an error."""

    def __init__(self, node: str, url: str, message: str):
        self.node = node
        self.url = url
        self.message = message
        super().__init__(f"node {node} ({url}): {message}")


class HostUnreachable(HostError):
    """Connection refused, timeout, DNS, auth or TLS failure."""


class TLSFileError(HostError):
    """A node's tls.ca, tls.cert or tls.key is missing, unreadable, not PEM or encrypted, or cert and key differ."""

    exit_code = EXIT_BAD_INPUT


class ImageNotFound(DeployerError):
    """The image is not on the node and could not be pulled."""


class ResourceMissing(DeployerError):
    """A volume or network the compose file declares external does not exist on the node."""


class NotRunning(DeployerError):
    """A service a command needs running (logs, exec, restart) has no running container on its node."""


class ContainerConflict(DeployerError):
    """A container name the deployer needs is taken by a container it does not manage."""


class HealthCheckFailed(DeployerError):
    """The new container did not become healthy; the old one was restored."""

    def __init__(self, message: str, container: str = "", logs: str = ""):
        self.container = container
        self.logs = logs
        super().__init__(message)


class BuildError(DeployerError):
    """Building binaries or an image did not work (base of the errors below)."""


class UnknownBuilder(BuildError):
    """No builder fits the source (no go.mod, pyproject.toml, ...), or an unknown one was named."""

    exit_code = EXIT_BAD_INPUT


class SourceError(BuildError):
    """The source directory cannot be built from: missing, not in git, no commit."""

    exit_code = EXIT_BAD_INPUT


class DirtySource(SourceError):
    """The source has uncommitted changes and dirty builds were not allowed."""


class SourceTooLarge(SourceError):
    """The app's source, less what its ignore file leaves out, is over the size limit; nothing was sent."""


class BuildEngineLost(BuildError):
    """The build engine stopped answering during a build; nothing was tagged."""


class DockerfileMissing(BuildError):
    """The app has no Dockerfile where one is expected; ``path`` names it."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, message: str = "no Dockerfile"):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class BuildFailed(BuildError):
    """The builder (compiler) or ``docker build`` failed.

    The message is one line; ``output`` holds the compiler's (or docker
    build's) error output for the CLI to print below it.
    """

    def __init__(self, message: str, output: str = "", exit_status: int | None = None):
        self.output = output
        self.exit_status = exit_status
        super().__init__(message)


class RegistryError(DeployerError):
    """The registry's HTTP API could not be asked (unreachable, TLS, odd answer)."""

    def __init__(self, registry: str, message: str, unreachable: bool = False):
        self.registry = registry
        self.message = message
        self.unreachable = unreachable
        super().__init__(f"registry {registry}: {message}")


class RegistryAuthError(RegistryError):
    """The registry (or its token server) refused the credentials, or asked for some and none were found.

    The message names the registry, the user and where the credentials came from; never a password or token."""


class CredentialsFileError(DeployerError):
    """A registry credentials file is missing, open to group or others (as ssh refuses a key), or unreadable.

    It must hold a Docker config's ``auths``; the message names the file, never what is in it."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class CredentialHelperFailed(DeployerError):
    """A Docker credential helper (``docker-credential-NAME get``) failed or answered nonsense."""

    def __init__(self, program: str, registry: str, message: str):
        self.program = program
        self.registry = registry
        self.message = message
        super().__init__(f"credential helper {program} for registry {registry}: {message}")


class PushFailed(BuildError):
    """An image was built and tagged locally but could not be pushed."""

    def __init__(self, ref: str, message: str, image_id: str = ""):
        self.ref = ref
        self.image_id = image_id
        self.message = message
        super().__init__(f"push of {ref} failed: {message}")


class ConsulError(DeployerError):
    """Consul answered, but with an error (ACL denied, bad request, ...)."""

    def __init__(self, address: str, message: str):
        self.address = address
        self.message = message
        super().__init__(f"Consul at {address}: {message}")


class ConsulUnavailable(ConsulError):
    """Consul could not be reached, or has no leader / no known servers."""


class EnginesUnavailable(ConsulUnavailable):
    """A Docker engine a DockerCatalog reads could not be read (the catalog then keeps its last files).

    A ConsulUnavailable because that catalog stands in for Consul: whatever waits
    out an unreachable Consul (the template runner's backoff) waits it out too.
    """

    def __init__(self, where: str, message: str):
        self.address = where
        self.message = message
        DeployerError.__init__(self, f"{where}: {message}")


class AlertSinkError(DeployerError):
    """An alert could not be delivered to a webhook (its URL shown without the path, which holds the secret)."""

    def __init__(self, sink: str, url: str, reason: str):
        self.sink, self.url, self.reason = sink, url, reason
        super().__init__(f"alert sink {sink} ({url}): {reason}")


class ServeError(DeployerError):
    """``deployer serve`` and ``deployer token``: the service's own files and settings."""


class TokenFileError(ServeError):
    """The tokens file cannot be read or written, or is not what ``deployer token`` writes (bad input)."""

    exit_code = EXIT_BAD_INPUT


class TokenNameError(ServeError):
    """``deployer token add/rm``: a name that is taken, unknown or not of the allowed characters; a bad scope."""

    exit_code = EXIT_BAD_INPUT


class ServeConfigError(ServeError):
    """The serve config file (webhook receivers) is missing, unreadable or wrong: ``file: field: message``."""

    exit_code = EXIT_BAD_INPUT


class ApiError(ServeError):
    """An HTTP request the service refuses: ``status`` (400, 401, 403, 404, 409, 413, 429) and one line."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(message)


class LabelError(DeployerError):
    """A discovery label (``deployer.consul.*``, ``deployer.drain``) with a value that cannot be used."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, label: str, message: str):
        self.label = label
        self.message = message
        super().__init__(f"{label}: {message}")


class TemplateProblem(ValueError):
    """A template asked for something unsafe or impossible (an unsafe name, a missing key).

    Raised inside a render (by the template functions and filters); the render
    reports it as a TemplateError naming the template's file and line.
    """


class TemplateError(DeployerError):
    """A config template could not be parsed or rendered; names the file and line."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


class CheckFailed(DeployerError):
    """A rendered candidate was rejected by its check command; the live file was kept."""

    def __init__(self, destination: str, command: str, message: str):
        self.destination = str(destination)
        self.command = command
        self.message = message
        super().__init__(f"{destination}: check `{command}` failed: {message}")


class ReloadFailed(DeployerError):
    """The reload command of a template failed after its new file went live."""

    def __init__(self, command: str, message: str):
        self.command = command
        self.message = message
        super().__init__(f"reload `{command}` failed: {message}")


class HostKeyNotTrusted(HostError):
    """The node's SSH host key is not known and was not accepted (--accept-host-key)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, node: str, url: str, message: str, key: object):
        self.key = key
        super().__init__(node, url, message)


class HostKeyChanged(HostError):
    """The node's SSH host key differs from the one already known for that host."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, node: str, url: str, message: str, key: object):
        self.key = key
        super().__init__(node, url, message)


class NodeNotEmpty(TargetError):
    """A node cannot be removed while its compose file lists services."""

    def __init__(self, target: str, services: list[str]):
        self.target = target
        self.services = list(services)
        super().__init__(
            f"{target} still has containers written for it: {', '.join(self.services)}; remove them first"
        )


# -- Signals between the deployer's own modules: never shown to a user ----------------


class BadValue(ValueError):
    """A value that does not follow the value grammar (``values.py``); the message says why and how to write it.

    Callers put the field in front: a compose key becomes a ConfigError with file:line, a CLI option a usage error.
    """


class FastYamlUnsupported(Exception):
    """The fast YAML path cannot promise ruamel's result for this text: load it with ruamel (``config.fastyaml``)."""


class CannotEditInPlace(Exception):
    """A service cannot be added by editing the text in place: ``config.yamledit`` falls back to a round trip."""


class YamlValueError(Exception):
    """A YAML value ruamel's constructor could not convert (``config.loader``): ``line`` is where it is written."""

    def __init__(self, problem: str, line: int):
        super().__init__(problem)
        self.problem = problem
        self.line = line
