"""Checking the service keys that set up the container's process, kernel and resources, and the hooks.

``HostKeyChecks`` is a part of ``compose_check_service.ServiceChecker`` (its
methods use the checker's ``err`` and ``parsed``): the keys that are one engine
argument each (``compose_host.HOST_KEYS``, checked by their own parsers),
``pull_policy``, the ``post_start`` / ``pre_stop`` hooks (``compose_hooks``),
and the keys the engine refuses together, refused here so that ``validate``
says so instead of the engine at apply time.
"""

from __future__ import annotations

from typing import Any

from deployer.config.compose_hooks import parse_hooks
from deployer.config.compose_host import HOST_KEYS
from deployer.config.compose_keys import PULL_POLICIES
from deployer.values import BadValue, parse_bytes


class HostKeyChecks:
    """Mixed into ServiceChecker: ``self.err(at, message)`` and ``self.parsed(at, parser)`` are its."""

    def host_key(self, key: str, at: Any, facts: Any) -> None:
        """A key that is one engine argument (``compose_host``): its parser says whether the value is good."""
        if at.value is None:
            self.err(at, "must not be null")
            return
        value = self.parsed(at, HOST_KEYS[key][2])
        if key in ("pid", "ipc") and isinstance(value, str) and value.startswith("service:"):
            facts.deps.append((value[len("service:"):], at))

    def s_post_start(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_hooks)

    s_pre_stop = s_post_start

    def s_pull_policy(self, name, at, facts, network_mode) -> None:
        if at.value in PULL_POLICIES:
            return
        self.err(at, f"pull_policy {at.value!r} is not supported: the deployer pulls an image only when the node "
                     "lacks it (missing); to run a new image, deploy a new tag or a digest")

    def conflicts(self, at: Any, network_mode: str | None) -> None:
        """Keys the engine refuses together (at create, after validate said the file is fine, were they let through)."""
        def value(key: str) -> Any:
            child = at.get(key)
            return None if child is None else child.value

        uts = at.get("uts")
        if uts is not None and uts.value == "host" and value("hostname") is not None:
            self.err(uts, "uts: host shares the node's host name, so hostname cannot be set (the engine refuses both)")
        mac = at.get("mac_address")
        if mac is not None and network_mode and network_mode != "bridge":
            self.err(mac, f"a MAC address cannot be set with network_mode {network_mode!r} (the engine refuses both)")
        swap = at.get("memswap_limit")
        if swap is not None and swap.value not in (None, -1, "-1"):
            try:
                swap_bytes = parse_bytes(swap.value)
                mem = value("mem_limit")
                mem_bytes = parse_bytes(mem) if mem is not None else None
            except BadValue:
                return  # reported at the key
            if mem_bytes is None:
                self.err(swap, "memswap_limit needs mem_limit (the engine refuses a swap limit without a memory limit)")
            elif swap_bytes < mem_bytes:
                self.err(swap, "memswap_limit is memory plus swap, so it cannot be below mem_limit")
