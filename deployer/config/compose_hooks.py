"""Compose lifecycle hooks (``post_start``, ``pre_stop``) -> what the engine's exec is asked to run.

``parse_hooks`` reads one key's list of hooks (``command`` required; ``user``,
``privileged``, ``working_dir``, ``environment``) into the keyword arguments of
docker's ``APIClient.exec_create`` (``cmd``, ``user``, ``privileged``,
``workdir``, ``environment``), as the container spec carries them. The applier
runs them (``engine.apply``): post_start after the new container started,
before the health gate (a hook that exits non-zero fails the container, which
is removed and the old one kept); pre_stop in the container about to be
stopped (a hook that exits non-zero aborts the stop, as Compose does).
The compose check calls the same parser.
"""

from __future__ import annotations

from typing import Any

from deployer.config.compose_keys import env_pairs, is_bool, parse_command
from deployer.values import BadValue, kind

HOOK_KEYS = {"command", "user", "privileged", "working_dir", "environment"}


def parse_hooks(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadValue(f"must be a list of hooks (mappings with 'command'), not {kind(value)}")
    out = []
    for i, hook in enumerate(value):
        if not isinstance(hook, dict):
            raise BadValue(f"[{i}]: must be a mapping with 'command', not {kind(hook)}")
        extra = sorted(str(k) for k in hook if k not in HOOK_KEYS and not str(k).startswith("x-"))
        if extra:
            raise BadValue(f"[{i}]: unsupported key {extra[0]!r}: use {', '.join(sorted(HOOK_KEYS))}")
        if hook.get("command") is None:
            raise BadValue(f"[{i}]: missing required key 'command'")
        try:
            cmd = parse_command(hook["command"])
        except BadValue as exc:
            raise BadValue(f"[{i}].command: {exc}") from None
        if not cmd:
            raise BadValue(f"[{i}].command: the command is empty")
        entry: dict[str, Any] = {"cmd": cmd}
        for key, arg in (("user", "user"), ("working_dir", "workdir")):
            if hook.get(key) is not None:
                if not isinstance(hook[key], str) or not hook[key]:
                    raise BadValue(f"[{i}].{key}: must be a non-empty string, not {kind(hook[key])}")
                entry[arg] = hook[key]
        privileged = hook.get("privileged")
        if privileged is not None:
            if not is_bool(privileged):
                raise BadValue(f"[{i}].privileged: must be true or false, not {kind(privileged)}")
            entry["privileged"] = bool(privileged)
        if hook.get("environment") is not None:
            env = hook["environment"]
            if not isinstance(env, (list, dict)):
                raise BadValue(f"[{i}].environment: must be a list of 'NAME=value' or a mapping, not {kind(env)}")
            pairs = env_pairs(env)
            unset = [k for k, v in pairs if v is None]
            if unset:
                raise BadValue(f"[{i}].environment: {unset[0]!r} has no value: write {unset[0]}=value")
            entry["environment"] = [f"{k}={v}" for k, v in pairs]
        out.append(entry)
    return out
