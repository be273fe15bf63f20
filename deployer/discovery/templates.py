"""Config files rendered from the service catalog: render, check, swap, reload.

The steps are separate functions, as consul-template separates its renderer
from its runner:

* ``render(template, catalog)``: Jinja2 (sandboxed, StrictUndefined, no
  autoescape) with ``service()``, ``services()``, ``key()`` and nginx filters;
  any problem is a ``TemplateError`` naming the template file and line.
* ``check(candidate, command)``: run a validator on a candidate file
  (``{file}`` is replaced by its path), ``CheckFailed`` with its stderr.
* ``swap(dest, content)``: atomic replace (temp file in the same directory,
  fsync, rename, fsync the directory), only when the bytes differ.
* ``reload(command)``.

``Runner`` ties them together for ``deployer render`` (``run_once``) and
``deployer templates watch CONFIG`` (``watch``). One pass renders EVERY
template first, stages the changed ones as candidates next to their
destinations, checks each candidate, and only when all of them pass renames
them over the live files and runs each distinct reload command once. A render
error or a failed check leaves every live file and the reloaded service alone.

Watching follows consul-template: each dependency a template read is followed
with Consul blocking queries (``catalog.Watcher``); changes wait for
quiescence (``wait.min`` without a further change, at most ``wait.max`` after
the first). Consul unreachable: nothing is written, reads back off
exponentially (capped) and reconnect.

The rule against consul-template #727 (data read just after Consul restarted
or reconnected is incomplete: rendered as is, upstreams lose their servers):

1. While any followed dependency is failing (Consul unreachable, no leader,
   no known servers), no pass runs; the last good files stay live.
2. After a *reconnection* (the first good read after a failure, or a read
   whose Consul index went backwards: Consul lost its state) a *settle
   window* of ``settle`` seconds opens. Inside it:
   a. the agent must report a leader, or the pass is retried after a backoff;
   b. data that *lost* something compared with what the live files were
      rendered from (an instance of a service, a service name, a key) is not
      trusted: the pass is deferred. It runs as soon as nothing is missing any
      more (quiescence starting over with the data coming back), or when the
      window closes: then the loss is real and is written.
   Gains and changes are written at once (after quiescence).
3. At start-up nothing is known about what the live files hold. For
   ``settle`` seconds after the first connection, if a destination already
   exists, a first pass in which a service (or the service list) reads empty
   is deferred the same way. A missing KV key does not count: templates
   often default them.
4. Outside the window data is trusted: a service whose instances all fail
   their checks loses its upstream after the normal quiescence wait.
A service is never written with an empty ``upstream`` block anyway: the
shipped template gives it a 503 location instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import stat
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from deployer.discovery.catalog import (
    Catalog,
    ConsulCatalog,
    Dependency,
    HealthQuery,
    Instance,
    KeyQuery,
    ServicesQuery,
    TAG_RE,
    Watcher,
    endpoint,
    parse_duration,
    valid_address,
    valid_name,
    valid_port,
    valid_tag,
)
from deployer.errors import (
    CheckFailed,
    ConfigError,
    ConsulError,
    ConsulUnavailable,
    DeployerError,
    ReloadFailed,
    TemplateError,
)
from deployer.files import fsync_dir

log = logging.getLogger(__name__)

_MISSING = object()


# --- render --------------------------------------------------------------------------


class _Problem(ValueError):
    """A template asked for something unsafe or impossible (reported with its line)."""


def upstream_name(name: str) -> str:
    """A safe, collision-free identifier for a service: ``svc_web``, ``svc_api_v2_1a2b3c4d``."""
    if not valid_name(name):
        raise _Problem(f"upstream_name: unsafe service name {name!r}")
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if ident != name:  # 'api.v2' and 'api-v2' must not share an upstream
        ident += "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"svc_{ident}"


def _port_filter(value: Any) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        port = None
    if port is None or not valid_port(port):
        raise _Problem(f"port: {value!r} is not a port number (1-65535)")
    return port


def _endpoint_filter(value: Any, port: Any = None) -> str:
    if isinstance(value, Instance):
        return value.endpoint
    if port is None:
        raise _Problem("endpoint: give an instance, or an address and a port")
    if not valid_address(str(value)):
        raise _Problem(f"endpoint: invalid address {value!r}")
    return endpoint(str(value), _port_filter(port))


def _token_filter(value: Any) -> str:
    """Let through only a value that is one harmless config token."""
    text = str(value)
    if not TAG_RE.match(text):
        raise _Problem(f"token: {text!r} is not a safe config token")
    return text


class _Reads:
    """The catalog as one render sees it: memoised (a consistent view within the
    render) and recorded (the runner follows exactly what was read)."""

    def __init__(self, resolve: Callable[[Dependency], Any]):
        self.resolve = resolve
        self.used: dict[Dependency, Any] = {}

    def get(self, dep: Dependency) -> Any:
        if dep not in self.used:
            self.used[dep] = self.resolve(dep)
        return self.used[dep]

    def service(self, name: str, tag: str | None = None, passing: bool = True) -> list[Instance]:
        if not valid_name(name):
            raise _Problem(f"service: unsafe service name {name!r}")
        if tag is not None and not valid_tag(tag):
            raise _Problem(f"service: unsafe tag {tag!r}")
        return list(self.get(HealthQuery(name, tag, bool(passing))))

    def services(self) -> dict[str, tuple[str, ...]]:
        return dict(self.get(ServicesQuery()))

    def key(self, path: str, default: Any = _MISSING) -> Any:
        value = self.get(KeyQuery(str(path)))
        if value is None:
            if default is _MISSING:
                raise _Problem(f"key {path!r} does not exist (give key(path, default))")
            return default
        return value


def _environment(search_path: Path):
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(str(search_path)),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=True,
    )
    env.filters.update(
        upstream_name=upstream_name,
        port=_port_filter,
        endpoint=_endpoint_filter,
        token=_token_filter,
    )
    return env


def _template_line(exc: BaseException) -> tuple[str | None, int | None]:
    """The deepest template frame of a render error's traceback (Jinja rewrites
    tracebacks so that template code shows its own file and line)."""
    path = line = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if "__jinja_exception__" in frame.f_globals or not frame.f_code.co_filename.endswith(".py"):
            if not frame.f_code.co_filename.startswith("<"):
                path, line = frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    return path, line


def _render(
    template_path: Path,
    resolve: Callable[[Dependency], Any],
    variables: dict[str, Any] | None = None,
    env: Any = None,
) -> tuple[str, dict[Dependency, Any]]:
    from jinja2 import TemplateNotFound, TemplateSyntaxError
    from jinja2.exceptions import SecurityError

    template_path = Path(template_path).absolute()
    env = env or _environment(template_path.parent)
    reads = _Reads(resolve)
    try:
        template = env.get_template(template_path.name)
        text = template.render(
            service=reads.service,
            services=reads.services,
            key=reads.key,
            vars=dict(variables or {}),
            template_name=template_path.name,
        )
    except TemplateSyntaxError as exc:
        raise TemplateError(exc.filename or template_path, f"syntax error: {exc.message}", exc.lineno) from None
    except TemplateNotFound as exc:
        if exc.name == template_path.name:
            raise TemplateError(template_path, "template file not found") from None
        path, line = _template_line(exc)
        raise TemplateError(path or template_path, f"included template not found: {exc.name}", line) from None
    except DeployerError:
        raise  # Consul unreachable while reading: not the template's fault
    except Exception as exc:  # noqa: BLE001 - any error inside a template is the template's
        path, line = _template_line(exc)
        if isinstance(exc, _Problem):
            message = str(exc)
        elif isinstance(exc, SecurityError):
            message = f"unsafe operation: {exc}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        raise TemplateError(path or template_path, message, line) from None
    return text, reads.used


def render(
    template_path: str | Path,
    catalog: Catalog,
    variables: dict[str, Any] | None = None,
) -> str:
    """Render one template against ``catalog``. ``vars`` in the template is ``variables``."""
    return _render(Path(template_path), lambda dep: dep.read(catalog), variables)[0]


# --- check, swap, reload --------------------------------------------------------------


def _argv(command: str | Sequence[str]) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        raise ValueError("empty command")
    return argv


def _show(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit status or None when it could not run, the reason / its output)."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None, f"command not found: {argv[0]}"
    except PermissionError:
        return None, f"command not executable: {argv[0]}"
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g}s"
    output = (proc.stderr or "").strip() or (proc.stdout or "").strip()
    return proc.returncode, output


def check(
    candidate_path: str | Path,
    command: str | Sequence[str],
    *,
    timeout: float = 30.0,
    destination: str | Path | None = None,
) -> None:
    """Run ``command`` with ``{file}`` replaced by ``candidate_path``; CheckFailed unless it exits 0.

    For nginx: ``nginx -t -q -e stderr -p PREFIX -c {file}`` (the candidate is a
    whole nginx.conf; relative paths in it resolve against PREFIX).
    """
    candidate = str(candidate_path)
    argv = [arg.replace("{file}", candidate) for arg in _argv(command)]
    status, output = _run(argv, timeout)
    if status == 0:
        return
    shown = str(destination) if destination else candidate
    if destination:
        output = output.replace(candidate, f"{destination} (candidate)")
    message = output if status is None else f"exit status {status}" + (f": {output}" if output else "")
    raise CheckFailed(shown, _show(command), _one_line(message))


def reload(command: str | Sequence[str], *, timeout: float = 30.0) -> None:
    """Run a reload command; ReloadFailed unless it exits 0."""
    status, output = _run(_argv(command), timeout)
    if status != 0:
        message = output if status is None else f"exit status {status}" + (f": {output}" if output else "")
        raise ReloadFailed(_show(command), _one_line(message))


def stage(dest: str | Path, content: str | bytes) -> Path | None:
    """Write ``content`` to a temp file next to ``dest`` (same mode and owner), fsynced.

    None when ``dest`` already holds exactly these bytes. The candidate is what
    a check validates and what ``promote`` renames over ``dest``.
    """
    dest = Path(dest)
    data = content.encode() if isinstance(content, str) else content
    try:
        current = dest.stat()
        if dest.read_bytes() == data:
            return None
    except FileNotFoundError:
        current = None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        try:
            os.fchmod(fd, stat.S_IMODE(current.st_mode) if current else 0o644)
            if current and os.geteuid() == 0 and (current.st_uid, current.st_gid) != (0, 0):
                os.fchown(fd, current.st_uid, current.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def promote(candidate: str | Path, dest: str | Path) -> None:
    """Atomically replace ``dest`` with ``candidate`` (same directory), then fsync the directory."""
    dest = Path(dest)
    os.replace(candidate, dest)
    fsync_dir(dest.parent)


def swap(dest: str | Path, content: str | bytes) -> bool:
    """Atomically make ``dest`` hold ``content``; False (and nothing written) when it already does."""
    candidate = stage(dest, content)
    if candidate is None:
        return False
    promote(candidate, dest)
    return True


# --- configuration --------------------------------------------------------------------


@dataclass
class TemplateSpec:
    """One template: where it is, where it goes, how to validate and reload.

    ``check`` and ``reload`` are a command line (split like a shell would, no
    shell runs) or an argv list; ``{file}`` in ``check`` is the candidate.
    """

    source: Path
    destination: Path
    check: str | list[str] | None = None
    reload: str | list[str] | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    command_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.destination = Path(self.destination)


@dataclass
class ConsulSettings:
    address: str
    token: str | None = None
    datacenter: str | None = None
    blocking_wait: float = 60.0  # how long Consul holds each blocking query
    timeout: float = 5.0  # connect/read timeout of every request (plus the wait)
    backoff: float = 0.25  # first retry delay after a failure; doubles each time
    max_backoff: float = 30.0


@dataclass
class WatchConfig:
    templates: list[TemplateSpec]
    consul: ConsulSettings | None = None  # None: the caller passes a Catalog
    wait_min: float = 2.0  # quiescence: render after this long without a change...
    wait_max: float = 10.0  # ...but no later than this after the first change
    settle: float = 10.0  # distrust losses this long after Consul (re)connects
    poll_interval: float = 2.0  # how often a catalog without blocking queries is re-read
    path: str | None = None  # the config file, for messages


_TOP_KEYS = {"consul", "wait", "settle", "poll_interval", "templates"}
_CONSUL_KEYS = {"address", "token", "datacenter", "blocking_wait", "timeout", "retry"}
_RETRY_KEYS = {"backoff", "max_backoff"}
_TEMPLATE_KEYS = {"source", "destination", "check", "reload", "vars", "command_timeout"}


def load_config(path: str | Path) -> WatchConfig:
    """Read a ``deployer templates watch`` config file (YAML); ConfigError with file:line.

    ::

        consul:                       # or `consul: 127.0.0.1:8500`, or `consul: null`
          address: 127.0.0.1:8500     # host:port or http(s)://host:port
          blocking_wait: 60s
          retry: {backoff: 250ms, max_backoff: 30s}
        wait: {min: 2s, max: 10s}     # or `wait: 2s` (max = 4 x min)
        settle: 10s
        templates:
          - source: nginx.conf.j2     # relative to this file
            destination: /srv/nginx/nginx.conf
            check: nginx -t -q -e stderr -p /srv/nginx -c {file}
            reload: nginx -s reload -p /srv/nginx -c /srv/nginx/nginx.conf
            vars: {listen_port: 8080}
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(shown, f"cannot read: {exc.strerror or exc}") from None
    try:
        doc = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(shown, f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                          mark.line + 1 if mark else None) from None

    def line_of(node: Any, key: Any = None) -> int | None:
        try:
            if key is None:
                return node.lc.line + 1
            if isinstance(key, int):
                return node.lc.item(key)[0] + 1
            return node.lc.key(key)[0] + 1
        except Exception:  # noqa: BLE001 - plain values carry no position
            return None

    def fail(message: str, node: Any = None, key: Any = None, fld: str | None = None) -> ConfigError:
        return ConfigError(shown, message, line_of(node, key) if node is not None else None, fld)

    def mapping(node: Any, keys: set[str], fld: str, parent: Any = None, pkey: Any = None) -> dict:
        if not isinstance(node, dict):
            raise fail("must be a mapping", parent, pkey, fld)
        for key in node:
            if key not in keys:
                raise fail(f"unknown key {key!r} (known: {', '.join(sorted(keys))})", node, key, f"{fld}.{key}" if fld else str(key))
        return node

    def duration(node: dict, key: str, fld: str, default: float) -> float:
        if key not in node or node[key] is None:
            return default
        try:
            return parse_duration(node[key], fld)
        except ValueError as exc:
            raise fail(str(exc), node, key, fld) from None

    if doc is None:
        doc = {}
    top = mapping(doc, _TOP_KEYS, "")
    base = path.parent

    consul = None
    raw = top.get("consul")
    if isinstance(raw, str):
        consul = ConsulSettings(address=raw)
    elif raw is not None:
        c = mapping(raw, _CONSUL_KEYS, "consul", top, "consul")
        if not isinstance(c.get("address"), str) or not c["address"].strip():
            raise fail("address is required (host:port)", c, None, "consul.address")
        retry = mapping(c.get("retry") or {}, _RETRY_KEYS, "consul.retry", c, "retry")
        consul = ConsulSettings(
            address=c["address"].strip(),
            token=c.get("token"),
            datacenter=c.get("datacenter"),
            blocking_wait=duration(c, "blocking_wait", "consul.blocking_wait", 60.0),
            timeout=duration(c, "timeout", "consul.timeout", 5.0),
            backoff=duration(retry, "backoff", "consul.retry.backoff", 0.25),
            max_backoff=duration(retry, "max_backoff", "consul.retry.max_backoff", 30.0),
        )
        if consul.blocking_wait <= 0:
            raise fail("must be positive", c, "blocking_wait", "consul.blocking_wait")
        if consul.backoff <= 0 or consul.max_backoff < consul.backoff:
            raise fail("need 0 < backoff <= max_backoff", c, "retry", "consul.retry")

    wait = top.get("wait")
    if wait is None:
        wait_min, wait_max = 2.0, 10.0
    elif isinstance(wait, dict):
        mapping(wait, {"min", "max"}, "wait", top, "wait")
        wait_min = duration(wait, "min", "wait.min", 0.0)
        wait_max = duration(wait, "max", "wait.max", wait_min * 4)
    else:
        wait_min = duration(top, "wait", "wait", 0.0)
        wait_max = wait_min * 4
    if wait_max < wait_min:
        raise fail("wait.max must not be less than wait.min", top, "wait", "wait")

    templates_node = top.get("templates")
    if not isinstance(templates_node, list) or not templates_node:
        raise fail("templates: a non-empty list is required", top, "templates" if "templates" in top else None, "templates")
    specs = []
    seen: dict[Path, int] = {}
    for i, item in enumerate(templates_node):
        fld = f"templates[{i}]"
        t = mapping(item, _TEMPLATE_KEYS, fld, templates_node, i)
        for key in ("source", "destination"):
            if not isinstance(t.get(key), str) or not t[key].strip():
                raise fail(f"{key} is required", templates_node, i, f"{fld}.{key}")
        for key in ("check", "reload"):
            value = t.get(key)
            ok = value is None or (isinstance(value, str) and value.strip()) or (
                isinstance(value, list) and value and all(isinstance(a, (str, int)) for a in value)
            )
            if not ok:
                raise fail("must be a command line or a list of arguments", t, key, f"{fld}.{key}")
            if isinstance(value, str):
                try:
                    shlex.split(value)
                except ValueError as exc:
                    raise fail(f"cannot split command: {exc}", t, key, f"{fld}.{key}") from None
        variables = t.get("vars") or {}
        if not isinstance(variables, dict):
            raise fail("must be a mapping", t, "vars", f"{fld}.vars")
        dest = (base / t["destination"]).absolute()
        if dest in seen:
            raise fail(f"destination {dest} is also written by templates[{seen[dest]}]", t, "destination", f"{fld}.destination")
        seen[dest] = i
        specs.append(
            TemplateSpec(
                source=(base / t["source"]).absolute(),
                destination=dest,
                check=list(map(str, t["check"])) if isinstance(t.get("check"), list) else t.get("check"),
                reload=list(map(str, t["reload"])) if isinstance(t.get("reload"), list) else t.get("reload"),
                vars=_plain(variables),
                command_timeout=duration(t, "command_timeout", f"{fld}.command_timeout", 30.0),
            )
        )
    return WatchConfig(
        templates=specs,
        consul=consul,
        wait_min=wait_min,
        wait_max=wait_max,
        settle=duration(top, "settle", "settle", 10.0),
        poll_interval=duration(top, "poll_interval", "poll_interval", 2.0) or 2.0,
        path=shown,
    )


def _plain(value: Any) -> Any:
    """ruamel's round-trip containers -> plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- the runner --------------------------------------------------------------------------


@dataclass
class _Outcome:
    kind: str  # done | failed | unavailable | deferred | reload_failed
    message: str = ""
    until: float | None = None  # deferred: retry at this time (None: when the watcher says so)
    written: list[Path] = field(default_factory=list)


class Runner:
    """Renders a set of templates once (``run_once``) or following the catalog (``watch``).

    ``catalog`` defaults to a ``ConsulCatalog`` for ``config.consul``; any
    ``Catalog`` works (one without blocking queries is polled every
    ``config.poll_interval``). ``on_event(kind, detail)`` is called for
    ``written`` (destination), ``reloaded`` (command), ``deferred``,
    ``failed``, ``unavailable`` (reason); ``stats`` counts them and passes.
    """

    def __init__(
        self,
        config: WatchConfig,
        catalog: Catalog | None = None,
        *,
        on_event: Callable[[str, str], None] | None = None,
    ):
        if catalog is None:
            if config.consul is None:
                raise ConfigError(config.path or "<config>", "no Consul address, and no catalog was given", field="consul")
            catalog = ConsulCatalog(
                config.consul.address,
                token=config.consul.token,
                datacenter=config.consul.datacenter,
                timeout=config.consul.timeout,
            )
        self.config = config
        self.catalog = catalog
        self.on_event = on_event or (lambda kind, detail: None)
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None
        settings = config.consul or ConsulSettings(address="")
        self._blocking_wait = settings.blocking_wait
        self._backoff = settings.backoff
        self._max_backoff = settings.max_backoff
        self._envs: dict[Path, Any] = {}
        self._live: dict[Dependency, Any] | None = None  # what the live files were rendered from
        self._reload_pending: list[str | list[str]] = []
        self._protect_startup = False

    def _event(self, kind: str, detail: str) -> None:
        self.stats[kind] += 1
        self.on_event(kind, detail)

    # -- one pass --

    def _render_all(self, resolve: Callable[[Dependency], Any]) -> tuple[list[tuple[TemplateSpec, str]], dict[Dependency, Any]]:
        rendered = []
        used: dict[Dependency, Any] = {}
        for spec in self.config.templates:
            folder = spec.source.absolute().parent
            env = self._envs.get(folder)
            if env is None:
                env = self._envs[folder] = _environment(folder)
            text, reads = _render(spec.source, resolve, spec.vars, env)
            rendered.append((spec, text))
            used.update(reads)
        self.stats["renders"] += 1
        return rendered, used

    def _apply(self, rendered: list[tuple[TemplateSpec, str]]) -> list[Path]:
        """Stage every changed file, check all candidates, then swap and reload."""
        candidates: list[tuple[TemplateSpec, Path]] = []
        try:
            for spec, text in rendered:
                candidate = stage(spec.destination, text)
                if candidate is not None:
                    candidates.append((spec, candidate))
            for spec, candidate in candidates:
                if spec.check:
                    check(candidate, spec.check, timeout=spec.command_timeout, destination=spec.destination)
        except BaseException:
            for _, candidate in candidates:
                candidate.unlink(missing_ok=True)
            raise
        for spec, candidate in candidates:
            promote(candidate, spec.destination)
            log.info("wrote %s", spec.destination)
            self._event("written", str(spec.destination))
        commands = list(self._reload_pending)
        for spec, _ in candidates:
            if spec.reload and spec.reload not in commands:
                commands.append(spec.reload)
        self._reload_pending = []
        timeouts = {_show(s.reload): s.command_timeout for s in self.config.templates if s.reload}
        for n, command in enumerate(commands):
            try:
                reload(command, timeout=timeouts.get(_show(command), 30.0))
            except ReloadFailed:
                self._reload_pending = commands[n:]
                raise
            log.info("reloaded: %s", _show(command))
            self._event("reloaded", _show(command))
        return [spec.destination for spec, _ in candidates]

    def run_once(self) -> list[Path]:
        """Render every template once, check, swap the changed ones and reload.

        Returns the destinations written. Raises TemplateError, CheckFailed,
        ConsulUnavailable (also while Consul has no leader) or ReloadFailed.
        """
        leader = getattr(self.catalog, "leader", None)
        if callable(leader) and not leader():
            raise ConsulUnavailable(getattr(self.catalog, "address", "?"), "no cluster leader")
        rendered, _ = self._render_all(lambda dep: dep.read(self.catalog))
        return self._apply(rendered)

    def _losses(self, used: dict[Dependency, Any]) -> list[str]:
        """What the live files had that the data just read lacks: instances (by id),
        service names, keys. Gains and changes are not losses."""
        assert self._live is not None
        out = []
        for dep, old in self._live.items():
            new = used.get(dep)
            if isinstance(dep, HealthQuery):
                gone = sorted({i.id for i in old} - {i.id for i in new or ()})
            elif isinstance(dep, ServicesQuery):
                gone = sorted(set(old) - set(new or ()))
            else:
                gone = ["its value"] if old is not None and new is None else []
            if gone:
                out.append(f"{dep} lost {', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''}")
        return out

    def _watch_pass(self, watcher: Watcher) -> _Outcome:
        try:
            rendered, used = self._render_all(watcher.get)
        except TemplateError as exc:
            return _Outcome("failed", exc.one_line())
        except ConsulError as exc:
            return _Outcome("unavailable", exc.one_line())
        failing = watcher.failing()
        if failing:
            dep, why = next(iter(failing.items()))
            return _Outcome("deferred", f"reading {dep} fails ({why}); keeping the last good files")
        now = time.monotonic()
        reconnected = watcher.reconnected_at is not None
        settle_until = (watcher.reconnected_at or watcher.connected_at or now) + self.config.settle
        if now < settle_until:
            leader = getattr(self.catalog, "leader", None)
            if callable(leader):
                try:
                    if not leader():
                        return _Outcome("deferred", "Consul has no leader yet; keeping the last good files", now + self._backoff)
                except ConsulError as exc:
                    return _Outcome("unavailable", exc.one_line())
            if self._live is None:  # nothing rendered yet: what the live files hold is unknown
                losses = [
                    f"{d} is empty" for d, v in used.items() if not isinstance(d, KeyQuery) and d.empty(v)
                ] if self._protect_startup else []
            else:
                losses = self._losses(used) if reconnected else []
            if losses:
                what = "; ".join(losses[:3]) + ("; ..." if len(losses) > 3 else "")
                return _Outcome(
                    "deferred",
                    f"just after Consul {'reconnected' if reconnected else 'connected'}: {what}"
                    f"; keeping the last good files for up to {settle_until - now:.1f}s unless the data comes back",
                    settle_until,
                )
        try:
            written = self._apply(rendered)
        except CheckFailed as exc:
            return _Outcome("failed", exc.one_line())
        except ReloadFailed as exc:
            self._live = dict(used)
            return _Outcome("reload_failed", exc.one_line())
        except OSError as exc:
            return _Outcome("failed", f"writing files: {exc}")
        self._live = dict(used)
        watcher.retain(used)
        return _Outcome("done", written=written)

    # -- watching --

    def _mtimes(self) -> tuple:
        out = []
        for spec in self.config.templates:
            try:
                out.append(spec.source.stat().st_mtime_ns)
            except OSError:
                out.append(None)
        return tuple(out)

    def watch(self, stop_event: threading.Event) -> None:
        """Follow the catalog until ``stop_event`` is set (see the module doc for the rules)."""
        wake = threading.Event()
        watcher = Watcher(
            self.catalog,
            blocking_wait=self._blocking_wait,
            poll_interval=self.config.poll_interval,
            backoff=self._backoff,
            max_backoff=self._max_backoff,
            on_change=wake.set,
        )
        self._protect_startup = any(spec.destination.exists() for spec in self.config.templates)
        try:
            self._loop(watcher, wake, stop_event)
        finally:
            watcher.close()

    def _loop(self, watcher: Watcher, wake: threading.Event, stop: threading.Event) -> None:
        wait_min, wait_max = self.config.wait_min, self.config.wait_max
        pending = True  # the first pass runs at once
        first = last = None  # quiescence: the first and latest change not yet rendered
        not_before = 0.0
        backoff = self._backoff
        seen = (watcher.generation, self._mtimes())
        deferred_reason = None
        while not stop.is_set():
            woke = wake.is_set()
            wake.clear()
            now = time.monotonic()
            current = (watcher.generation, self._mtimes())
            if current != seen:
                seen = current
                if not pending or not_before > now:
                    first = now  # idle, or a deferred pass: quiescence starts over with this change
                pending, last = True, now
                not_before = 0.0  # new data: re-evaluate a deferred pass (after quiescence)
            elif woke and not_before == float("inf"):
                not_before = 0.0  # failing -> recovered
            quiet = first is None or now - last >= wait_min or now - first >= wait_max
            if pending and quiet and now >= not_before:
                outcome = self._watch_pass(watcher)
                now = time.monotonic()
                if outcome.kind == "done":
                    pending, first, last, not_before = False, None, None, 0.0
                    backoff = self._backoff
                    if deferred_reason:
                        log.info("data settled; templates rendered")
                    deferred_reason = None
                    self.last_error = None
                elif outcome.kind == "failed":
                    pending, first, last = False, None, None  # retried on the next change
                    self.last_error = outcome.message
                    log.error("%s; the last good files stay live, retrying on the next change", outcome.message)
                    self._event("failed", outcome.message)
                elif outcome.kind == "deferred":
                    not_before = outcome.until if outcome.until is not None else float("inf")
                    reason = outcome.message.split(";")[0]
                    if reason != deferred_reason:  # once per episode, not on every retry
                        log.warning("%s", outcome.message)
                        self._event("deferred", outcome.message)
                    deferred_reason = reason
                else:  # unavailable, reload_failed: retry with backoff
                    not_before = now + backoff
                    backoff = min(backoff * 2, self._max_backoff)
                    self.last_error = outcome.message
                    log.warning("%s; retrying in %.1fs", outcome.message, not_before - now)
                    self._event("unavailable" if outcome.kind == "unavailable" else "failed", outcome.message)
            timeout = 0.25  # also how often stop_event and the template files are looked at
            if pending:
                quiet_at = now if first is None else min(last + wait_min, first + wait_max)
                timeout = min(timeout, max(quiet_at, not_before) - now)
            wake.wait(max(timeout, 0.005))


def _as_config(config: WatchConfig | str | Path) -> WatchConfig:
    return config if isinstance(config, WatchConfig) else load_config(config)


def run_once(config: WatchConfig | str | Path, catalog: Catalog | None = None) -> list[Path]:
    """``deployer render``: render every template once; the destinations written."""
    return Runner(_as_config(config), catalog).run_once()


def watch(config: WatchConfig | str | Path, stop_event: threading.Event, catalog: Catalog | None = None) -> None:
    """``deployer templates watch CONFIG``: follow the catalog until ``stop_event`` is set."""
    Runner(_as_config(config), catalog).watch(stop_event)
