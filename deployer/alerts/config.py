"""``alerts.yml`` at the repository's root: where alerts go, and the rules' settings.

::

    threshold: 30s          # a change is sent once it held this long (default 30s)
    reminder: 1h            # optional: repeat a down alert this often while it stays down
    drift:
      interval: 5m          # plan across the fleet this often (default 5m)
      prune: false          # self-heal also removes containers the repository no longer lists
    locks:
      interval: 15s         # `alerts watch` reads engine node locks this often (serve: --status-interval);
                            # Consul's lock keys are followed with a blocking query
    sinks:
      team:
        format: slack       # {"text": "..."} (Slack's incoming webhooks, Mattermost, Rocket.Chat)
        url: https://hooks.slack.com/services/${SLACK_HOOK}
      ops:
        format: json        # {"type", "state", "text", "t", ...}: the generic format
        url: http://alerts.internal:9000/hook
        headers: {Authorization: "Bearer ${OPS_TOKEN}"}
        timeout: 5s         # per attempt (default 5s)
        retries: 1          # attempts after the first (default 1)

Every key is checked; an unknown one, or a bad value, is refused with
``alerts.yml:LINE: field: message``. Webhook URLs and headers often hold
secrets, and the repository is shared and committed, so they never sit in it
in clear: ``${NAME}`` in a ``url`` or a header value is replaced with NAME from
the *secrets file*, a dotenv file outside the repository (default
``$XDG_CONFIG_HOME/deployer/alerts.env``, ``--secrets FILE``). A name the file
does not define, or a secrets file inside the repository, is refused.
``$$`` is a literal ``$``. Only ``url`` and header values are interpolated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.config.dotenv import parse_dotenv
from deployer.config.yamlread import key_line, parse_yaml, value_line
from deployer.errors import BadValue, ConfigError
from deployer.values import parse_duration

FILE = "alerts.yml"
FORMATS = ("slack", "json")
DEFAULT_THRESHOLD = 30.0
DEFAULT_DRIFT_INTERVAL = 300.0
DEFAULT_LOCK_INTERVAL = 15.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 1
_TOP = {"threshold", "reminder", "drift", "locks", "sinks"}
_LOCKS = {"interval"}
_DRIFT = {"interval", "prune"}
_SINK = {"format", "url", "headers", "timeout", "retries"}
_SINK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|)")


@dataclass(frozen=True)
class SinkConfig:
    name: str
    format: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES

    def redacted_url(self) -> str:
        """The URL without its path and query (which usually carry the secret), for messages."""
        m = re.match(r"([a-z]+://[^/?#]+)", self.url)
        return (m.group(1) + "/...") if m else "<url>"


@dataclass(frozen=True)
class AlertsConfig:
    threshold: float = DEFAULT_THRESHOLD
    reminder: float | None = None
    drift_interval: float = DEFAULT_DRIFT_INTERVAL
    drift_prune: bool = False
    lock_interval: float = DEFAULT_LOCK_INTERVAL
    sinks: tuple[SinkConfig, ...] = ()
    path: str | None = None  # alerts.yml when it exists


def default_secrets_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "deployer" / "alerts.env"


def read_secrets(path: Path | None, root: Path) -> tuple[dict[str, str], str]:
    """The secrets file's variables (none when it does not exist) and its name for messages."""
    path = Path(path) if path is not None else default_secrets_file()
    shown = str(path)
    try:
        resolved, repo = path.resolve(), root.resolve()
    except OSError:
        resolved, repo = path, root
    if resolved == repo or repo in resolved.parents:
        raise ConfigError(shown, "the secrets file must live outside the repository (it holds webhook secrets)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, shown
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, f"cannot read the secrets file: {exc}") from None
    return dict(parse_dotenv(text, shown)), shown


def load_alerts(root: str | Path, secrets_file: str | Path | None = None) -> AlertsConfig:
    """``alerts.yml`` of the repository at ``root`` (defaults, and no sink, when there is none)."""
    root = Path(root)
    rel = FILE
    try:
        text = (root / rel).read_text(encoding="utf-8")
    except FileNotFoundError:
        return AlertsConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(rel, f"cannot read: {exc}") from None
    doc = parse_yaml(text, rel)
    if doc is None:
        return AlertsConfig(path=rel)
    if not isinstance(doc, dict):
        raise ConfigError(rel, "must be a mapping (threshold, reminder, drift, locks, sinks)", line=1)
    _unknown(doc, _TOP, rel, "")
    secrets: dict[str, str] | None = None
    secrets_name = ""

    def secret_values(line: int | None, fld: str, value: str) -> str:
        nonlocal secrets, secrets_name
        if "$" not in value:
            return value
        if secrets is None:
            secrets, secrets_name = read_secrets(Path(secrets_file) if secrets_file else None, root)
        return _interpolate(value, secrets, secrets_name, rel, line, fld)

    threshold = _duration(doc, "threshold", rel, "threshold", DEFAULT_THRESHOLD, zero_ok=True)
    reminder = _duration(doc, "reminder", rel, "reminder", None)
    drift = doc.get("drift")
    interval, prune = DEFAULT_DRIFT_INTERVAL, False
    if drift is not None:
        if not isinstance(drift, dict):
            raise ConfigError(rel, "must be a mapping (interval, prune)", line=value_line(doc, "drift"), field="drift")
        _unknown(drift, _DRIFT, rel, "drift.")
        interval = _duration(drift, "interval", rel, "drift.interval", DEFAULT_DRIFT_INTERVAL)
        prune = _bool(drift, "prune", rel, "drift.prune")
    locks = doc.get("locks")
    lock_interval = DEFAULT_LOCK_INTERVAL
    if locks is not None:
        if not isinstance(locks, dict):
            raise ConfigError(rel, "must be a mapping (interval)", line=value_line(doc, "locks"), field="locks")
        _unknown(locks, _LOCKS, rel, "locks.")
        lock_interval = _duration(locks, "interval", rel, "locks.interval", DEFAULT_LOCK_INTERVAL)
    sinks_doc = doc.get("sinks")
    sinks: list[SinkConfig] = []
    if sinks_doc is not None:
        if not isinstance(sinks_doc, dict):
            raise ConfigError(rel, "must be a mapping of NAME: {format, url, ...}", line=value_line(doc, "sinks"),
                              field="sinks")
        for name, body in sinks_doc.items():
            fld = f"sinks.{name}"
            if not isinstance(name, str) or not _SINK_NAME.match(name):
                raise ConfigError(rel, "a sink's name is letters, digits, '_', '.', '-'",
                                  line=key_line(sinks_doc, name), field=fld)
            sinks.append(_sink(name, body, sinks_doc, rel, fld, secret_values))
    return AlertsConfig(threshold=threshold, reminder=reminder, drift_interval=interval, drift_prune=prune,
                        lock_interval=lock_interval, sinks=tuple(sinks), path=rel)


def _sink(name: str, body: Any, parent: Any, rel: str, fld: str, secret_values) -> SinkConfig:
    if not isinstance(body, dict):
        raise ConfigError(rel, "must be a mapping (format, url, headers, timeout, retries)",
                          line=value_line(parent, name), field=fld)
    _unknown(body, _SINK, rel, fld + ".")
    fmt = body.get("format")
    if fmt not in FORMATS:
        raise ConfigError(rel, f"must be one of {', '.join(FORMATS)} (got {fmt!r})",
                          line=value_line(body, "format") or key_line(parent, name), field=f"{fld}.format")
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(rel, "a webhook URL is required", line=value_line(body, "url") or key_line(parent, name),
                          field=f"{fld}.url")
    url = secret_values(value_line(body, "url"), f"{fld}.url", url.strip())
    if not re.match(r"https?://[^/\s?#]+", url) or any(c.isspace() for c in url):
        raise ConfigError(rel, "must be an http:// or https:// URL", line=value_line(body, "url"), field=f"{fld}.url")
    headers: dict[str, str] = {}
    raw_headers = body.get("headers")
    if raw_headers is not None:
        if not isinstance(raw_headers, dict):
            raise ConfigError(rel, "must be a mapping of Header: value", line=value_line(body, "headers"),
                              field=f"{fld}.headers")
        for key, value in raw_headers.items():
            hf = f"{fld}.headers.{key}"
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", key):
                raise ConfigError(rel, "invalid header name", line=key_line(raw_headers, key), field=hf)
            if not isinstance(value, str):
                raise ConfigError(rel, "must be a string", line=value_line(raw_headers, key), field=hf)
            value = secret_values(value_line(raw_headers, key), hf, value)
            if "\n" in value or "\r" in value:
                raise ConfigError(rel, "must be one line", line=value_line(raw_headers, key), field=hf)
            headers[key] = value
    timeout = _duration(body, "timeout", rel, f"{fld}.timeout", DEFAULT_TIMEOUT)
    retries = body.get("retries", DEFAULT_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ConfigError(rel, "must be a whole number from 0 to 10", line=value_line(body, "retries"),
                          field=f"{fld}.retries")
    return SinkConfig(name, fmt, url, headers, timeout, retries)


def _interpolate(value: str, secrets: dict[str, str], secrets_name: str, rel: str, line: int | None,
                 fld: str) -> str:
    def repl(m: re.Match) -> str:
        text = m.group(0)
        if text == "$$":
            return "$"
        name = m.group(1)
        if name is None:
            raise ConfigError(rel, "a '$' starts ${NAME} (from the secrets file) or is written '$$'", line=line,
                              field=fld)
        if name not in secrets:
            raise ConfigError(rel, f"${{{name}}} is not defined in the secrets file {secrets_name} (a dotenv file "
                                   "outside the repository; --secrets FILE)", line=line, field=fld)
        return secrets[name]

    return _VAR.sub(repl, value)


def _unknown(doc: dict, allowed: set[str], rel: str, prefix: str) -> None:
    for key in doc:
        if key not in allowed:
            raise ConfigError(rel, f"unknown key (allowed: {', '.join(sorted(allowed))})", line=key_line(doc, key),
                              field=f"{prefix}{key}")


def _duration(doc: dict, key: str, rel: str, fld: str, default: float | None, zero_ok: bool = False) -> float | None:
    if key not in doc:
        return default
    value = doc[key]
    try:
        seconds = parse_duration(value, bare_seconds=False)
    except BadValue as exc:
        raise ConfigError(rel, str(exc), line=value_line(doc, key), field=fld) from None
    if seconds < 0 or (seconds == 0 and not zero_ok):
        raise ConfigError(rel, "must be positive" if not zero_ok else "must not be negative",
                          line=value_line(doc, key), field=fld)
    return seconds


def _bool(doc: dict, key: str, rel: str, fld: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(rel, "must be true or false", line=value_line(doc, key), field=fld)
    return value
