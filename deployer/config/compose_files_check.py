"""The compose check of what a compose file ships from the repository: top-level configs, a service's
configs, secrets (long syntax), env_file and relative bind mounts.

``FilesChecks`` is a mixin of ``compose_check_service.ServiceChecker`` (which
has ``err``, ``keys``, ``string``, ``parsed`` ...): ``top_configs`` checks the
top-level ``configs`` (called by ``compose_check``), ``s_configs``,
``s_secrets`` and ``s_env_file`` the service keys, ``relative_bind`` a
``./path`` volume. Every file named is put through the repository-files
policy (``repo_files``) here, so ``validate`` refuses what a deploy would.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any

from deployer.config.compose_files import read_env_file
from deployer.config.compose_keys import (
    ENV_FILE_KEYS, NAME_RE, SERVICE_CONFIG_KEYS, SERVICE_SECRET_KEYS, TOP_CONFIG_KEYS, as_list, is_bool, is_int,
    parse_mode, parse_volume, secret_target,
)  # fmt: skip
from deployer.spec import SECRETS_DIR
from deployer.values import BadValue
from deployer.config.repo_files import (
    BIND, CONFIG, MAX_FILE_BYTES, MAX_SERVICE_BYTES, MIB, Where, open_checked, read_tree, resolve,
)  # fmt: skip
from deployer.errors import ConfigError
from deployer.values import kind

_ENVIRONMENT = ("'environment' reads the operator's shell, so what runs would depend on who deploys; "
                "the deployer never reads it: use 'file' (or 'content' for a config)")


class FilesChecks:
    """Mixin: the checks of shipped files (see the module docstring)."""

    def file_mode(self, at: Any) -> None:
        """A secret's or config's mode: octal digits with a leading 0 (0440), as Compose reads it too.

        Compose reads a YAML integer written without the leading 0 (``mode: 440``) as a decimal number
        (440 is 0670); the deployer would read its digits as octal: refused, so both mean the same. Only
        the round-trip data (with lines) tells 440 from 0440; the loader reads a file holding such a
        mode that way (``loader.BARE_DECIMAL_MODE``).
        """
        value = at.value
        if at.line is not None and is_int(value) and type(value) is int and value != 0:
            self.err(at, f"mode {value} is the decimal number {value} to Compose, that is 0{value:o}: "
                         f"write the octal digits with a leading 0, like 0{value}")
            return
        self.parsed(at, parse_mode)


    configs: set[str]
    shipped_bytes: dict[str, int]
    config_sizes: dict[str, int]

    def _where(self, at) -> Where:
        return Where(self.path, at.field or "", at.line)

    # -- top level ---------------------------------------------------------

    def top_configs(self, at) -> None:
        if at.value is None or not self.mapping(at):
            return
        for name, child in at.entries():
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                self.err(child, f"invalid config name {name!r}")
                continue
            self.configs.add(name)
            if not self.mapping(child):
                continue
            for key, sub in child.entries():
                if key == "environment":
                    self.err(sub, _ENVIRONMENT)
                elif key == "external":
                    self.err(sub, "external configs are Swarm objects and not supported: use 'file' or 'content'")
                elif key == "name":
                    self.err(sub, "'name' names a Swarm or external config and is not supported")
            self.keys(child, TOP_CONFIG_KEYS | {"environment", "external", "name"})
            file_at, content_at = child.get("file"), child.get("content")
            if file_at is not None and content_at is not None:
                self.err(child, "give 'file' or 'content', not both")
            elif file_at is None and content_at is None:
                if not any(child.get(k) is not None for k in ("environment", "external", "name")):
                    self.err(child, "missing required key 'file' (or 'content')")
            elif file_at is not None:
                if self.string(file_at):
                    self.config_sizes[name] = self.config_file(file_at)
            elif isinstance(content_at.value, str):
                size = self.config_sizes[name] = len(content_at.value.encode("utf-8"))
                if size > MAX_FILE_BYTES:
                    self.err(content_at, f"the content holds {size} bytes; a config may hold at most "
                                         f"{MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES // MIB} MiB)")
            else:
                self.err(content_at, f"must be a string, not {kind(content_at.value)}")

    def config_file(self, at) -> int:
        """The config file's size, once it passed the policy (0 when it did not: the error is recorded)."""
        where = self._where(at)
        try:
            source = resolve(at.value, CONFIG, where, repo_root=self.repo_root)
            os.close(open_checked(source, CONFIG, where))
        except ConfigError as err:
            self.errors.append(err)
            return 0
        return source.size

    # -- a service ---------------------------------------------------------

    def _owners(self, item) -> None:
        for key in ("uid", "gid"):
            sub = item.get(key)
            if sub is None:
                continue
            value = sub.value
            if is_int(value) and value >= 0:
                continue
            if isinstance(value, str) and value.isdigit():
                continue
            self.err(sub, f"must be a numeric {key} (a whole number of 0 or more), not {value!r}")

    def _mounted_elsewhere(self, facts) -> dict[str, str]:
        """The service's volume and tmpfs targets (what a config or secret mount may not take again)."""
        taken: dict[str, str] = {}
        volumes = facts.at.get("volumes")
        if volumes is not None and isinstance(volumes.value, list):
            for _, item in volumes.items():
                try:
                    taken[parse_volume(item.value)["target"].rstrip("/") or "/"] = item.field or ""
                except BadValue:
                    pass  # reported by s_volumes
        tmpfs = facts.at.get("tmpfs")
        if tmpfs is not None:
            for item in as_list(tmpfs.value):
                if isinstance(item, str):
                    taken[item.partition(":")[0].rstrip("/") or "/"] = tmpfs.field or ""
        return taken

    def _clash(self, item, path: str, taken: dict[str, str]) -> None:
        if path in taken:
            self.err(item, f"mount target {path} is used twice (also by {taken[path]})")

    def _count(self, service: str, at, size: int) -> None:
        total = self.shipped_bytes.get(service, 0) + size
        self.shipped_bytes[service] = total
        if total > MAX_SERVICE_BYTES >= total - size:
            self.err(at, f"the files service {service} ships hold more than {MAX_SERVICE_BYTES} bytes "
                         f"({MAX_SERVICE_BYTES // MIB} MiB, the most one service ships)")

    def _file_entries(self, at, keys: set[str], target_problem):
        """Each entry of a service's secrets or configs, checked: (item, source, target), source None when
        unreadable (skipped) and target None when not written or refused; ``target_problem`` says why a
        written target is refused (None: fine)."""
        for _, item in at.items():
            source, target = None, None
            if isinstance(item.value, dict):
                self.keys(item, keys, extensions=False)
                src = item.get("source")
                if src is None:
                    self.err(item, "missing required key 'source'")
                elif self.string(src):
                    source = src.value
                tgt = item.get("target")
                if tgt is not None and self.string(tgt):
                    problem = target_problem(tgt.value)
                    if problem:
                        self.err(tgt, f"invalid target {tgt.value!r}: {problem}")
                    else:
                        target = tgt.value
                mode = item.get("mode")
                if mode is not None:
                    self.file_mode(mode)
                self._owners(item)
            elif self.string(item):
                source = item.value
            if source is not None:
                yield item, source, target

    def s_secrets(self, name, at, facts, network_mode) -> None:
        if not self.seq(at):
            return
        targets: dict[str, str] = {}
        taken = self._mounted_elsewhere(facts)
        for item, source, target in self._file_entries(at, SERVICE_SECRET_KEYS, _secret_target):
            if source not in self.secrets:
                self.err(item, f"secret {source!r} is not declared in the top-level secrets")
            path = secret_target(source, target)
            if path in targets:
                self.err(item, f"secret target {path} is used twice (also by {targets[path]})")
            targets[path] = item.field or ""
            # secrets under /run/secrets are one mount there (compose_files); others a mount of their own
            self._clash(item, SECRETS_DIR if path.startswith(SECRETS_DIR + "/") else path, taken)

    def s_configs(self, name, at, facts, network_mode) -> None:
        if not self.seq(at):
            return
        targets: dict[str, str] = {}
        taken = self._mounted_elsewhere(facts)
        secrets = facts.at.get("secrets")
        if secrets is not None and isinstance(secrets.value, list) and secrets.value:
            taken.setdefault(SECRETS_DIR, secrets.field or "")
        for item, source, target in self._file_entries(at, SERVICE_CONFIG_KEYS, _config_target):
            if source not in self.configs:
                self.err(item, f"config {source!r} is not declared in the top-level configs")
            else:
                self._count(name, item, self.config_sizes.get(source, 0))
            path = target or f"/{source}"
            if path in targets:
                self.err(item, f"config target {path} is used twice (also by {targets[path]})")
            targets[path] = item.field or ""
            self._clash(item, path.rstrip("/"), taken)

    def s_env_file(self, name, at, facts, network_mode) -> None:
        items = list(at.items()) if isinstance(at.value, list) else [(0, at)]
        if not isinstance(at.value, (list, str)):
            self.err(at, f"must be a path or a list of paths and {{path, required}}, not {kind(at.value)}")
            return
        for _, item in items:
            required, path_at = True, item
            if isinstance(item.value, dict):
                self.keys(item, ENV_FILE_KEYS, extensions=False)
                path_at = item.get("path")
                if path_at is None:
                    self.err(item, "missing required key 'path'")
                    continue
                req = item.get("required")
                if req is not None:
                    if not is_bool(req.value):
                        self.err(req, f"must be true or false, not {kind(req.value)}")
                        continue
                    required = bool(req.value)
            if not self.string(path_at):
                continue
            try:
                read_env_file(path_at.value, required, self._where(path_at), self.repo_root)
            except ConfigError as err:
                self.errors.append(err)

    def relative_bind(self, service: str, item, mount: dict[str, Any]) -> None:
        """A volume whose source is a path of the repository: shipped, so read-only and within the policy."""
        if not mount["read_only"]:
            self.err(item, f"{mount['source']} is shipped from the repository and mounted read-only: write "
                           f"'{mount['source']}:{mount['target']}:ro' (or read_only: true); the container "
                           "must not write into the deployer's content-addressed copy")
            return
        where = self._where(item)
        try:
            source = resolve(mount["source"], BIND, where, repo_root=self.repo_root)
            if source.is_dir:
                size = sum(len(e.data or b"") for e in read_tree(source, BIND, where, repo_root=self.repo_root))
            else:
                os.close(open_checked(source, BIND, where))
                size = source.size
        except ConfigError as err:
            self.errors.append(err)
            return
        self._count(service, item, size)


def _secret_target(target: str) -> str | None:
    if ".." in PurePosixPath(target).parts:
        return "'..' is not allowed"
    if target.rstrip("/") in ("/run/secrets", "/run", "/"):
        return "name a file"
    return None


def _config_target(target: str) -> str | None:
    if not target.startswith("/"):
        return "write the absolute path in the container"
    if ".." in PurePosixPath(target).parts or target.rstrip("/") == "":
        return "name a file"
    return None
