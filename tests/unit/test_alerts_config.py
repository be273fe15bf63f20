"""alerts.yml: defaults, every key checked with file:line, secrets only from a file outside the repository."""

from __future__ import annotations

import pytest

from deployer.alerts.config import AlertsConfig, load_alerts
from deployer.errors import ConfigError

GOOD = """\
threshold: 2s
reminder: 10m
drift:
  interval: 1m
  prune: true
sinks:
  team:
    format: slack
    url: https://hooks.example.com/services/${HOOK}
  ops:
    format: json
    url: http://127.0.0.1:9000/alerts
    headers:
      Authorization: Bearer ${TOKEN}
    timeout: 2s
    retries: 0
"""


def write(tmp_path, text, secrets=None):
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "alerts.yml").write_text(text)
    path = tmp_path / "alerts.env"
    if secrets is not None:
        path.write_text(secrets)
    return repo, path


def test_no_file_means_defaults_and_no_sink(tmp_path):
    assert load_alerts(tmp_path) == AlertsConfig()
    assert AlertsConfig().threshold == 30.0 and AlertsConfig().reminder is None
    assert AlertsConfig().lock_interval == 15.0
    (tmp_path / "alerts.yml").write_text("locks:\n  interval: 2s\n")
    assert load_alerts(tmp_path).lock_interval == 2.0


def test_a_full_file_with_secrets_from_outside_the_repository(tmp_path):
    repo, secrets = write(tmp_path, GOOD, "HOOK=T000/B000/xyz\nTOKEN='s3cr$t'\n")
    cfg = load_alerts(repo, secrets)
    assert (cfg.threshold, cfg.reminder, cfg.drift_interval, cfg.drift_prune) == (2.0, 600.0, 60.0, True)
    team, ops = cfg.sinks
    assert (team.name, team.format, team.url) == ("team", "slack", "https://hooks.example.com/services/T000/B000/xyz")
    assert team.redacted_url() == "https://hooks.example.com/..." and (team.timeout, team.retries) == (5.0, 1)
    assert (ops.format, ops.headers, ops.timeout, ops.retries) == ("json", {"Authorization": "Bearer s3cr$t"}, 2.0, 0)


@pytest.mark.parametrize("text, message", [
    ("threshold: 2s\nthreshhold: 3s\n", "alerts.yml:2: threshhold: unknown key (allowed: drift, locks, reminder, "
                                        "sinks, threshold)"),
    ("locks: {interval: 2s, every: 1s}\n", "alerts.yml:1: locks.every: unknown key (allowed: interval)"),
    ("locks: 5s\n", "alerts.yml:1: locks: must be a mapping (interval)"),
    ("locks:\n  interval: 0s\n", "alerts.yml:2: locks.interval: must be positive"),
    ("threshold: 30\n", "alerts.yml:1: threshold: must be a duration with a unit, like '30s' or '1m30s', not an "
                        "integer"),
    ("reminder: 0s\n", "alerts.yml:1: reminder: must be positive"),
    ("drift:\n  interval: 5m\n  every: 1m\n", "alerts.yml:3: drift.every: unknown key (allowed: interval, prune)"),
    ("drift:\n  prune: yes\n", "alerts.yml:2: drift.prune: must be true or false"),
    ("sinks:\n  a:\n    format: teams\n    url: http://x/\n", "alerts.yml:3: sinks.a.format: must be one of slack, json "
                                                              "(got 'teams')"),
    ("sinks:\n  a:\n    format: json\n", "alerts.yml:2: sinks.a.url: a webhook URL is required"),
    ("sinks:\n  a:\n    format: json\n    url: ftp://x/\n", "alerts.yml:4: sinks.a.url: must be an http:// or "
                                                           "https:// URL"),
    ("sinks:\n  a:\n    format: json\n    url: http://x/\n    method: PUT\n",
     "alerts.yml:5: sinks.a.method: unknown key (allowed: format, headers, retries, timeout, url)"),
    ("sinks:\n  a:\n    format: json\n    url: http://x/\n    retries: 11\n",
     "alerts.yml:5: sinks.a.retries: must be a whole number from 0 to 10"),
    ("sinks:\n  - format: json\n", "alerts.yml:2: sinks: must be a mapping of NAME: {format, url, ...}"),
    ("sinks:\n  a:\n    format: json\n    url: http://x/$HOOK\n",
     "alerts.yml:4: sinks.a.url: a '$' starts ${NAME} (from the secrets file) or is written '$$'"),
    ("- 1\n", "alerts.yml:1: must be a mapping (threshold, reminder, drift, locks, sinks)"),
])
def test_refusals_name_the_file_line_and_field(tmp_path, text, message):
    repo, secrets = write(tmp_path, text, "")
    with pytest.raises(ConfigError) as err:
        load_alerts(repo, secrets)
    assert err.value.one_line() == message


def test_an_undefined_secret_and_a_secrets_file_inside_the_repository_are_refused(tmp_path):
    repo, secrets = write(tmp_path, GOOD, "HOOK=x\n")
    with pytest.raises(ConfigError) as err:
        load_alerts(repo, secrets)
    assert err.value.one_line() == (f"alerts.yml:14: sinks.ops.headers.Authorization: ${{TOKEN}} is not defined in "
                                    f"the secrets file {secrets} (a dotenv file outside the repository; --secrets "
                                    "FILE)")
    inside = repo / "alerts.env"
    inside.write_text("HOOK=x\nTOKEN=y\n")
    with pytest.raises(ConfigError, match="must live outside the repository"):
        load_alerts(repo, inside)


def test_a_dollar_dollar_is_a_literal_dollar_and_a_url_without_variables_needs_no_secrets_file(tmp_path):
    repo, _ = write(tmp_path, "sinks:\n  a:\n    format: json\n    url: http://x/a$$b\n")
    (sink,) = load_alerts(repo, tmp_path / "missing.env").sinks
    assert sink.url == "http://x/a$b"
