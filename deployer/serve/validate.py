"""The API's request bodies, checked before anything is queued: each problem is one line and a 400.

Pure functions of the decoded JSON (unit-tested); whether a target exists in
the repository is checked by the API against the loaded repository.
"""

from __future__ import annotations

import json
import re
from typing import Any

from deployer.errors import ApiError
from deployer.imageref import ImageRef

MAX_REASON = 2000
MAX_TARGETS = 500
COMMIT_RE = re.compile(r"^[0-9a-fA-F]{4,40}$")


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def decode_json(body: bytes) -> Any:
    """The body as JSON; ApiError 400 naming where it is malformed (or that it is empty or not UTF-8)."""
    if not body.strip():
        raise _bad("the body is empty: send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _object(data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad(f"the body must be a JSON object, not {type(data).__name__ if data is not None else 'null'}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _bad(f"{unknown[0]}: unknown field (the fields are {', '.join(sorted(allowed))})")
    return data


def _string(data: dict, key: str, *, required: bool = True, limit: int = 500) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _bad(f"{key}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{key}: must be a non-empty string")
    if len(value) > limit:
        raise _bad(f"{key}: longer than {limit} characters")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise _bad(f"{key}: control characters are not allowed")
    return value.strip()


def _targets(data: dict, required: bool = True) -> list[str] | None:
    value = data.get("targets")
    if value is None:
        if required:
            raise _bad("targets: required (a list of dc, dc/node or dc/node/service)")
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad("targets: must be a non-empty list of strings")
    if len(value) > MAX_TARGETS:
        raise _bad(f"targets: more than {MAX_TARGETS}")
    out = []
    for i, t in enumerate(value):
        if not isinstance(t, str) or not t.strip() or any(ord(c) < 33 for c in t.strip()):
            raise _bad(f"targets[{i}]: must be dc, dc/node or dc/node/service")
        out.append(t.strip().strip("/"))
    return out


def _reason(data: dict) -> str:
    return _string(data, "reason", limit=MAX_REASON)  # type: ignore[return-value]


def deploy_request(data: Any) -> dict[str, Any]:
    data = _object(data, {"image", "targets", "reason", "service"})
    image = _string(data, "image")
    try:
        image = str(ImageRef.parse(image))
    except Exception as exc:  # noqa: BLE001 - BadImageRef: its one line
        raise _bad(f"image: {exc}") from None
    out = {"image": image, "targets": _targets(data), "reason": _reason(data)}
    service = _string(data, "service", required=False, limit=200)
    if service:
        out["service"] = service
    return out


def rollback_request(data: Any) -> dict[str, Any]:
    data = _object(data, {"targets", "commit", "to", "reason"})
    targets = _targets(data, required=False)
    commit = _string(data, "commit", required=False, limit=40)
    to = _string(data, "to", required=False, limit=200)
    if targets is None and commit is None:
        raise _bad("give targets (dc, dc/node or dc/node/service) or commit")
    if commit is not None and not COMMIT_RE.match(commit):
        raise _bad("commit: must be 4 to 40 hexadecimal digits")
    if to is not None and commit is not None:
        raise _bad("to and commit: give one of them")
    out: dict[str, Any] = {"reason": _reason(data)}
    if targets:
        out["targets"] = targets
    if commit:
        out["commit"] = commit
    if to:
        out["to"] = to
    return out


def lock_request(data: Any) -> dict[str, Any]:
    data = _object(data, {"target", "reason", "action"})
    action = data.get("action", "acquire")
    if action not in ("acquire", "release"):
        raise _bad("action: must be acquire or release")
    target = _string(data, "target", limit=300)
    if any(ord(c) < 33 for c in target):
        raise _bad("target: must be dc or dc/node")
    reason = _string(data, "reason", required=action == "acquire", limit=MAX_REASON) or ""
    return {"target": target.strip("/"), "action": action, "reason": reason}


def limit_param(text: str | None, default: int = 50, top: int = 1000) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= top:
        raise _bad(f"limit: must be a number from 1 to {top}")
    return int(text)
