"""Compose service -> container spec: exactly what the engine is asked for.

``container_spec(node, service, repo_root)`` turns one validated service into a
ContainerSpec (``deployer.spec``): the arguments the Docker engine API is
called with, plus the labels that identify the container; its hash covers all
of it. ``node_resources(node)`` lists the named volumes and networks a node's
engine must have, ``container_name`` says what a service's container is
called, ``start_order`` in which order a node's services start.

Pure apart from reading the files a service ships (secrets, configs,
env_file, relative bind sources): each is read once, through the
repository-files policy (``compose_files``, ``repo_files``), its content
carried in the spec (the applier ships those bytes, it does not read the file
again) and its digest hashed into it, so that changing a file recreates the
container. The values were checked by
``compose_check``; they are read with the same parsers (``compose_keys``).
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Any, Mapping

from deployer.config.compose_hooks import parse_hooks
from deployer.config.compose_host import host_arguments
from deployer.config.compose_keys import (
    Binding, as_list, env_pairs, extra_host_pairs, label_pairs, needs_mount_api, parse_command, parse_cpus,
    parse_expose, parse_healthcheck_test, parse_port, parse_port_long, parse_restart, parse_tmpfs,
    parse_volume, scalar_str,
)  # fmt: skip
from deployer.config.compose_files import env_file_environment, shipped_files
from deployer.config.compose_deploy import host_settings, rollout
from deployer.errors import ConfigError
from deployer.labels import LABEL_DC, LABEL_IMAGE, LABEL_NODE, LABEL_SERVICE
from deployer.model import Node, Service
from deployer.spec import DEFAULT_STOP_TIMEOUT, ContainerSpec, NetworkSpec, VolumeSpec
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


def _mounts(node: Node, cfg: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The service's volumes as the engine takes them: (bind strings, Mounts), see ``needs_mount_api``."""
    binds: list[str] = []
    mounts: list[dict[str, Any]] = []
    for entry in cfg.get("volumes") or []:
        mount = parse_volume(entry)
        if mount["relative"]:  # shipped from the repository (compose_files)
            continue
        source = mount["source"]
        if mount["type"] == "volume" and source:
            source = _engine_name(node.project, source, node.volumes.get(source))
        if needs_mount_api(mount):
            m: dict[str, Any] = {"Type": mount["type"], "Source": source or "", "Target": mount["target"],
                                 "ReadOnly": mount["read_only"]}  # fmt: skip
            if mount["type"] == "tmpfs":
                m.pop("Source")
                tmpfs_opts = {}
                if mount["tmpfs_size"] is not None:
                    tmpfs_opts["SizeBytes"] = mount["tmpfs_size"]
                if tmpfs_opts:
                    m["TmpfsOptions"] = tmpfs_opts
            elif mount["type"] == "bind":
                m["BindOptions"] = {"Propagation": mount["propagation"]} if mount["propagation"] else {}
            else:  # a volume: as Compose sends it
                m["VolumeOptions"] = {"NoCopy": True} if mount["nocopy"] else {}
            mounts.append(m)
            continue
        options = ["ro" if mount["read_only"] else "rw"]
        for opt in (mount["selinux"], mount["propagation"], "nocopy" if mount["nocopy"] else ""):
            if opt:
                options.append(opt)
        binds.append(f"{source}:{mount['target']}:{','.join(options)}")
    return binds, sorted(mounts, key=lambda m: m["Target"])


def container_spec(
    node: Node, service: Service, repo_root: Path, *, environ: Mapping[str, str] | None = None
) -> ContainerSpec:
    """The container a validated service becomes on ``node``.

    ``service.config`` is plain data that passed ``validate_compose``. ``environ``
    resolves environment entries written without a value: the repository's
    variables (default: ``node.variables``); the operator's shell is never read.
    """
    if service.cached_spec is not None and environ is None:  # the loader's parse cache: this text, this node
        spec, service.cached_spec = service.cached_spec, None  # used once: a later call builds a spec of its own
        return spec
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
    if cfg.get("env_file") is not None:  # the env_file values, under what 'environment' says (as Compose does)
        merged = env_file_environment(node, service.name, cfg, repo_root)
        merged.update(e.split("=", 1) for e in environment)
        environment = [f"{k}={merged[k]}" for k in sorted(merged)]
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
    binds, mounts = _mounts(node, cfg)
    tmpfs: dict[str, str] = {}
    for entry in as_list(cfg.get("tmpfs")):
        path, options = parse_tmpfs(entry)
        tmpfs[path] = options
    if binds:
        host["binds"] = sorted(binds, key=lambda b: (b.split(":")[1], b))
    if mounts:
        host["mounts"] = mounts
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
    more_create, more_host = host_arguments(cfg)
    for key in ("pid_mode", "ipc_mode"):  # service:<name> -> that service's container
        if str(more_host.get(key, "")).startswith("service:"):
            other = more_host[key][len("service:") :]
            other_cfg = node.services[other].config if other in node.services else {}
            more_host[key] = f"container:{_container_name(node, other, other_cfg)}"
    create.update(more_create)
    host.update(more_host)
    _deploy_settings(cfg, host)

    # networks
    networks: list[tuple[str, list[str]]] = []
    ipv4: dict[str, str] = {}
    endpoints: dict[str, dict[str, Any]] = {}
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
        # the highest priority first (it is attached when the container is created), then by name
        for net in sorted(entries, key=lambda n: (-int((entries[n] or {}).get("priority") or 0), n)):
            opts = entries[net] or {}
            engine = _network_engine_name(node, net)
            aliases = sorted({service.name, *(str(a) for a in opts.get("aliases") or [])})
            networks.append((engine, aliases))
            if opts.get("ipv4_address"):
                ipv4[engine] = str(opts["ipv4_address"])
            endpoint: dict[str, Any] = {}
            if opts.get("ipv6_address"):
                endpoint["ipv6_address"] = str(opts["ipv6_address"])
            if opts.get("link_local_ips"):
                endpoint["link_local_ips"] = [str(ip) for ip in opts["link_local_ips"]]
            if opts.get("driver_opts"):
                endpoint["driver_opt"] = _string_dict(opts["driver_opts"])
            if endpoint:
                endpoints[engine] = endpoint
        host["network_mode"] = networks[0][0]

    shipped = shipped_files(node, service.name, cfg, repo_root)
    if shipped.mounts:
        host["mounts"] = sorted([*host.get("mounts", []), *shipped.mounts], key=lambda m: m["Target"])

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
        secrets=shipped.secrets,
        stop_timeout=stop_timeout,
        has_healthcheck=has_healthcheck,
        published_ports=any(host_port for _, _, _, host_port in bindings),  # fixed host ports only
        ipv4_addresses=ipv4,
        files=shipped.files,
        bundles=shipped.bundles,
        rollout=rollout(node.services, service.name) if service.name in node.services else rollout(
            {service.name: cfg}, service.name),
        endpoints=endpoints,
        post_start=parse_hooks(cfg["post_start"]) if cfg.get("post_start") else [],
        pre_stop=parse_hooks(cfg["pre_stop"]) if cfg.get("pre_stop") else [],
    )


def _deploy_settings(cfg: Mapping[str, Any], host: dict[str, Any]) -> None:
    """deploy.resources and deploy.restart_policy (``compose_deploy``): the same host settings as mem_limit,
    cpus, pids_limit, mem_reservation and restart (the check refused distinct values for one setting)."""
    for key, value in host_settings(cfg).items():
        if value is None:
            host.pop(key, None)  # restart_policy condition: none
        else:
            host[key] = value


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


#: start_order's answers by their inputs (each service's name and dependencies): the nodes of a
#: fleet mostly run the same services, so a plan over thousands of nodes orders a few shapes.
_ORDERS: dict[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]] = {}
_ORDERS_KEPT = 4096


def start_order(services: dict[str, Service]) -> list[str]:
    """Service names so that each comes after the services it depends on; ties by name.

    Dependencies are depends_on and network_mode service:X. Names outside
    ``services`` are ignored; services caught in a cycle (validation reports
    those) come last, by name. The answer depends only on the names and their
    dependencies, so it is kept by those (a bounded memo) and reused.
    """
    shape = []
    for name, svc in services.items():  # runs for every node of a plan: a service without dependencies is quick
        config = svc.config
        mode = config.get("network_mode")
        if not config.get("depends_on") and not (isinstance(mode, str) and mode.startswith("service:")):
            shape.append((name, ()))
        else:
            shape.append((name, tuple(_service_deps(config))))
    key = tuple(shape)
    known = _ORDERS.get(key)
    if known is None:
        known = _order(key)
        if len(_ORDERS) < _ORDERS_KEPT:
            _ORDERS[key] = known
    return list(known)


def _order(shape: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[str, ...]:
    """start_order's walk over (name, dependencies) pairs."""
    names = {name for name, _ in shape}
    waiting_on: dict[str, int] = {}
    dependents: dict[str, list[str]] = {}
    for name, needs in shape:
        deps = {d for d in needs if d in names and d != name}
        waiting_on[name] = len(deps)
        for dep in deps:
            dependents.setdefault(dep, []).append(name)
    ready = [name for name, n in waiting_on.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for other in dependents.get(name, ()):
            waiting_on[other] -= 1
            if waiting_on[other] == 0:
                heapq.heappush(ready, other)
    if len(order) < len(names):  # a cycle (validation reports it): those last, by name
        placed = set(order)
        order.extend(sorted(n for n in names if n not in placed))
    return tuple(order)
