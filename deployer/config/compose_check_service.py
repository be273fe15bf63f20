"""Checking the services of a compose file, key by key.

``ServiceChecker`` walks one service's mapping (ruamel round-trip data, so
every key knows its line; plain data works too, without lines) and records
every problem as a ConfigError naming file, line and field. Each supported
service key has its method ``s_<key>``; a key the deployer does not support is
an error, with a hint or a close match, never silently ignored. It also
collects what the checks across services need (dependencies, published ports,
container names) in ``ServiceFacts``. ``compose_check`` builds on it with the
top level of the document (volumes, networks, secrets) and those cross-service
checks; the value parsers are ``compose_keys``'.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from deployer.config.compose_check_host import HostKeyChecks
from deployer.config.compose_host import HOST_KEYS
from deployer.config.compose_keys import (
    BUILD_KEYS, CONTAINER_NAME_RE, DEPENDS_ON_CONDITIONS, DEPENDS_ON_KEYS, HEALTHCHECK_HINTS, HEALTHCHECK_KEYS,
    LOGGING_KEYS, NAME_RE, NULL_MEANS_EMPTY, PORT_LONG_KEYS, RESTART_POLICIES, SERVICE_KEYS,
    SERVICE_NETWORK_HINTS, SERVICE_NETWORK_KEYS, SIGNAL_RE, UNSUPPORTED_HINTS,
    VOLUME_LONG_HINTS, VOLUME_LONG_KEYS, Binding, PortRun, as_list, check_extra_host, check_ip,
    expand_run, expose_range, extra_host_pairs, is_bool, is_int, is_scalar, label_pairs, parse_command, parse_cpus,
    parse_healthcheck_test, parse_port_long, parse_port_run, parse_restart, parse_tmpfs, parse_volume,
    split_assignment,
)  # fmt: skip
from deployer.config.compose_files_check import FilesChecks
from deployer.config.compose_deploy import DeployChecks
from deployer.config.label_check import check_labels, service_name_problem
from deployer.errors import ConfigError, ImageReferenceError
from deployer.imageref import ImageRef
from deployer.labels import RESERVED_LABELS
from deployer.values import BadValue, kind, parse_bytes, parse_duration_ns

# The most ports the ports and expose entries of one compose file may stand for (docs/compose.md, "Limits").
MAX_PORTS_PER_FILE = 65_536


@dataclass
class At:
    """A value in the document, with its dotted field path and 1-based line."""

    value: Any
    field: str | None
    line: int | None

    def _child_field(self, key: Any) -> str:
        return f"{self.field}.{key}" if self.field else str(key)

    def entries(self) -> Iterator[tuple[Any, At]]:
        lc = getattr(self.value, "lc", None)
        for key, val in self.value.items():
            try:
                line = lc.key(key)[0] + 1
            except Exception:  # plain dicts, and keys merged in with `<<: *anchor`
                line = self.line
            yield key, At(val, self._child_field(key), line)

    def get(self, key: str) -> At | None:
        if isinstance(self.value, dict):  # a direct lookup: validation asks for many keys of every service
            if key not in self.value:
                return None
            try:
                line = self.value.lc.key(key)[0] + 1
            except Exception:  # plain dicts, and keys merged in with `<<: *anchor`
                line = self.line
            return At(self.value[key], self._child_field(key), line)
        for k, child in self.entries():
            if k == key:
                return child
        return None

    def items(self) -> Iterator[tuple[int, At]]:
        lc = getattr(self.value, "lc", None)
        for i, val in enumerate(self.value):
            try:
                line = lc.item(i)[0] + 1
            except Exception:
                line = self.line
            yield i, At(val, f"{self.field}[{i}]", line)


@dataclass
class ServiceFacts:
    """What the cross-service checks need to know about one service."""

    at: At
    deps: list[tuple[str, At]] = field(default_factory=list)  # (service, where it is named)
    bindings: list[tuple[Binding, At]] = field(default_factory=list)  # each published port
    ports: list[tuple[PortRun, At]] = field(default_factory=list)  # each ports entry as a range (the clash check)
    container_name: tuple[str, At] | None = None
    optional: set[str] = field(default_factory=set)  # depends_on entries written with required: false


class ServiceChecker(HostKeyChecks, FilesChecks, DeployChecks):
    """Checks one service at a time (process, resource and hook keys: ``compose_check_host.HostKeyChecks``;
    files: ``compose_files_check.FilesChecks``; deploy, scale, profiles: ``compose_deploy.DeployChecks``);
    ``compose_check`` adds the document around the services."""

    def __init__(self, path: str, repo_root: Path):
        self.path = path
        self.repo_root = Path(repo_root)
        self.errors: list[ConfigError] = []
        self.volumes: dict[str, Any] = {}
        self.networks: dict[str, Any] = {}
        self.secrets: set[str] = set()
        self.configs: set[str] = set()
        self.shipped_bytes: dict[str, int] = {}  # service -> bytes of its configs and relative bind sources
        self.config_sizes: dict[str, int] = {}  # top-level config -> bytes
        self.service_names: list[str] = []
        self.facts: dict[str, ServiceFacts] = {}
        self.port_count = 0  # ports the ports and expose entries stand for, so far
        self.too_many_ports = False

    # -- helpers ----------------------------------------------------------

    def err(self, at: At, message: str, field: str | None | bool = True) -> None:
        where = at.field if field is True else (None if field is False else field)
        self.errors.append(ConfigError(self.path, message, line=at.line, field=where))

    def mapping(self, at: At) -> bool:
        if isinstance(at.value, dict):
            return True
        self.err(at, f"must be a mapping, not {kind(at.value)}")
        return False

    def seq(self, at: At, what: str = "a list") -> bool:
        if isinstance(at.value, list):
            return True
        self.err(at, f"must be {what}, not {kind(at.value)}")
        return False

    def string(self, at: At, nonempty: bool = True) -> bool:
        if not isinstance(at.value, str):
            self.err(at, f"must be a string, not {kind(at.value)}")
            return False
        if nonempty and not at.value.strip():
            self.err(at, "must not be empty")
            return False
        return True

    def boolean(self, at: At) -> bool:
        if is_bool(at.value):
            return True
        self.err(at, f"must be true or false, not {kind(at.value)}")
        return False

    def parsed(self, at: At, parser, *args) -> Any:
        """Run a parser; report its complaint at ``at``. Returns None when it failed."""
        try:
            return parser(at.value, *args)
        except BadValue as exc:
            self.err(at, str(exc))
            return None

    def keys(self, at: At, allowed: set[str], extensions: bool = True, hints: dict[str, str] | None = None) -> None:
        if hints is None and allowed is SERVICE_KEYS:
            hints = UNSUPPORTED_HINTS
        for key, child in at.entries():
            if not isinstance(key, str):
                self.err(child, f"keys must be strings, not {kind(key)}", field=at.field)
                continue
            if key in allowed or (extensions and key.startswith("x-")):
                continue
            message = f"unsupported key {key!r}"
            hint = (hints or {}).get(key)
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.8)
            if hint:
                message += f": {hint}"
            elif close:
                message += f" (did you mean {close[0]!r}?)"
            self.err(child, message)

    def name_map(self, at: At, check_value) -> None:
        """A mapping of names (list entries or mapping keys) to values, like labels or driver_opts."""
        if isinstance(at.value, list):
            for _, item in at.items():
                self.parsed(item, split_assignment, "entry")
        elif isinstance(at.value, dict):
            for key, child in at.entries():
                if not isinstance(key, str) or not key:
                    self.err(child, f"names must be non-empty strings, not {kind(key)}", field=at.field)
                check_value(child)
        else:
            self.err(at, f"must be a list of 'NAME=value' or a mapping, not {kind(at.value)}")

    def scalar_value(self, at: At) -> None:
        if not is_scalar(at.value):
            self.err(at, f"must be a string, number, boolean or null, not {kind(at.value)}")

    def labels(self, at: At) -> None:
        if at.value is None:
            return
        self.name_map(at, self.scalar_value)
        if isinstance(at.value, (list, dict)):
            try:
                names = label_pairs(at.value)
            except BadValue:
                return
            for name in sorted(names):
                if name in RESERVED_LABELS:
                    self.err(at, f"label {name!r} is set by the deployer and cannot be written")

    def discovery_labels(self, name: str, at: At, facts: ServiceFacts) -> None:
        """The deployer.* labels discovery reads (``config.label_check``), after every key of the service:
        each bad one at its own line, then whether the service's Consul names are usable."""
        labels_at = at.get("labels")
        value = labels_at.value if labels_at is not None else None
        labels: dict[str, str] = {}  # label -> the string the container carries
        if isinstance(value, dict):
            pairs = label_pairs(value)
            labels = {k: pairs[k] for k, v in value.items() if isinstance(k, str) and is_scalar(v)}
        elif isinstance(value, list):
            for item in value:
                try:
                    key, text = split_assignment(item, "label")
                except BadValue:
                    continue  # reported by labels()
                labels[key] = text or ""
        settings, problems = check_labels(labels)
        if problems:  # where each label is written (a later list entry wins, as in label_pairs)
            where = {}
            for key, child in (labels_at.entries() if isinstance(value, dict) else labels_at.items()):
                label = key if isinstance(value, dict) else str(child.value).partition("=")[0]
                where[label] = child
            for problem in problems:
                self.err(where[problem.label], problem.message, field=f"services.{name}.labels.{problem.label}")
            return
        ports = [binding[0] for binding, _ in facts.bindings if binding[1] == "tcp"]
        why = service_name_problem(name, settings, ports)
        if why:
            self.err(at, why, field=f"services.{name}")

    def string_map(self, at: At) -> None:
        """driver_opts, logging options: name -> string or number."""
        if not self.mapping(at):
            return
        for key, child in at.entries():
            if not isinstance(key, str):
                self.err(child, f"names must be strings, not {kind(key)}", field=at.field)
            if child.value is None or not is_scalar(child.value):
                self.err(child, f"must be a string or number, not {kind(child.value)}")

    # -- one service ------------------------------------------------------

    def service(self, name: Any, at: At) -> None:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            self.err(at, f"invalid service name {name!r}: use letters, digits, '_', '.', '-'")
            return
        facts = self.facts[name] = ServiceFacts(at)
        if not self.mapping(at):
            return
        self.keys(at, SERVICE_KEYS)
        if at.get("image") is None:
            if at.get("build") is not None:
                self.err(at, "missing required key 'image': the deployer never builds, 'build' is allowed only beside 'image'")
            else:
                self.err(at, "missing required key 'image'")
        network_mode = None
        mode_at = at.get("network_mode")
        if mode_at is not None and isinstance(mode_at.value, str):
            network_mode = mode_at.value
        for key, child in at.entries():
            if not isinstance(key, str) or key not in SERVICE_KEYS:
                continue
            if child.value is None and key in NULL_MEANS_EMPTY:
                continue
            if key in HOST_KEYS:
                self.host_key(key, child, facts)
                continue
            getattr(self, f"s_{key}")(name, child, facts, network_mode)
        self.deploy_conflicts(name, at, facts)
        self.conflicts(at, network_mode)
        self.discovery_labels(name, at, facts)

    def s_image(self, name, at, facts, network_mode) -> None:
        if not self.string(at):
            return
        if re.search(r"\s", at.value):
            self.err(at, f"invalid image reference {at.value!r}: it contains whitespace")
            return
        try:
            ImageRef.parse(at.value)  # what the engine pulls: Docker's reference grammar
        except ImageReferenceError as exc:
            self.err(at, exc.one_line())

    def s_build(self, name, at, facts, network_mode) -> None:
        """How the image was built: metadata beside 'image' (the deployer deploys the image, never builds)."""
        if isinstance(at.value, str):
            self.string(at)
            return
        if not isinstance(at.value, dict):
            self.err(at, f"must be a string (the context) or a mapping, not {kind(at.value)}")
            return
        self.keys(at, BUILD_KEYS)
        for key, sub in at.entries():
            if key in ("context", "dockerfile", "dockerfile_inline", "target", "network", "isolation") \
                    and sub.value is not None:
                self.string(sub)
            elif key in ("args", "labels") and sub.value is not None:
                self.name_map(sub, self.scalar_value)
            elif key in ("no_cache", "pull", "privileged") and sub.value is not None:
                self.boolean(sub)

    def s_ports(self, name, at, facts, network_mode) -> None:
        if network_mode and network_mode != "bridge":
            self.err(at, f"ports cannot be published with network_mode {network_mode!r}")
        if not self.seq(at):
            return
        for _, item in at.items():
            if isinstance(item.value, dict):
                self.keys(item, PORT_LONG_KEYS, extensions=False)
                if item.get("target") is None:
                    self.err(item, "missing required key 'target'")
                    continue
                bindings = self.parsed(item, parse_port_long)
                run = None if bindings is None else (*bindings[0], 1)
            else:
                run = self.parsed(item, parse_port_run)
            if run is not None and self.count_ports(item, run[4]):
                facts.ports.append((run, item))
                facts.bindings.extend((b, item) for b in expand_run(run))  # bounded by the port limits

    def s_expose(self, name, at, facts, network_mode) -> None:
        if self.seq(at):
            for _, item in at.items():
                span = self.parsed(item, expose_range)
                if span is not None:
                    self.count_ports(item, span[1] - span[0] + 1)

    def count_ports(self, at: At, count: int) -> bool:
        """False (and one error for the file) once its ports and expose entries stand for too many ports."""
        self.port_count += count
        if self.port_count <= MAX_PORTS_PER_FILE:
            return True
        if not self.too_many_ports:
            self.too_many_ports = True
            self.err(at, f"the ports and expose entries of this file stand for more than {MAX_PORTS_PER_FILE:,} "
                         "ports (see 'Limits' in docs/compose.md)")
        return False

    def s_volumes(self, name, at, facts, network_mode) -> None:
        if not self.seq(at):
            return
        targets: dict[str, str] = {}
        tmpfs_at = facts.at.get("tmpfs")
        if tmpfs_at is not None:
            for item in as_list(tmpfs_at.value):
                if isinstance(item, str):
                    targets[item.partition(":")[0]] = "tmpfs"
        for _, item in at.items():
            if isinstance(item.value, dict):
                self.keys(item, VOLUME_LONG_KEYS, extensions=False, hints=VOLUME_LONG_HINTS)
            mount = self.parsed(item, parse_volume)
            if mount is None:
                continue
            if mount.get("relative"):
                self.relative_bind(name, item, mount)
            if mount["type"] == "volume" and mount["source"] and mount["source"] not in self.volumes:
                self.err(item, f"volume {mount['source']!r} is not declared in the top-level volumes")
            target = mount["target"].rstrip("/") or "/"
            if target in targets:
                self.err(item, f"mount target {target} is used twice (also by {targets[target]})")
            targets[target] = item.field or ""

    def s_tmpfs(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, str):
            self.parsed(at, parse_tmpfs)
        elif self.seq(at, "a path or a list of paths"):
            for _, item in at.items():
                self.parsed(item, parse_tmpfs)

    def s_restart(self, name, at, facts, network_mode) -> None:
        if at.value is None:
            self.err(at, f"must be one of {', '.join(RESTART_POLICIES)} or on-failure:N, not null")
            return
        self.parsed(at, parse_restart)

    def s_environment(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, list):
            for _, item in at.items():
                self.parsed(item, split_assignment, "environment variable")
        elif isinstance(at.value, dict):
            for key, child in at.entries():
                if not isinstance(key, str) or not key or "=" in key:
                    self.err(child, f"invalid variable name {key!r}", field=at.field)
                self.scalar_value(child)
        else:
            self.err(at, f"must be a list of 'NAME=value' or a mapping, not {kind(at.value)}")

    def s_labels(self, name, at, facts, network_mode) -> None:
        self.labels(at)

    def s_command(self, name, at, facts, network_mode) -> None:
        if at.value is None:
            self.err(at, "must be a string or a list of strings, not null")
            return
        if isinstance(at.value, list):
            for _, item in at.items():
                if not isinstance(item.value, (str, int, float)) or is_bool(item.value):
                    self.err(item, f"must be a string, not {kind(item.value)}")
            return
        self.parsed(at, parse_command)

    s_entrypoint = s_command

    def s_healthcheck(self, name, at, facts, network_mode) -> None:
        if not self.mapping(at):
            return
        self.keys(at, HEALTHCHECK_KEYS, hints=HEALTHCHECK_HINTS)
        disabled = False
        for key, sub in at.entries():
            if key == "test":
                self.parsed(sub, parse_healthcheck_test)
            elif key in ("interval", "timeout", "start_period"):
                ns = self.parsed(sub, parse_duration_ns)
                if ns is not None and 0 < ns < 10**6:
                    self.err(sub, "must be 0 or at least 1ms")
            elif key == "retries":
                if not is_int(sub.value) or sub.value < 0:
                    self.err(sub, f"must be a whole number of 0 or more, not {kind(sub.value)}")
            elif key == "disable":
                if self.boolean(sub):
                    disabled = bool(sub.value)
        if disabled:
            others = [k for k in at.value if k != "disable" and not str(k).startswith("x-")]
            if others:
                self.err(at, f"disable: true cannot be combined with {', '.join(map(str, others))}")

    def s_depends_on(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, list):
            for _, item in at.items():
                if self.string(item):
                    facts.deps.append((item.value, item))
        elif isinstance(at.value, dict):
            for dep, child in at.entries():
                if not isinstance(dep, str):
                    self.err(child, f"service names must be strings, not {kind(dep)}", field=at.field)
                    continue
                facts.deps.append((dep, child))
                if child.value is None:
                    continue
                if not self.mapping(child):
                    continue
                self.keys(child, DEPENDS_ON_KEYS, extensions=False)
                cond = child.get("condition")
                if cond is not None and cond.value not in DEPENDS_ON_CONDITIONS:
                    self.err(cond, f"invalid condition {cond.value!r}: use {', '.join(DEPENDS_ON_CONDITIONS)}")
                self.depends_on_options(dep, child, facts)
        else:
            self.err(at, f"must be a list of service names or a mapping, not {kind(at.value)}")

    def s_networks(self, name, at, facts, network_mode) -> None:
        if network_mode is not None:
            self.err(at, "networks cannot be combined with network_mode")
        if isinstance(at.value, list):
            for _, item in at.items():
                if self.string(item):
                    self.declared_network(item.value, item)
        elif isinstance(at.value, dict):
            for net, child in at.entries():
                if not isinstance(net, str):
                    self.err(child, f"network names must be strings, not {kind(net)}", field=at.field)
                    continue
                self.declared_network(net, child)
                if child.value is None or not self.mapping(child):
                    continue
                self.keys(child, SERVICE_NETWORK_KEYS, hints=SERVICE_NETWORK_HINTS)
                self.service_network(net, child)
        else:
            self.err(at, f"must be a list of network names or a mapping, not {kind(at.value)}")

    def service_network(self, net: str, at: At) -> None:
        """One network's settings of a service: aliases, static addresses, link-local IPs, priority, driver_opts."""
        aliases = at.get("aliases")
        if aliases is not None and self.seq(aliases):
            for _, alias in aliases.items():
                if self.string(alias) and re.search(r"\s", alias.value):
                    self.err(alias, f"invalid alias {alias.value!r}")
        for key, version in (("ipv4_address", 4), ("ipv6_address", 6)):
            ip = at.get(key)
            if ip is None or not self.string(ip):
                continue
            try:
                (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(ip.value)
            except ValueError:
                self.err(ip, f"invalid IPv{version} address {ip.value!r}")
                continue
            definition = self.networks.get(net)
            if not (isinstance(definition, dict) and definition.get("external") is True):
                self.err(ip, "a static address needs a network with a configured subnet; the deployer "
                             "does not manage IPAM, so declare the network as external")
        local = at.get("link_local_ips")
        if local is not None and self.seq(local):
            for _, item in local.items():
                if self.string(item):
                    self.parsed(item, check_ip)
        priority = at.get("priority")
        if priority is not None and not is_int(priority.value):
            self.err(priority, f"must be a whole number, not {kind(priority.value)}")
        opts = at.get("driver_opts")
        if opts is not None:
            self.string_map(opts)

    def declared_network(self, net: str, at: At) -> None:
        if net != "default" and net not in self.networks:
            self.err(at, f"network {net!r} is not declared in the top-level networks")

    def s_network_mode(self, name, at, facts, network_mode) -> None:
        if not self.string(at):
            return
        mode = at.value
        if mode in ("host", "none", "bridge"):
            return
        if mode.startswith("service:"):
            other = mode[len("service:") :]
            facts.deps.append((other, at))
            return
        if mode.startswith("container:") and len(mode) > len("container:"):
            return
        self.err(at, f"invalid network_mode {mode!r}: use host, none, bridge, service:<name> or container:<name>")

    def s_container_name(self, name, at, facts, network_mode) -> None:
        if not self.string(at):
            return
        if not CONTAINER_NAME_RE.fullmatch(at.value):
            self.err(at, f"invalid container name {at.value!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]+")
            return
        facts.container_name = (at.value, at)

    def s_user(self, name, at, facts, network_mode) -> None:
        if is_int(at.value):
            return
        self.string(at)

    def s_working_dir(self, name, at, facts, network_mode) -> None:
        if self.string(at) and not at.value.startswith("/"):
            self.err(at, f"must be an absolute path, not {at.value!r}")

    def s_hostname(self, name, at, facts, network_mode) -> None:
        if self.string(at) and re.search(r"\s", at.value):
            self.err(at, f"invalid hostname {at.value!r}")

    def s_extra_hosts(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, list):
            for _, item in at.items():
                pairs = self.parsed(item, lambda v: extra_host_pairs([v]))
                for host, ip in pairs or []:
                    self.parsed(item, lambda _v, h=host, i=ip: check_extra_host(h, i))
        elif isinstance(at.value, dict):
            for host, child in at.entries():
                ips = child.value if isinstance(child.value, list) else [child.value]
                if not ips or not all(isinstance(ip, str) for ip in ips):
                    self.err(child, f"must be an IP address or a list of them, not {kind(child.value)}")
                    continue
                for _, ip in extra_host_pairs({str(host): ips}):
                    self.parsed(child, lambda _v, h=str(host), i=ip: check_extra_host(h, i))
        else:
            self.err(at, f"must be a list of 'host:ip' or a mapping, not {kind(at.value)}")

    def s_cap_add(self, name, at, facts, network_mode) -> None:
        if self.seq(at):
            for _, item in at.items():
                if self.string(item) and not re.fullmatch(r"[A-Za-z_0-9]+", item.value):
                    self.err(item, f"invalid capability {item.value!r}")

    s_cap_drop = s_cap_add

    def s_mem_limit(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_bytes)

    s_shm_size = s_mem_limit

    def s_cpus(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_cpus)

    def s_logging(self, name, at, facts, network_mode) -> None:
        if not self.mapping(at):
            return
        self.keys(at, LOGGING_KEYS)
        driver = at.get("driver")
        if driver is not None:
            self.string(driver)
        options = at.get("options")
        if options is not None and options.value is not None:
            self.string_map(options)

    def s_init(self, name, at, facts, network_mode) -> None:
        self.boolean(at)

    s_privileged = s_init
    s_read_only = s_init

    def s_stop_signal(self, name, at, facts, network_mode) -> None:
        if is_int(at.value) and at.value > 0:
            return
        if self.string(at) and not SIGNAL_RE.fullmatch(at.value):
            self.err(at, f"invalid signal {at.value!r}")

    def s_stop_grace_period(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_duration_ns)

    def s_dns(self, name, at, facts, network_mode) -> None:
        if isinstance(at.value, str):
            self.parsed(at, check_ip)
        elif self.seq(at, "an IP address or a list of them"):
            for _, item in at.items():
                if self.string(item):
                    self.parsed(item, check_ip)
