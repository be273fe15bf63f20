"""Compose's merge rules, for ``extends`` and ``include`` (pure).

``merge_service(base, over)`` is the service ``over`` extending ``base``, as the
Compose specification's merge section defines it:

- mappings merge key by key, the overriding value winning on a conflict;
- ``command``, ``entrypoint`` and ``healthcheck.test`` are replaced, not appended;
- ``environment``, ``labels``, ``sysctls``, ``build.args``, ``extra_hosts``
  (``host:ip`` / ``host=ip`` / mapping forms) merge by name, in either form;
- ``volumes``, ``secrets`` and ``configs`` are unique by their target,
  ``ports`` by host IP, target, published port and protocol: an entry with the
  same key replaces the earlier one in place, others are appended;
- ``networks`` and ``depends_on`` merge by name (a list and a mapping merge into
  a mapping);
- ``logging`` merges its options when the driver is the same (or one is
  unset), else the overriding one replaces it;
- any other sequence appends the entries not already present (``dns``,
  ``cap_add``, ``tmpfs``, ``expose``, ...); any other scalar is replaced;
- a value tagged ``!reset`` removes the attribute, one tagged ``!override``
  replaces it whole, bypassing the rules above (``merge_tags`` applies them
  where nothing is extended: ``!reset`` removes, ``!override`` is the value).

The data is plain (``to_plain``) on the ``base`` side; ``over`` may be ruamel
round-trip data, and the keys written in it keep their lines in the result
(``with_lines``), so the compose check still points at the extending file.
"""

from __future__ import annotations

from typing import Any, Callable

from ruamel.yaml.comments import CommentedMap
REPLACED = {"command", "entrypoint"}
BY_NAME = {"environment", "labels", "sysctls", "annotations"}
UNIQUE_PORT_DEFAULT_PROTOCOL = "tcp"


def _pairs(value: Any, seps: str = "=") -> dict[str, Any]:
    """A list (``k=v`` / ``k``) or mapping form -> mapping (``k`` alone -> None)."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value or []:
        text = str(item)
        cut = min((i for i in (text.find(s) for s in seps) if i >= 0), default=-1)
        if cut < 0:
            out[text] = None
        else:
            out[text[:cut]] = text[cut + 1:]
    return out


def _by_name(base: Any, over: Any, seps: str = "=") -> dict[str, Any]:
    return {**_pairs(base, seps), **_pairs(over, seps)}


def _names(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    return {str(v): None for v in value or []}


def _by_name_or_list(base: Any, over: Any) -> Any:
    if isinstance(base, list) and isinstance(over, list):
        return _append_unique(base, over)
    merged = _names(base)
    for name, value in _names(over).items():
        if isinstance(merged.get(name), dict) and isinstance(value, dict):
            merged[name] = merge_mapping(merged[name], value, ())
        else:
            merged[name] = value if value is not None or name not in merged else merged[name]
    return merged


def _append_unique(base: list, over: list) -> list:
    out = list(base)
    for item in over:
        if item not in out:
            out.append(item)
    return out


def _unique_by(base: list, over: list, key: Callable[[Any], Any]) -> list:
    out = list(base)
    index = {key(item): i for i, item in enumerate(out)}
    for item in over:
        k = key(item)
        if k in index:
            out[index[k]] = item
        else:
            index[k] = len(out)
            out.append(item)
    return out


def volume_target(item: Any) -> Any:
    if isinstance(item, dict):
        return item.get("target")
    parts = str(item).split(":")
    if len(parts) == 1:
        return parts[0]
    if len(parts) >= 3 and len(parts[0]) == 1 and parts[0].isalpha():  # C:\\path:/target
        parts = [parts[0] + ":" + parts[1], *parts[2:]]
    return parts[1]


def _mount_target(default_dir: str) -> Callable[[Any], Any]:
    def key(item: Any) -> Any:
        if isinstance(item, dict):
            target = item.get("target")
            name = item.get("source")
        else:
            target, name = None, str(item)
        if target and str(target).startswith("/"):
            return str(target)
        return f"{default_dir}/{target or name}"
    return key


def port_key(item: Any) -> Any:
    if isinstance(item, dict):
        return (str(item.get("host_ip") or ""), str(item.get("target")), str(item.get("published") or ""),
                str(item.get("protocol") or UNIQUE_PORT_DEFAULT_PROTOCOL))
    text = str(item)
    text, _, protocol = text.partition("/")
    if text.startswith("["):  # [v6]:host:container
        close = text.find("]")
        host_ip, rest = text[1:close], text[close + 2:]
        parts = rest.split(":")
    else:
        parts = text.split(":")
        host_ip = parts.pop(0) if len(parts) == 3 else ""
    published, target = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
    return (host_ip, target, published, protocol or UNIQUE_PORT_DEFAULT_PROTOCOL)


SEQUENCE_KEYS: dict[str, Callable[[Any], Any]] = {
    "volumes": volume_target,
    "secrets": _mount_target("/run/secrets"),
    "configs": _mount_target(""),
    "ports": port_key,
}


def _logging(base: Any, over: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    if base.get("driver") and over.get("driver") and base["driver"] != over["driver"]:
        return over
    return merge_mapping(base, over, ("logging",))


RESET, OVERRIDE = "!reset", "!override"


def merge_tag(value: Any) -> str | None:
    """``!reset`` / ``!override`` when the value is tagged so (round-trip data), else None."""
    tag = getattr(value, "tag", None)
    name = getattr(tag, "value", None) if tag is not None else None
    return name if name in (RESET, OVERRIDE) else None


def _untagged(value: Any) -> Any:
    if hasattr(value, "value") and hasattr(value, "tag") and not isinstance(value, (dict, list)):
        return value.value  # a TaggedScalar
    return value


def merge_tags(node: Any) -> None:
    """Apply ``!reset`` (remove) and ``!override`` (the value, untagged) left in a document, in place."""
    if isinstance(node, dict):
        for key in list(node):
            tag = merge_tag(node[key])
            if tag == RESET:
                del node[key]
                continue
            if tag == OVERRIDE:
                node[key] = _untagged(node[key])
            merge_tags(node[key])
    elif isinstance(node, list):
        for item in node:
            merge_tags(item)


def merge_mapping(base: dict, over: dict, path: tuple[str, ...]) -> dict:
    """``over`` merged onto ``base`` (both mappings), at ``path`` inside a service."""
    out = dict(base)
    for key, value in over.items():
        tag = merge_tag(value)
        if tag == RESET:
            out.pop(key, None)
            continue
        if tag == OVERRIDE:
            out[key] = _untagged(value)
            continue
        if key not in out or out[key] is None or value is None:
            out[key] = value
            continue
        old = out[key]
        where = (*path, str(key))
        if len(where) == 1 and key in REPLACED or where == ("healthcheck", "test"):
            out[key] = value
        elif len(where) == 1 and key in BY_NAME or where == ("build", "args"):
            out[key] = _by_name(old, value)
        elif len(where) == 1 and key == "extra_hosts":
            out[key] = _by_name(old, value, "=:")
        elif len(where) == 1 and key in ("networks", "depends_on"):
            out[key] = _by_name_or_list(old, value)
        elif len(where) == 1 and key == "logging":
            out[key] = _logging(old, value)
        elif len(where) == 1 and key in SEQUENCE_KEYS and isinstance(old, list) and isinstance(value, list):
            out[key] = _unique_by(old, value, SEQUENCE_KEYS[key])
        elif isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge_mapping(old, value, where)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = _append_unique(old, value)
        else:
            out[key] = value
    return out


def with_lines(merged: dict, over: Any) -> Any:
    """``merged`` as round-trip data carrying ``over``'s lines for the keys written in ``over`` (plain data stays)."""
    lc = getattr(over, "lc", None)
    if lc is None:
        return merged
    out = CommentedMap()
    for key, value in merged.items():
        out[key] = value
        if key in (lc.data or {}):
            out.lc.add_kv_line_col(key, lc.data[key])
    out.lc.line, out.lc.col = lc.line, lc.col
    return out


def merge_service(base: dict, over: Any) -> Any:
    """Service ``over`` extending ``base`` (plain data, a copy: ``to_plain``; ``extends`` taken out of both)."""
    return with_lines(merge_mapping(base, over, ()), over)
