"""Surgical edit of a service's replica count: ``deploy.replicas`` (or ``scale``) in compose YAML text.

``set_service_replicas(text, service, count, path)`` -> new text, every other byte kept, as ``yamledit``
does for images: the number written where the count is (``deploy.replicas``, and ``scale`` when the
service writes that), or a ``replicas:`` line added to its ``deploy:`` mapping, or a ``deploy:`` mapping
added after its ``image:`` line. The result is parsed again and must equal the original data with
exactly that change (``yamltext.verify``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deployer.config.yamltext import Node, eol_of, event_tree, line_end, line_start, load, new_yaml, plain, same, untag
from deployer.errors import ConfigError, EditVerificationError


def _plain_int(node: Node, what: str, path: str, fld: str) -> tuple[int, int]:
    """The character span of an integer scalar we may overwrite."""
    if node.kind != "scalar" or node.start.anchor is not None or node.start.tag is not None:
        raise ConfigError(path, f"{what} is not a plain number (alias, anchor or tag?); write it out to scale",
                          line=node.line, field=fld)
    return node.start.start_mark.index, node.start.end_mark.index


def set_service_replicas(text: str, service: str, count: int, path: str = "<compose>") -> str:
    """``text`` with ``services.<service>`` running ``count`` replicas; ConfigError when it cannot be edited."""
    fld = f"services.{service}.deploy.replicas"
    data = load(text, path)
    services = untag(data).get("services") if isinstance(untag(data), Mapping) else None
    if not isinstance(services, Mapping) or service not in services:
        raise ConfigError(path, f"no service {service!r}", field=fld)
    tree = event_tree(text, path)
    root = tree.root
    pair = root.get("services") if root is not None else None
    svc_pair = pair[1].get(service) if pair is not None and pair[1].kind == "map" else None
    if svc_pair is None or svc_pair[1].kind != "map":
        raise ConfigError(path, "the service is not a mapping written in this file (YAML alias or merge key?)",
                          field=fld)
    svc_key, svc = svc_pair
    if svc.anchor is not None and svc.anchor in tree.aliases:
        raise ConfigError(path, f"service {service!r} carries the YAML anchor &{svc.anchor}, which is used "
                                "elsewhere; scaling it here would scale every copy", line=svc.line, field=fld)
    edits: list[tuple[int, int, str]] = []  # (start, end, new characters)
    scale = svc.get("scale")
    if scale is not None:
        edits.append((*_plain_int(scale[1], "scale", path, f"services.{service}.scale"), str(count)))
    deploy = svc.get("deploy")
    replicas = deploy[1].get("replicas") if deploy is not None and deploy[1].kind == "map" else None
    if replicas is not None:
        edits.append((*_plain_int(replicas[1], "deploy.replicas", path, fld), str(count)))
    elif scale is None:
        edits.append(_insertion(text, svc_key, svc, deploy, count, path, fld))
    new_text = text
    for start, end, chars in sorted(edits, reverse=True):
        new_text = new_text[:start] + chars + new_text[end:]

    _verify(text, new_text, service, count, path, fld)
    return new_text


def _insertion(text: str, svc_key: Node, svc: Node, deploy: tuple[Node, Node] | None, count: int, path: str,
               fld: str) -> tuple[int, int, str]:
    eol = eol_of(text)
    if svc.flow:
        raise ConfigError(path, "the service is a flow mapping ({...}); write it as a block to scale it",
                          line=svc.line, field=fld)
    first_key = svc.items[0][0]
    col = first_key.start.start_mark.column
    step = max(col - svc_key.start.start_mark.column, 2)
    if deploy is not None:
        key, value = deploy
        if value.kind == "map" and value.flow:
            at = value.start.start_mark.index + 1  # just after "{"
            return at, at, f"replicas: {count}" + (", " if value.items else "")
        if value.kind == "map" and value.items:
            child = value.items[0][0].start
            at = line_start(text, child.start_mark.index)
            return at, at, " " * child.start_mark.column + f"replicas: {count}" + eol
        if value.kind == "scalar" and value.start.value == "" and value.start.style is None:
            at = line_end(text, key.start.end_mark.index)  # "deploy:" with nothing after it
            return at, at, " " * (col + step) + f"replicas: {count}" + eol
        raise ConfigError(path, "deploy is not a mapping", line=key.line, field=fld)
    image = svc.get("image")
    anchor_line = image[1] if image is not None and image[1].kind == "scalar" else svc.items[-1][1]
    at = line_end(text, anchor_line.end.end_mark.index)
    lines = " " * col + "deploy:" + eol + " " * (col + step) + f"replicas: {count}" + eol
    if at == len(text) and not text.endswith(("\n", "\r")):
        lines = eol + lines.rstrip("\r\n")
    return at, at, lines


def _verify(old_text: str, new_text: str, service: str, count: int, path: str, fld: str) -> None:
    """The new text reads as the old data with the count set (a key may have been added): nothing else changed."""
    def without_count(data: Any, expect: int | None) -> Any:
        cfg = untag(untag(untag(data)["services"])[service])
        for key in ("scale",):
            if key in cfg and expect is not None and cfg[key] != expect:
                raise EditVerificationError(f"{path}: internal error: {key} is {cfg[key]!r}, not {expect}")
            cfg.pop(key, None)
        deploy = untag(cfg.get("deploy"))
        if isinstance(deploy, dict):
            if "replicas" in deploy and expect is not None and deploy["replicas"] != expect:
                raise EditVerificationError(f"{path}: internal error: replicas is {deploy['replicas']!r}")
            deploy.pop("replicas", None)
            if not deploy:
                cfg.pop("deploy")
        elif deploy is None:
            cfg.pop("deploy", None)
        return data

    try:
        got = without_count(plain(new_yaml().load(new_text)), count)
        before = without_count(plain(load(old_text, path)), None)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise EditVerificationError(f"{path}: internal error: setting {fld}: {exc!r}; the file was not changed") from None
    if not same(before, got):
        raise EditVerificationError(f"{path}: internal error: setting {fld} would change other data in the file; "
                                    "the file was not changed")
    new = untag(untag(untag(plain(new_yaml().load(new_text)))["services"])[service])
    if count != (untag(new.get("deploy") or {}).get("replicas", new.get("scale"))):
        raise EditVerificationError(f"{path}: internal error: setting {fld} did not set it; the file was not changed")
