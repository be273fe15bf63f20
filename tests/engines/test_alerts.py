"""Alerts with real parts: a real Consul dev agent, a real engine node running a service registered with an HTTP
check, the real `deployer alerts watch` program, and a real HTTP receiver on loopback for the webhooks.

Thresholds are short (1-3 s) so the module stays quick; the rules themselves are unit-tested on a fake clock
(tests/unit/test_alert_rules.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import waiting
from tests.support.consul import ConsulAgent, free_port
from tests.support.repos import cli, git, make_repo, managed, remove_node_containers, run, unique_node

WEB1 = "deployer-test/web:1"


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    return waiting.wait_until(predicate, timeout, interval, what)


class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST (path, JSON body, monotonic time); ``/slow`` answers
    after 5 s, ``/fail`` with a 500."""

    def __init__(self):
        self.got: list[tuple[str, dict, float]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path == "/slow":
                    time.sleep(5)
                with receiver.lock:
                    receiver.got.append((self.path, body, time.monotonic()))
                self.send_response(500 if self.path == "/fail" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self, path: str) -> list[str]:
        with self.lock:
            return [b["text"] for p, b, _ in self.got if p == path]

    def bodies(self, path: str) -> list[dict]:
        with self.lock:
            return [b for p, b, _ in self.got if p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def client(engine):
    with closing(engine.client()) as c:
        yield c


def alerts_yml(receiver: Receiver, threshold: str = "2s", extra_sinks: str = "") -> str:
    return (f"threshold: {threshold}\nsinks:\n"
            f"  chat:\n    format: slack\n    url: {receiver.url}/slack\n    timeout: 2s\n"
            f"  ops:\n    format: json\n    url: {receiver.url}/json\n    timeout: 2s\n{extra_sinks}")


COMPOSE = """\
services:
  web:
    image: {image}
    init: true
    ports: ["{port}:80"]
    labels:
      deployer.consul.name: "{name}"
      deployer.consul.check: "http:/"
      deployer.consul.interval: 1s
      deployer.consul.wait: 10s
"""


def make_site(tmp_path, engine, consul_address, receiver, *, threshold="2s", extra_sinks="", consul=True):
    node = unique_node()
    name = f"{node}-web"
    files = {f"datacenters/test/{node}/node.yml": f"docker: {engine.unix_url}\naddress: {engine.address}\n",
             "alerts.yml": alerts_yml(receiver, threshold, extra_sinks)}
    if consul:
        files["datacenters/test/datacenter.yml"] = f"consul: {consul_address}\n"
    compose = COMPOSE.format(image=WEB1, port=free_port(), name=name) if consul else \
        f"services:\n  web:\n    image: {WEB1}\n    init: true\n"
    root, _ = make_repo(tmp_path / "infra", engine.unix_url, compose, node=node, extra_files=files)
    return root, node, name


class Watch:
    """A real `deployer alerts watch` process; stopped with SIGINT (Ctrl-C) by its PID, killed if it hangs."""

    def __init__(self, root: Path, *args: str):
        self.err_path = root.parent / f"watch-{os.urandom(3).hex()}.err"
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "deployer", "--repo", str(root), "alerts", "watch",
                                      "--json", *args], stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.stdout = ""

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.stdout, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, _ = self.proc.communicate(timeout=5)
            raise
        finally:
            self.err.close()
        return self.proc.returncode


@pytest.fixture
def watches():
    started: list[Watch] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.communicate(timeout=5)
        w.err.close()


def consul_status(agent, service: str) -> str | None:
    import consul

    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    c.http.session.trust_env = False
    _, checks = c.health.checks(service)
    return checks[0]["Status"] if checks else None


def forget_site(client, agent, node):
    """The test's containers, and its services in the module's Consul agent: a service left registered
    with its container gone is a failing check that the next test's watchers would rightly announce."""
    import consul

    remove_node_containers(client, node)
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    c.http.session.trust_env = False
    for service_id in c.agent.services():
        if service_id.startswith(f"{node}:"):
            c.agent.service.deregister(service_id)


def web(client, node):
    (c,) = managed(client, node)
    return c


def test_down_after_the_threshold_once_naming_the_check_back_to_normal_a_flap_sends_nothing(
        engine, client, consul_agent, receiver, watches, tmp_path):
    slow = "  slowpoke:\n    format: json\n    url: {url}/slow\n    timeout: 1s\n    retries: 1\n"
    root, node, name = make_site(tmp_path, engine, consul_agent.address, receiver, threshold="3s",
                                 extra_sinks=slow.format(url=receiver.url))
    try:
        deployed = cli(root, "deploy", WEB1, f"test/{node}")
        assert deployed.exit_code == 0, deployed.output
        wait_until(lambda: consul_status(consul_agent, name) == "passing", what="passing in Consul")
        watch = Watch(root, "--no-drift")
        watches.append(watch)
        wait_until(lambda: "alerts: watching" in watch.stderr(), what="the watch started")
        container = web(client, node)

        # a flap: critical in Consul for about one check interval (1 s), shorter than the 3 s threshold
        assert container.exec_run(["mv", "/www/index.html", "/www/away.html"]).exit_code == 0
        wait_until(lambda: consul_status(consul_agent, name) == "critical", what="critical in Consul")
        assert container.exec_run(["mv", "/www/away.html", "/www/index.html"]).exit_code == 0
        wait_until(lambda: consul_status(consul_agent, name) == "passing", what="passing again")
        time.sleep(4)
        assert receiver.got == []

        # stopped: down after the threshold, once per sink, naming the service, the check and its output
        stopped = time.monotonic()  # before the stop: the check may fail as soon as it begins (slow on a loaded machine)
        container.stop(timeout=2)
        wait_until(lambda: receiver.texts("/slack") and receiver.texts("/json"), what="the down alert")
        (text,) = receiver.texts("/slack")
        # e.g. test: service n16ea554-web is down: check 'deployer http:/ check' (n16ea554:3ca0a1eb707f:80 on node
        # deployer-test) failing: Get "http://10.210.0.11:40021/": dial tcp 10.210.0.11:40021: connect: connection refused
        assert text.startswith(f"test: service {name} is down: check 'deployer http:/ check' ({node}:") and \
            f" on node {consul_agent.node}) failing: Get \"http://{engine.address}:" in text and \
            text.endswith("connection refused"), text
        (body,) = receiver.bodies("/json")
        assert (body["type"], body["kind"], body["state"], body["service"], body["text"]) == (
            "alert", "health", "critical", name, text)
        first = min(t for p, _, t in receiver.got if p in ("/slack", "/json"))
        assert first - stopped >= 3.0  # never before the threshold
        # the slow sink (5 s answers, 1 s timeout, one retry) held up neither of the others
        assert first - stopped < 3.0 + 1.0 + 3.0

        time.sleep(4)  # still down: nothing more (no reminder configured)
        assert len(receiver.texts("/slack")) == 1 and len(receiver.texts("/json")) == 1

        container.start()
        wait_until(lambda: len(receiver.texts("/slack")) == 2, what="back to normal")
        back = receiver.texts("/slack")[1]
        assert back.startswith(f"test: service {name} is back to normal: check 'deployer http:/ check' ({node}:") \
            and "passing (was critical for " in back, back
        wait_until(lambda: len(receiver.texts("/json")) == 2, what="back to normal as JSON")
        time.sleep(1)
        assert len(receiver.texts("/slack")) == 2

        assert watch.interrupt() == 0  # Ctrl-C: a clean stop
        assert "alerts: stopped" in watch.stderr()
        lines = [json.loads(line) for line in watch.stdout.splitlines()]
        assert [a["text"] for a in lines] == receiver.texts("/slack")
        assert "slowpoke" in watch.stderr() and "timed out" in watch.stderr()  # its failures are logged
    finally:
        forget_site(client, consul_agent, node)


def test_consul_lost_is_announced_after_the_threshold_and_its_return_too(engine, client, receiver, watches,
                                                                         tmp_path):
    with ConsulAgent() as agent:
        root, node, _ = make_site(tmp_path, engine, agent.address, receiver, threshold="1s", consul=True)
        (root / f"datacenters/test/{node}/docker-compose.yml").write_text(
            f"services:\n  web:\n    image: {WEB1}\n    init: true\n")
        git(root, "commit", "-qam", "no consul registration")
        watch = Watch(root, "--no-drift")
        watches.append(watch)
        wait_until(lambda: "alerts: watching" in watch.stderr(), what="the watch started")
        time.sleep(1.5)
        assert receiver.got == []
        agent.kill()
        killed = time.monotonic()
        wait_until(lambda: receiver.texts("/slack"), what="lost Consul")
        (lost,) = receiver.texts("/slack")
        assert lost.startswith(f"alerts watcher lost Consul at {agent.address} (test): Consul at {agent.address}: "
                               "health checks: ") and lost.endswith("; health is unknown until it is back"), lost
        assert receiver.got[0][2] - killed >= 1.0
        agent.start()
        # both sinks: the JSON one may be sent a moment after the Slack one
        wait_until(lambda: len(receiver.texts("/slack")) == 2 and len(receiver.bodies("/json")) == 2,
                   what="back on Consul")
        assert receiver.texts("/slack")[1] == (f"alerts watcher is back on Consul at {agent.address} (test): health "
                                               "is known again")
        assert [b["kind"] for b in receiver.bodies("/json")] == ["consul", "consul"]
        assert watch.interrupt() == 0


def test_two_watchers_with_leader_send_one_message_and_the_other_takes_over(
        engine, client, consul_agent, receiver, watches, tmp_path):
    root, node, name = make_site(tmp_path, engine, consul_agent.address, receiver, threshold="1s")
    try:
        assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
        wait_until(lambda: consul_status(consul_agent, name) == "passing", what="passing in Consul")
        first = Watch(root, "--no-drift", "--leader", "-v")
        watches.append(first)
        wait_until(lambda: "alerts: leading" in first.stderr(), what="the first leads")
        second = Watch(root, "--no-drift", "--leader", "-v")
        watches.append(second)
        wait_until(lambda: "another instance leads" in second.stderr(), what="the second waits")
        container = web(client, node)
        assert container.exec_run(["mv", "/www/index.html", "/www/away.html"]).exit_code == 0
        wait_until(lambda: receiver.texts("/slack"), what="the down alert")
        time.sleep(3)
        (down,) = receiver.texts("/slack")
        assert f"service {name} is down" in down
        # both saw it; only the leader sent it
        assert "not sent" not in first.stdout
        # the leader stops (Ctrl-C releases its lock): the other takes over and sends the recovery
        assert first.interrupt() == 0
        wait_until(lambda: "alerts: leading" in second.stderr(), what="the second leads")
        assert container.exec_run(["mv", "/www/away.html", "/www/index.html"]).exit_code == 0
        wait_until(lambda: len(receiver.texts("/slack")) == 2, what="back to normal from the new leader")
        time.sleep(2)
        assert len(receiver.texts("/slack")) == 2 and len(receiver.texts("/json")) == 2
        assert "back to normal" in receiver.texts("/slack")[1]
        assert second.interrupt() == 0
        sent = [json.loads(line) for line in second.stdout.splitlines()]
        assert [a["sent"] for a in sent if "back to normal" in a["text"]] == [True]
        assert [a["sent"] for a in sent if " is down" in a["text"]] == [False]
    finally:
        forget_site(client, consul_agent, node)


def test_drift_is_alerted_once_self_heal_converges_and_never_while_locked(engine, client, receiver, watches,
                                                                        tmp_path):
    root, node, _ = make_site(tmp_path, engine, None, receiver, consul=False)
    try:
        assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0
        web(client, node).remove(force=True)  # drift: the service's container is gone
        watch = Watch(root, "--drift-interval", "0.5s")
        watches.append(watch)
        try:
            wait_until(lambda: receiver.texts("/slack"), timeout=60, what="the drift alert")
        except AssertionError:
            watch.interrupt()
            raise AssertionError(f"no drift alert; the watch said: {watch.stderr()} {watch.stdout}") from None
        time.sleep(2.5)  # several more passes: the same drift is not sent again
        (drift,) = receiver.texts("/slack")
        assert drift == f"drift on test/{node}: create test/{node}/web (no container)", drift
        assert watch.interrupt() == 0
        assert managed(client, node) == []

        locked = cli(root, "lock", "acquire", f"test/{node}", "-m", "maintenance")
        assert locked.exit_code == 0, locked.output
        done = run(root, "alerts", "watch", "--once", "--self-heal", "--json")
        assert done.returncode == 0, done.stderr
        texts = [json.loads(line)["text"] for line in done.stdout.splitlines()]
        assert texts[0] == drift and texts[1].startswith(f"self-heal of test/{node} skipped: its lock is held by a "
                                                         "manual lock of ") and texts[1].endswith(": maintenance")
        assert managed(client, node) == []  # not touched while locked

        assert cli(root, "lock", "release", f"test/{node}").exit_code == 0
        head = git(root, "rev-parse", "HEAD")
        done = run(root, "alerts", "watch", "--once", "--self-heal", "--json")
        assert done.returncode == 0, done.stderr
        texts = [json.loads(line)["text"] for line in done.stdout.splitlines()]
        assert texts == [drift, f"self-heal applied the repository to test/{node}: create test/{node}/web: ok",
                         f"test/{node} matches the repository again"], texts
        (c,) = managed(client, node)
        assert c.status == "running" and c.image.tags == [WEB1]
        assert git(root, "rev-parse", "HEAD") == head  # apply changes containers, not the repository
        assert receiver.texts("/slack")[-3:] == texts
    finally:
        remove_node_containers(client, node)


def test_alerts_test_sends_to_every_sink_and_fails_naming_the_broken_one(engine, receiver, tmp_path):
    bad = "  broken:\n    format: json\n    url: {url}/fail\n    retries: 0\n"
    root, _, _ = make_site(tmp_path, engine, None, receiver, consul=False, extra_sinks=bad.format(url=receiver.url))
    done = run(root, "alerts", "test")
    assert done.returncode == 1
    assert len(receiver.texts("/slack")) == 1 and receiver.texts("/slack")[0].startswith("deployer alerts test from ")
    assert receiver.bodies("/json")[0]["kind"] == "test"
    assert "failed: HTTP 500 Internal Server Error" in done.stdout and f"{receiver.url}/..." in done.stdout


PRE_PUSH = """#!/bin/sh
# serve's push, once: another clone deploys and pushes first, so serve's push is refused and rebased
[ -e "{marker}" ] && exit 0
touch "{marker}"
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_PREFIX GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY
cd "{laptop}" && "{python}" -m deployer --repo "{laptop}" deploy deployer-test/web:2 "{target}" --no-consul \
    -m "from the laptop" >"{marker}.log" 2>&1
exit 0
"""


def test_serve_runs_the_alerts_deploys_locks_and_cli_deploys_are_announced_once_and_reach_its_stream(
        engine, client, receiver, tmp_path):
    """serve's built-in alerts: a deploy through the API whose push is rebased over a CLI deploy another clone
    pushed meanwhile (a pre-push hook makes that happen at the worst moment, every time) gives exactly two deploy
    messages, each under the sha `git log` of the remote shows; a failed deploy; manual locks taken with the CLI
    from the other clone and through the API, each announced once (a deploy's own lock is not); drift."""
    import httpx

    from deployer.gitrepo.lock import default_owner_info
    from deployer.serve.auth import TokenStore
    from tests.support.repos import web_compose
    from tests.support.serve import ServeProcess

    node, node2 = unique_node(), unique_node()
    seed, _ = make_repo(tmp_path / "seed", engine.unix_url, web_compose(WEB1), node=node,
                        extra_files={"alerts.yml": alerts_yml(receiver, "1s"),
                                     f"datacenters/test/{node2}/node.yml": f"docker: {engine.unix_url}\n",
                                     f"datacenters/test/{node2}/docker-compose.yml": web_compose(WEB1)})
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(seed, "push", "-q", str(remote), "main")
    clone, laptop = tmp_path / "clone", tmp_path / "laptop"
    for where in (clone, laptop):
        subprocess.run(["git", "clone", "-q", str(remote), str(where)], check=True)
    assert cli(clone, "deploy", WEB1, "test", "--no-consul").exit_code == 0  # nothing to commit: both run web:1
    marker = tmp_path / "hook-ran"
    hook = clone / ".git" / "hooks" / "pre-push"
    hook.write_text(PRE_PUSH.format(marker=marker, laptop=laptop, python=sys.executable, target=f"test/{node2}"))
    hook.chmod(0o755)
    tokens_file = tmp_path / "cfg" / "tokens.json"
    token = TokenStore(tokens_file).add("ci-bot", "read,deploy,lock")
    target = f"test/{node}/web"
    auth = {"Authorization": f"Bearer {token}"}
    me = default_owner_info()
    try:
        with ServeProcess(clone, tokens_file, "--no-consul", "--alerts", "--drift-interval", "1s",
                          "--status-interval", "1s", "--sync-interval", "1s") as server:
            events: list[dict] = []

            def listen():
                try:
                    with httpx.stream("GET", server.url + "/api/v1/events?types=alert,drift", headers=auth,
                                      timeout=120) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                events.append(json.loads(line[6:]))
                except httpx.HTTPError:
                    pass  # the service stopped

            threading.Thread(target=listen, daemon=True).start()
            time.sleep(1.5)  # the stream is open, the lock watch has read the engine once
            r = httpx.post(server.url + "/api/v1/deploy", headers=auth, timeout=30,
                           json={"image": "deployer-test/web:2", "targets": [target], "reason": "release 2"})
            assert r.status_code == 202, r.text
            wait_until(lambda: len(receiver.texts("/slack")) >= 2, timeout=90, what="the two deploys' alerts")
            assert marker.exists(), "the pre-push hook did not run"
            ours, theirs = git(remote, "log", "--format=%H", "-2", "main").split()
            assert git(remote, "rev-parse", "main~1") == theirs  # serve's commit was rebased onto the laptop's
            laptop_author = git(remote, "log", "-1", "--format=%an", theirs)
            print("\n".join(receiver.texts("/slack")))  # shown with -s (docs/serve.md quotes it)
            assert receiver.texts("/slack") == [
                f"deploy of deployer-test/web:2 to {target} succeeded (commit {ours[:12]}) by ci-bot: release 2",
                f"deploy of deployer-test/web:2 to test/{node2}/web succeeded (commit {theirs[:12]}) by "
                f"{laptop_author}: from the laptop"], (receiver.texts("/slack"), marker.with_suffix(".log"))
            r = httpx.post(server.url + "/api/v1/deploy", headers=auth, timeout=30,
                           json={"image": "deployer-test/missing:9", "targets": [target], "reason": "oops"})
            assert r.status_code == 202, r.text
            wait_until(lambda: len(receiver.texts("/slack")) == 3, timeout=90, what="the failed deploy's alert")
            failed = receiver.texts("/slack")[2]
            print(failed)  # shown with -s (docs/serve.md quotes it)
            assert failed.startswith(f"deploy of deployer-test/missing:9 to {target} failed by ci-bot: "), failed

            # locks: one taken with the CLI in the other clone, one through serve's API: each announced once
            assert cli(laptop, "lock", "acquire", f"test/{node2}", "-m", "freeze for the audit").exit_code == 0
            r = httpx.post(server.url + "/api/v1/locks", headers=auth, timeout=30,
                           json={"target": f"test/{node}", "reason": "hold for the release"})
            assert r.status_code == 202, r.text
            wait_until(lambda: len(receiver.texts("/slack")) == 5, what="the two locks taken")
            assert sorted(receiver.texts("/slack")[3:]) == sorted([
                f"lock taken on test/{node2} by {me['user']}@{me['host']}: freeze for the audit",
                f"lock taken on test/{node} by ci-bot@{me['host']}: hold for the release"])
            assert cli(laptop, "lock", "release", f"test/{node2}").exit_code == 0
            r = httpx.post(server.url + "/api/v1/locks", headers=auth, timeout=30,
                           json={"target": f"test/{node}", "action": "release"})
            assert r.status_code == 202, r.text
            wait_until(lambda: len(receiver.texts("/slack")) == 7, what="the two locks released")
            assert sorted(receiver.texts("/slack")[5:]) == sorted([
                f"lock released on test/{node2} (taken by {me['user']}@{me['host']}: freeze for the audit)",
                f"lock released on test/{node} (taken by ci-bot@{me['host']}: hold for the release)"])

            web(client, node).remove(force=True)  # drift, seen by serve's drift watch
            wait_until(lambda: len(receiver.texts("/slack")) == 8, what="the drift alert")
            assert receiver.texts("/slack")[7] == f"drift on test/{node}: create {target} (no container)"
            time.sleep(2.5)
            assert len(receiver.texts("/slack")) == 8  # each announced once
            alerts = [e["text"] for e in events if e["type"] == "alert"]
            assert alerts == receiver.texts("/slack")
            assert any(e["type"] == "drift" and e.get("state") == "drifted" and e["node"] == f"test/{node}"
                       for e in events)
    finally:
        remove_node_containers(client, node)
        remove_node_containers(client, node2)


def test_a_deploy_made_with_the_cli_is_announced_once_from_the_deploy_log(engine, client, receiver, watches,
                                                                        tmp_path):
    root, node, _ = make_site(tmp_path, engine, None, receiver, consul=False)
    try:
        assert cli(root, "deploy", WEB1, f"test/{node}").exit_code == 0  # before the watch: not announced
        watch = Watch(root, "--no-drift")
        watches.append(watch)
        wait_until(lambda: "alerts: watching" in watch.stderr(), what="the watch started")
        time.sleep(4)  # its first read of the deploy log
        done = cli(root, "deploy", "deployer-test/web:2", f"test/{node}", "-m", "ticket 7")
        assert done.exit_code == 0, done.output
        commit = git(root, "rev-parse", "HEAD")
        author = git(root, "log", "-1", "--format=%an")
        wait_until(lambda: receiver.texts("/slack"), what="the deploy's alert")
        time.sleep(4)
        assert receiver.texts("/slack") == [f"deploy of deployer-test/web:2 to test/{node}/web succeeded (commit "
                                            f"{commit[:12]}) by {author}: ticket 7"]
        assert watch.interrupt() == 0
    finally:
        remove_node_containers(client, node)


def test_locks_taken_with_the_cli_are_alerted_once_deploy_locks_only_when_they_expire(
        engine, client, consul_agent, receiver, watches, tmp_path):
    """`alerts watch` follows both kinds of node lock: the Consul datacenter's keys (a blocking query) and the
    engine lock of a datacenter without Consul (read every locks.interval, 1 s here). A deploy lock whose holder
    died is announced when it expires; manual ones when taken and released, naming who, where and why (the
    short lock of a deploy is not: the serve test below counts every message around deploys)."""
    from deployer.discovery.consul_catalog import ConsulCatalog
    from deployer.discovery.consul_lock import ConsulLock, lock_key
    from deployer.engine.node_lock import EngineLock, lock_name, read_lock, remove_lock
    from deployer.gitrepo.lock import default_owner_info
    from deployer.ops.locks import holder_info

    root, node, _ = make_site(tmp_path, engine, consul_agent.address, receiver, threshold="1s")
    edge = unique_node()
    (root / "alerts.yml").write_text(alerts_yml(receiver, "1s") + "locks:\n  interval: 1s\n")
    (root / f"datacenters/edge/{edge}").mkdir(parents=True)
    (root / f"datacenters/edge/{edge}/node.yml").write_text(f"docker: {engine.unix_url}\n")
    (root / f"datacenters/edge/{edge}/docker-compose.yml").write_text(
        f"services:\n  web:\n    image: {WEB1}\n    init: true\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "an edge datacenter without Consul")
    a, b = f"test/{node}", f"edge/{edge}"
    me = default_owner_info()
    who = f"{me['user']}@{me['host']}"
    catalog = ConsulCatalog(consul_agent.address)
    try:
        watch = Watch(root, "--no-drift")
        watches.append(watch)
        wait_until(lambda: "alerts: watching" in watch.stderr(), what="the watch started")
        time.sleep(2)  # the lock watch's first readings (what is locked when it starts is not announced)

        # two deploys' locks whose holders die: renewals stop, nothing is released
        dying = holder_info("test: a deploy that dies")
        on_engine = EngineLock(client, b, dying, ttl=6).acquire(0)
        in_consul = ConsulLock(catalog, "test", node, dying, ttl=10, delay=0).acquire(0)
        for lk in (on_engine, in_consul):
            lk._stop.set()
            lk._thread.join(10)
        # Consul ends the session when its TTL passes (up to twice the TTL); here it is ended at once, as a
        # TTL expiry ends it: the key stays, without a session
        catalog.call("end the session", lambda c: c.session.destroy(in_consul.session))
        wait_until(lambda: len(receiver.texts("/slack")) == 2, timeout=20, what="the two expired locks")
        expired = sorted(receiver.texts("/slack"))
        assert expired == [f"lock released (expired) on {x}: the lock of test: a deploy that dies held by {who} "
                           f"pid {os.getpid()} was not renewed (its holder died or lost its connection)"
                           for x in sorted((a, b))], expired

        taken = cli(root, "lock", "acquire", a, b, "-m", "db maintenance")  # breaks the expired engine lock
        assert taken.exit_code == 0, taken.output
        wait_until(lambda: len(receiver.texts("/slack")) == 4, what="the manual locks taken")
        assert sorted(receiver.texts("/slack")[2:]) == [f"lock taken on {x} by {who}: db maintenance"
                                                        for x in sorted((a, b))]
        assert cli(root, "lock", "release", a, b).exit_code == 0
        wait_until(lambda: len(receiver.texts("/slack")) == 6, what="the manual locks released")
        assert sorted(receiver.texts("/slack")[4:]) == [f"lock released on {x} (taken by {who}: db maintenance)"
                                                        for x in sorted((a, b))]

        time.sleep(1.5)  # nothing more (each lock once; serve's test shows a deploy's own lock is not announced)
        assert len(receiver.texts("/slack")) == 6
        lock_alerts = [x for x in receiver.bodies("/json") if x["kind"] == "lock"]
        assert [(x["state"], x["manual"]) for x in lock_alerts[2:]] == [("taken", True)] * 2 + [("released", True)] * 2
        assert all(x["who"] == me["user"] and x["reason"] == "db maintenance" for x in lock_alerts[2:])
        assert watch.interrupt() == 0
    finally:
        catalog.call("clean up", lambda c: c.kv.delete(lock_key("test", node)))
        left = read_lock(client.api, lock_name(b))
        if left is not None:
            remove_lock(client.api, left.id)
        remove_node_containers(client, edge)
        forget_site(client, consul_agent, node)
