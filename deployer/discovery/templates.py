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

``template_runner.Runner`` ties them together (one pass, and watching the
catalog); ``template_config.load_config`` reads the file that says which
templates go where.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from deployer.discovery.catalog import (
    TAG_RE,
    Catalog,
    Dependency,
    HealthQuery,
    Instance,
    KeyQuery,
    ServicesQuery,
    endpoint,
    valid_address,
    valid_name,
    valid_port,
    valid_tag,
)
from deployer.errors import CheckFailed, DeployerError, ReloadFailed, TemplateError, TemplateProblem
from deployer.files import fsync_dir

_MISSING = object()


# --- render --------------------------------------------------------------------------


def upstream_name(name: str) -> str:
    """A safe, collision-free identifier for a service: ``svc_web``, ``svc_api_v2_1a2b3c4d``."""
    if not valid_name(name):
        raise TemplateProblem(f"upstream_name: unsafe service name {name!r}")
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
        raise TemplateProblem(f"port: {value!r} is not a port number (1-65535)")
    return port


def _endpoint_filter(value: Any, port: Any = None) -> str:
    if isinstance(value, Instance):
        return value.endpoint
    if port is None:
        raise TemplateProblem("endpoint: give an instance, or an address and a port")
    if not valid_address(str(value)):
        raise TemplateProblem(f"endpoint: invalid address {value!r}")
    return endpoint(str(value), _port_filter(port))


def _token_filter(value: Any) -> str:
    """Let through only a value that is one harmless config token."""
    text = str(value)
    if not TAG_RE.match(text):
        raise TemplateProblem(f"token: {text!r} is not a safe config token")
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
            raise TemplateProblem(f"service: unsafe service name {name!r}")
        if tag is not None and not valid_tag(tag):
            raise TemplateProblem(f"service: unsafe tag {tag!r}")
        return list(self.get(HealthQuery(name, tag, bool(passing))))

    def services(self) -> dict[str, tuple[str, ...]]:
        return dict(self.get(ServicesQuery()))

    def key(self, path: str, default: Any = _MISSING) -> Any:
        value = self.get(KeyQuery(str(path)))
        if value is None:
            if default is _MISSING:
                raise TemplateProblem(f"key {path!r} does not exist (give key(path, default))")
            return default
        return value


def environment(search_path: Path) -> ImmutableSandboxedEnvironment:
    """The Jinja2 environment templates in ``search_path`` render in (sandboxed, with the filters)."""
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


def render_reading(
    template_path: Path,
    resolve: Callable[[Dependency], Any],
    variables: dict[str, Any] | None = None,
    env: Any = None,
) -> tuple[str, dict[Dependency, Any]]:
    """Render one template, reading the catalog through ``resolve``: (the text, what it read).

    The runner gives it its watcher's ``get`` and follows exactly what was read."""
    template_path = Path(template_path).absolute()
    env = env or environment(template_path.parent)
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
        if isinstance(exc, TemplateProblem):
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
    return render_reading(Path(template_path), lambda dep: dep.read(catalog), variables)[0]


# --- check, swap, reload --------------------------------------------------------------


def _argv(command: str | Sequence[str]) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        raise ValueError("empty command")
    return argv


def show_command(command: str | Sequence[str]) -> str:
    """A command as the user wrote it (a list as a shell line), for messages."""
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
    raise CheckFailed(shown, show_command(command), _one_line(message))


def reload(command: str | Sequence[str], *, timeout: float = 30.0) -> None:
    """Run a reload command; ReloadFailed unless it exits 0."""
    status, output = _run(_argv(command), timeout)
    if status != 0:
        message = output if status is None else f"exit status {status}" + (f": {output}" if output else "")
        raise ReloadFailed(show_command(command), _one_line(message))


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
