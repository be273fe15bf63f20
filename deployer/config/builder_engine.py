"""datacenter.yml ``builder:``: the Docker engine a datacenter's images are built on.

Written as a Docker URL, or as a mapping with a node's connection keys::

    builder: ssh://builder@ci.example.com          # or unix:///..., tcp://host:2376
    builder:
      docker: tcp://10.0.0.5:2376
      tls: {ca: tls/ca.pem, cert: tls/cert.pem, key: tls/key.pem}   # relative to the datacenter's folder
      identity_file: ~/.ssh/builder                                   # ssh:// only

An ``ssh://`` builder's host key is checked against
``datacenters/<dc>/builder_known_hosts`` when that file exists (then its keys are the
only ones that count, as a node's ``known_hosts``), else against ``~/.ssh/known_hosts``.
The result is a :class:`deployer.model.Node` named ``builder`` that runs nothing: what
``engine.connect`` needs to reach it. Every problem is ``file:line: builder...: message``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deployer.config.yamlread import key_line, value_line
from deployer.errors import ConfigError
from deployer.model import Location, Node, TLSFiles

DOCKER_URL_RE = re.compile(r"^(unix://.+|ssh://([^@/\s]+@)?[^:/\s]+(:\d+)?/?|tcp://[^:/\s]+(:\d+)?/?)$")
BUILDER_KEYS = {"docker", "tls", "identity_file"}
TLS_KEYS = {"ca", "cert", "key"}
KNOWN_HOSTS = "builder_known_hosts"
NAME = "builder"


def _text(doc: dict, key: str, rel: str, field: str, problems: list[ConfigError]) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(ConfigError(rel, "must be a non-empty string", line=value_line(doc, key), field=field))
        return None
    return value


def parse_builder(root: Path, dc: str, dc_path: str, rel: str, doc: dict,
                  problems: list[ConfigError]) -> Node | None:
    """datacenter.yml's ``builder`` as a Node, or None (not written, or wrong: then in ``problems``)."""
    if "builder" not in doc:
        return None
    value: Any = doc["builder"]
    spec: dict = {}
    if isinstance(value, str):
        spec = {"docker": value}
        url, line = value, value_line(doc, "builder")
    elif isinstance(value, dict):
        spec = value
        for key in value:
            if key not in BUILDER_KEYS:
                problems.append(ConfigError(rel, f"unsupported key {key!r} (supported: {', '.join(sorted(BUILDER_KEYS))})",
                                            line=key_line(value, key), field=f"builder.{key}"))
        url = _text(value, "docker", rel, "builder.docker", problems)
        line = value_line(value, "docker") if "docker" in value else key_line(doc, "builder")
        if url is None:
            if "docker" not in value:
                problems.append(ConfigError(rel, "required: the build engine's Docker URL", line=line,
                                            field="builder.docker"))
            return None
    else:
        problems.append(ConfigError(rel, "must be a Docker URL (ssh://user@host, tcp://host:2376, unix://PATH) "
                                         "or a mapping with docker, tls, identity_file",
                                    line=value_line(doc, "builder"), field="builder"))
        return None
    field = "builder" if isinstance(value, str) else "builder.docker"
    if not DOCKER_URL_RE.match(url) or not url.isprintable():
        problems.append(ConfigError(rel, f"invalid Docker URL {url!r}: use unix://PATH, ssh://[user@]host[:port] "
                                         "or tcp://host:port", line=line, field=field))
        return None
    before = len(problems)
    tls = None
    if "tls" in spec:
        tls_doc = spec["tls"]
        if not isinstance(tls_doc, dict):
            problems.append(ConfigError(rel, "must be a mapping with ca, cert, key", line=value_line(spec, "tls"),
                                        field="builder.tls"))
        else:
            paths = {}
            for key in tls_doc:
                if key not in TLS_KEYS:
                    problems.append(ConfigError(rel, f"unsupported key {key!r} (supported: ca, cert, key)",
                                                line=key_line(tls_doc, key), field=f"builder.tls.{key}"))
            for key in ("ca", "cert", "key"):
                path = _text(tls_doc, key, rel, f"builder.tls.{key}", problems)
                if path is None:
                    if key not in tls_doc:
                        problems.append(ConfigError(rel, "required", line=key_line(spec, "tls"),
                                                    field=f"builder.tls.{key}"))
                    continue
                paths[key] = str((root / dc_path / Path(path).expanduser()).resolve())
            if len(paths) == 3:
                tls = TLSFiles(**paths)
        if not url.startswith("tcp://"):
            problems.append(ConfigError(rel, "tls applies only to tcp:// Docker URLs", line=key_line(spec, "tls"),
                                        field="builder.tls"))
    identity = _text(spec, "identity_file", rel, "builder.identity_file", problems)
    if identity is not None:
        if not url.startswith("ssh://"):
            problems.append(ConfigError(rel, "identity_file applies only to ssh:// Docker URLs",
                                        line=key_line(spec, "identity_file"), field="builder.identity_file"))
        identity = str((root / dc_path / Path(identity).expanduser()).resolve())
    if len(problems) > before:
        return None
    known_hosts = f"{dc_path}/{KNOWN_HOSTS}"
    return Node(dc=dc, name=NAME, docker=url, path=dc_path, location=Location(rel, line), tls=tls,
                identity_file=identity, known_hosts=known_hosts if (root / known_hosts).is_file() else None)
