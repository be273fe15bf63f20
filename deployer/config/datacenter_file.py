"""The settings of datacenter.yml that are more than a string: ``registry_credentials``, ``lock`` and
``secrets_dir``, each checked (a problem is a ConfigError with its line) and read into the model's values
(``loader`` reads the file and calls these)."""

from __future__ import annotations

import os
from pathlib import Path

from deployer.config.yamlread import key_line, value_line
from deployer.errors import ConfigError
from deployer.values import BadValue, parse_duration

LOCK_KEYS = {"ttl", "delay"}


def string_field(doc: dict, key: str, rel: str, problems: list[ConfigError], field: str | None = None) -> str | None:
    """``doc[key]`` as a non-empty string; None when absent, or (with a problem) when it is not one."""
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(ConfigError(rel, "must be a non-empty string", line=value_line(doc, key), field=field or key))
        return None
    return value


def unknown_keys(doc: dict, allowed: set[str], rel: str, prefix: str, problems: list[ConfigError]) -> None:
    """A problem for each key of ``doc`` not in ``allowed``, naming the supported ones."""
    for key in doc:
        if key not in allowed:
            problems.append(ConfigError(rel, f"unsupported key {key!r} (supported: {', '.join(sorted(allowed))})",
                                        line=key_line(doc, key), field=f"{prefix}{key}"))


def credentials_file(root: Path, doc: dict, rel: str, problems: list[ConfigError]) -> str | None:
    """datacenter.yml ``registry_credentials``: an absolute path outside the repository (never committed).
    Its permissions and contents are checked where it is read (engine.registry_credentials)."""
    value = string_field(doc, "registry_credentials", rel, problems)
    if value is None:
        return None
    why = None
    if not os.path.isabs(value):
        why = f"{value!r} is not an absolute path"
    elif Path(os.path.realpath(value)).is_relative_to(os.path.realpath(root)):
        why = f"{value!r} is inside the repository: credentials must never be committed"
    if why:
        problems.append(ConfigError(rel, why, line=value_line(doc, "registry_credentials"), field="registry_credentials"))
        return None
    return os.path.normpath(value)


def lock_settings(doc: dict, rel: str, problems: list[ConfigError]) -> tuple[float | None, float | None]:
    """datacenter.yml ``lock: {ttl: 30s, delay: 5s}``: the node locks' TTL and Consul lock-delay (ops.locks)."""
    value = doc.get("lock")
    if value is None:
        return None, None
    if not isinstance(value, dict):
        problems.append(ConfigError(rel, "must be a mapping with ttl and/or delay", line=value_line(doc, "lock"),
                                    field="lock"))
        return None, None
    unknown_keys(value, LOCK_KEYS, rel, "lock.", problems)
    out: list[float | None] = []
    for key, low in (("ttl", 10.0), ("delay", 0.0)):
        if value.get(key) is None:
            out.append(None)
            continue
        try:
            seconds = parse_duration(value[key])
        except BadValue as exc:
            problems.append(ConfigError(rel, str(exc), line=value_line(value, key), field=f"lock.{key}"))
            out.append(None)
            continue
        if seconds < low or seconds > 86400:
            why = "at least 10s (Consul's shortest session TTL)" if key == "ttl" else "at most 24h"
            problems.append(ConfigError(rel, f"must be {why}, got {value[key]!r}", line=value_line(value, key),
                                        field=f"lock.{key}"))
            out.append(None)
            continue
        out.append(seconds)
    return out[0], out[1]


def secrets_dirs(doc: dict, rel: str, problems: list[ConfigError]) -> tuple[str, ...]:
    """datacenter.yml ``secrets_dir``: an absolute folder, or a list of them, each an existing directory."""
    value = doc.get("secrets_dir")
    if value is None:
        return ()
    if isinstance(value, str):
        items = [(value, value_line(doc, "secrets_dir"), "secrets_dir")]
    elif isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            try:
                line = value.lc.item(i)[0] + 1
            except Exception:  # plain data: no lines
                line = value_line(doc, "secrets_dir")
            items.append((item, line, f"secrets_dir[{i}]"))
    else:
        problems.append(ConfigError(rel, "must be an absolute path or a list of them",
                                    line=value_line(doc, "secrets_dir"), field="secrets_dir"))
        return ()
    out = []
    for item, line, field in items:
        if not isinstance(item, str) or not item.strip():
            why = "must be a non-empty string"
        elif not os.path.isabs(item):
            why = f"{item!r} is not an absolute path"
        elif not os.path.isdir(item):
            why = f"{item!r} does not exist or is not a directory"
        elif os.path.realpath(item) == "/":
            why = f"{item!r} is the root folder: every file of the machine would be a possible secret"
        else:
            out.append(os.path.normpath(item))
            continue
        problems.append(ConfigError(rel, why, line=line, field=field))
    return tuple(out)
