"""The variables a node's compose file is interpolated with: from the repository only.

Three sources, the most specific first (``node_variables``):

1. ``variables:`` in the node's ``node.yml`` (facts of the machine, such as the
   address other hosts reach it at: nothing else may override them);
2. the ``.env`` file beside the compose file (committed: the settings of what
   the node runs);
3. ``variables:`` in the datacenter's ``datacenter.yml`` (what every node of the
   datacenter shares).

The operator's shell is never read: two operators, or CI, compute the same
containers from the same commit. ``.env`` is read in Compose's dotenv format
(``parse_dotenv``): ``NAME=value`` lines, ``#`` comments, an optional ``export``,
unquoted values (an inline `` #`` starts a comment), single-quoted values taken
literally, double-quoted ones with ``\\n``, ``\\t``, ``\\"`` and ``\\\\`` escapes;
unquoted and double-quoted values are interpolated from the lines above them and
from the datacenter's variables. A value spanning several lines is refused (with
its line) rather than read differently from Compose, and so is a ``COMPOSE_*``
variable (Compose would read it as its own setting: project name, files, profiles).

``variables_mapping`` checks a ``variables:`` mapping of node.yml or datacenter.yml.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from deployer.config.interpolate import NAME_RE, substitute
from deployer.config.yamlread import item_line, key_line, value_line
from deployer.errors import BadTemplate, ConfigError

ENV_FILE = ".env"
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "\\$"}



def variables_mapping(doc: dict, rel: str, problems: list[ConfigError]) -> dict[str, str]:
    """``variables:`` of node.yml / datacenter.yml: NAME -> string (numbers and booleans as written in YAML 1.2)."""
    value = doc.get("variables")
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(ConfigError(rel, "must be a mapping of NAME: value", line=value_line(doc, "variables"),
                                    field="variables"))
        return {}
    out = {}
    for name, item in value.items():
        line = value_line(value, name)
        field = f"variables.{name}"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            problems.append(ConfigError(rel, f"invalid variable name {name!r}: letters, digits and '_', "
                                             "not starting with a digit", line=line, field="variables"))
        elif isinstance(item, bool):
            out[name] = "true" if item else "false"
        elif isinstance(item, (str, int, float)):
            out[name] = str(item)
        else:
            what = "null" if item is None else type(item).__name__
            problems.append(ConfigError(rel, f"must be a string or a number, not {what}", line=line, field=field))
    return out


def _unquote_double(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] in _ESCAPES:
            out.append(_ESCAPES[body[i + 1]] if body[i + 1] != "$" else "$$")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_dotenv(text: str, rel: str, outer: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[ConfigError]]:
    """A ``.env`` file -> (NAME -> value, problems with their lines)."""
    values: dict[str, str] = {}
    problems: list[ConfigError] = []
    outer = outer or {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export"):].lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep:
            problems.append(ConfigError(rel, f"line {raw.strip()[:40]!r} is not NAME=value", line=number))
            continue
        if not NAME_RE.fullmatch(name):
            problems.append(ConfigError(rel, f"invalid variable name {name!r}: letters, digits and '_', "
                                             "not starting with a digit", line=number))
            continue
        if name.startswith("COMPOSE_"):
            problems.append(ConfigError(rel, "COMPOSE_* variables configure the docker compose program "
                                             "(project name, files, profiles), which the deployer is not; write "
                                             "what it means in the compose file or node.yml (e.g. 'name:')",
                                        line=number, field=name))
            continue
        rest = rest.strip()
        interpolate = True
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            end = rest.find(quote, 1)
            while quote == '"' and end > 0 and rest[end - 1] == "\\" and not rest[:end].endswith("\\\\"):
                end = rest.find(quote, end + 1)
            if end < 0:
                problems.append(ConfigError(rel, f"the quoted value of {name} does not end on its line "
                                                 "(values over several lines are not supported)",
                                            line=number, field=name))
                continue
            tail = rest[end + 1:].strip()
            if tail and not tail.startswith("#"):
                problems.append(ConfigError(rel, f"text after the quoted value of {name}: {tail[:30]!r}",
                                            line=number, field=name))
                continue
            body = rest[1:end]
            if quote == "'":
                value, interpolate = body, False
            else:
                value = _unquote_double(body)
        else:
            value = re.split(r"\s#", rest, maxsplit=1)[0].rstrip()
        if interpolate:
            try:
                value = substitute(value, {**outer, **values})
            except BadTemplate as exc:
                problems.append(ConfigError(rel, str(exc), line=number, field=name))
                continue
        values[name] = value
    return values, problems


def node_variables(node_vars: Mapping[str, str], dotenv: Mapping[str, str],
                   dc_vars: Mapping[str, str]) -> dict[str, str]:
    """The precedence: node.yml over .env over datacenter.yml."""
    return {**dc_vars, **dotenv, **node_vars}




def fill_environment(doc: Any, variables: Mapping[str, str], rel: str) -> list[ConfigError]:
    """Environment entries written without a value (``- FOO``, ``FOO:``) take the repository's variable, in place.

    Compose takes them from the shell that runs it; the deployer never reads the
    operator's shell, so the value comes from the repository's variables or the
    entry is an error.
    """
    problems: list[ConfigError] = []
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict):
        return problems

    def unset(name: str, line: int | None, field: str) -> None:
        problems.append(ConfigError(
            rel, f"{name} is written without a value and the repository sets no variable {name}: write "
                 f"{name}=value, or define {name} in '.env' beside the compose file or in 'variables:' of node.yml "
                 "or datacenter.yml (the operator's shell is never read)", line=line, field=field))

    for sname, svc in services.items():
        env = svc.get("environment") if isinstance(svc, dict) else None
        field = f"services.{sname}.environment"
        # merged by extends, the entries have no lines of their own: the environment's, else the service's
        fallback = key_line(svc, "environment") or key_line(services, sname)
        if isinstance(env, list):
            for i, item in enumerate(env):
                if isinstance(item, str) and "=" not in item and item.strip():
                    name = item.strip()
                    if name in variables:
                        env[i] = f"{name}={variables[name]}"
                    else:
                        unset(name, item_line(env, i) or fallback, f"{field}[{i}]")
        elif isinstance(env, dict):
            for name in list(env):
                if env[name] is None:
                    if str(name) in variables:
                        env[name] = variables[str(name)]
                    else:
                        unset(str(name), key_line(env, name) or fallback, f"{field}.{name}")
    return problems
