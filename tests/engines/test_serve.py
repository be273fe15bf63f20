"""``deployer serve`` end to end: a real serve process on a loopback port, a real engine, a real git remote.

Each test starts its own ``deployer serve`` (tests/support/serve.py, killed by
PID in a finally) over a clone of a bare remote whose node runs web:1.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from deployer.serve.auth import TokenStore
from tests.support.repos import (CONSUL_WEB_LABELS, WEB_PUBLISHED, cli, git,
                                 make_repo, managed, remove_node_containers, unique_node, web_compose)
from tests.support.serve import ServeProcess

pytest_plugins = ["tests.support.build_fixtures"]  # the release webhook's test: the Go builder, the registry

WEB1, WEB2, WEB3 = "deployer-test/web:1", "deployer-test/web:2", "deployer-test/web:3"
SECRET = "a-webhook-secret-of-some-length"


def wait_for(what, check, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.fixture
def site(engine, tmp_path):
    """A bare remote, the service's clone (its node runs web:1), a tokens file, a serve config; cleaned after."""
    node = unique_node()
    seed, _ = make_repo(tmp_path / "seed", engine.unix_url, web_compose(WEB1), node=node)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(seed, "push", "-q", str(remote), "main")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    done = cli(clone, "deploy", WEB1, f"test/{node}", "--no-consul")
    assert done.exit_code == 0, done.output
    tokens_file = tmp_path / "cfg" / "tokens.json"
    store = TokenStore(tokens_file)
    tokens = {name: store.add(name, scopes) for name, scopes in
              (("reader", "read"), ("ci-bot", "read,deploy"), ("oncall", "read,lock"), ("root", "admin"))}
    config = tmp_path / "cfg" / "serve.yml"
    config.write_text(f"hooks:\n  web-ci:\n    target: test/{node}/web\n    image: deployer-test/web\n"
                      f"    secret: {SECRET}\n")

    class Site:
        pass

    s = Site()
    s.node, s.remote, s.clone, s.tokens_file, s.tokens, s.config, s.tmp = node, remote, clone, tokens_file, tokens, \
        config, tmp_path
    s.target = f"test/{node}/web"
    s.serve = lambda *args, **kw: ServeProcess(clone, tokens_file, "--config", str(config), "--no-consul",
                                                "--sync-interval", "1", "--status-interval", "1", *args, **kw)
    yield s
    with closing(engine.client()) as client:
        remove_node_containers(client, node)


def _try(fn):
    try:
        return fn()
    except httpx.HTTPError:
        return None


def api(server, method, path, token=None, **kw):
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)


def wait_job(server, token, job_id, timeout=90):
    def done():
        body = api(server, "GET", f"/api/v1/jobs/{job_id}", token).json()
        return body if body["state"] in ("ok", "failed") else None
    return wait_for(f"job {job_id}", done, timeout, 0.2)


def running_images(engine, node):
    with closing(engine.client()) as client:
        return sorted(c.labels.get("deployer.image") for c in managed(client, node) if c.status == "running")


def test_every_route_needs_a_token_and_its_scope_and_bad_bodies_are_refused(site):
    from deployer.serve.app import create_app
    from deployer.serve.state import ServeSettings, ServeState

    head = git(site.remote, "rev-parse", "main")
    with site.serve() as server:
        # every route of the application, walked: 401 without a token (or signature), the same with a wrong one
        app = create_app(ServeState(ServeSettings(root=site.clone, tokens=site.tokens_file)), start=False)
        walked = 0
        for route in app.routes:
            if (route.name or "").startswith("public:") or route.name == "static" or route.path == "/login":
                continue  # the sign-in page and the static files (CSS, script) need no token
            path = (route.path.replace("{job_id}", "x-1").replace("{id}", "x-1").replace("{name}", "web-ci")
                    .replace("{dc}/{node}/{service}", site.target))
            for method in sorted(route.methods - {"HEAD"}):
                r = api(server, method, path, json={} if method == "POST" else None)
                if method == "GET" and not path.startswith("/api/") and r.status_code == 303:
                    assert r.headers["location"].startswith("/login"), (path, r.headers)  # a page: sign in first
                else:
                    assert r.status_code == 401, (method, path, r.text)
                    if path.startswith("/api/"):
                        assert list(r.json()) == ["error"] and "\n" not in r.text.strip()
                walked += 1
        assert walked >= 18
        r = api(server, "GET", "/api/v1/status", "dps_not-a-real-token")
        assert r.status_code == 401 and r.json() == {"error": "unknown token"}
        # a token without the scope: 403, and nothing queued or changed
        body = {"image": WEB2, "targets": [site.target], "reason": "try"}
        r = api(server, "POST", "/api/v1/deploy", site.tokens["reader"], json=body)
        assert r.status_code == 403 and "lacks the 'deploy' scope" in r.json()["error"]
        r = api(server, "POST", "/api/v1/locks", site.tokens["ci-bot"], json={"target": f"test/{site.node}",
                                                                           "reason": "x"})
        assert r.status_code == 403
        assert api(server, "GET", "/api/v1/jobs", site.tokens["reader"]).json() == {"jobs": []}
        # bodies: malformed JSON, wrong shape, oversized (by Content-Length and chunked)
        r = api(server, "POST", "/api/v1/deploy", site.tokens["ci-bot"], content=b'{"image": ',
                headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON: Expecting value at line 1")
        r = api(server, "POST", "/api/v1/deploy", site.tokens["ci-bot"], json={**body, "extra": 1})
        assert r.status_code == 400 and r.json()["error"].startswith("extra: unknown field")
        r = api(server, "POST", "/api/v1/deploy", site.tokens["ci-bot"], json={**body, "targets": ["nowhere/x"]})
        assert r.status_code == 400 and "nowhere" in r.json()["error"]
        big = json.dumps({**body, "reason": "x" * (2 * 1024 * 1024)}).encode()
        r = api(server, "POST", "/api/v1/deploy", site.tokens["ci-bot"], content=big)
        assert r.status_code == 413 and "over 1048576 bytes" in r.json()["error"]
        r = api(server, "POST", "/api/v1/deploy", site.tokens["ci-bot"], content=iter([big[:600_000], big[600_000:]]))
        assert r.status_code == 413
        assert api(server, "GET", "/api/v1/jobs", site.tokens["reader"]).json() == {"jobs": []}
        # failed attempts from one address: 429 after the limit, even with a good token
        codes = [api(server, "GET", "/api/v1/status", f"dps_wrong{i}").status_code for i in range(12)]
        assert codes[-1] == 429 and 401 in codes
        r = api(server, "GET", "/api/v1/status", site.tokens["reader"])
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert git(site.remote, "rev-parse", "main") == head
    assert git(site.clone, "rev-parse", "HEAD") == head


def test_two_deploys_of_one_target_queue_and_commit_as_the_token(site, engine):
    with site.serve() as server:
        events: list[dict] = []

        def listen():
            with httpx.stream("GET", server.url + "/api/v1/events?types=job,deploy",
                              headers={"Authorization": f"Bearer {site.tokens['reader']}"}, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if sum(1 for e in events if e["type"] == "deploy") == 2:
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(0.5)
        token = site.tokens["ci-bot"]
        first = api(server, "POST", "/api/v1/deploy", token,
                    json={"image": WEB2, "targets": [site.target], "reason": "release 2 (ticket 41)"})
        second = api(server, "POST", "/api/v1/deploy", token,
                     json={"image": WEB3, "targets": [site.target], "reason": "release 3"})
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        one, two = first.json()["job"], second.json()["job"]
        assert api(server, "GET", f"/api/v1/jobs/{two}", token).json()["state"] == "queued"
        a, b = wait_job(server, token, one), wait_job(server, token, two)
        assert a["state"] == "ok" and b["state"] == "ok", (a, b)
        assert a["finished"] <= b["started"]  # one after the other, in order
        assert running_images(engine, site.node) == [WEB3]
        log = git(site.remote, "log", "-2", "--format=%an|%s|%b", "main")
        assert f"ci-bot|deploy {site.target}: {WEB2} -> {WEB3}|release 3" in log.replace("\n\n", "|")
        assert "release 2 (ticket 41)" in git(site.remote, "log", "-2", "--format=%B", "main")
        assert git(site.remote, "log", "-2", "--format=%an", "main").split() == ["ci-bot", "ci-bot"]
        listener.join(30)
        lines = [e["line"] for e in events if e["type"] == "job" and e["job"] == one and e.get("line")]
        assert lines[0] == "queued" and lines[-1] == "ok" and len(lines) > 3
        deploys = [e for e in events if e["type"] == "deploy"]
        assert [d["ok"] for d in deploys] == [True, True] and deploys[1]["image"] == WEB3
        history = api(server, "GET", f"/api/v1/history?target={site.target}", site.tokens["reader"]).json()
        assert [e["image"] for e in history["entries"][:2]] == [WEB3, WEB2]
        status = api(server, "GET", "/api/v1/status", site.tokens["reader"]).json()
        svc = status["datacenters"][0]["nodes"][0]["services"][0]
        wait_for("the status after the deploys", lambda: api(server, "GET", "/api/v1/status", token).json()
                 ["datacenters"][0]["nodes"][0]["services"][0]["running_image"] == WEB3)
        assert svc["target"] == site.target and svc["health"] == "unknown"


def test_webhook_signed_deploys_forged_and_replayed_are_refused(site, engine):
    with site.serve() as server:
        body = json.dumps({"tag": "2"}).encode()
        good = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        forged = "sha256=" + hmac.new(b"not-the-secret-at-all", body, hashlib.sha256).hexdigest()
        url = "/api/v1/hooks/web-ci"
        for sig in (None, forged, good[:-2] + "00", "sha1=abc"):
            headers = {"X-GitHub-Delivery": "d-1", **({"X-Hub-Signature-256": sig} if sig else {})}
            r = api(server, "POST", url, content=body, headers=headers)
            assert r.status_code == 401, r.text
        r = api(server, "POST", url, content=body, headers={"X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": good})
        assert r.status_code == 202, r.text
        job = wait_job(server, site.tokens["reader"], r.json()["job"])
        assert job["state"] == "ok", job
        assert running_images(engine, site.node) == [WEB2]
        assert git(site.remote, "log", "-1", "--format=%an", "main") == "hook:web-ci"
        r = api(server, "POST", url, content=body, headers={"X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": good})
        assert r.status_code == 409 and "replay" in r.json()["error"]
        other = json.dumps({"image": "deployer-test/other:1"}).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), other, hashlib.sha256).hexdigest()
        r = api(server, "POST", url, content=other, headers={"X-GitHub-Delivery": "d-2", "X-Hub-Signature-256": sig})
        assert r.status_code == 403
    # the delivery ids outlive a restart: the same capture is refused by the next process too
    with site.serve() as server:
        r = api(server, "POST", url, content=body, headers={"X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": good})
        assert r.status_code == 409
    assert git(site.remote, "log", "-1", "--format=%an", "main") == "hook:web-ci"


def test_a_lock_through_the_api_stops_deploys_until_released(site, engine):
    node_target = f"test/{site.node}"
    with site.serve() as server:
        r = api(server, "POST", "/api/v1/locks", site.tokens["oncall"],
                json={"target": node_target, "reason": "db migration", "action": "acquire"})
        assert r.status_code == 202, r.text
        assert wait_job(server, site.tokens["oncall"], r.json()["job"])["state"] == "ok"
        wait_for("the lock in the status", lambda: (api(server, "GET", "/api/v1/status", site.tokens["reader"])
                                                    .json()["datacenters"][0]["nodes"][0]["lock"] or {}).get("held"))
        lock = api(server, "GET", "/api/v1/status", site.tokens["reader"]).json()["datacenters"][0]["nodes"][0]["lock"]
        assert lock["holder"]["who"] == "oncall" and lock["holder"]["reason"] == "db migration" and lock["manual"]
        r = api(server, "POST", "/api/v1/deploy", site.tokens["ci-bot"],
                json={"image": WEB2, "targets": [site.target], "reason": "blocked"})
        job = wait_job(server, site.tokens["ci-bot"], r.json()["job"])
        assert job["state"] == "failed" and "oncall" in job["error"] and "db migration" in job["error"], job
        assert running_images(engine, site.node) == [WEB1]
        r = api(server, "POST", "/api/v1/locks", site.tokens["oncall"], json={"target": node_target,
                                                                           "action": "release"})
        assert wait_job(server, site.tokens["oncall"], r.json()["job"])["state"] == "ok"
        r = api(server, "POST", "/api/v1/deploy", site.tokens["ci-bot"],
                json={"image": WEB2, "targets": [site.target], "reason": "after the migration"})
        assert wait_job(server, site.tokens["ci-bot"], r.json()["job"])["state"] == "ok"
        assert running_images(engine, site.node) == [WEB2]


def test_remote_unreachable_while_serving_is_in_the_status_and_nothing_is_lost(site):
    moved = site.tmp / "remote-away.git"
    with site.serve() as server:
        token = site.tokens["root"]
        wait_for("a first pull", lambda: api(server, "GET", "/api/v1/status", token).json()["sync"]["ok"])
        head = git(site.clone, "rev-parse", "HEAD")
        os.rename(site.remote, moved)
        sync = wait_for("the failed pull", lambda: (lambda s: s if s["ok"] is False else None)(
            api(server, "GET", "/api/v1/status", token).json()["sync"]))
        assert "remote-away" not in sync["error"] and sync["error"]
        r = api(server, "POST", "/api/v1/deploy", token, json={"image": WEB2, "targets": [site.target],
                                                              "reason": "while the remote is away"})
        job = wait_job(server, token, r.json()["job"])
        assert job["state"] == "failed" and job["error"], job
        assert git(site.clone, "rev-parse", "HEAD") == head
        assert git(site.clone, "status", "--porcelain") == ""
        # a colleague pushes while it is away; when the remote is back the service pulls it in
        os.rename(moved, site.remote)
        other = site.tmp / "other"
        subprocess.run(["git", "clone", "-q", str(site.remote), str(other)], check=True)
        (other / "NOTES").write_text("ops notes\n")
        git(other, "add", "NOTES")
        git(other, "commit", "-q", "-m", "notes")
        git(other, "push", "-q", "origin", "main")
        wait_for("the pull after the remote came back",
                 lambda: api(server, "GET", "/api/v1/status", token).json()["sync"]["ok"] is True and
                 (site.clone / "NOTES").exists())
        assert git(site.clone, "rev-parse", "HEAD") == git(site.remote, "rev-parse", "main")


def test_serve_killed_mid_deploy_restarts_consistent(site, engine):
    token = site.tokens["ci-bot"]
    with site.serve() as server:
        r = api(server, "POST", "/api/v1/deploy", token, json={"image": WEB2, "targets": [site.target],
                                                              "reason": "killed"})
        job_id = r.json()["job"]
        wait_for("the new container", lambda: any("start" in line for line in
                                                  api(server, "GET", f"/api/v1/jobs/{job_id}", token).json()["lines"]
                                                  [2:]), 60, 0.05)
        server.kill()
    assert server.proc.returncode == -9
    # as if a serve died between writing the compose file and committing it: the journal says what it wrote
    from deployer.gitrepo.lock import DeployLock
    from deployer.gitrepo.transaction import sha256_text

    rel = f"datacenters/test/{site.node}/docker-compose.yml"
    text = (site.clone / rel).read_text().replace(WEB1, WEB3)
    lock = DeployLock(site.clone / ".git", {"pid": 0, "user": "x", "host": "h", "command": "c", "since": "s"})
    lock.acquire()
    lock.journal_write({"files": [{"file": rel, "sha256": sha256_text(text.encode())}],
                        "subject": f"deploy {site.target}: {WEB1} -> {WEB3}", "message": "journaled",
                        "trailers": [["Deployer-Action", "deploy"], ["Deployer-Target", site.target]],
                        "author": "ci-bot <ci-bot@deployer-serve>"})
    (site.clone / rel).write_text(text)
    lock.release()
    with site.serve() as server:  # its first pull takes the lock and finishes the journaled commit
        wait_for("the journal finished", lambda: not (site.clone / ".git/deployer.journal").exists())
        assert git(site.clone, "status", "--porcelain") == ""
        assert git(site.clone, "log", "-1", "--format=%s", "HEAD") == f"deploy {site.target}: {WEB1} -> {WEB3}"
        r = api(server, "POST", "/api/v1/deploy", token, json={"image": WEB2, "targets": [site.target],
                                                              "reason": "after the crash"})
        job = wait_job(server, token, r.json()["job"])
        assert job["state"] == "ok", job
        assert running_images(engine, site.node) == [WEB2]
        assert git(site.clone, "status", "--porcelain") == ""
        assert git(site.remote, "log", "-1", "--format=%an %s", "main").startswith("ci-bot deploy")


def test_serve_over_tls_from_a_remote_clone(site, tmp_path):
    cert, key = tmp_path / "serve.crt", tmp_path / "serve.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    clone = tmp_path / "served-clone"
    server = ServeProcess(None, site.tokens_file, "--remote", str(site.remote), "--clone", str(clone),
                          "--tls-cert", str(cert), "--tls-key", str(key), "--no-consul", "--status-interval", "1")
    server.url = server.url.replace("http://", "https://")
    env_verify = {"verify": str(cert)}
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        server.proc = subprocess.Popen(server.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        info = json.loads(server.proc.stdout.readline())
        assert info["url"] == server.url and info["repo"] == str(clone)
        r = wait_for("the TLS listener", lambda: _try(lambda: httpx.get(
            server.url + "/api/v1/status", headers={"Authorization": f"Bearer {site.tokens['reader']}"},
            timeout=30, **env_verify)), 30, 0.2)
        assert r.status_code == 200 and r.json()["commit"] == git(site.remote, "rev-parse", "main")
        assert git(clone, "remote", "get-url", "origin") == str(site.remote)
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets nothing useful
            httpx.get(server.url.replace("https://", "http://") + "/api/v1/status", timeout=5).raise_for_status()
    finally:
        server.stop()


CONSUL_WEB = WEB_PUBLISHED + CONSUL_WEB_LABELS


def test_consul_health_in_the_status_critical_when_stopped_unknown_when_consul_is_down(engine, tmp_path):
    from tests.support.consul import ConsulAgent

    node = unique_node()
    (tmp_path / "consul").mkdir()
    with ConsulAgent(workdir=tmp_path / "consul") as agent, closing(engine.client()) as client:
        try:
            files = {f"datacenters/test/{node}/node.yml": f"docker: {engine.unix_url}\naddress: {engine.address}\n",
                     "datacenters/test/datacenter.yml": f"consul: {agent.address}\n"}
            root, _ = make_repo(tmp_path / "infra", engine.unix_url,
                                CONSUL_WEB.format(image=WEB1, name=f"{node}-web"), node=node, extra_files=files)
            done = cli(root, "deploy", WEB1, f"test/{node}")
            assert done.exit_code == 0, done.output
            store = TokenStore(tmp_path / "tokens.json")
            token = store.add("reader", "read")
            with ServeProcess(root, tmp_path / "tokens.json", "--status-interval", "1") as server:
                def web():
                    body = api(server, "GET", "/api/v1/status", token).json()
                    return body["datacenters"][0], body["datacenters"][0]["nodes"][0]["services"][0]

                dc, svc = wait_for("passing", lambda: (lambda d, s: (d, s) if s["health"] == "passing" else None)(
                    *web()), 30, 0.3)
                assert dc["consul"] == agent.address and svc["checks"][0]["status"] == "passing"
                (container,) = [c for c in managed(client, node) if c.status == "running"]
                container.stop(timeout=1)
                dc, svc = wait_for("critical", lambda: (lambda d, s: (d, s) if s["health"] == "critical" else None)(
                    *web()), 30, 0.3)
                assert svc["state"] == "stopped" and svc["checks"][0]["output"]
                agent.kill()
                dc, svc = wait_for("unknown", lambda: (lambda d, s: (d, s) if s["health"] == "unknown" else None)(
                    *web()), 30, 0.3)
                assert dc["consul_error"].startswith(f"Consul at {agent.address}")
        finally:
            remove_node_containers(client, node)


# -- the release webhook (action: release): build + push + deploy of a pushed commit ----------------------------

WORKER = Path(__file__).resolve().parents[2] / "examples" / "apps" / "worker"
WORKER_COMPOSE = "services:\n  worker:\n    image: {image}\n    healthcheck:\n      interval: 500ms\n"


def _push_hook(server, body: dict, delivery: str, secret: str = SECRET, event: str = "push"):
    raw = json.dumps(body).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return api(server, "POST", "/api/v1/hooks/worker-ci", content=raw,
               headers={"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature,
                        "Content-Type": "application/json"})


def _wait_release(server, token, job_id, timeout=800):
    """The finished job; on a timeout, the error shows its progress lines so far."""
    try:
        return wait_job(server, token, job_id, timeout)
    except AssertionError:
        lines = api(server, "GET", f"/api/v1/jobs/{job_id}", token).json()["lines"]
        raise AssertionError(f"job {job_id} not done in {timeout}s; its lines: {lines}") from None


@pytest.mark.timeout(1200)  # a cold Go build: about 16 s on a quiet machine, minutes with a load average near 60
def test_release_webhook_builds_the_pushed_commit_and_refuses_bad_pushes(client, go_builder, build_engine, registry,
                                                                         tmp_path):
    """One serve process, the session's build engine as the node and the builder, its TLS registry."""
    import shutil

    from deployer.build import registry as registry_api

    cache_existed = any(v.name == "deployer-cache-go" for v in client.volumes.list())
    node = unique_node()
    src = tmp_path / "src" / "worker"
    shutil.copytree(WORKER, src)
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "worker: initial")
    sha = git(src, "rev-parse", "HEAD")
    infra, _ = make_repo(tmp_path / "infra", build_engine.url, WORKER_COMPOSE.format(image=f"{registry}/worker:none"),
                         node=node, extra_files={"datacenters/test/datacenter.yml": f"registry: {registry}\n"})
    before = git(infra, "rev-parse", "HEAD")
    tokens_file = tmp_path / "cfg" / "tokens.json"
    store = TokenStore(tokens_file)
    reader, oncall = store.add("reader", "read"), store.add("oncall", "read,lock")
    config = tmp_path / "cfg" / "serve.yml"
    config.write_text(f"hooks:\n  worker-ci:\n    action: release\n    source: {src}\n    branch: main\n"
                      f"    builder: go\n    engine: {build_engine.url}\n    targets: [test/{node}]\n"
                      f"    secret: {SECRET}\n")
    push = {"ref": "refs/heads/main", "before": "0" * 40, "after": sha, "pusher": {"name": "ada"}}
    try:
        with ServeProcess(infra, tokens_file, "--config", str(config), "--no-consul", "--sync-interval", "1",
                          "--status-interval", "1") as server:
            # refused before anything is queued: a wrong signature, a payload without its commit; ignored: a branch
            r = _push_hook(server, push, "d-1", secret="not-the-secret-at-all")
            assert r.status_code == 401, r.text
            r = _push_hook(server, {"ref": "refs/heads/main"}, "d-2")
            assert r.status_code == 400 and r.json()["error"].startswith("after: required"), r.text
            r = _push_hook(server, {**push, "ref": "refs/heads/feature"}, "d-3")
            assert r.status_code == 202 and r.json() == {"job": None, "ignored": "refs/heads/feature is not "
                                                         "refs/heads/main, the branch this hook releases: nothing built"}
            assert api(server, "GET", "/api/v1/jobs", reader).json() == {"jobs": []}

            # a commit the source does not have: the job fails with one line, nothing built
            missing = "f" * 40
            r = _push_hook(server, {**push, "after": missing}, "d-4")
            job = wait_job(server, reader, r.json()["job"])
            assert job["state"] == "failed" and job["error"] == f"{src}: no commit {missing} (pushed to " \
                                                                "refs/heads/main): nothing built", job

            # the pushed commit: built, pushed, deployed, committed as the hook with the source's sha
            r = _push_hook(server, push, "d-5")
            assert r.status_code == 202, r.text
            job = _wait_release(server, reader, r.json()["job"])
            ref = f"{registry}/worker:{sha[:12]}"
            assert job["state"] == "ok", job
            assert job["kind"] == "release" and job["result"]["image"]["ref"] == ref
            assert any(line.startswith(f"building {sha[:12]}") for line in job["lines"])
            assert any(line.startswith("push: ") for line in job["lines"]), job["lines"]
            assert f"test/{node}: {node}-worker is healthy" in job["lines"], job["lines"]
            assert registry_api.has_tag(registry, "worker", sha[:12])
            (container,) = [c for c in managed(client, node) if c.status == "running"]
            assert container.attrs["Config"]["Image"] == ref
            assert client.images.get(ref).labels["org.opencontainers.image.revision"] == sha
            assert git(infra, "rev-list", "--count", f"{before}..HEAD") == "1"
            assert git(infra, "log", "-1", "--format=%an <%ae>") == "hook:worker-ci <hook-worker-ci@deployer-serve>"
            message = git(infra, "log", "-1", "--format=%B")
            assert message.startswith(f"deploy test/{node}/worker: {registry}/worker:none -> {ref}\n\n"
                                      f"webhook worker-ci: push to main at {sha[:12]} by ada\n\n"
                                      f"Built from {src} at commit {sha}."), message
            assert _push_hook(server, push, "d-5").status_code == 409  # the same delivery again: a replay

            # a commit that does not compile: the job fails with the compiler's line, nothing committed or changed
            main = src / "main.go"
            main.write_text(main.read_text().replace('"square": n * n})', '"square": n * n}'))
            git(src, "commit", "-q", "-am", "worker: a compile error")
            broken = git(src, "rev-parse", "HEAD")
            head = git(infra, "rev-parse", "HEAD")
            job = _wait_release(server, reader, _push_hook(server, {**push, "after": broken}, "d-6").json()["job"])
            assert job["state"] == "failed" and "syntax error" in job["error"], job
            assert job["error"].startswith("go build of ") and str(tmp_path / "src") in job["error"] \
                and "/checkouts/" not in job["error"], job["error"]
            assert any("main.go:" in line and "syntax error" in line for line in job["lines"][:-1]), job["lines"]
            assert not registry_api.has_tag(registry, "worker", broken[:12])
            assert git(infra, "rev-parse", "HEAD") == head and git(infra, "status", "--porcelain") == ""
            (still,) = [c for c in managed(client, node) if c.status == "running"]
            assert still.id == container.id

            # a manual lock on the node stops a release before it builds
            r = api(server, "POST", "/api/v1/locks", oncall, json={"target": f"test/{node}", "reason": "db migration",
                                                                  "action": "acquire"})
            assert wait_job(server, oncall, r.json()["job"])["state"] == "ok"
            git(src, "revert", "--no-edit", "HEAD")
            fixed = git(src, "rev-parse", "HEAD")
            job = wait_job(server, reader, _push_hook(server, {**push, "after": fixed}, "d-7").json()["job"])
            assert job["state"] == "failed" and "db migration" in job["error"] and "oncall" in job["error"], job
            assert not any(line.startswith("push: ") for line in job["lines"])
            assert git(infra, "rev-parse", "HEAD") == head
    finally:
        remove_node_containers(client, node)
        if not cache_existed:  # test_build's first build must be cold, whatever ran before it
            with contextlib.suppress(Exception):
                client.volumes.get("deployer-cache-go").remove(force=True)
