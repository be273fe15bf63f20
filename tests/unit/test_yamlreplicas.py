"""config/yamlreplicas.py: the replica count set byte for byte, every other byte kept."""

from __future__ import annotations

import pytest

from deployer.config.yamlreplicas import set_service_replicas
from deployer.errors import ConfigError


@pytest.mark.parametrize("before, after", [
    # no deploy: a deploy mapping after the image line, comments kept
    ("services:\n  web:\n    image: nginx  # the web\n    ports: ['80']\n",
     "services:\n  web:\n    image: nginx  # the web\n    deploy:\n      replicas: 3\n    ports: ['80']\n"),
    # a deploy mapping without replicas: the line goes first in it
    ("services:\n  web:\n    image: nginx\n    deploy:\n      resources: {limits: {memory: 1g}}\n",
     "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 3\n      resources: {limits: {memory: 1g}}\n"),
    # the number where it is written
    ("services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 2  # two\n",
     "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 3  # two\n"),
    ("services:\n  web:\n    image: nginx\n    scale: 2\n", "services:\n  web:\n    image: nginx\n    scale: 3\n"),
    ("services:\n  web:\n    image: nginx\n    scale: 2\n    deploy: {replicas: 2}\n",
     "services:\n  web:\n    image: nginx\n    scale: 3\n    deploy: {replicas: 3}\n"),
    # flow and empty deploy mappings
    ("services:\n  web:\n    image: nginx\n    deploy: {resources: {}}\n",
     "services:\n  web:\n    image: nginx\n    deploy: {replicas: 3, resources: {}}\n"),
    ("services:\n  web:\n    image: nginx\n    deploy: {}\n", "services:\n  web:\n    image: nginx\n    deploy: {replicas: 3}\n"),
    ("services:\n  web:\n    image: nginx\n    deploy:\n", "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 3\n"),
    # CRLF stays CRLF; a missing final newline stays missing
    ("services:\r\n  web:\r\n    image: nginx\r\n", "services:\r\n  web:\r\n    image: nginx\r\n    deploy:\r\n      replicas: 3\r\n"),
    ("services:\n  web:\n    image: nginx", "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 3"),
])
def test_the_count_is_written_and_nothing_else_changes(before, after):
    assert set_service_replicas(before, "web", 3, "c.yml") == after


def test_what_cannot_be_edited_in_place_is_refused():
    with pytest.raises(ConfigError, match="no service 'api'"):
        set_service_replicas("services:\n  web: {image: nginx}\n", "api", 2, "c.yml")
    with pytest.raises(ConfigError, match="flow mapping"):
        set_service_replicas("services:\n  web: {image: nginx}\n", "web", 2, "c.yml")
    with pytest.raises(ConfigError, match="anchor &base, which is used elsewhere"):
        set_service_replicas("services:\n  web: &base\n    image: nginx\n  api: *base\n", "web", 2, "c.yml")
    with pytest.raises(ConfigError, match="not a plain number"):
        set_service_replicas("x: &n 2\nservices:\n  web:\n    image: nginx\n    scale: *n\n", "web", 3, "c.yml")
