"""YAML scalars as the engine gets them: which are booleans and integers (ruamel's
``ScalarBoolean`` is a bool to Compose, a bool is not an integer) and the string a
scalar becomes in a label, an environment value or a sysctl."""

from __future__ import annotations

from typing import Any

from ruamel.yaml.scalarbool import ScalarBoolean


def is_bool(v: Any) -> bool:
    return isinstance(v, (bool, ScalarBoolean))


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not is_bool(v)


def scalar_str(v: Any) -> str:
    """A scalar as the string the engine gets (YAML booleans as true/false, null as '')."""
    if v is None:
        return ""
    if is_bool(v):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, int):
        return str(int(v))
    return str(v)
