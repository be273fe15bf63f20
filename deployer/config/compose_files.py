"""Files from the repository onto the node: what a service's secrets, configs, env_file and relative
bind mounts become in its container spec.

``shipped_files(node, name, config, repo_root)`` reads every file a service
ships, once, through the repository-files policy (``repo_files``), and
returns a ``Shipped``: the secrets (``SecretFile``, for the hash and the
plan), the bundles of content the node must hold (``spec.Bundle``, one
directory per content digest in the node's store), the read-only bind
mounts of those directories or of files in them (engine ``Mounts``), and a
``files`` map naming each shipped path for the plan (``changed:
files./etc/nginx/nginx.conf``). ``env_file_environment`` reads the service's
env_file files (dotenv, ``dotenv``) into the environment they give.

How it lands on the node: secrets whose target lies under /run/secrets
form one bundle mounted at /run/secrets (a directory of the node's tmpfs
store, /run/deployer); a secret elsewhere, each config and each relative bind
source of a file is a file of its own bundle, bind-mounted at its target; a
relative bind source of a directory is a bundle mounted at its target. All
mounts are read-only. docs/compose.md, "Files and secrets on the node".
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from deployer.config.compose_keys import parse_mode, parse_volume, secret_target
from deployer.config.dotenv import parse_dotenv
from deployer.config.repo_files import (
    BIND, CONFIG, ENV_FILE, MAX_SERVICE_BYTES, MAX_SERVICE_ENTRIES, SECRET, MIB, Where, read_bytes, read_tree,
    resolve, top_level_line,
)  # fmt: skip
from deployer.errors import ConfigError
from deployer.model import Node
from deployer.spec import DEFAULT_SECRET_MODE, SECRETS_DIR, Bundle, SecretFile, ShippedEntry

DEFAULT_CONFIG_MODE = 0o444


@dataclass
class Shipped:
    secrets: list[SecretFile] = field(default_factory=list)
    bundles: list[Bundle] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def owner(value: Any) -> int:
    """A compose uid/gid (a number, or a string of digits) as a number; 0 when not written."""
    return 0 if value is None else int(str(value))


def _with_line(err: ConfigError, repo_root: Path, compose_path: str, section: str, name: str,
               key: str = "file") -> ConfigError:
    """Plain data has no lines: find the one the top-level value is written on."""
    if err.line is not None:
        return err
    return ConfigError(err.path, err.message, line=top_level_line(repo_root, compose_path, section, name, key),
                       field=err.field)


def _mount(source: str, target: str) -> dict[str, Any]:
    return {"Type": "bind", "Source": source, "Target": target, "ReadOnly": True}


def _folders(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _file_bundle(node: Node, kind: str, target: str, data: bytes, mode: int, uid: int, gid: int,
                 out: Shipped) -> Bundle:
    """A bundle of one file, bind-mounted (the file in it) at ``target``."""
    base = posixpath.basename(target.rstrip("/")) or "file"
    bundle = Bundle(kind, node.dc, node.name, [ShippedEntry(base, mode, uid, gid, data)])
    out.bundles.append(bundle)
    out.mounts.append(_mount(f"{bundle.path}/{base}", target))
    return bundle


def _entry(entry: Any, default_mode: int) -> tuple[str, str | None, int, int, int]:
    """A service's secrets or configs entry (short or long syntax): (source, target, mode, uid, gid)."""
    if isinstance(entry, str):
        return entry, None, default_mode, 0, 0
    mode = parse_mode(entry["mode"]) if entry.get("mode") is not None else default_mode
    return entry["source"], entry.get("target"), mode, owner(entry.get("uid")), owner(entry.get("gid"))


def _secrets(node: Node, config: Mapping[str, Any], repo_root: Path, compose_path: str, out: Shipped) -> None:
    read: dict[str, tuple[str, bytes]] = {}  # secret name -> (resolved path, content): each file read once
    under_run: list[SecretFile] = []
    for entry in config.get("secrets") or []:
        name, target, mode, uid, gid = _entry(entry, DEFAULT_SECRET_MODE)
        if name not in read:
            definition = node.secrets.get(name)
            written = definition.get("file") if isinstance(definition, dict) else None
            where = Where(compose_path, f"secrets.{name}.file")
            try:
                source = resolve(written, SECRET, where, repo_root=repo_root, secrets_dirs=node.secrets_dirs)
                data = read_bytes(source, SECRET, where)
            except ConfigError as err:
                raise _with_line(err, repo_root, compose_path, "secrets", name) from None
            read[name] = (source.path, data)
        path, data = read[name]
        secret = SecretFile(name=name, source=path, target=secret_target(name, target),
                            sha256=hashlib.sha256(data).hexdigest(), mode=mode, uid=uid, gid=gid, content=data)
        out.secrets.append(secret)
        if secret.target.startswith(SECRETS_DIR + "/"):
            under_run.append(secret)
        else:
            _file_bundle(node, "secrets", secret.target, data, mode, uid, gid, out)
    out.secrets.sort(key=lambda s: s.target)
    if under_run:
        entries: dict[str, ShippedEntry] = {}
        for secret in under_run:
            rel = secret.target[len(SECRETS_DIR) + 1:]
            for folder in _folders(rel):
                entries.setdefault(folder, ShippedEntry(folder, 0o755))
            entries[rel] = ShippedEntry(rel, secret.mode, secret.uid, secret.gid, secret.content)
        bundle = Bundle("secrets", node.dc, node.name, sorted(entries.values(), key=lambda e: e.rel))
        out.bundles.append(bundle)
        out.mounts.append(_mount(bundle.path, SECRETS_DIR))


def _config_content(node: Node, name: str, repo_root: Path, compose_path: str) -> tuple[bytes, str]:
    definition = node.configs.get(name) or {}
    if definition.get("content") is not None:
        return str(definition["content"]).encode("utf-8"), f"configs.{name}.content"
    where = Where(compose_path, f"configs.{name}.file")
    try:
        source = resolve(definition.get("file"), CONFIG, where, repo_root=repo_root)
        return read_bytes(source, CONFIG, where), source.shown
    except ConfigError as err:
        raise _with_line(err, repo_root, compose_path, "configs", name) from None


def _configs(node: Node, config: Mapping[str, Any], repo_root: Path, compose_path: str, out: Shipped) -> None:
    for entry in config.get("configs") or []:
        name, target, mode, uid, gid = _entry(entry, DEFAULT_CONFIG_MODE)
        target = target or f"/{name}"
        data, shown = _config_content(node, name, repo_root, compose_path)
        bundle = _file_bundle(node, "files", target, data, mode, uid, gid, out)
        out.files[target] = f"config {name} ({shown}) {bundle.digest[:12]}"


def _binds(node: Node, service: str, config: Mapping[str, Any], repo_root: Path, compose_path: str,
           out: Shipped) -> None:
    for i, entry in enumerate(config.get("volumes") or []):
        mount = parse_volume(entry)
        if not mount.get("relative"):
            continue
        where = Where(compose_path, f"services.{service}.volumes[{i}]")
        source = resolve(mount["source"], BIND, where, repo_root=repo_root)
        target = mount["target"]
        if source.is_dir:
            tree = read_tree(source, BIND, where, repo_root=repo_root)
            entries = [ShippedEntry(e.rel, e.mode, 0, 0, e.data) for e in tree]
            bundle = Bundle("files", node.dc, node.name, entries)
            out.bundles.append(bundle)
            out.mounts.append(_mount(bundle.path, target))
        else:
            data = read_bytes(source, BIND, where)
            mode = os.stat(source.path).st_mode & 0o7777
            bundle = _file_bundle(node, "files", target, data, mode, 0, 0, out)
        out.files[target] = f"{mount['source']} ({source.shown}) {bundle.digest[:12]}"


def shipped_files(node: Node, service: str, config: Mapping[str, Any], repo_root: Path) -> Shipped:
    """What one service ships to the node (see the module docstring); ConfigError if a file breaks the policy."""
    compose_path = node.compose_path or node.path
    out = Shipped()
    _secrets(node, config, repo_root, compose_path, out)
    _configs(node, config, repo_root, compose_path, out)
    _binds(node, service, config, repo_root, compose_path, out)
    total = sum(b.size for b in out.bundles)
    count = sum(len(b.entries) for b in out.bundles)
    if total > MAX_SERVICE_BYTES or count > MAX_SERVICE_ENTRIES:
        raise ConfigError(compose_path, f"the files service {service} ships hold {total} bytes in {count} files; "
                          f"a service ships at most {MAX_SERVICE_BYTES // MIB} MiB in {MAX_SERVICE_ENTRIES} files",
                          field=f"services.{service}")
    out.mounts.sort(key=lambda m: m["Target"])
    out.bundles.sort(key=lambda b: (b.kind, b.digest))
    return out


def env_file_entries(value: Any) -> list[tuple[str, bool]]:
    """An env_file value (a path, or a list of paths and {path, required}) -> [(path, required)]."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append((item.get("path"), item.get("required", True) is not False))
        else:
            out.append((item, True))
    return out


def read_env_file(written: Any, required: bool, where: Where, repo_root: Path) -> list[tuple[str, str]] | None:
    """One env_file's assignments (None: it does not exist and is not required); ConfigError when bad."""
    if not required and isinstance(written, str) and not os.path.isabs(written):
        compose_dir = os.path.join(os.path.abspath(repo_root), *Path(where.compose_path).parent.parts)
        if not os.path.lexists(os.path.join(compose_dir, written)):
            return None
    source = resolve(written, ENV_FILE, where, repo_root=repo_root)
    data = read_bytes(source, ENV_FILE, where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise where.refuse(f"env_file {source.shown} is not UTF-8 text") from None
    rel = os.path.relpath(source.path, os.path.realpath(repo_root))
    return parse_dotenv(text, rel)


def env_file_environment(node: Node, service: str, config: Mapping[str, Any], repo_root: Path) -> dict[str, str]:
    """The variables the service's env_file files give, later files winning (``environment`` wins over all)."""
    compose_path = node.compose_path or node.path
    values: dict[str, str] = {}
    value = config.get("env_file")
    for i, (path, required) in enumerate(env_file_entries(value)):
        field_ = f"services.{service}.env_file" + (f"[{i}]" if isinstance(value, list) else "")
        pairs = read_env_file(path, required, Where(compose_path, field_), repo_root)
        values.update(pairs or [])
    return values
