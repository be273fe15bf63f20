"""Read an infrastructure repository from disk into the model.

Layout::

    datacenters/<dc>/datacenter.yml             optional: description, consul, registry
    datacenters/<dc>/<node>/node.yml            required: docker (how to reach the engine)
    datacenters/<dc>/<node>/docker-compose.yml  optional: the containers the node must run

``load(root)`` returns an Infrastructure or raises ValidationFailed listing every
problem; ``check(root)`` returns the problems instead of raising.

Every YAML file is bad input or data, never a crash: before any parser builds
anything, ``yaml_limits`` checks the size of the file and, with a scan of the
event stream (libyaml through ruamel's C parser, linear, no recursion), the
nesting depth, the length of every scalar and how many nodes aliases stand for
(docs/compose.md, "Limits"); whatever a parser or constructor raises then is a
ConfigError with the line it was at.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from ruamel.yaml import YAML
from ruamel.yaml.constructor import RoundTripConstructor, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

from deployer.config.compose_check import validate_compose
from deployer.config.compose_keys import to_plain
from deployer.config.compose_spec import container_name
from deployer.errors import ConfigError, ValidationFailed, YamlValueError
from deployer.model import Datacenter, Infrastructure, Location, Node, Service, TLSFiles

try:
    from deployer.config import fastyaml
except ImportError:  # no PyYAML libyaml binding: ruamel's loader reads every file
    fastyaml = None
try:
    from ruamel.yaml.cyaml import CParser as _CEventParser  # libyaml via ruamel.yaml.clib
except ImportError:
    _CEventParser = None

# ruamel warns on stderr, over several lines, about legal YAML (a reused anchor name)
# and about what it may refuse one day; the loader reports every problem itself.
warnings.filterwarnings("ignore", category=YAMLWarning)
warnings.filterwarnings("ignore", category=YAMLFutureWarning)

DATACENTERS = "datacenters"
DATACENTER_FILE = "datacenter.yml"
NODE_FILE = "node.yml"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
DATACENTER_KEYS = {"description", "consul", "registry"}
NODE_KEYS = {"docker", "description", "address", "tls", "identity_file"}
TLS_KEYS = {"ca", "cert", "key"}
DOCKER_URL_RE = re.compile(r"^(unix://.+|ssh://([^@/\s]+@)?[^:/\s]+(:\d+)?/?|tcp://[^:/\s]+(:\d+)?/?)$")


# -- Limits (docs/compose.md, "Limits"): checked before any parser builds anything

MAX_FILE_BYTES = 1024 * 1024  # a YAML file of the repository, in bytes
MAX_SCALAR_CHARS = 256 * 1024  # one scalar (a string, a number), in characters
MAX_DEPTH = 100  # collections nested in collections
MAX_ALIAS_NODES = 100_000  # nodes all aliases stand for, counted as if each alias were written out


def _limit_error(path: str, what: str, line: int | None = 1) -> ConfigError:
    return ConfigError(path, f"{what} (see 'Limits' in docs/compose.md)", line=line)


def _could_exceed(text: str) -> bool:
    """False when no event scan is needed: the text cannot break a depth, scalar or alias limit.

    Every level of block nesting takes at least one character of a line's
    leading indentation and indicators ('- ', '? ', ': ') for every two
    levels, every flow level an opening bracket, a scalar is never longer
    than the text, and expansion needs an alias ('*'). So this bound, counted
    at C speed, is safe; most files are far below it.
    """
    if "*" in text or len(text) > MAX_SCALAR_CHARS:
        return True
    lead = max(map(len, _LEAD_RE.findall(text)), default=0)  # one more than the lead: the line break
    return 2 * lead + 2 + text.count("[") + text.count("{") > MAX_DEPTH


# A line's leading indentation and indicators, after any line break ruamel knows (not only '\n').
_LEAD_RE = re.compile("(?:\\A|[\r\n\x85\u2028\u2029])[ \t?:-]*")


def _scan(events: Any, path: str) -> ConfigError | None:
    """Depth, scalar size and alias expansion of an event stream, without building anything."""
    sizes: dict[Any, int | None] = {}  # anchor -> nodes it stands for (None while its collection is open)
    stack: list[list] = []  # open collections: [nodes so far, anchor]
    aliased = 0
    for event in events:
        cls = event.__class__
        if cls is ScalarEvent:
            if len(event.value) > MAX_SCALAR_CHARS:
                return _limit_error(path, f"a scalar of {len(event.value):,} characters: the limit is "
                                          f"{MAX_SCALAR_CHARS:,}", event.start_mark.line + 1)
            if event.anchor is not None:
                sizes[event.anchor] = 1
            if stack:
                stack[-1][0] += 1
        elif cls is AliasEvent:
            line = event.start_mark.line + 1
            size = sizes.get(event.anchor, 0)
            if size is None:
                return ConfigError(path, f"alias *{event.anchor} is inside the node it names: "
                                         "a recursive structure is not data the deployer can use", line=line)
            aliased += size
            if aliased > MAX_ALIAS_NODES:
                return _limit_error(path, f"aliases stand for more than {MAX_ALIAS_NODES:,} nodes", line)
            if stack:
                stack[-1][0] += size
        elif isinstance(event, CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                return _limit_error(path, f"nested more than {MAX_DEPTH} levels deep", event.start_mark.line + 1)
            if event.anchor is not None:
                sizes[event.anchor] = None
            stack.append([1, event.anchor])
        elif isinstance(event, CollectionEndEvent) and stack:
            count, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = count
            if stack:
                stack[-1][0] += count
    return None


def yaml_limits(text: str, path: str) -> ConfigError | None:
    """The first limit ``text`` breaks (docs/compose.md, "Limits"), or None; cheap, and before any parser builds."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        return _limit_error(path, f"{size:,} bytes: a YAML file may have at most {MAX_FILE_BYTES:,}")
    if not _could_exceed(text):
        return None
    # libyaml's event parser first (fast, linear). Text it refuses is scanned by
    # the pure-Python parser the round trip uses (it accepts a little more, like
    # surrogate escapes), so that what the round trip reads is bounded too; but
    # that parser's scanner is quadratic in flow nesting, so with more than
    # MAX_PURE_FLOW flow openings libyaml's refusal is the answer.
    if _CEventParser is not None:
        try:
            return _scan(_events(_CEventParser(text)), path)
        except MarkedYAMLError as exc:
            if text.count("[") + text.count("{") > MAX_PURE_FLOW:
                return _malformed(path, exc)
        except Exception:
            pass
    try:
        return _scan(YAML().parse(text), path)
    except Exception:  # malformed: parse_yaml says where
        return None


MAX_PURE_FLOW = 10_000


def _malformed(path: str, exc: MarkedYAMLError) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    return ConfigError(path, f"malformed YAML: {exc.problem or exc.context or 'invalid YAML'}", line=line)


def _events(parser: Any) -> Any:
    try:
        while parser.check_event():
            yield parser.get_event()
    finally:
        parser.dispose()


class _RefuseLongInts:
    """An int too long to write in decimal is refused, with its line.

    (ruamel builds ``0x`` and 5,000 digits as an int, which Python then cannot
    turn into a string: every message, label and environment value would raise.)
    """

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        data = super().construct_object(node, deep=deep)
        if data.__class__ is not bool and isinstance(data, int) and _too_long(data):
            raise YamlValueError(_TOO_LONG(), node.start_mark.line + 1)
        return data


def _too_long(number: int) -> bool:
    digits = sys.get_int_max_str_digits()
    return digits > 0 and number.bit_length() > 3 * digits and abs(number) >= 10**digits


def _TOO_LONG() -> str:
    return f"a number of more than {sys.get_int_max_str_digits():,} digits"


class _Constructor(_RefuseLongInts, RoundTripConstructor):
    """The round-trip constructor: long ints refused, and what a value's conversion raises names its line."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (YamlValueError, MarkedYAMLError, RecursionError, MemoryError):
            raise
        except Exception as exc:  # the innermost node: its line
            raise _value_problem(node.start_mark, exc) from None


class _SafeConstructor(_RefuseLongInts, SafeConstructor):
    """The safe constructor of ``load_fast``'s fallback: ruamel's, long ints refused."""


def _value_problem(mark: Any, exc: Exception) -> YamlValueError:
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        problem = _TOO_LONG()
    else:
        problem = " ".join(str(exc).split()) or type(exc).__name__
    return YamlValueError(problem, mark.line + 1)


def parse_yaml(text: str, path: str, limits: bool = True) -> Any:
    """Round-trip parse (keys keep their line numbers); malformed YAML, or a limit broken, is a ConfigError.

    ``limits=False`` when the caller has checked ``yaml_limits`` on this text already.
    """
    err = yaml_limits(text, path) if limits else None
    if err is not None:
        raise err
    yaml = YAML()
    yaml.Constructor = _Constructor
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        raise _malformed(path, exc) from None
    except YamlValueError as exc:
        raise ConfigError(path, f"cannot read this value: {exc.problem}", line=exc.line) from None
    except YAMLError as exc:
        raise ConfigError(path, f"malformed YAML: {' '.join(str(exc).split())}", line=1) from None
    except (RecursionError, MemoryError):
        raise
    except Exception as exc:  # ruamel building a collection (the values in it were wrapped above)
        raise ConfigError(path, f"cannot read this YAML: {' '.join(str(exc).split()) or type(exc).__name__}",
                          line=1) from None


def load_fast(text: str) -> Any:
    """Plain data, exactly as ruamel's YAML 1.2 safe loader returns it (or raises), but without line numbers.

    ``fastyaml`` (PyYAML's libyaml binding, ruamel's resolver and scalar
    constructors) does most files several times faster than ruamel's own C
    loader; whatever it does not promise to read identically (it raises then)
    is read by ruamel's safe loader, so the result never depends on which one
    read it. Callers validate this first and re-read with ``parse_yaml``
    (round-trip, with lines) only when something is wrong and needs a line in
    its message. One difference from ruamel: an int too long for Python to
    write in decimal raises YamlValueError.
    """
    if fastyaml is not None:
        try:
            return fastyaml.load(text)
        except Exception:
            pass
    yaml = YAML(typ="safe", pure=False)
    yaml.Constructor = _SafeConstructor
    return yaml.load(text)


def key_line(mapping: Any, key: Any) -> int | None:
    try:
        return mapping.lc.key(key)[0] + 1
    except Exception:
        return None


def value_line(mapping: Any, key: Any) -> int | None:
    try:
        return mapping.lc.value(key)[0] + 1
    except Exception:
        return None


def _read_text(root: Path, rel: str, problems: list[ConfigError]) -> str | None:
    """The file's text if it can be read and is within the limits (size first, before reading it)."""
    try:
        size = (root / rel).stat().st_size
        if size > MAX_FILE_BYTES:
            problems.append(_limit_error(rel, f"{size:,} bytes: a YAML file may have at most {MAX_FILE_BYTES:,}"))
            return None
        text = (root / rel).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = (root / rel).read_bytes()[: exc.start].count(b"\n") + 1
        problems.append(ConfigError(rel, "not UTF-8 text", line=line))
        return None
    except OSError as exc:
        problems.append(ConfigError(rel, f"cannot read: {exc.strerror}"))
        return None
    return _within_limits(text, rel, problems)


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
    text = _read_text(root, rel, problems)
    if text is None:
        return None
    try:
        doc = load_fast(text)
    except Exception:
        pass
    else:
        found: list[ConfigError] = []
        result = build(doc, found)
        if not found:
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


def _unknown_keys(doc: dict, allowed: set[str], rel: str, prefix: str, problems: list[ConfigError]) -> None:
    for key in doc:
        if key not in allowed:
            problems.append(
                ConfigError(
                    rel,
                    f"unsupported key {key!r} (supported: {', '.join(sorted(allowed))})",
                    line=key_line(doc, key),
                    field=f"{prefix}{key}",
                )
            )


def _string(doc: dict, key: str, rel: str, problems: list[ConfigError], field: str | None = None) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(ConfigError(rel, "must be a non-empty string", line=value_line(doc, key), field=field or key))
        return None
    return value


def _load_datacenter(root: Path, name: str, problems: list[ConfigError]) -> Datacenter:
    dc_path = f"{DATACENTERS}/{name}"
    dc = Datacenter(name=name, path=dc_path)
    rel = f"{dc_path}/{DATACENTER_FILE}"
    if (root / rel).is_file():
        dc.location = Location(rel)

        def build(doc: Any, found: list[ConfigError]) -> None:
            doc = _mapping(doc, rel, found)
            if doc is not None:
                _unknown_keys(doc, DATACENTER_KEYS, rel, "", found)
                dc.description = _string(doc, "description", rel, found) or ""
                dc.consul = _string(doc, "consul", rel, found)
                dc.registry = _string(doc, "registry", rel, found)

        _read_checked(root, rel, problems, build)
    return dc


def _load_node(root: Path, dc: str, name: str, problems: list[ConfigError]) -> Node | None:
    node_path = f"{DATACENTERS}/{dc}/{name}"
    rel = f"{node_path}/{NODE_FILE}"
    if not (root / rel).is_file():
        problems.append(ConfigError(rel, "missing: every node directory needs a node.yml with a 'docker:' URL"))
        return None
    node = _read_checked(root, rel, problems, lambda doc, found: _node_from_yml(root, dc, name, rel, doc, found))
    if node is None:
        return None
    compose = [f for f in COMPOSE_FILES if (root / node.path / f).is_file()]
    if len(compose) > 1:
        problems.append(ConfigError(f"{node.path}/{compose[1]}", f"a node has one compose file; {compose[0]} is here too"))
    if compose:
        _load_compose(root, node, f"{node.path}/{compose[0]}", problems)
    return node


def _node_from_yml(root: Path, dc: str, name: str, rel: str, doc: Any, problems: list[ConfigError]) -> Node | None:
    node_path = f"{DATACENTERS}/{dc}/{name}"
    doc = _mapping(doc, rel, problems)
    if doc is None:
        return None
    _unknown_keys(doc, NODE_KEYS, rel, "", problems)
    docker_url = _string(doc, "docker", rel, problems)
    if docker_url is None:
        if "docker" not in doc:
            problems.append(ConfigError(rel, "required: how to reach the node's Docker engine "
                                             "(unix:///var/run/docker.sock, ssh://user@host, tcp://host:2376)",
                                        line=1, field="docker"))
        return None
    if not DOCKER_URL_RE.match(docker_url):
        problems.append(ConfigError(rel, f"invalid Docker URL {docker_url!r}: use unix://PATH, ssh://[user@]host[:port] "
                                         "or tcp://host:port", line=value_line(doc, "docker"), field="docker"))
        return None
    tls = None
    tls_doc = doc.get("tls")
    if tls_doc is not None:
        if not isinstance(tls_doc, dict):
            problems.append(ConfigError(rel, "must be a mapping with ca, cert, key", line=value_line(doc, "tls"), field="tls"))
        else:
            _unknown_keys(tls_doc, TLS_KEYS, rel, "tls.", problems)
            paths = {}
            for key in ("ca", "cert", "key"):
                value = _string(tls_doc, key, rel, problems, field=f"tls.{key}")
                if value is None:
                    if key not in tls_doc:
                        problems.append(ConfigError(rel, "required", line=value_line(doc, "tls"), field=f"tls.{key}"))
                    continue
                paths[key] = str((root / node_path / Path(value).expanduser()).resolve())
            if len(paths) == 3:
                tls = TLSFiles(**paths)
        if not docker_url.startswith("tcp://"):
            problems.append(ConfigError(rel, "tls applies only to tcp:// Docker URLs", line=key_line(doc, "tls"), field="tls"))
    identity = _string(doc, "identity_file", rel, problems)
    if identity is not None:
        identity = str((root / node_path / Path(identity).expanduser()).resolve())
    known_hosts = f"{node_path}/known_hosts"
    node = Node(
        dc=dc,
        name=name,
        docker=docker_url,
        path=node_path,
        location=Location(rel),
        tls=tls,
        identity_file=identity,
        known_hosts=known_hosts if (root / known_hosts).is_file() else None,
        address=_string(doc, "address", rel, problems),
        description=_string(doc, "description", rel, problems) or "",
    )
    return node


def _load_compose(root: Path, node: Node, rel: str, problems: list[ConfigError], text: str | None = None) -> None:
    node.compose_path = rel
    text = _read_text(root, rel, problems) if text is None else _within_limits(text, rel, problems)
    if text is None:
        return
    plain = True  # data from load_fast is plain dicts and lists already
    try:
        doc = load_fast(text)
        found = validate_compose(doc, rel, root) if isinstance(doc, dict) else [None]
    except Exception:
        found = [None]
    if found:  # read again with line numbers, for the messages
        plain = False
        doc = _parse(text, rel, problems)
        if doc is None:
            return
        if not isinstance(doc, dict):
            problems.append(ConfigError(rel, "the file must hold a mapping with a 'services' key", line=1))
            return
        found = validate_compose(doc, rel, root)
        if found:
            problems.extend(found)
            return
        # Valid for the round-trip loader although the fast one refused it (a
        # construct only ruamel accepts): the round-trip data is the truth.
    plain_data = (lambda data: data) if plain else to_plain
    services = doc.get("services") or {}
    for name, svc_doc in services.items():
        node.services[name] = Service(
            dc=node.dc,
            node=node.name,
            name=str(name),
            image=str(svc_doc["image"]),
            config=plain_data(svc_doc),
            location=Location(rel),
        )
    node.volumes = plain_data(doc.get("volumes") or {})
    node.networks = plain_data(doc.get("networks") or {})
    node.secrets = plain_data(doc.get("secrets") or {})


def with_compose_text(root: str | Path, node: Node, text: str) -> Node:
    """A copy of ``node`` whose services come from ``text`` (an edited compose file), validated."""
    rel = node.compose_path or f"{node.path}/{COMPOSE_FILES[0]}"
    copy = dataclasses.replace(node, services={}, volumes={}, networks={}, secrets={})
    problems: list[ConfigError] = []
    _load_compose(Path(root), copy, rel, problems, text=text)
    if problems:
        raise ValidationFailed(problems)
    return copy


def check(root: str | Path) -> tuple[Infrastructure, list[ConfigError]]:
    """Load everything that can be loaded, and every problem found on the way."""
    root = Path(root).resolve()
    infra = Infrastructure(root=root)
    problems: list[ConfigError] = []
    base = root / DATACENTERS
    if not base.is_dir():
        problems.append(ConfigError(DATACENTERS, f"no '{DATACENTERS}/' directory in {root}; "
                                                 "is this an infrastructure repository? ('deployer init DIR' makes one)"))
        return infra, problems
    for dc_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not NAME_RE.match(dc_dir.name):
            problems.append(ConfigError(f"{DATACENTERS}/{dc_dir.name}", "datacenter names are lowercase letters, digits, '.', '_' or '-'"))
            continue
        dc = _load_datacenter(root, dc_dir.name, problems)
        infra.datacenters[dc.name] = dc
        for node_dir in sorted(p for p in dc_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not NAME_RE.match(node_dir.name):
                problems.append(ConfigError(f"{dc.path}/{node_dir.name}", "node names are lowercase letters, digits, '.', '_' or '-'"))
                continue
            node = _load_node(root, dc.name, node_dir.name, problems)
            if node is not None:
                dc.nodes[node.name] = node
    problems.extend(_check_container_names(root, infra))
    return infra, problems


def _check_container_names(root: Path, infra: Infrastructure) -> list[ConfigError]:
    problems = []
    for node in infra.nodes():
        seen: dict[str, str] = {}
        for svc in node.services.values():
            name = container_name(node, svc)
            if name in seen:
                problems.append(ConfigError(svc.location.path, f"container name {name!r} is also used by service {seen[name]!r}",
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
    node = _load_node(Path(root), dc, name, problems)
    if problems or node is None:
        raise ValidationFailed(problems or [ConfigError(f"{DATACENTERS}/{dc}/{name}/{NODE_FILE}", "could not be read back")])
    return node
