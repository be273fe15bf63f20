"""Compose service -> container spec: exactly what the engine is asked for.

``container_spec(node, service, repo_root)`` turns one validated service into a
ContainerSpec (``deployer.spec``): the arguments the Docker engine API is
called with, plus the labels that identify the container; its hash covers all
of it. ``node_resources(node)`` lists the named volumes and networks a node's
engine must have, ``container_name`` says what a service's container is
called, ``start_order`` in which order a node's services start.

Pure apart from one read: a secret file is read once, through the secret-file
policy (``secret_files``), its content carried in the spec (the applier copies
those bytes, it does not read the file again) and hashed into it, so that
changing a secret recreates the container. The values were checked by
``compose_check``; they are read with the same parsers (``compose_keys``).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from pathlib import Path
from typing import Any, Mapping

from deployer.config.compose_keys import (
    Binding, as_list, env_pairs, extra_host_pairs, label_pairs, parse_command, parse_cpus, parse_expose,
    parse_healthcheck_test, parse_mode, parse_port, parse_port_long, parse_restart, parse_tmpfs, parse_volume,
    scalar_str, secret_target,
)  # fmt: skip
from deployer.config.parse_cache import spec_from
from deployer.config.secret_files import read_secret_file, secret_line
from deployer.errors import ConfigError
from deployer.labels import LABEL_DC, LABEL_IMAGE, LABEL_NODE, LABEL_SERVICE
from deployer.model import Node, Service
from deployer.spec import DEFAULT_SECRET_MODE, DEFAULT_STOP_TIMEOUT, ContainerSpec, NetworkSpec, SecretFile, VolumeSpec
from deployer.values import parse_bytes, parse_duration_ns


# --------------------------------------------------------------------------
# Engine names and resources


def _engine_name(project: str, name: str, definition: Any) -> str:
    """Volumes and networks: 'name:' as written, the key itself when external, else project_key."""
    definition = definition or {}
    if definition.get("name"):
        return str(definition["name"])
    if definition.get("external"):
        return name
    return f"{project}_{name}"


def _network_engine_name(node: Node, name: str) -> str:
    return _engine_name(node.project, name, node.networks.get(name))


def _container_name(node: Node, service_name: str, config: Mapping[str, Any]) -> str:
    return config.get("container_name") or f"{node.project}-{service_name}"


def container_name(node: Node, service: Service) -> str:
    """The engine name of a service's container: ``container_name`` or <project>-<service>."""
    return _container_name(node, service.name, service.config)


def _uses_default_network(config: Mapping[str, Any]) -> bool:
    if config.get("network_mode"):
        return False
    nets = config.get("networks")
    return not nets or "default" in nets


def _string_dict(value: Any) -> dict[str, str]:
    return {str(k): scalar_str(v) for k, v in sorted((value or {}).items())}


def node_resources(node: Node) -> tuple[list[VolumeSpec], list[NetworkSpec]]:
    """The named volumes and networks the node's engine must have.

    External ones are listed with ``external=True`` (they must exist; the
    deployer does not create them). The default network is included when a
    service uses it (joins no network explicitly and has no network_mode).
    """
    identity = {LABEL_DC: node.dc, LABEL_NODE: node.name}
    volumes = []
    for name in sorted(node.volumes):
        d = node.volumes[name] or {}
        external = bool(d.get("external"))
        volumes.append(
            VolumeSpec(
                name=_engine_name(node.project, name, d),
                driver=d.get("driver") or "local",
                driver_opts=_string_dict(d.get("driver_opts")),
                labels={} if external else {**label_pairs(d.get("labels")), **identity},
                external=external,
            )
        )
    wanted = dict(node.networks)
    if "default" not in wanted and any(_uses_default_network(s.config) for s in node.services.values()):
        wanted["default"] = None
    networks = []
    for name in sorted(wanted):
        d = wanted[name] or {}
        external = bool(d.get("external"))
        networks.append(
            NetworkSpec(
                name=_engine_name(node.project, name, d),
                driver=d.get("driver") or "bridge",
                options=_string_dict(d.get("driver_opts")),
                internal=bool(d.get("internal")),
                labels={} if external else {**label_pairs(d.get("labels")), **identity},
                external=external,
            )
        )
    return volumes, networks


# --------------------------------------------------------------------------
# Container spec


def _port_key(port: int, proto: str) -> int | tuple[int, str]:
    return port if proto == "tcp" else (port, proto)


def _healthcheck(config: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """compose healthcheck -> (engine Healthcheck dict or None, whether a compose test runs)."""
    hc = config.get("healthcheck")
    if hc is None:
        return None, False
    test = parse_healthcheck_test(hc["test"]) if hc.get("test") is not None else None
    if hc.get("disable") or test == ["NONE"]:
        return {"Test": ["NONE"]}, False
    out: dict[str, Any] = {}
    if test is not None:
        out["Test"] = test
    for key, engine_key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod")):
        if hc.get(key) is not None:
            out[engine_key] = parse_duration_ns(hc[key])
    if hc.get("retries") is not None:
        out["Retries"] = int(hc["retries"])
    return out, test is not None


def _environment(config: Mapping[str, Any], variables: Mapping[str, str], path: str) -> list[str]:
    values: dict[str, str] = {}
    for key, value in env_pairs(config.get("environment")):
        if value is None:
            # a name without a value takes the repository's variable (never the operator's shell); the loader
            # filled these in already (``variables.fill_environment``) and refused the ones the repository lacks
            if key not in variables:
                raise ConfigError(path, f"environment entry {key} has no value and the repository "
                                                        f"sets no variable {key}", field="environment")
            values[key] = variables[key]
        else:
            values[key] = value
    return [f"{k}={values[k]}" for k in sorted(values)]


def _secret_files(node: Node, config: Mapping[str, Any], repo_root: Path) -> list[SecretFile]:
    """Each secret the service mounts, its file read once through the secret-file policy (``secret_files``)."""
    compose_path = node.compose_path or node.path
    read: dict[str, tuple[str, bytes]] = {}  # secret name -> (resolved path, content): each file read once
    out = []
    for entry in config.get("secrets") or []:
        if isinstance(entry, str):
            name, target, mode = entry, None, DEFAULT_SECRET_MODE
        else:
            name, target = entry["source"], entry.get("target")
            mode = parse_mode(entry["mode"]) if entry.get("mode") is not None else DEFAULT_SECRET_MODE
        if name not in read:
            definition = node.secrets.get(name)
            written = definition.get("file") if isinstance(definition, dict) else None
            try:
                source, data = read_secret_file(
                    written, name=name, compose_path=compose_path, repo_root=repo_root, secrets_dirs=node.secrets_dirs
                )
            except ConfigError as err:
                if err.line is None:  # plain data has no lines: find the one the value is written on
                    err = ConfigError(err.path, err.message, line=secret_line(repo_root, compose_path, name),
                                      field=err.field)
                raise err from None
            read[name] = (source.path, data)
        path, data = read[name]
        out.append(SecretFile(name=name, source=path, target=secret_target(name, target),
                              sha256=hashlib.sha256(data).hexdigest(), mode=mode, content=data))
    return sorted(out, key=lambda s: s.target)


def container_spec(
    node: Node, service: Service, repo_root: Path, *, environ: Mapping[str, str] | None = None
) -> ContainerSpec:
    """The container a validated service becomes on ``node``.

    ``service.config`` is plain data that passed ``validate_compose``. ``environ``
    resolves environment entries written without a value: the repository's
    variables (default: ``node.variables``); the operator's shell is never read.
    """
    if service.cached_spec is not None and environ is None:  # the loader's parse cache: this text, this node
        data, service.cached_spec = service.cached_spec, None  # used once: a later call builds a spec of its own
        return spec_from(data)
    cfg = service.config
    env_source = node.variables if environ is None else environ
    create: dict[str, Any] = {}
    host: dict[str, Any] = {}

    # process
    if cfg.get("command") is not None:
        create["command"] = parse_command(cfg["command"])
    if cfg.get("entrypoint") is not None:
        create["entrypoint"] = parse_command(cfg["entrypoint"])
    environment = _environment(cfg, env_source, service.location.path)
    if environment:
        create["environment"] = environment
    for key in ("user", "working_dir", "hostname"):
        if cfg.get(key) is not None:
            create[key] = str(cfg[key])
    if cfg.get("stop_signal") is not None:
        create["stop_signal"] = str(cfg["stop_signal"])
    stop_timeout = DEFAULT_STOP_TIMEOUT
    if cfg.get("stop_grace_period") is not None:
        stop_timeout = math.ceil(parse_duration_ns(cfg["stop_grace_period"]) / 10**9)
    create["stop_timeout"] = stop_timeout
    healthcheck, has_healthcheck = _healthcheck(cfg)
    if healthcheck is not None:
        create["healthcheck"] = healthcheck

    # ports
    bindings: list[Binding] = []
    for entry in cfg.get("ports") or []:
        bindings.extend(parse_port_long(entry) if isinstance(entry, dict) else parse_port(entry))
    exposed = {(port, proto) for port, proto, _, _ in bindings}
    for entry in cfg.get("expose") or []:
        exposed.update(parse_expose(entry))
    if exposed:
        create["ports"] = [_port_key(p, proto) for p, proto in sorted(exposed)]
    if bindings:
        port_bindings: dict[str, list[tuple[str, int | None]]] = {}
        for port, proto, ip, host_port in bindings:
            entry = (ip, host_port)
            slot = port_bindings.setdefault(f"{port}/{proto}", [])
            if entry not in slot:
                slot.append(entry)
        host["port_bindings"] = {
            k: sorted(v, key=lambda b: (b[0], b[1] or 0))
            for k, v in sorted(port_bindings.items(), key=lambda kv: (int(kv[0].split("/")[0]), kv[0]))
        }

    # mounts
    binds = []
    tmpfs: dict[str, str] = {}
    for entry in cfg.get("volumes") or []:
        mount = parse_volume(entry)
        if mount["type"] == "tmpfs":
            tmpfs[mount["target"]] = f"size={mount['tmpfs_size']}" if mount["tmpfs_size"] is not None else ""
            continue
        source = mount["source"]
        if mount["type"] == "volume":
            source = _engine_name(node.project, source, node.volumes.get(source))
        options = "ro" if mount["read_only"] else "rw"
        if mount["selinux"]:
            options += "," + mount["selinux"]
        binds.append(f"{source}:{mount['target']}:{options}")
    for entry in as_list(cfg.get("tmpfs")):
        path, options = parse_tmpfs(entry)
        tmpfs[path] = options
    if binds:
        host["binds"] = sorted(binds, key=lambda b: (b.split(":")[1], b))
    if tmpfs:
        host["tmpfs"] = dict(sorted(tmpfs.items()))

    # host settings
    restart = parse_restart(cfg.get("restart"))
    if restart:
        host["restart_policy"] = restart
    for key in ("cap_add", "cap_drop"):
        if cfg.get(key):
            host[key] = sorted(set(cfg[key]))
    if cfg.get("mem_limit") is not None:
        host["mem_limit"] = parse_bytes(cfg["mem_limit"])
    if cfg.get("shm_size") is not None:
        host["shm_size"] = parse_bytes(cfg["shm_size"])
    if cfg.get("cpus") is not None:
        host["nano_cpus"] = int(round(parse_cpus(cfg["cpus"]) * 10**9))
    logging = cfg.get("logging")
    if logging is not None:
        host["log_config"] = {"Type": logging.get("driver") or "", "Config": _string_dict(logging.get("options"))}
    for key in ("init", "privileged", "read_only"):
        if cfg.get(key) is not None:
            host[key] = bool(cfg[key])
    extra_hosts = extra_host_pairs(cfg.get("extra_hosts"))
    if extra_hosts:
        host["extra_hosts"] = sorted({f"{h}:{ip}" for h, ip in extra_hosts})
    if cfg.get("dns"):
        host["dns"] = [str(d) for d in as_list(cfg["dns"])]

    # networks
    networks: list[tuple[str, list[str]]] = []
    ipv4: dict[str, str] = {}
    mode = cfg.get("network_mode")
    if mode:
        if mode.startswith("service:"):
            other = mode[len("service:") :]
            other_cfg = node.services[other].config if other in node.services else {}
            mode = f"container:{_container_name(node, other, other_cfg)}"
        host["network_mode"] = mode
    else:
        nets = cfg.get("networks") or ["default"]
        entries = {n: None for n in nets} if isinstance(nets, list) else dict(nets)
        for net in sorted(entries):
            opts = entries[net] or {}
            engine = _network_engine_name(node, net)
            aliases = sorted({service.name, *(str(a) for a in opts.get("aliases") or [])})
            networks.append((engine, aliases))
            if opts.get("ipv4_address"):
                ipv4[engine] = str(opts["ipv4_address"])
        host["network_mode"] = networks[0][0]

    labels = label_pairs(cfg.get("labels"))
    labels.update({LABEL_DC: node.dc, LABEL_NODE: node.name, LABEL_SERVICE: service.name, LABEL_IMAGE: service.image})

    return ContainerSpec(
        dc=node.dc,
        node=node.name,
        service=service.name,
        name=_container_name(node, service.name, cfg),
        image=service.image,
        create=create,
        host=host,
        networks=networks,
        labels=dict(sorted(labels.items())),
        secrets=_secret_files(node, cfg, repo_root),
        stop_timeout=stop_timeout,
        has_healthcheck=has_healthcheck,
        published_ports=any(host_port for _, _, _, host_port in bindings),  # fixed host ports only
        ipv4_addresses=ipv4,
    )


# --------------------------------------------------------------------------
# Order


def _service_deps(config: Mapping[str, Any]) -> list[str]:
    """Services this one needs started first: depends_on and network_mode service:X."""
    dep = config.get("depends_on") or []
    names = list(dep.keys()) if isinstance(dep, dict) else [d for d in dep if isinstance(d, str)]
    mode = config.get("network_mode")
    if isinstance(mode, str) and mode.startswith("service:"):
        names.append(mode[len("service:") :])
    return [str(n) for n in names]



def start_order(services: dict[str, Service]) -> list[str]:
    """Service names so that each comes after the services it depends on; ties by name.

    Dependencies are depends_on and network_mode service:X. Names outside
    ``services`` are ignored; services caught in a cycle (validation reports
    those) come last, by name.
    """
    needs = {
        name: {d for d in _service_deps(svc.config) if d in services and d != name}
        for name, svc in services.items()
    }
    waiting_on = {name: len(deps) for name, deps in needs.items()}
    dependents: dict[str, list[str]] = {name: [] for name in services}
    for name, deps in needs.items():
        for dep in deps:
            dependents[dep].append(name)
    ready = [name for name, n in waiting_on.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for other in dependents[name]:
            waiting_on[other] -= 1
            if waiting_on[other] == 0:
                heapq.heappush(ready, other)
    order.extend(sorted(n for n in services if n not in order))
    return order
