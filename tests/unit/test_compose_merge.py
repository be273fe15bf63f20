"""Compose's merge rules (config/compose_merge.py), one rule at a time."""

from __future__ import annotations

import pytest

from deployer.config.compose_merge import merge_mapping, merge_service, merge_tags, port_key, volume_target
from deployer.config.yamlread import parse_yaml


def merged(base: dict, over: dict) -> dict:
    return merge_mapping(base, over, ())


def test_scalars_replaced_and_mappings_merged():
    assert merged({"image": "a", "user": "1", "deploy": {"x": {"y": 1, "z": 2}}},
                  {"image": "b", "deploy": {"x": {"z": 3}}}) == {"image": "b", "user": "1",
                                                                   "deploy": {"x": {"y": 1, "z": 3}}}


def test_shell_commands_replaced():
    assert merged({"command": ["a", "b"], "entrypoint": "x y", "healthcheck": {"test": ["CMD", "a"], "retries": 3}},
                  {"command": ["c"], "entrypoint": ["z"], "healthcheck": {"test": ["CMD", "b"]}}) == {
        "command": ["c"], "entrypoint": ["z"], "healthcheck": {"test": ["CMD", "b"], "retries": 3}}


def test_by_name_in_either_form():
    assert merged({"environment": ["A=1", "B=2", "C"], "labels": {"x": "1"}, "build": {"args": ["V=1"]}},
                  {"environment": {"B": "3"}, "labels": ["y=2"], "build": {"args": {"V": "2"}}}) == {
        "environment": {"A": "1", "B": "3", "C": None}, "labels": {"x": "1", "y": "2"}, "build": {"args": {"V": "2"}}}
    assert merged({"extra_hosts": ["db:10.0.0.1", "x=10.0.0.2"]}, {"extra_hosts": {"db": "10.0.0.9"}}) == {
        "extra_hosts": {"db": "10.0.0.9", "x": "10.0.0.2"}}


@pytest.mark.parametrize("item, key", [
    ("80", ("", "80", "", "tcp")),
    ("8080:80", ("", "80", "8080", "tcp")),
    ("127.0.0.1:8080:80/udp", ("127.0.0.1", "80", "8080", "udp")),
    ("[::1]:8080:80", ("::1", "80", "8080", "tcp")),
    ({"target": 80, "published": "8080"}, ("", "80", "8080", "tcp")),
])
def test_port_keys(item, key):
    assert port_key(item) == key


def test_unique_resources_replace_in_place_and_append():
    assert merged({"ports": ["8080:80", "9090:90"], "volumes": ["a:/data", "/logs"], "secrets": ["s", "t"]},
                  {"ports": ["8080:80/tcp", "7070:70"], "volumes": [{"type": "volume", "source": "b", "target": "/data"}],
                   "secrets": [{"source": "u", "target": "/run/secrets/s"}]}) == {
        "ports": ["8080:80/tcp", "9090:90", "7070:70"],
        "volumes": [{"type": "volume", "source": "b", "target": "/data"}, "/logs"],
        "secrets": [{"source": "u", "target": "/run/secrets/s"}, "t"]}
    assert volume_target("./x:/y:ro") == "/y" and volume_target("/anon") == "/anon"


def test_networks_and_depends_on_by_name():
    assert merged({"networks": ["front"], "depends_on": ["db"]},
                  {"networks": {"back": {"aliases": ["b"]}}, "depends_on": {"db": {"condition": "service_healthy"}}}) == {
        "networks": {"front": None, "back": {"aliases": ["b"]}}, "depends_on": {"db": {"condition": "service_healthy"}}}
    assert merged({"depends_on": ["a"]}, {"depends_on": ["b", "a"]}) == {"depends_on": ["a", "b"]}


def test_logging():
    base = {"logging": {"driver": "json-file", "options": {"max-size": "1m"}}}
    assert merged(base, {"logging": {"options": {"max-file": "3"}}}) == {
        "logging": {"driver": "json-file", "options": {"max-size": "1m", "max-file": "3"}}}
    assert merged(base, {"logging": {"driver": "syslog"}}) == {"logging": {"driver": "syslog"}}


def test_other_sequences_append_unique():
    assert merged({"dns": ["1.1.1.1"], "cap_add": ["NET_ADMIN"]}, {"dns": ["8.8.8.8", "1.1.1.1"], "cap_add": ["SYS_TIME"]}) == {
        "dns": ["1.1.1.1", "8.8.8.8"], "cap_add": ["NET_ADMIN", "SYS_TIME"]}


def test_reset_and_override_keep_lines_of_the_extending_file():
    over = parse_yaml("image: b\nports: !reset []\ndns: !override [9.9.9.9]\n", "o.yml")
    out = merge_service({"image": "a", "ports": ["80:80"], "dns": ["1.1.1.1"], "user": "x"}, over)
    assert dict(out) == {"image": "b", "dns": ["9.9.9.9"], "user": "x"}
    assert out.lc.key("dns")[0] == 2 and "user" not in out.lc.data
    doc = parse_yaml("a: !reset null\nb: {c: !override [1]}\n", "x.yml")
    merge_tags(doc)
    assert doc == {"b": {"c": [1]}}
