"""Compose variable interpolation, as the Compose specification defines it.

``substitute(text, variables)`` resolves one string: ``$NAME`` and ``${NAME}``,
``${NAME:-default}`` (unset or empty), ``${NAME-default}`` (unset),
``${NAME:?message}`` / ``${NAME?message}`` (required), ``${NAME:+alt}`` /
``${NAME+alt}`` (alternative), defaults, messages and alternatives that hold
interpolations themselves (``${A:-${B:-x}}``, evaluated only when used), and
``$$`` as a literal ``$``. A ``$`` followed by anything else (``$5``, a ``$`` at
the end) stays as written, as Compose leaves it. A name is
``[_a-zA-Z][_a-zA-Z0-9]*``.

Where Compose warns and substitutes an empty string for an unset variable
written without a default, this raises ``BadTemplate``: every operator and CI
must compute the same file from the repository alone, and an empty image tag or
address is never what was meant. A ``${`` that is not a valid expression (no
closing brace, no name, an unknown operator) is ``BadTemplate`` too.

``interpolate_document(doc, variables, path)`` resolves every string value of a
parsed YAML document in place (keys are never interpolated, as the spec says),
keeping ruamel's line information (it lives on the containers, which stay), and
returns the problems as ConfigErrors with file:line and field. A value that was
a string and resolves to a boolean or a number where the compose check expects
one is cast (``read_only: ${RO}``), as Compose casts it.

Pure: no files, no environment.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from deployer.errors import BadTemplate, ConfigError

NAME_RE = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_BRACED_RE = re.compile(r"([_a-zA-Z][_a-zA-Z0-9]*)(?:(:?[-?+])(.*))?", re.S)

#: Service keys whose value Compose casts from an interpolated string (the ones the compose check reads as bool/int).
BOOL_KEYS = {"init", "privileged", "read_only", "disable", "external", "internal", "tty", "stdin_open", "required"}
# (not ``mode``: a file mode is written in octal, "0440", and read by the check as written)
INT_KEYS = {"retries", "published", "target", "uid", "gid", "replicas", "scale", "pids_limit", "parallelism"}


def _closing_brace(text: str, start: int) -> int:
    """The index of the ``}`` closing the ``${`` whose content starts at ``start``, or -1."""
    depth = 1
    i = start
    n = len(text)
    while i < n:
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _unset(name: str) -> BadTemplate:
    return BadTemplate(
        f"variable {name} is not set: define it in the repository ('.env' beside the compose file, "
        f"'variables:' in node.yml or datacenter.yml) or write a default (${{{name}:-value}}); "
        "Compose would substitute an empty string, the deployer refuses"
    )


def _braced(expr: str, variables: Mapping[str, str]) -> str:
    match = _BRACED_RE.fullmatch(expr)
    if match is None:
        raise BadTemplate(f"invalid interpolation '${{{expr}}}': write ${{NAME}}, ${{NAME:-default}}, ${{NAME-default}}, "
                          "${NAME:?error}, ${NAME?error}, ${NAME:+alt} or ${NAME+alt} (a literal '$' is '$$')")
    name, op, rest = match.group(1), match.group(2), match.group(3)
    value = variables.get(name)
    if op is None:
        if value is None:
            raise _unset(name)
        return value
    missing = value is None or (op.startswith(":") and value == "")
    kind = op[-1]
    if kind == "-":
        return substitute(rest, variables) if missing else value  # type: ignore[return-value]
    if kind == "+":
        return "" if missing else substitute(rest, variables)
    # '?': required
    if missing:
        message = substitute(rest, variables) if rest else ""
        how = "is not set" if value is None else "is empty"
        raise BadTemplate(f"required variable {name} {how}" + (f": {message}" if message else ""))
    return value  # type: ignore[return-value]


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with every interpolation resolved from ``variables``; raises BadTemplate."""
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1: j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing_brace(text, j + 2)
            if end < 0:
                raise BadTemplate(f"malformed interpolation {text[j:j + 40]!r}: '${{' without its closing '}}' "
                                  "(a literal '$' is '$$')")
            out.append(_braced(text[j + 2: end], variables))
            i = end + 1
        else:
            match = NAME_RE.match(text, j + 1)
            if match is None:  # not a variable: Compose keeps the '$'
                out.append("$")
                i = j + 1
                continue
            name = match.group(0)
            if name not in variables:
                raise _unset(name)
            out.append(variables[name])
            i = match.end()
    return "".join(out)


def references(text: str) -> bool:
    """Whether ``text`` holds an interpolation (anything ``substitute`` would change)."""
    return "$" in text and any(text[i + 1: i + 2] in ("$", "{") or NAME_RE.match(text, i + 1)
                               for i in range(len(text)) if text[i] == "$")


def _cast(key: Any, value: str) -> Any:
    if key in BOOL_KEYS:
        lowered = value.lower()
        if lowered in ("true", "yes", "on"):
            return True
        if lowered in ("false", "no", "off"):
            return False
    elif key in INT_KEYS and re.fullmatch(r"[+-]?[0-9]+", value):
        return int(value)
    return value


def _line(container: Any, key: Any, is_list: bool) -> int | None:
    lc = getattr(container, "lc", None)
    if lc is None:
        return None
    try:
        return (lc.item(key) if is_list else lc.value(key))[0] + 1
    except Exception:
        return None


def interpolate_document(doc: Any, variables: Mapping[str, str], path: str,
                         skip: Callable[[str], bool] | None = None) -> list[ConfigError]:
    """Resolve every string value of ``doc`` in place; the problems, with file:line and field.

    ``skip(field)`` may name subtrees to leave alone (none by default).
    """
    problems: list[ConfigError] = []
    seen: set[int] = set()  # a collection an alias shares is resolved once (resolving "$$X" twice would read $X)

    def walk(node: Any, field: str | None, line: int | None) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, dict):
            entries = [(k, v, False) for k, v in node.items()]
        elif isinstance(node, list):
            entries = [(i, v, True) for i, v in enumerate(node)]
        else:
            return
        for key, value, is_list in entries:
            child = f"{field}[{key}]" if is_list else (f"{field}.{key}" if field else str(key))
            if skip is not None and skip(child):
                continue
            at = _line(node, key, is_list) or line
            if isinstance(value, str):
                if "$" not in value:
                    continue
                try:
                    resolved = substitute(str(value), variables)
                except BadTemplate as exc:
                    problems.append(ConfigError(path, str(exc), line=at, field=child))
                    continue
                parent_key = None if is_list else key
                node[key] = _cast(parent_key, resolved) if resolved != value else value
            else:
                walk(value, child, at)

    walk(doc, None, 1)
    return problems
