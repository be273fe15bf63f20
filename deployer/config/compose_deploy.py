"""Compose ``deploy:``, ``scale``, ``profiles`` and the depends_on options, as Compose v2 honours them on one engine.

One module for the keys that say how many containers a service runs and how
they are replaced, so the checker and the spec builder read them the same way:

* ``deploy.resources.limits`` (cpus, memory, pids) and ``reservations.memory``
  become the engine's NanoCpus, Memory, PidsLimit and MemoryReservation, as
  docker compose maps them; the service-level ``cpus``, ``mem_limit`` and
  ``pids_limit`` are the same settings, and distinct values are refused, as
  compose refuses them (a ``limits`` block without the key counts as distinct
  there too). ``reservations.cpus`` and ``devices`` are refused (compose
  ignores the first: a CPU reservation means something to Swarm's scheduler only).
* ``deploy.restart_policy`` (condition none/on-failure/any, max_attempts)
  becomes the RestartPolicy; ``delay`` and ``window`` have no engine field and
  are refused.
* ``deploy.replicas`` / ``scale`` (distinct values refused) and
  ``deploy.update_config`` become the service's ``spec.Rollout`` (not hashed).
* Swarm-only keys (placement, mode: global, endpoint_mode, deploy.labels,
  rollback_config) are refused with that reason.
* ``profiles``: a node enables profiles in node.yml; a service with profiles is
  deployed only when one of them is enabled (``enabled_services``).
* depends_on ``required: false`` and ``restart: true``.

``DeployChecks`` is mixed into ``compose_check_service.ServiceChecker`` (it uses
its ``err``/``keys``/``parsed`` helpers); the ``host_settings``/``rollout``
functions are called by ``compose_spec``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from deployer.config.compose_keys import parse_cpus, parse_restart
from deployer.errors import ConfigError
from deployer.spec import Rollout
from deployer.values import BadValue, kind, parse_bytes, parse_duration_ns

#: The most replicas one service may run on a node (docs/compose.md, "Replicas").
MAX_REPLICAS = 64

DEPLOY_KEYS = {"replicas", "resources", "restart_policy", "update_config", "mode"}
_SWARM = "only Docker Swarm acts on it; on one engine it would mean nothing"
DEPLOY_REFUSED = {
    "placement": f"placement constraints choose a Swarm node: {_SWARM} (the node is the directory the service is written in)",
    "endpoint_mode": f"{_SWARM} (services reach each other by name on their networks; Consul lists each replica)",
    "labels": f"deploy.labels label the Swarm service, not the container: {_SWARM}; write labels under 'labels'",
    "rollback_config": f"{_SWARM}; 'deployer rollback' deploys an earlier version, replaced as update_config says",
}
RESOURCES_KEYS = {"limits", "reservations"}
LIMIT_KEYS = {"cpus", "memory", "pids"}
RESERVATION_KEYS = {"memory"}
RESERVATION_REFUSED = {
    "cpus": "a CPU reservation only means something to Swarm's scheduler (docker compose ignores it too); "
            "limit CPUs with limits.cpus",
    "devices": "device requests (GPUs) are not supported by the deployer",
    "generic_resources": _SWARM,
}
LIMIT_REFUSED = {"devices": "device requests (GPUs) are not supported by the deployer", "generic_resources": _SWARM}
RESTART_POLICY_KEYS = {"condition", "max_attempts"}
RESTART_POLICY_REFUSED = {
    "delay": "the engine has no restart delay (it backs off on its own); docker compose ignores it too",
    "window": "the engine has no restart window; docker compose ignores it too",
}
RESTART_CONDITIONS = {"none": None, "on-failure": "on-failure", "any": "always"}
UPDATE_KEYS = {"parallelism", "delay", "order", "failure_action", "monitor", "max_failure_ratio"}
UPDATE_ORDERS = ("start-first", "stop-first")
FAILURE_ACTIONS = ("pause", "continue", "rollback")
DEPENDS_ON_OPTIONS = ("restart", "required")
PROFILE_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")



def _is_int(v: Any) -> bool:
    return isinstance(v, int) and kind(v) == "an integer"


# --------------------------------------------------------------------------
# Value parsers (plain or ruamel data; BadValue with the message the checker reports)


# service key -> (deploy.resources.limits key, parser): one setting written two ways
def _same_setting() -> dict[str, tuple[str, Any]]:
    return {"mem_limit": ("memory", parse_bytes), "cpus": ("cpus", parse_cpus), "pids_limit": ("pids", parse_pids)}


def parse_replicas(value: Any) -> int:
    if not _is_int(value):
        raise BadValue(f"must be a whole number from 0 to {MAX_REPLICAS}, not {kind(value)}")
    if not 0 <= value <= MAX_REPLICAS:
        raise BadValue(f"must be a whole number from 0 to {MAX_REPLICAS}, not {value}")
    return int(value)


def parse_pids(value: Any) -> int:
    if not _is_int(value) or value == 0 or value < -1:
        raise BadValue(f"must be a whole number greater than 0 (or -1 for no limit), not {value!r}")
    return int(value)


def _parallelism(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise BadValue(f"must be a whole number of 0 (all at once) or more, not {value!r}")
    return int(value)


def _ratio(value: Any) -> float:
    if not (_is_int(value) or isinstance(value, float)) or not 0 <= value <= 1:
        raise BadValue(f"must be a number from 0 to 1, not {value!r}")
    return float(value)


def _one_of(choices: tuple[str, ...]):
    def parse(value: Any) -> str:
        if value not in choices:
            raise BadValue(f"must be one of {', '.join(choices)}, not {value!r}")
        return value
    return parse


def _seconds(value: Any) -> float:
    return parse_duration_ns(value) / 1e9


def parse_restart_policy(policy: Mapping[str, Any]) -> dict[str, Any] | None:
    """deploy.restart_policy -> the engine's RestartPolicy (None: no restart), as compose maps it."""
    condition = policy.get("condition", "any")  # the Compose spec's default
    if condition not in RESTART_CONDITIONS:
        raise BadValue(f"invalid condition {condition!r}: use none, on-failure or any")
    name = RESTART_CONDITIONS[condition]
    attempts = policy.get("max_attempts")
    if attempts is not None and (not _is_int(attempts) or attempts < 0):
        raise BadValue(f"max_attempts must be a whole number of 0 or more, not {attempts!r}")
    if name is None:
        return None
    if name == "on-failure":
        return {"Name": "on-failure", "MaximumRetryCount": int(attempts or 0)}
    if attempts:
        raise BadValue("max_attempts counts restarts after a failure: use condition: on-failure with it "
                       "(the engine refuses a retry count with 'always')")
    return {"Name": name}


# --------------------------------------------------------------------------
# What the spec builder reads (validated data)


def _deploy(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    value = cfg.get("deploy")
    return value if isinstance(value, dict) else {}


def replicas_of(cfg: Mapping[str, Any]) -> int:
    """How many containers the service runs: deploy.replicas, else scale, else 1."""
    replicas = _deploy(cfg).get("replicas")
    if replicas is None:
        replicas = cfg.get("scale")
    return 1 if replicas is None else int(replicas)


def replica_names(name: str, cfg: Mapping[str, Any]) -> list[str]:
    """The container names of a service's replicas (``spec.ContainerSpec.for_replica``): name, name-2, ..."""
    return [name] + [f"{name}-{i}" for i in range(2, replicas_of(cfg) + 1)]


def host_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The create_host_config arguments deploy.resources and deploy.restart_policy stand for.

    Only keys written appear (so a service without ``deploy`` keeps its hash);
    ``restart_policy`` maps to None for condition none (the caller drops the key)."""
    deploy = _deploy(cfg)
    out: dict[str, Any] = {}
    resources = deploy.get("resources") or {}
    limits = resources.get("limits") or {}
    if limits.get("memory") is not None:
        out["mem_limit"] = parse_bytes(limits["memory"])
    if limits.get("cpus") is not None:
        out["nano_cpus"] = int(round(parse_cpus(limits["cpus"]) * 10**9))
    if limits.get("pids") is not None:
        out["pids_limit"] = parse_pids(limits["pids"])
    reservations = resources.get("reservations") or {}
    if reservations.get("memory") is not None:
        out["mem_reservation"] = parse_bytes(reservations["memory"])
    if "restart_policy" in deploy:
        out["restart_policy"] = parse_restart_policy(deploy.get("restart_policy") or {})
    return out


def _depends_on(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    dep = cfg.get("depends_on") or {}
    if isinstance(dep, list):
        return {str(d): {} for d in dep}
    return {str(k): (v or {}) for k, v in dep.items()}


def rollout(services: Mapping[str, Any], name: str) -> Rollout:
    """How service ``name`` of a node is run and replaced; ``services`` maps the node's (enabled) service
    names to their compose config (or to objects with a ``config``)."""
    configs = {k: getattr(v, "config", v) for k, v in services.items()}
    cfg = configs[name]
    update = _deploy(cfg).get("update_config") or {}
    one_shot = False
    healthy = False
    restart: list[str] = []
    for other, other_cfg in sorted(configs.items()):
        opts = _depends_on(other_cfg).get(name)
        if opts is None or other == name:
            continue
        condition = opts.get("condition", "service_started")
        one_shot = one_shot or condition == "service_completed_successfully"
        healthy = healthy or condition == "service_healthy"
        if opts.get("restart") is True:
            restart.append(other)
    return Rollout(
        replicas=replicas_of(cfg),
        parallelism=int(update.get("parallelism", 1)),
        delay=_seconds(update["delay"]) if update.get("delay") is not None else 0.0,
        order=str(update.get("order") or ""),
        failure_action=str(update.get("failure_action") or "pause"),
        monitor=_seconds(update["monitor"]) if update.get("monitor") is not None else 0.0,
        max_failure_ratio=float(update.get("max_failure_ratio") or 0.0),
        one_shot=one_shot,
        healthcheck_required=healthy,
        restart_dependants=tuple(restart),
    )


# --------------------------------------------------------------------------
# Profiles


def profiles_of(cfg: Mapping[str, Any]) -> list[str]:
    value = cfg.get("profiles") or []
    return [str(p) for p in value] if isinstance(value, list) else []


def enabled(cfg: Mapping[str, Any], node_profiles: tuple[str, ...] | list[str]) -> bool:
    """A service without profiles always runs; one with profiles when the node enables one of them."""
    profiles = profiles_of(cfg)
    return not profiles or any(p in node_profiles for p in profiles)


def disabled_dependencies(path: str, services: Mapping[str, Any], every: Mapping[str, Any],
                          node_profiles: tuple[str, ...], lines: Mapping[str, int | None] | None = None
                          ) -> list[ConfigError]:
    """An enabled service that needs (depends_on, required) a service of a profile the node does not enable."""
    problems = []
    for name in sorted(services):
        cfg = getattr(services[name], "config", services[name])
        needs = [(d, o) for d, o in _depends_on(cfg).items() if o.get("required", True) is not False]
        mode = cfg.get("network_mode")
        if isinstance(mode, str) and mode.startswith("service:"):
            needs.append((mode[len("service:"):], {}))
        for dep, _ in needs:
            if dep in services or dep not in every:
                continue
            profiles = ", ".join(profiles_of(getattr(every[dep], "config", every[dep])))
            enabled_text = ", ".join(node_profiles) or "none"
            problems.append(ConfigError(
                path, f"needs service {dep!r}, whose profiles ({profiles}) this node does not enable "
                      f"(node.yml profiles: {enabled_text}); enable one, or write required: false",
                line=(lines or {}).get(name), field=f"services.{name}.depends_on"))
    return problems


def parse_node_profiles(value: Any) -> tuple[str, ...]:
    """node.yml ``profiles``: a list of profile names."""
    if not isinstance(value, list):
        raise BadValue(f"must be a list of profile names, not {kind(value)}")
    out = []
    for item in value:
        if not isinstance(item, str) or not PROFILE_RE.fullmatch(item):
            raise BadValue(f"invalid profile name {item!r}: use letters, digits, '_', '.', '-'")
        out.append(item)
    return tuple(out)


# --------------------------------------------------------------------------
# The checks (mixed into ServiceChecker)


class DeployChecks:
    """``s_deploy``, ``s_scale``, ``s_profiles``, the depends_on options, and the checks across keys."""

    def s_profiles(self, name, at, facts, network_mode) -> None:
        if not self.seq(at):
            return
        for _, item in at.items():
            if self.string(item) and not PROFILE_RE.fullmatch(item.value):
                self.err(item, f"invalid profile name {item.value!r}: use letters, digits, '_', '.', '-'")

    def s_scale(self, name, at, facts, network_mode) -> None:
        self.parsed(at, parse_replicas)

    def s_deploy(self, name, at, facts, network_mode) -> None:
        if at.value is None:
            return
        if not self.mapping(at):
            return
        for key, child in at.entries():
            if key in DEPLOY_REFUSED:
                self.err(child, f"unsupported key {key!r}: {DEPLOY_REFUSED[key]}")
            elif key not in DEPLOY_KEYS and not str(key).startswith("x-"):
                self.err(child, f"unsupported key {key!r} (deploy supports {', '.join(sorted(DEPLOY_KEYS))})")
            elif key == "replicas":
                self.parsed(child, parse_replicas)
            elif key == "mode":
                if child.value in ("global", "global-job", "replicated-job"):
                    self.err(child, f"mode {child.value} is Swarm's: {_SWARM}; use replicas on each node")
                elif child.value != "replicated":
                    self.err(child, f"invalid mode {child.value!r}: use replicated")
            elif key == "resources":
                self._resources(child)
            elif key == "restart_policy":
                self._restart_policy(child)
            elif key == "update_config":
                self._update_config(child)

    def _refusing_keys(self, at, allowed: set[str], refused: Mapping[str, str]) -> None:
        for key, child in at.entries():
            if key in refused:
                self.err(child, f"unsupported key {key!r}: {refused[key]}")
            elif key not in allowed and not str(key).startswith("x-"):
                self.err(child, f"unsupported key {key!r} (use {', '.join(sorted(allowed))})")

    def _resources(self, at) -> None:
        if at.value is None or not self.mapping(at):
            return
        self._refusing_keys(at, RESOURCES_KEYS, {})
        limits = at.get("limits")
        if limits is not None and limits.value is not None and self.mapping(limits):
            self._refusing_keys(limits, LIMIT_KEYS, LIMIT_REFUSED)
            for key, parser in (("cpus", parse_cpus), ("memory", parse_bytes), ("pids", parse_pids)):
                child = limits.get(key)
                if child is not None:
                    self.parsed(child, parser)
        reservations = at.get("reservations")
        if reservations is not None and reservations.value is not None and self.mapping(reservations):
            self._refusing_keys(reservations, RESERVATION_KEYS, RESERVATION_REFUSED)
            memory = reservations.get("memory")
            if memory is not None:
                self.parsed(memory, parse_bytes)

    def _restart_policy(self, at) -> None:
        if at.value is None or not self.mapping(at):
            return
        self._refusing_keys(at, RESTART_POLICY_KEYS, RESTART_POLICY_REFUSED)
        self.parsed(at, lambda v: parse_restart_policy({k: v[k] for k in v if k in RESTART_POLICY_KEYS}))

    def _update_config(self, at) -> None:
        if at.value is None or not self.mapping(at):
            return
        self._refusing_keys(at, UPDATE_KEYS, {})
        parsers = {"parallelism": _parallelism, "delay": parse_duration_ns, "monitor": parse_duration_ns,
                   "order": _one_of(UPDATE_ORDERS), "failure_action": _one_of(FAILURE_ACTIONS),
                   "max_failure_ratio": _ratio}
        for key, child in at.entries():
            if key in parsers:
                self.parsed(child, parsers[key])

    def depends_on_options(self, dep: str, child, facts) -> None:
        """restart and required of one depends_on entry (booleans); required: false lets the dependency be absent."""
        for key in DEPENDS_ON_OPTIONS:
            option = child.get(key)
            if option is not None:
                self.boolean(option)
        required = child.get("required")
        if required is not None and required.value is False:
            facts.optional.add(dep)

    def deploy_conflicts(self, name: str, at, facts) -> None:
        """What involves several keys of one service: run after all of them were checked."""
        if not isinstance(at.value, dict):
            return
        deploy = at.get("deploy")
        deploy_value = deploy.value if deploy is not None and isinstance(deploy.value, dict) else {}
        replicas_at = deploy.get("replicas") if deploy_value else None
        scale_at = at.get("scale")
        if (replicas_at is not None and scale_at is not None and _is_int(replicas_at.value)
                and _is_int(scale_at.value) and replicas_at.value != scale_at.value):
            self.err(scale_at, f"scale: {scale_at.value} and deploy.replicas: {replicas_at.value} disagree: write "
                               "one of them (docker compose refuses distinct values too)")
        count_at = replicas_at or scale_at
        count = count_at.value if count_at is not None and _is_int(count_at.value) else 1
        resources = deploy_value.get("resources") if isinstance(deploy_value.get("resources"), dict) else None
        limits = resources.get("limits") if resources else None
        if isinstance(limits, dict):
            for key, (limit_key, parser) in _same_setting().items():
                written = at.get(key)
                if written is None:
                    continue
                try:
                    same = limit_key in limits and parser(written.value) == parser(limits[limit_key])
                except BadValue:
                    continue  # reported where it is written
                if not same:
                    self.err(written, f"{key} and deploy.resources.limits.{limit_key} are one setting: write it "
                                      f"once (docker compose refuses distinct values, and a limits block without "
                                      f"{limit_key} counts as distinct)")
        restart_at = at.get("restart")
        policy = deploy_value.get("restart_policy")
        if restart_at is not None and isinstance(policy, dict):
            try:
                differ = parse_restart(restart_at.value) != parse_restart_policy(policy)
            except BadValue:
                differ = False
            if differ:
                self.err(restart_at, "restart and deploy.restart_policy disagree: write one of them (docker compose "
                                     "would silently use deploy.restart_policy)")
        if count > 1:
            if at.get("container_name") is not None:
                self.err(count_at, f"{count} replicas cannot share one container_name: leave container_name out "
                                   "(replicas are named <node>-<service>, <node>-<service>-2, ...)")
            fixed = [b for b, _ in facts.bindings if b[3] is not None]
            if fixed:
                port = fixed[0]
                self.err(count_at, f"{count} replicas cannot all publish host port {port[3]}/{port[1]}: publish an "
                                   f"ephemeral port ('{port[0]}') and reach them through Consul and a proxy")
        update = deploy_value.get("update_config")
        if isinstance(update, dict) and update.get("order") == "start-first":
            fixed = [b for b, _ in facts.bindings if b[3] is not None]
            if fixed:
                self.err(deploy.get("update_config").get("order"),
                         f"start-first cannot start a new container beside the old one: both need host port "
                         f"{fixed[0][3]}/{fixed[0][1]}; use stop-first or an ephemeral port")
