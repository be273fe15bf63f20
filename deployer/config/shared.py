"""Shared definitions: top-level ``include`` and service ``extends``, resolved in place.

``resolve_shared(doc, rel, root, variables, read)`` turns a node's compose
document (already interpolated) into the one the compose check reads:

- ``include:`` (a list of paths, or of mappings with ``path`` and ``env_file``)
  adds the services, networks, volumes and secrets of other compose files of
  the repository. Each included file is interpolated on its own, with the
  node's variables plus its own ``.env`` (the one beside it, or the ``env_file``
  given; the node's variables win, as Compose lets the including project's
  environment win), and its own ``include`` and ``extends`` are resolved
  relative to it; it passes the compose check on its own (its problems at its
  own lines), as Compose loads it as a project of its own. A name defined both
  by the file and by something it includes is an error, as in Compose.
- ``extends:`` (``service`` and an optional ``file``) builds a service from
  another one, in the same file or another file of the repository, with
  Compose's merge rules (``compose_merge``). The other file is interpolated with
  the extending file's variables (Compose reads it in the same environment).
  A cycle is refused with the line of the ``extends`` that closes it.

Paths are relative to the file that writes them; a path that leaves the
repository, also through a symlink, is refused. Relative paths inside a file
from another directory (``build`` contexts, secret and config ``file``,
``env_file``, bind mount sources) are rewritten relative to the node's compose
file, so they name the same file as Compose reads them.

``read(rel, problems)`` is the loader's reader (size limits, YAML with lines).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Callable

from deployer.config.compose_keys import to_plain
from deployer.config.compose_merge import merge_service
from deployer.config.interpolate import interpolate_document
from deployer.config.variables import ENV_FILE, parse_dotenv
from deployer.config.yamlread import item_line, key_line
from deployer.errors import ConfigError

Reader = Callable[[str, list[ConfigError]], Any]
Checker = Callable[[Any, str], list[ConfigError]]
TOP_SECTIONS = ("services", "networks", "volumes", "secrets", "configs")
#: Keys resolved here, before the compose check (which therefore never sees them): supported, for the coverage table.
RESOLVED_TOP_KEYS = ("include",)
RESOLVED_SERVICE_KEYS = ("extends",)
MAX_DEPTH = 32  # include / extends chains




def repo_path(root: Path, base_dir: str, written: Any, rel: str, line: int | None, field: str) -> str:
    """``written`` (relative to ``base_dir``, repo-relative) as a repo-relative path inside the repository."""
    if not isinstance(written, str) or not written.strip():
        raise ConfigError(rel, "must be a path to a file of the repository", line=line, field=field)
    if os.path.isabs(written):
        raise ConfigError(rel, f"{written!r} is an absolute path: write it relative to {rel}, inside the repository",
                          line=line, field=field)
    target = posixpath.normpath(posixpath.join(base_dir, written))
    if target == ".." or target.startswith("../"):
        raise ConfigError(rel, f"{written!r} leaves the repository: shared files live in it (e.g. common/)",
                          line=line, field=field)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, target))
    if os.path.commonpath([real_root, real]) != real_root:
        raise ConfigError(rel, f"{written!r} is a symlink that leaves the repository ({real})", line=line, field=field)
    if not os.path.isfile(real):
        raise ConfigError(rel, f"{written!r}: no such file in the repository", line=line, field=field)
    return target


def _rebase(value: Any, from_dir: str, to_dir: str, bind: bool = False) -> Any:
    """A relative path written in ``from_dir`` as the same path written in ``to_dir``."""
    if from_dir == to_dir or not isinstance(value, str) or not value or os.path.isabs(value) or value.startswith("~"):
        return value
    if "://" in value or value.startswith("git@"):
        return value
    if bind and not value.startswith("."):
        return value  # a named volume, not a path
    moved = posixpath.relpath(posixpath.normpath(posixpath.join(from_dir, value)), to_dir)
    return moved if moved.startswith(".") else f"./{moved}"


def _rebase_service(svc: dict, from_dir: str, to_dir: str) -> dict:
    if from_dir == to_dir:
        return svc
    svc = dict(svc)
    build = svc.get("build")
    if isinstance(build, str):
        svc["build"] = _rebase(build, from_dir, to_dir)
    elif isinstance(build, dict) and "context" in build:
        svc["build"] = {**build, "context": _rebase(build["context"], from_dir, to_dir)}
    env_file = svc.get("env_file")
    if isinstance(env_file, str):
        svc["env_file"] = _rebase(env_file, from_dir, to_dir)
    elif isinstance(env_file, list):
        svc["env_file"] = [
            {**e, "path": _rebase(e.get("path"), from_dir, to_dir)} if isinstance(e, dict)
            else _rebase(e, from_dir, to_dir) for e in env_file
        ]
    volumes = svc.get("volumes")
    if isinstance(volumes, list):
        out = []
        for v in volumes:
            if isinstance(v, str) and ":" in v:
                source, _, rest = v.partition(":")
                out.append(f"{_rebase(source, from_dir, to_dir, bind=True)}:{rest}")
            elif isinstance(v, dict) and v.get("type") == "bind":
                out.append({**v, "source": _rebase(v.get("source"), from_dir, to_dir)})
            else:
                out.append(v)
        svc["volumes"] = out
    return svc


def _rebase_top(section: str, definition: Any, from_dir: str, to_dir: str) -> Any:
    if section in ("secrets", "configs") and isinstance(definition, dict) and "file" in definition:
        return {**definition, "file": _rebase(definition["file"], from_dir, to_dir)}
    return definition


class _Resolver:
    def __init__(self, root: Path, read: Reader, variables: dict[str, str], check: Checker | None = None):
        self.root = root
        self.read = read
        self.check = check
        self.variables = variables
        self.docs: dict[str, Any] = {}  # rel -> interpolated document, extends resolved lazily
        self.paths: dict[tuple[str, str], str] = {}  # (folder, written) -> repo-relative path, checked

    def path(self, base_dir: str, written: Any, rel: str, line: int | None, field: str) -> str:
        key = (base_dir, written) if isinstance(written, str) else None
        if key is not None and key in self.paths:
            return self.paths[key]
        found = repo_path(self.root, base_dir, written, rel, line, field)
        if key is not None:
            self.paths[key] = found
        return found

    def load(self, rel: str, variables: dict[str, str], problems: list[ConfigError]) -> Any:
        key = rel
        if key in self.docs:
            return self.docs[key]
        doc = self.read(rel, problems)
        if doc is not None and not isinstance(doc, dict):
            problems.append(ConfigError(rel, "a shared compose file must hold a mapping", line=1))
            doc = None
        if doc is not None:
            found = interpolate_document(doc, variables, rel)
            if found:
                problems.extend(found)
                doc = None
        self.docs[key] = doc
        return doc

    # -- extends -----------------------------------------------------------

    def extends(self, doc: dict, rel: str, problems: list[ConfigError], stack: tuple = ()) -> None:
        services = doc.get("services")
        if not isinstance(services, dict):
            return
        for name in list(services):
            svc = services[name]
            if isinstance(svc, dict) and "extends" in svc:
                services[name] = self.service(doc, rel, name, problems, stack)

    def service(self, doc: dict, rel: str, name: str, problems: list[ConfigError], stack: tuple) -> Any:
        """Service ``name`` of ``doc`` (file ``rel``) with its ``extends`` resolved (the result is cached in doc)."""
        services = doc["services"]
        svc = services.get(name)
        if not isinstance(svc, dict) or "extends" not in svc:
            return svc
        field = f"services.{name}.extends"
        line = key_line(svc, "extends")
        here = (rel, name)
        if here in stack:
            chain = " -> ".join(f"{r}:{s}" for r, s in (*stack[stack.index(here):], here))
            raise ConfigError(rel, f"extends cycle: {chain}", line=line, field=field)
        if len(stack) >= MAX_DEPTH:
            raise ConfigError(rel, f"extends goes more than {MAX_DEPTH} services deep", line=line, field=field)
        ext = svc["extends"]
        if isinstance(ext, str):
            base_name, file = ext, None
        elif isinstance(ext, dict):
            unknown = sorted(str(k) for k in ext if k not in ("service", "file"))
            if unknown:
                raise ConfigError(rel, f"unsupported key {unknown[0]!r} (supported: file, service)", line=line,
                                  field=field)
            base_name, file = ext.get("service"), ext.get("file")
        else:
            raise ConfigError(rel, "must be a service name or a mapping with 'service' (and 'file')", line=line,
                              field=field)
        if not isinstance(base_name, str) or not base_name:
            raise ConfigError(rel, "names no service: write 'service: NAME'", line=line, field=f"{field}.service")
        if file is None:
            base_rel, base_doc = rel, doc
        else:
            base_rel = self.path(posixpath.dirname(rel), file, rel, line, f"{field}.file")
            found: list[ConfigError] = []
            base_doc = self.load(base_rel, self.variables, found)
            if base_doc is None:
                problems.extend(found)
                raise ConfigError(rel, f"cannot read {base_rel}", line=line, field=f"{field}.file")
        base_services = base_doc.get("services") if isinstance(base_doc, dict) else None
        if not isinstance(base_services, dict) or base_name not in base_services:
            known = ", ".join(sorted(str(k) for k in base_services)) if isinstance(base_services, dict) else "none"
            raise ConfigError(rel, f"no service {base_name!r} in {base_rel} (services: {known})", line=line,
                              field=f"{field}.service")
        base = self.service(base_doc, base_rel, base_name, problems, (*stack, here))
        if not isinstance(base, dict):
            raise ConfigError(rel, f"service {base_name!r} of {base_rel} is not a mapping", line=line, field=field)
        base = _rebase_service(to_plain(base), posixpath.dirname(base_rel), posixpath.dirname(rel))
        over = type(svc)()
        for key, value in svc.items():
            if key != "extends":
                over[key] = value
        if hasattr(svc, "lc"):
            for k, v in (svc.lc.data or {}).items():
                if k != "extends":
                    over.lc.add_kv_line_col(k, v)
            over.lc.line, over.lc.col = svc.lc.line, svc.lc.col
        merged = merge_service(base, over)
        services[name] = merged
        return merged

    # -- include -----------------------------------------------------------

    def include(self, doc: dict, rel: str, variables: dict[str, str], problems: list[ConfigError],
                stack: tuple, node_dir: str) -> None:
        entries = doc.pop("include", None) if "include" in doc else None
        if entries is None:
            return
        line = key_line(doc, "include") if hasattr(doc, "lc") else None
        if not isinstance(entries, list):
            raise ConfigError(rel, "must be a list of compose files (or of mappings with 'path')", line=line,
                              field="include")
        for i, entry in enumerate(entries):
            field = f"include[{i}]"
            at = item_line(entries, i) or line
            env_files: list[Any] = []
            if isinstance(entry, dict):
                unknown = sorted(str(k) for k in entry if k not in ("path", "env_file"))
                if unknown:
                    why = ("relative paths of an included file are resolved from its own folder"
                           if unknown[0] == "project_directory" else "supported: path, env_file")
                    raise ConfigError(rel, f"unsupported key {unknown[0]!r} ({why})", line=at, field=field)
                path = entry.get("path")
                if isinstance(path, list):
                    if len(path) != 1:
                        raise ConfigError(rel, "several files merged into one include are not supported: "
                                               "include each file on its own", line=at, field=f"{field}.path")
                    path = path[0]
                env = entry.get("env_file")
                env_files = env if isinstance(env, list) else ([] if env is None else [env])
            else:
                path = entry
            inc_rel = repo_path(self.root, posixpath.dirname(rel), path, rel, at, field)
            if inc_rel in stack or inc_rel == rel:
                chain = " -> ".join((*stack, rel, inc_rel))
                raise ConfigError(rel, f"include cycle: {chain}", line=at, field=field)
            if len(stack) >= MAX_DEPTH:
                raise ConfigError(rel, f"include goes more than {MAX_DEPTH} files deep", line=at, field=field)
            inc_dir = posixpath.dirname(inc_rel)
            own: dict[str, str] = {}
            written = [(f, f"{field}.env_file") for f in env_files] or [(ENV_FILE, None)]
            for env_file, env_field in written:
                if env_field is None:
                    env_rel = posixpath.join(inc_dir, ENV_FILE)
                    if not (self.root / env_rel).is_file():
                        continue
                else:
                    env_rel = repo_path(self.root, posixpath.dirname(rel), env_file, rel, at, env_field)
                text = (self.root / env_rel).read_text(encoding="utf-8")
                values, found = parse_dotenv(text, env_rel, variables)
                if found:
                    problems.extend(found)
                    return
                own.update(values)
            inc_vars = {**own, **variables}  # the including project's variables win
            found = []
            inc_doc = self.read(inc_rel, found)
            if inc_doc is None or not isinstance(inc_doc, dict):
                problems.extend(found or [ConfigError(inc_rel, "an included compose file must hold a mapping", line=1)])
                return
            found = interpolate_document(inc_doc, inc_vars, inc_rel)
            if found:
                problems.extend(found)
                return
            self.include(inc_doc, inc_rel, inc_vars, problems, (*stack, rel), node_dir)
            if problems:
                return
            self.extends(inc_doc, inc_rel, problems)
            if problems:
                return
            if self.check is not None:  # a complete compose file of its own: its problems at its own lines
                found = self.check(inc_doc, inc_rel)
                if found:
                    problems.extend(found)
                    return
            self._add(doc, rel, inc_doc, inc_rel, at, field, node_dir)

    def _add(self, doc: dict, rel: str, inc: dict, inc_rel: str, line: int | None, field: str, node_dir: str) -> None:
        inc_dir = posixpath.dirname(inc_rel)
        for section in TOP_SECTIONS:
            part = inc.get(section)
            if not part:
                continue
            if not isinstance(part, dict):
                raise ConfigError(inc_rel, "must be a mapping", line=key_line(inc, section), field=section)
            mine = doc.get(section)
            if mine is None:
                doc[section] = mine = {}
            for name, definition in part.items():
                if name in mine:
                    raise ConfigError(rel, f"{section}.{name} is defined here and in the included {inc_rel}: "
                                           "Compose refuses the conflict", line=line, field=field)
                plain = to_plain(definition)
                if section == "services" and isinstance(plain, dict):
                    plain = _rebase_service(plain, inc_dir, node_dir)
                else:
                    plain = _rebase_top(section, plain, inc_dir, node_dir)
                mine[name] = plain


def resolve_shared(doc: dict, rel: str, root: Path, variables: dict[str, str], read: Reader,
                   check: Checker | None = None) -> list[ConfigError]:
    """Resolve ``include`` and ``extends`` of a node's compose document in place; the problems found.

    ``check(doc, rel)``: the compose check an included file passes on its own first.
    """
    services = doc.get("services")
    if "include" not in doc and not (isinstance(services, dict) and any(
            isinstance(s, dict) and "extends" in s for s in services.values())):
        return []
    problems: list[ConfigError] = []
    resolver = _Resolver(root, read, variables, check)
    try:
        resolver.include(doc, rel, variables, problems, (), posixpath.dirname(rel))
        if not problems:  # after include, as Compose: a service may extend one the file includes
            resolver.extends(doc, rel, problems)
    except ConfigError as err:
        problems.append(err)
    return problems
