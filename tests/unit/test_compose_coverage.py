"""The coverage table of docs/compose.md agrees with the code and names every key of the Compose specification.

The table is read from the document ("Coverage of the Compose specification": one table of top-level keys,
one of service keys, rows `| `key` | supported or refused | ... |`), so changing a key's status is its row
there and its entry in config/compose_keys.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

from deployer.config.compose_keys import SERVICE_KEYS, TOP_HINTS, TOP_KEYS, UNSUPPORTED_HINTS
from deployer.config.shared import RESOLVED_SERVICE_KEYS, RESOLVED_TOP_KEYS
from tests.support.compose import one_problem, problems

ROOT = Path(__file__).resolve().parents[2]
SPEC_KEYS = json.loads((ROOT / "tests/unit/fixtures/compose_spec_keys.json").read_text())
ROW = re.compile(r"^\| `([a-z_]+)` \| (supported|refused) \| (.+) \|$")


def table(heading: str) -> dict[str, str]:
    """key -> status, from the table under ``### heading`` of the coverage section."""
    text = (ROOT / "docs/compose.md").read_text()
    section = text.split("## Coverage of the Compose specification", 1)[1]
    part = section.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, str] = {}
    for line in part.splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is in the table twice"
            rows[m.group(1)] = m.group(2)
    return rows


def status_in_code(key: str, supported: set[str], refused: dict[str, str]) -> str | None:
    if key in supported:
        return "supported"
    if key in refused:
        return "refused"
    return None


def check(rows: dict[str, str], spec: list[str], supported: set[str], refused: dict[str, str]) -> None:
    assert sorted(rows) == sorted(spec), "the table must name exactly the keys of the specification"
    known = supported | set(refused)
    missing = sorted(known - set(rows))
    assert not missing, f"keys the code accepts or refuses, missing from the table: {missing}"
    unknown = sorted(set(rows) - known)
    assert not unknown, f"keys in the table the code does not know: {unknown}"
    wrong = {k: (v, status_in_code(k, supported, refused)) for k, v in rows.items()
             if v != status_in_code(k, supported, refused)}
    assert not wrong, f"table status != code status: {wrong}"


def test_top_level_table():
    check(table("Top-level keys"), SPEC_KEYS["top_level"], TOP_KEYS | set(RESOLVED_TOP_KEYS), TOP_HINTS)


def test_service_table():
    rows = table("Service keys")
    check(rows, SPEC_KEYS["service"], SERVICE_KEYS | set(RESOLVED_SERVICE_KEYS), UNSUPPORTED_HINTS)
    assert len(SPEC_KEYS["service"]) == 92


def test_every_refused_service_key_is_refused_with_its_reason():
    for key, hint in UNSUPPORTED_HINTS.items():
        problem = one_problem(f"services:\n  w:\n    image: x\n    {key}: {{}}\n")
        assert problem.endswith(f"services.w.{key}: unsupported key {key!r}: {hint}"), problem


def test_every_refused_top_level_key_is_refused_with_its_reason():
    for key, hint in TOP_HINTS.items():
        found = problems(f"services:\n  w:\n    image: x\n{key}: {{}}\n")
        assert any(p.endswith(f"{key}: unsupported key {key!r}: {hint}") for p in found), found


def test_nested_key_tables_know_every_key_of_the_specification():
    """Each nested mapping's keys: supported or refused with a reason, none unknown (the table's prose says how)."""
    from deployer.config.compose_hooks import HOOK_KEYS
    from deployer.config.compose_keys import (
        BUILD_KEYS, HEALTHCHECK_HINTS, HEALTHCHECK_KEYS, PORT_LONG_KEYS, SERVICE_NETWORK_HINTS, SERVICE_NETWORK_KEYS,
        VOLUME_BIND_KEYS, VOLUME_LONG_HINTS, VOLUME_LONG_KEYS, VOLUME_TMPFS_KEYS, VOLUME_VOLUME_KEYS,
    )  # fmt: skip

    known = {
        "service.build": BUILD_KEYS,
        "service.healthcheck": HEALTHCHECK_KEYS | set(HEALTHCHECK_HINTS),
        "service.ports[]": PORT_LONG_KEYS,
        "service.volumes[]": VOLUME_LONG_KEYS | set(VOLUME_LONG_HINTS),
        "service.volumes[].bind": VOLUME_BIND_KEYS,
        "service.volumes[].volume": VOLUME_VOLUME_KEYS,
        "service.volumes[].tmpfs": VOLUME_TMPFS_KEYS,
        "service.networks.<name>": SERVICE_NETWORK_KEYS | set(SERVICE_NETWORK_HINTS),
        "service.post_start[]": HOOK_KEYS,
    }
    assert sorted(known) == sorted(SPEC_KEYS["nested"])
    for where, keys in known.items():
        assert sorted(keys) == SPEC_KEYS["nested"][where], where
