"""Read an infrastructure repository from disk into the model.

Layout::

    datacenters/<dc>/datacenter.yml             optional: description, consul, registry, secrets_dir,
                                                registry_credentials, variables, lock, builder (builder_engine)
    datacenters/<dc>/<node>/node.yml            required: docker (how to reach the engine); optional variables
    datacenters/<dc>/<node>/docker-compose.yml  optional: the containers the node must run
    datacenters/<dc>/<node>/.env                optional: variables of the compose file (``variables``)

A compose file is interpolated with the node's variables (``interpolate``,
``variables``) before anything reads it, then its shared definitions are
resolved (``shared``: ``include`` and ``extends``), then environment entries
written without a value take the repository's variable; the compose check sees
the result, with the lines of the file.

``load(root)`` returns an Infrastructure or raises ValidationFailed listing every
problem; ``check(root)`` returns the problems instead of raising.

Every YAML file is bad input or data, never a crash: its size is checked before
it is read, the rest of the limits of docs/compose.md ("Limits") before any
parser builds anything, and whatever a parser or constructor raises is a
ConfigError with the line it was at (``yamlread``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import gc
import os
import re
from pathlib import Path
from typing import Any, Callable

from deployer.config import compose_deploy
from deployer.config.builder_engine import DOCKER_URL_RE, parse_builder
from deployer.config.compose_check import validate_compose
from deployer.config.compose_keys import to_plain
from deployer.config.compose_spec import container_name, container_spec
from deployer.config.datacenter_file import credentials_file, lock_settings, secrets_dirs, string_field, unknown_keys
from deployer.config.compose_merge import merge_tags
from deployer.config.interpolate import interpolate_document
from deployer.config.shared import resolve_shared
from deployer.config.variables import ENV_FILE, fill_environment, node_variables, parse_dotenv, variables_mapping
from deployer.config.label_check import valid_address
from deployer.config.parse_cache import ParseCache, blob_id, spec_data, spec_from, variables_id
from deployer.config.parse_cache import key as cache_key
from deployer.config.yamlread import (
    MAX_FILE_BYTES, key_line, limit_error, load_fast, parse_yaml, value_line, yaml_limits,
)
from deployer.errors import ConfigError, ValidationFailed
from deployer.model import Datacenter, Infrastructure, Location, Node, Service, TLSFiles
from deployer.values import BadValue

DATACENTERS = "datacenters"
DATACENTER_FILE = "datacenter.yml"
NODE_FILE = "node.yml"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
DATACENTER_KEYS = {"description", "consul", "registry", "secrets_dir", "registry_credentials", "variables", "lock",
                   "builder"}
NODE_KEYS = {"docker", "description", "address", "tls", "identity_file", "variables", "profiles"}
# a secret's or config's mode written as a YAML integer without its leading 0: only the round-trip
# data tells it from 0440 (compose_files_check.file_mode), so such a file is read that way
BARE_DECIMAL_MODE = re.compile(r"\bmode\s*:\s*[1-9][0-9]*\s*(?:[,}\]#\r\n]|$)")
PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # Compose's project names
TLS_KEYS = {"ca", "cert", "key"}
#: The parse cache of the load in progress (``check`` sets it; None: nothing is cached).
_CACHE: contextvars.ContextVar[ParseCache | None] = contextvars.ContextVar("deployer_parse_cache", default=None)

#: The nodes whose compose entry came from the parse cache during the load in progress: their container
#: names were checked when it was kept (``_check_container_names`` skips them).
_NAMES_CHECKED: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("deployer_names_checked",
                                                                                 default=None)

#: The files an include or extends read while one compose file is loaded: [rel, blob id] (for the parse cache).
_READS: contextvars.ContextVar[list | None] = contextvars.ContextVar("deployer_shared_reads", default=None)





def _read_text(root: Path, rel: str, problems: list[ConfigError], limits: bool = True) -> str | None:
    """The file's text if it can be read and is within the limits (size first, before reading it;
    the rest only with ``limits``: a text the parse cache has was within them when it was kept)."""
    try:
        path = os.path.join(root, rel)  # strings, not Paths: this runs for every file of 10,000 nodes
        with open(path, encoding="utf-8") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                problems.append(limit_error(rel, f"{size:,} bytes: a YAML file may have at most {MAX_FILE_BYTES:,}"))
                return None
            text = f.read()
    except UnicodeDecodeError as exc:
        line = (root / rel).read_bytes()[: exc.start].count(b"\n") + 1
        problems.append(ConfigError(rel, "not UTF-8 text", line=line))
        return None
    except OSError as exc:
        problems.append(ConfigError(rel, f"cannot read: {exc.strerror}"))
        return None
    return _within_limits(text, rel, problems) if limits else text


def _within_limits(text: str, rel: str, problems: list[ConfigError]) -> str | None:
    err = yaml_limits(text, rel)
    if err is not None:
        problems.append(err)
        return None
    return text


def _parse(text: str, rel: str, problems: list[ConfigError]) -> Any:
    try:
        return parse_yaml(text, rel, limits=False)  # checked when read
    except ConfigError as err:
        problems.append(err)
        return None


def _read_checked(root: Path, rel: str, problems: list[ConfigError], build: Callable[[Any, list], Any]) -> Any:
    """Read a YAML file and ``build(doc, problems)`` from it: fast first, again with line numbers if it has problems."""
    cache = _CACHE.get()
    text = _read_text(root, rel, problems, limits=cache is None)
    if text is None:
        return None
    name = cache_key("yaml", blob_id(text)) if cache is not None else None
    cached = cache.get(name) if cache is not None else None
    if cache is not None and cached is None and _within_limits(text, rel, problems) is None:
        return None
    try:
        doc = cached[0] if cached is not None else load_fast(text)
    except Exception:
        pass
    else:
        found: list[ConfigError] = []
        result = build(doc, found)
        if not found:
            if cache is not None and cached is None:
                cache.put(name, [doc])
            return result
    doc = _parse(text, rel, problems)
    if doc is None and text.strip() and problems and problems[-1].path == rel:
        return None  # malformed
    return build(doc, problems)


def _mapping(doc: Any, rel: str, problems: list[ConfigError], allow_empty: bool = True) -> dict | None:
    if doc is None:
        return {} if allow_empty else None
    if not isinstance(doc, dict):
        problems.append(ConfigError(rel, "the file must hold a mapping of keys", line=1))
        return None
    return doc


def _load_datacenter(root: Path, name: str, problems: list[ConfigError]) -> Datacenter:
    dc_path = f"{DATACENTERS}/{name}"
    dc = Datacenter(name=name, path=dc_path)
    rel = f"{dc_path}/{DATACENTER_FILE}"
    if (root / rel).is_file():
        dc.location = Location(rel)

        def build(doc: Any, found: list[ConfigError]) -> None:
            doc = _mapping(doc, rel, found)
            if doc is not None:
                unknown_keys(doc, DATACENTER_KEYS, rel, "", found)
                dc.description = string_field(doc, "description", rel, found) or ""
                dc.consul = string_field(doc, "consul", rel, found)
                dc.registry = string_field(doc, "registry", rel, found)
                dc.secrets_dirs = secrets_dirs(doc, rel, found)
                dc.registry_credentials = credentials_file(root, doc, rel, found)
                dc.variables = variables_mapping(doc, rel, found)
                dc.lock_ttl, dc.lock_delay = lock_settings(doc, rel, found)
                dc.builder = parse_builder(root, name, dc_path, rel, doc, found)

        _read_checked(root, rel, problems, build)
    return dc


def _load_node(root: Path, dc: str, name: str, problems: list[ConfigError],
               secrets_dirs: tuple[str, ...] = (), dc_variables: dict[str, str] | None = None) -> Node | None:
    node_path = f"{DATACENTERS}/{dc}/{name}"
    rel = f"{node_path}/{NODE_FILE}"
    files = _files_in(os.path.join(root, node_path))  # one listing, not a stat per possible name
    if not files.get(NODE_FILE):
        problems.append(ConfigError(rel, "missing: every node directory needs a node.yml with a 'docker:' URL"))
        return None
    node = _read_checked(root, rel, problems,
                         lambda doc, found: _node_from_yml(root, dc, name, rel, doc, found, files))
    if node is None:
        return None
    node.secrets_dirs = secrets_dirs
    env = dotenv_variables(root, f"{node.path}/{ENV_FILE}", dc_variables or {}, problems) if files.get(ENV_FILE) else {}
    node.variables = node_variables(node.variables, env, dc_variables or {})
    compose = [f for f in COMPOSE_FILES if files.get(f)]
    if len(compose) > 1:
        problems.append(ConfigError(f"{node.path}/{compose[1]}", f"a node has one compose file; {compose[0]} is here too"))
    if compose:
        _load_compose(root, node, f"{node.path}/{compose[0]}", problems)
    return node


def _files_in(folder: str) -> dict[str, bool]:
    """The names in ``folder``, each with whether it is a file (symbolic links followed), from one listing
    (the file types come with the names on most file systems: no stat per name)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry.is_file() for entry in entries}
    except OSError:
        return {}


def _subfolders(folder: Path) -> list[str]:
    """The names of the folders in ``folder`` not starting with '.', sorted (one listing)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _node_from_yml(root: Path, dc: str, name: str, rel: str, doc: Any, problems: list[ConfigError],
                   files: dict[str, bool] | None = None) -> Node | None:
    node_path = f"{DATACENTERS}/{dc}/{name}"
    doc = _mapping(doc, rel, problems)
    if doc is None:
        return None
    unknown_keys(doc, NODE_KEYS, rel, "", problems)
    docker_url = string_field(doc, "docker", rel, problems)
    if docker_url is None:
        if "docker" not in doc:
            problems.append(ConfigError(rel, "required: how to reach the node's Docker engine "
                                             "(unix:///var/run/docker.sock, ssh://user@host, tcp://host:2376)",
                                        line=1, field="docker"))
        return None
    if not DOCKER_URL_RE.match(docker_url) or not docker_url.isprintable():  # printed by ls and in errors
        problems.append(ConfigError(rel, f"invalid Docker URL {docker_url!r}: use unix://PATH, ssh://[user@]host[:port] "
                                         "or tcp://host:port", line=value_line(doc, "docker"), field="docker"))
        return None
    tls = None
    tls_doc = doc.get("tls")
    if tls_doc is not None:
        if not isinstance(tls_doc, dict):
            problems.append(ConfigError(rel, "must be a mapping with ca, cert, key", line=value_line(doc, "tls"), field="tls"))
        else:
            unknown_keys(tls_doc, TLS_KEYS, rel, "tls.", problems)
            paths = {}
            for key in ("ca", "cert", "key"):
                value = string_field(tls_doc, key, rel, problems, field=f"tls.{key}")
                if value is None:
                    if key not in tls_doc:
                        problems.append(ConfigError(rel, "required", line=value_line(doc, "tls"), field=f"tls.{key}"))
                    continue
                paths[key] = str((root / node_path / Path(value).expanduser()).resolve())
            if len(paths) == 3:
                tls = TLSFiles(**paths)
        if not docker_url.startswith("tcp://"):
            problems.append(ConfigError(rel, "tls applies only to tcp:// Docker URLs", line=key_line(doc, "tls"), field="tls"))
    identity = string_field(doc, "identity_file", rel, problems)
    if identity is not None:
        identity = str((root / node_path / Path(identity).expanduser()).resolve())
    address = string_field(doc, "address", rel, problems)
    if address is not None and not valid_address(address.strip()):
        problems.append(ConfigError(rel, f"invalid address {address!r}: write the IP address or host name other "
                                         "hosts reach the node's published ports at", line=value_line(doc, "address"),
                                    field="address"))
    known_hosts = f"{node_path}/known_hosts"
    node = Node(
        dc=dc,
        name=name,
        docker=docker_url,
        path=node_path,
        location=Location(rel),
        tls=tls,
        identity_file=identity,
        known_hosts=known_hosts if (files.get("known_hosts") if files is not None
                                    else (root / known_hosts).is_file()) else None,
        address=address,
        description=string_field(doc, "description", rel, problems) or "",
        variables=variables_mapping(doc, rel, problems),  # node.yml's own: the loader adds .env and the datacenter's
        profiles=_node_profiles(doc, rel, problems),
    )
    return node


def dotenv_variables(root: Path, rel: str, outer: dict[str, str], problems: list[ConfigError]) -> dict[str, str]:
    """The variables of a ``.env`` file (none when there is no such file)."""
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                problems.append(limit_error(rel, f"{size:,} bytes: a .env file may have at most {MAX_FILE_BYTES:,}"))
                return {}
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(ConfigError(rel, f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
        return {}
    cache = _CACHE.get()
    # what the values are made of: the text and the variables it is interpolated from (the datacenter's)
    name = cache_key("dotenv", blob_id(text), variables_id(outer)) if cache is not None else None
    cached = cache.get(name) if cache is not None else None
    if cached is not None:  # parsed before, without problems
        return dict(cached[0])
    values, found = parse_dotenv(text, rel, outer)
    problems.extend(found)
    if cache is not None and not found:
        cache.put(name, [values])
    return values


def _prepare(root: Path, node: Node, rel: str, doc: dict, fast: bool = False, text: str | None = None) -> list[ConfigError]:
    """What Compose does before it reads a file: interpolate, resolve shared definitions, fill bare environment entries.

    In place, on plain or round-trip data (the lines stay). ``fast``: shared
    files are read with the fast loader too (a problem makes the caller read
    everything again with lines). ``text``: the file's text, when known (no '$': nothing to interpolate).
    """
    if text is None or "$" in text:
        problems = interpolate_document(doc, node.variables, rel)
        if problems:
            return problems
    problems = resolve_shared(doc, rel, root, node.variables, _shared_reader(root, fast),
                              lambda inc, inc_rel: _check_included(inc, inc_rel, root, node))
    if problems:
        return problems
    if hasattr(doc, "lc"):  # only round-trip data carries tags (the fast loader refuses them)
        merge_tags(doc)
    problems = fill_environment(doc, node.variables, rel)
    name = doc.get("name")
    if isinstance(name, str) and not PROJECT_NAME_RE.match(name):
        problems.append(ConfigError(rel, f"invalid project name {name!r}: lowercase letters, digits, '-' and '_', "
                                         "starting with a letter or digit (as Compose requires)",
                                    line=value_line(doc, "name"), field="name"))
    return problems


def _check_included(doc: Any, rel: str, root: Path, node: Node) -> list[ConfigError]:
    found = fill_environment(doc, node.variables, rel)
    if hasattr(doc, "lc"):
        merge_tags(doc)
    return found or validate_compose(doc, rel, root, secrets_dirs=node.secrets_dirs)


def _shared_reader(root: Path, fast: bool) -> Callable[[str, list[ConfigError]], Any]:
    def read(rel: str, problems: list[ConfigError]) -> Any:
        text = _read_text(root, rel, problems)
        if text is None:
            return None
        reads = _READS.get()
        if reads is not None:  # the parse cache keys the including file's entry by this file's content too
            reads.append([rel, blob_id(text)])
        if fast:
            try:
                return load_fast(text)
            except Exception:  # noqa: BLE001 - the caller reads it again with lines
                problems.append(ConfigError(rel, "read again with lines"))
                return None
        return _parse(text, rel, problems)
    return read
def _node_profiles(doc: dict, rel: str, problems: list[ConfigError]) -> tuple[str, ...]:
    if doc.get("profiles") is None:
        return ()
    try:
        return compose_deploy.parse_node_profiles(doc["profiles"])
    except BadValue as exc:
        problems.append(ConfigError(rel, str(exc), line=value_line(doc, "profiles"), field="profiles"))
        return ()


def _load_compose(root: Path, node: Node, rel: str, problems: list[ConfigError], text: str | None = None) -> None:
    node.compose_path = rel
    cache = _CACHE.get() if text is None else None  # an edited text (deploy) is checked, not cached
    if cache is not None:
        text = _read_text(root, rel, problems, limits=False)
        if text is None:
            return
        # what feeds the result besides the text: the node (dc, name) and the variables it is interpolated with
        name = cache_key("compose", blob_id(text), node.dc, node.name, variables_id(node.variables),
                         ",".join(node.profiles))
        cached = cache.get(name)
        if cached is not None and cache.same_files(root, cached[7]):  # read and checked before, no problems
            _fill_compose(node, rel, *cached[:7])
            known = _NAMES_CHECKED.get()
            if known is not None:  # its container names were checked before it was kept (the key holds all they
                known.add(node.target)  # are made of): ``_check_container_names`` need not make them again
            return
    text = _read_text(root, rel, problems) if text is None else _within_limits(text, rel, problems)
    if text is None:
        return
    plain = True  # data from load_fast is plain dicts and lists already
    reads: list = []
    token = _READS.set(reads)
    try:
        if BARE_DECIMAL_MODE.search(text):
            raise ValueError("read with lines: a mode written without its leading 0")
        doc = load_fast(text)
        found = _prepare(root, node, rel, doc, fast=True, text=text) if isinstance(doc, dict) else [None]
        if not found:
            found = validate_compose(doc, rel, root, secrets_dirs=node.secrets_dirs)
    except Exception:
        found = [None]
    finally:
        _READS.reset(token)
    if found:  # read again with line numbers, for the messages
        plain = False
        doc = _parse(text, rel, problems)
        if doc is None:
            return
        if not isinstance(doc, dict):
            problems.append(ConfigError(rel, "the file must hold a mapping with a 'services' key", line=1))
            return
        found = _prepare(root, node, rel, doc, text=text)
        if found:
            problems.extend(found)
            return
        found = validate_compose(doc, rel, root, secrets_dirs=node.secrets_dirs)
        if found:
            problems.extend(found)
            return
        # Valid for the round-trip loader although the fast one refused it (a
        # construct only ruamel accepts): the round-trip data is the truth.
    plain_data = (lambda data: data) if plain else to_plain
    services = doc.get("services") or {}
    every = {str(svc): svc_doc for svc, svc_doc in services.items()}
    enabled = {str(svc): plain_data(svc_doc) for svc, svc_doc in services.items()
               if compose_deploy.enabled(svc_doc, node.profiles)}  # the others: a profile this node does not enable
    for svc, svc_doc in enabled.items():
        node.services[svc] = Service(dc=node.dc, node=node.name, name=svc, image=str(svc_doc["image"]),
                                     config=svc_doc, location=Location(rel))
    if len(node.services) < len(every):
        found = compose_deploy.disabled_dependencies(rel, node.services, every, node.profiles)
        if found:  # with the lines the round-trip loader knows
            lined = (doc if not plain else _parse(text, rel, [])) or {}
            lines = {name: key_line(lined.get("services") or {}, name) for name in node.services}
            problems.extend(compose_deploy.disabled_dependencies(rel, node.services, every, node.profiles, lines))
            return
    node.services.clear()
    parts = (enabled, plain_data(doc.get("volumes") or {}), plain_data(doc.get("networks") or {}),
             plain_data(doc.get("secrets") or {}), str(doc["name"]) if doc.get("name") else None,
             plain_data(doc.get("configs") or {}))
    _fill_compose(node, rel, *parts)
    # files that read others are kept with those files' blob ids (include, extends: compared at the next load);
    # files whose check or containers read files beside the text (secrets, configs, env_file, relative binds)
    # are not kept
    if cache is not None and plain and _self_contained(doc) and not _node_container_names(root, node):
        cache.put(name, [*parts, _spec_entries(root, node), reads])


def _self_contained(doc: dict) -> bool:
    """Whether checking the compose document and building its containers read no file but the text itself."""
    if doc.get("secrets") or doc.get("configs"):
        return False
    for svc in (doc.get("services") or {}).values():
        if not isinstance(svc, dict) or svc.get("env_file") or svc.get("configs") or svc.get("secrets"):
            return False
        for volume in svc.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else str((volume or {}).get("source") or "")
            if source.startswith((".", "~")) or (isinstance(volume, dict) and volume.get("type") == "bind"
                                                 and not source.startswith("/")):
                return False
    return True


def _fill_compose(node: Node, rel: str, services: dict, volumes: dict, networks: dict, secrets: dict,
                  compose_name: str | None = None, configs: dict | None = None, specs: dict | None = None) -> None:
    location = Location(rel)
    specs = specs or {}
    for name, svc_doc in services.items():
        # a kept spec is made here, while the load holds the cycle collector (``check``): made later, beside
        # the other new objects of a plan, the collector's passes over them cost three times the making
        data = specs.get(name)
        node.services[name] = Service(dc=node.dc, node=node.name, name=name, image=str(svc_doc["image"]),
                                      config=svc_doc, location=location,
                                      cached_spec=spec_from(data) if data is not None else None)
    node.volumes = volumes
    node.networks = networks
    node.secrets = secrets
    node.compose_name = compose_name
    node.configs = configs or {}


def _spec_entries(root: Path, node: Node) -> dict:
    """The container spec of each service for the parse cache (it depends on the text, the node, its variables
    and profiles: all in the key)."""
    out = {}
    for name, svc in node.services.items():
        try:
            data = spec_data(container_spec(node, svc, root))
        except Exception:  # noqa: BLE001 - not cached; the command that builds it reports the error
            continue
        if data is not None:
            out[name] = data
    return out


def with_compose_text(root: str | Path, node: Node, text: str) -> Node:
    """A copy of ``node`` whose services come from ``text`` (an edited compose file), validated."""
    rel = node.compose_path or f"{node.path}/{COMPOSE_FILES[0]}"
    copy = dataclasses.replace(node, services={}, volumes={}, networks={}, secrets={}, configs={})
    problems: list[ConfigError] = []
    _load_compose(Path(root), copy, rel, problems, text=text)
    if not problems:  # the node-wide checks ``check`` runs too
        problems = _node_container_names(Path(root), copy)
    if problems:
        raise ValidationFailed(problems)
    return copy


def check(root: str | Path) -> tuple[Infrastructure, list[ConfigError]]:
    """Load everything that can be loaded, and every problem found on the way (through the parse cache)."""
    root = Path(root).resolve()
    # A load makes millions of small objects and no garbage cycles: the cycle collector's passes over
    # the growing heap made a 10,000-node load grow faster than linearly; it is paused meanwhile, and
    # what was loaded (it lives as long as the command) is moved out of its later passes (gc.freeze:
    # still freed by reference counting when dropped; the model has no cycles).
    paused = gc.isenabled()
    gc.disable()
    try:
        cache = ParseCache.for_root(root)
        token = _CACHE.set(cache if cache.enabled else None)
        names = _NAMES_CHECKED.set(set())
        try:
            infra, problems = _check(root)
        finally:
            _NAMES_CHECKED.reset(names)
            _CACHE.reset(token)
        cache.save(prune=True)
    finally:
        gc.freeze()
        if paused:
            gc.enable()
    return infra, problems


def _check(root: Path) -> tuple[Infrastructure, list[ConfigError]]:
    infra = Infrastructure(root=root)
    problems: list[ConfigError] = []
    base = root / DATACENTERS
    if not base.is_dir():
        problems.append(ConfigError(DATACENTERS, f"no '{DATACENTERS}/' directory in {root}; "
                                                 "is this an infrastructure repository? ('deployer init DIR' makes one)"))
        return infra, problems
    for dc_name in _subfolders(base):
        if not NAME_RE.match(dc_name):
            problems.append(ConfigError(f"{DATACENTERS}/{dc_name}", "datacenter names are lowercase letters, digits, '.', '_' or '-'"))
            continue
        dc = _load_datacenter(root, dc_name, problems)
        infra.datacenters[dc.name] = dc
        for node_name in _subfolders(base / dc_name):
            if not NAME_RE.match(node_name):
                problems.append(ConfigError(f"{dc.path}/{node_name}", "node names are lowercase letters, digits, '.', '_' or '-'"))
                continue
            node = _load_node(root, dc.name, node_name, problems, dc.secrets_dirs, dc.variables)
            if node is not None:
                node.registry_credentials = dc.registry_credentials
                dc.nodes[node.name] = node
    problems.extend(_check_container_names(root, infra))
    return infra, problems


def _check_container_names(root: Path, infra: Infrastructure) -> list[ConfigError]:
    known = _NAMES_CHECKED.get() or set()
    return [problem for node in infra.nodes() if node.target not in known
            for problem in _node_container_names(root, node)]


def _node_container_names(root: Path, node: Node) -> list[ConfigError]:
    problems = []
    seen: dict[str, str] = {}
    for svc in node.services.values():
        for name in compose_deploy.replica_names(container_name(node, svc), svc.config):
            if name in seen and seen[name] != svc.name:
                problems.append(ConfigError(svc.location.path, f"container name {name!r} is also used by service "
                                                               f"{seen[name]!r}",
                                            line=service_line(root, svc.location.path, svc.name),
                                            field=f"services.{svc.name}.container_name"))
            seen[name] = svc.name
    return problems


def service_line(root: Path, rel: str, service: str) -> int | None:
    """The line a service starts on (read on demand: the fast loader keeps no lines)."""
    try:
        doc = parse_yaml((root / rel).read_text(encoding="utf-8"), rel)
        return key_line(doc["services"], service)
    except Exception:
        return None


def load(root: str | Path) -> Infrastructure:
    infra, problems = check(root)
    if problems:
        raise ValidationFailed(problems)
    return infra


def find_root(start: str | Path) -> Path:
    """The infrastructure repo containing ``start``: the nearest directory with a datacenters/ folder."""
    start = Path(start).resolve()
    for candidate in (start, *start.parents):
        if (candidate / DATACENTERS).is_dir():
            return candidate
    return start


def load_node(root: str | Path, dc: str, name: str) -> Node:
    """One node (its node.yml and compose file) read from disk and validated; ValidationFailed otherwise."""
    problems: list[ConfigError] = []
    datacenter = _load_datacenter(Path(root), dc, problems)  # its secrets_dir, for the compose check
    node = _load_node(Path(root), dc, name, problems, datacenter.secrets_dirs)
    if node is not None:
        node.registry_credentials = datacenter.registry_credentials
    if problems or node is None:
        raise ValidationFailed(problems or [ConfigError(f"{DATACENTERS}/{dc}/{name}/{NODE_FILE}", "could not be read back")])
    return node
