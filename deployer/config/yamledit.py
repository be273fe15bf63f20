"""Surgical edits of docker-compose YAML text.

A deploy changes one ``image:`` value; the commit it makes must show exactly
that change. So these functions never re-serialise a whole file: they find the
characters of one node with the YAML parser (ruamel's events carry the exact
character offsets of every scalar) and splice new characters in, leaving every
other byte (comments, key order, quoting, indentation, blank lines, flow style,
line endings, a missing final newline) untouched.

Every edit is checked afterwards: the result is parsed again and its data must
equal the original data with exactly the intended change. If it does not, the
edit is refused with EditVerificationError and nothing is written. How nodes
are found in the text, how a scalar is written and that check are
``yamltext``'s.

Public functions:

* ``set_service_image(text, service, image, path)`` -> new text
* ``add_service(text, service, image, path)`` -> new text
* ``get_service_image(text, service, path)`` -> the image or None
* ``yaml_diff(old, new, path)`` -> a unified diff for ``--dry-run``
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml.comments import CommentedMap, TaggedScalar
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from deployer.config.interpolate import references
from deployer.config.yamlread import key_line
from deployer.config.yamltext import (
    Node, Tree, check_value, double_quoted, ends_with_break, eol_of, event_tree, key_text, line_end, line_start,
    load, new_yaml, plain_ok, prev_line, scalar_text, single_quoted, untag, verify,
)  # fmt: skip
from deployer.errors import CannotEditInPlace, ConfigError, EditVerificationError, TargetError

__all__ = [
    "add_service",
    "get_service_image",
    "set_service_image",
    "yaml_diff",
]

_SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]*", re.ASCII)


# --------------------------------------------------------------------------
# Reading


def _services_map(data: Any, path: str, field_name: str) -> Any:
    if not isinstance(data, Mapping) or "services" not in data:
        raise ConfigError(path, "the file has no 'services' mapping", field=field_name)
    services = data["services"]
    if not isinstance(services, Mapping):
        raise ConfigError(path, "'services' is not a mapping", line=key_line(data, "services"), field=field_name)
    return services



def get_service_image(text: str, service: str, path: str = "<compose>") -> str | None:
    """The ``image`` of ``services.<service>``, or None when the service or its image is missing.

    Merge keys (``<<``) are followed, as compose does. Raises ConfigError only
    when the text is not valid YAML.
    """
    data = load(text, path)
    if not isinstance(data, Mapping):
        return None
    services = data.get("services")
    if not isinstance(services, Mapping):
        return None
    svc = services.get(service)
    if not isinstance(svc, Mapping):
        return None
    image = svc.get("image")
    if image is None:
        return None
    return str(image.value) if isinstance(image, TaggedScalar) else str(image)


# --------------------------------------------------------------------------
# set_service_image


def set_service_image(text: str, service: str, image: str, path: str = "<compose>") -> str:
    """Return ``text`` with ``services.<service>.image`` set to ``image``; every other byte kept.

    The value keeps its quoting style (plain, 'single' or "double"); a plain
    value that would not read back as the same string is written double-quoted.
    Raises ConfigError (field ``services.<service>.image``) when the service or
    its image is missing, or the image is written in a way that cannot be
    edited in place (block scalar, several lines, anchor, alias, tag, merge
    key, or inside a mapping shared through an anchor). Raises
    ImageReferenceError for an empty, multi-line or non-printable ``image``.
    """
    check_value(image, "image")
    fld = f"services.{service}.image"
    data = load(text, path)
    services = _services_map(data, path, fld)
    if service not in services:
        known = ", ".join(str(k) for k in services) or "none"
        why = (": it comes from a file the node's compose file includes, and a deploy edits only the node's own "
               "file; change the image in the included file (or a variable it uses), commit, and run 'deployer apply'"
               if isinstance(data, Mapping) and "include" in data else "")
        raise ConfigError(
            path, f"no service {service!r} (services: {known}){why}", line=key_line(data, "services"), field=fld
        )
    svc = services[service]
    if not isinstance(svc, Mapping):
        raise ConfigError(path, f"service {service!r} is not a mapping", line=key_line(services, service), field=fld)
    if "image" not in svc:
        if "extends" in svc:
            raise ConfigError(path, "the service takes its image from 'extends': write 'image:' in this service to "
                                    "deploy an image to this node only", line=key_line(services, service), field=fld)
        raise ConfigError(path, "the service has no image", line=key_line(services, service), field=fld)

    tree = event_tree(text, path)
    value = _locate_image(tree, service, path, fld)
    ev = value.start
    if references(ev.value):
        raise ConfigError(path, f"the image is written with a variable ({ev.value}): a deploy would replace the "
                                "variable with a fixed image; change the variable where it is set ('.env' beside the "
                                "compose file, or 'variables:' in node.yml or datacenter.yml), commit, and run "
                                "'deployer apply'", line=value.line, field=fld)
    start, end = ev.start_mark.index, ev.end_mark.index
    raw = text[start:end]
    line = value.line
    if ev.style is None:
        if raw != ev.value:
            raise EditVerificationError(f"{path}:{line}: internal error: could not locate {fld} in the text")
        new_raw = image if plain_ok(image, value.in_flow) else double_quoted(image)
    elif ev.style == "'":
        if len(raw) < 2 or raw[0] != "'" or raw[-1] != "'":
            raise EditVerificationError(f"{path}:{line}: internal error: could not locate {fld} in the text")
        new_raw = single_quoted(image)
    elif ev.style == '"':
        if len(raw) < 2 or raw[0] != '"' or raw[-1] != '"':
            raise EditVerificationError(f"{path}:{line}: internal error: could not locate {fld} in the text")
        new_raw = double_quoted(image)
    else:  # pragma: no cover - block styles are refused in _locate_image
        raise ConfigError(path, f"unsupported scalar style {ev.style!r}", line=line, field=fld)

    new_text = text[:start] + new_raw + text[end:]

    def change(d: Any) -> Any:
        untag(untag(untag(d)["services"])[service])["image"] = image
        return d

    verify(text, new_text, path, change, f"setting {fld}")
    return new_text


@dataclass
class _Located:
    start: Any  # the image's ScalarEvent
    line: int
    in_flow: bool  # the service mapping is a flow mapping


def _locate_image(tree: Tree, service: str, path: str, fld: str) -> "_Located":
    root = tree.root
    if root is None or root.kind != "map":
        raise ConfigError(path, "the file is not a mapping with a 'services' key", field=fld)
    _refuse_shared(root, "the document", tree, path, fld)
    pair = root.get("services")
    if pair is None:
        raise ConfigError(path, "'services' is not written directly in this file (YAML merge key?)", field=fld)
    services = pair[1]
    if services.kind == "alias":
        raise ConfigError(path, f"'services' is a YAML alias (*{services.start.anchor})", line=services.line, field=fld)
    _refuse_shared(services, "'services'", tree, path, fld)
    pair = services.get(service)
    if pair is None:
        raise ConfigError(
            path, f"service {service!r} is not written directly in this file (YAML merge key?)",
            line=services.line, field=fld,
        )
    svc_key, svc = pair
    if svc.kind == "alias":
        raise ConfigError(
            path, f"the service is a YAML alias (*{svc.start.anchor}); edit the anchored mapping instead",
            line=svc_key.line, field=fld,
        )
    _refuse_shared(svc, f"service {service!r}", tree, path, fld)
    pair = svc.get("image")
    if pair is None:
        raise ConfigError(
            path, "the image comes from a YAML merge key ('<<'); set image in the service itself",
            line=svc_key.line, field=fld,
        )
    value = pair[1]
    line = value.line
    if value.kind == "alias":
        raise ConfigError(
            path, f"the image is a YAML alias (*{value.start.anchor}); write it out", line=line, field=fld
        )
    if value.kind != "scalar":
        raise ConfigError(path, "the image is not a string", line=line, field=fld)
    ev = value.start
    if ev.anchor is not None:
        raise ConfigError(
            path, f"the image carries a YAML anchor (&{ev.anchor}); remove it to edit", line=line, field=fld
        )
    if ev.tag is not None:
        raise ConfigError(path, f"the image carries a YAML tag ({ev.tag}); remove it to edit", line=line, field=fld)
    if ev.style in ("|", ">"):
        raise ConfigError(path, "the image is a block scalar ('|' or '>'); write it on one line", line=line, field=fld)
    if ev.start_mark.line != ev.end_mark.line:
        raise ConfigError(path, "the image spans several lines; write it on one line", line=line, field=fld)
    if ev.style is None and ev.value == "":
        raise ConfigError(path, "the image is empty", line=pair[0].line, field=fld)
    return _Located(start=ev, line=line, in_flow=svc.flow)


def _refuse_shared(
    node: Node, what: str, tree: Tree, path: str, fld: str,
    consequence: str = "changing the image here would change every copy",
) -> None:
    anchor = node.anchor
    if anchor is not None and anchor in tree.aliases:
        raise ConfigError(
            path,
            f"{what} carries the YAML anchor &{anchor}, which is used elsewhere; {consequence}",
            line=node.line,
            field=fld,
        )


# --------------------------------------------------------------------------
# add_service


def add_service(text: str, service: str, image: str, path: str = "<compose>") -> str:
    """Return ``text`` with a new service ``<service>: {image: <image>}`` at the end of ``services``.

    In a block-style file the two lines are inserted after the last line of the
    services block (before the next top-level key), indented like the existing
    services; every other byte is kept. ``services: {}``, an empty
    ``services:`` and a missing ``services`` key are handled in place too. Flow
    style services get ``, <service>: {image: ...}`` after the last entry. Only
    when that is impossible is the file re-serialised with ruamel (comments
    kept, formatting may change). The result is always verified.

    Raises ConfigError when the service exists or ``services`` is not a mapping,
    TargetError for an invalid service name, ImageReferenceError for an empty,
    multi-line or non-printable image.
    """
    if not isinstance(service, str) or not _SERVICE_NAME.fullmatch(service):
        raise TargetError(
            f"invalid service name {service!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    check_value(image, "image")
    fld = f"services.{service}"
    data = load(text, path)
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(path, "the file is not a mapping with a 'services' key", line=1, field=fld)
    services = data.get("services") if data is not None else None
    has_key = data is not None and "services" in data
    if has_key and services is not None and not isinstance(services, Mapping):
        raise ConfigError(path, "'services' is not a mapping", line=key_line(data, "services"), field=fld)
    if isinstance(services, Mapping) and service in services:
        raise ConfigError(path, f"service {service!r} already exists", line=key_line(services, service), field=fld)

    def change(d: Any) -> Any:
        if d is None:
            d = {}
        if untag(d).get("services") is None:
            untag(d)["services"] = {}
        untag(untag(d)["services"])[service] = {"image": image}
        return d

    what = f"adding {fld}"
    try:
        new_text = _add_in_place(text, service, image, path, has_key)
    except CannotEditInPlace:
        new_text = None
    if new_text is not None:
        try:
            verify(text, new_text, path, change, what)
            return new_text
        except EditVerificationError:
            pass  # fall back to a full round trip below
    new_text = _add_round_trip(text, service, image, path)
    verify(text, new_text, path, change, what)
    return new_text


def _add_in_place(text: str, service: str, image: str, path: str, has_key: bool) -> str:
    tree = event_tree(text, path)
    root = tree.root
    eol = eol_of(text)
    if root is None or (root.kind == "map" and not root.flow and not has_key):
        # No services key at all: append a services block at the end.
        col = root.items[0][0].start.start_mark.column if root is not None and root.items else 0
        step = _guess_step(root) if root is not None else 2
        lines = [
            " " * col + "services:",
            " " * (col + step) + key_text(service, False) + ":",
            " " * (col + 2 * step) + "image: " + scalar_text(image, False),
        ]
        return _insert_lines(text, len(text), lines, eol, blank_before=False)
    if root.kind != "map":
        raise CannotEditInPlace
    pair = root.get("services")
    if pair is None:
        raise CannotEditInPlace
    key, services = pair
    fld = f"services.{service}"
    if services.kind == "alias":
        raise ConfigError(
            path, f"'services' is a YAML alias (*{services.start.anchor}); add the service where it is anchored",
            line=services.line, field=fld,
        )
    _refuse_shared(services, "'services'", tree, path, fld, "adding a service here would add it to every copy")
    if services.start.tag is not None:
        raise CannotEditInPlace
    key_col = key.start.start_mark.column
    step = _guess_step(root)

    if root.flow and (services.kind == "scalar" or not services.items):
        raise CannotEditInPlace
    if services.kind == "scalar":
        ev = services.start
        if ev.style is not None or ev.value not in ("", "~", "null", "Null", "NULL"):
            raise CannotEditInPlace
        lines = _new_service_lines(service, image, key_col + step, step)
        if ev.value == "":
            # "services:" with nothing after it.
            return _insert_lines(text, line_end(text, key.start.end_mark.index), lines, eol, blank_before=False)
        # "services: ~" / "services: null"
        return _replace_empty_value(text, ev.start_mark.index, ev.end_mark.index, lines, eol)

    if services.kind != "map":
        raise CannotEditInPlace

    if services.flow:
        if not services.items:
            # services: {}  ->  services:\n  <service>:\n    image: ...
            lines = _new_service_lines(service, image, key_col + step, step)
            return _replace_empty_value(text, services.start.start_mark.index, services.end.end_mark.index, lines, eol)
        at = _last_content_end(text, services.items[-1][1])
        entry = f", {key_text(service, True)}: {{image: {scalar_text(image, True)}}}"
        return text[:at] + entry + text[at:]

    # Block-style services mapping.
    if not services.items:
        raise CannotEditInPlace
    svc_col = services.items[0][0].start.start_mark.column
    child = None
    for _, v in services.items:
        if v.kind == "map" and not v.flow and v.items:
            child = v.items[0][0].start.start_mark.column - svc_col
            break
    if not child or child <= 0:
        child = svc_col - key_col if svc_col > key_col else 2
    last_end = _last_content_end(text, services)
    if last_end > 0 and text[last_end - 1] in "\r\n":
        pos = last_end
    else:
        pos = line_end(text, last_end)
    # Comment lines indented under 'services' (e.g. a commented-out service)
    # still belong to the block; insert after them.
    scan = pos
    while scan < len(text):
        le = line_end(text, scan)
        line = text[scan:le].rstrip("\r\n")
        stripped = line.lstrip(" ")
        if stripped == "":
            scan = le
            continue
        if stripped.startswith("#") and len(line) - len(stripped) > key_col:
            scan = pos = le
            continue
        break
    # Services separated by blank lines get a blank line before the new one.
    blank_before = False
    if len(services.items) >= 2:
        ls = line_start(text, services.items[-1][0].start.start_mark.index)
        prev = prev_line(text, ls)
        while prev is not None and prev[1].strip().startswith("#"):
            ls = prev[0]
            prev = prev_line(text, ls)
        blank_before = prev is not None and prev[1].strip() == ""
    lines = _new_service_lines(service, image, svc_col, child)
    return _insert_lines(text, pos, lines, eol, blank_before=blank_before)


def _replace_empty_value(text: str, start: int, end: int, lines: list[str], eol: str) -> str:
    """Drop the value text[start:end] (``{}``, ``~``, ``null``) from its line and put ``lines`` after that line.

    A comment after the value stays on the key's line.
    """
    ls = line_start(text, start)
    le = line_end(text, end)
    rest = text[end:le]
    rest_body = rest.rstrip("\r\n")
    line_break = rest[len(rest_body) :]
    if rest_body.strip() and not rest_body.strip().startswith("#"):
        raise CannotEditInPlace
    head = text[ls:start].rstrip(" ")
    new_line = head + rest_body if rest_body.strip() else head
    body = eol.join(([new_line] if new_line.strip() else []) + lines)
    if line_break:
        return text[:ls] + body + line_break + text[le:]
    return text[:ls] + body  # the file had no final line break


def _last_content_end(text: str, node: Node) -> int:
    """Index just after the last character that belongs to ``node``'s content.

    A block scalar's events end after its trailing blank lines; unless it keeps
    them (``|+``) those lines are not counted, so an insertion goes right after
    the scalar's last line of text.
    """
    best = node.start.end_mark.index

    def walk(n: Node) -> None:
        nonlocal best
        end = n.start.end_mark.index
        if n.kind == "scalar" and n.start.style in ("|", ">"):
            start = n.start.start_mark.index
            header = text[start:line_end(text, start)].split(" #", 1)[0]
            if "+" not in header:
                end = start + len(text[start:end].rstrip())
        best = max(best, end)
        if n.kind in ("map", "seq"):
            if n.flow:
                best = max(best, n.end.end_mark.index)
                return
            children = [x for kv in n.items for x in kv] if n.kind == "map" else n.items
            for c in children:
                walk(c)

    walk(node)
    return best


def _guess_step(root: Node | None) -> int:
    """The indentation step of the file: the first nested block mapping's offset from its parent key."""
    if root is None or root.kind != "map":
        return 2

    for k, v in root.items:
        if v.kind == "map" and not v.flow and v.items:
            step = v.items[0][0].start.start_mark.column - k.start.start_mark.column
            if step > 0:
                return step
    return 2


def _new_service_lines(service: str, image: str, col: int, child: int) -> list[str]:
    return [
        " " * col + key_text(service, False) + ":",
        " " * (col + child) + "image: " + scalar_text(image, False),
    ]


def _insert_lines(text: str, pos: int, lines: list[str], eol: str, blank_before: bool) -> str:
    body = eol.join(lines)
    if blank_before:
        body = eol + body
    if pos >= len(text):
        if text == "":
            return body + eol
        if ends_with_break(text):
            return text + body + eol
        return text + eol + body  # keep the missing final line break missing
    return text[:pos] + body + eol + text[pos:]


def _guess_seq_offset(node: Node | None) -> int:
    """How far block sequence dashes are indented from their parent key (0 or more)."""
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop(0)
        if n.kind == "map":
            for k, v in n.items:
                if v.kind == "seq" and not v.flow and v.items:
                    return max(0, v.start.start_mark.column - k.start.start_mark.column)
                stack.append(v)
        elif n.kind == "seq":
            stack.extend(n.items)
    return 0


def _add_round_trip(text: str, service: str, image: str, path: str) -> str:
    tree = event_tree(text, path)
    step = _guess_step(tree.root)
    offset = _guess_seq_offset(tree.root)
    y = new_yaml()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=step, sequence=offset + 2, offset=offset)
    data = y.load(text)
    if data is None:
        data = CommentedMap()
    if data.get("services") is None:
        data["services"] = CommentedMap()
    value = image if plain_ok(image, False) else DoubleQuotedScalarString(image)
    data["services"][service] = CommentedMap([("image", value)])
    out = io.StringIO()
    y.dump(data, out)
    result = out.getvalue()
    eol = eol_of(text)
    if eol != "\n":
        result = result.replace("\n", eol)
    if text and not ends_with_break(text) and result.endswith(eol):
        result = result[: -len(eol)]
    if text.startswith("\ufeff") and not result.startswith("\ufeff"):
        result = "\ufeff" + result
    return result


# --------------------------------------------------------------------------
# Diff


def _diff_lines(text: str) -> list[str]:
    lines = re.findall(r"[^\n]*\n|[^\n]+\Z", text)
    return [line[:-2] + "\n" if line.endswith("\r\n") else line for line in lines]


def yaml_diff(old: str, new: str, path: str) -> str:
    """A unified diff of ``old`` -> ``new`` labelled ``a/<path>`` / ``b/<path>``; "" when equal.

    CRLF line ends are shown as plain line ends; a last line without a line
    break is marked ``\\ No newline at end of file`` like diff(1) does.
    """
    if old == new:
        return ""
    out = []
    for line in difflib.unified_diff(_diff_lines(old), _diff_lines(new), fromfile=f"a/{path}", tofile=f"b/{path}"):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)
