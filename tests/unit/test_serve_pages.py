"""The dashboard's pages without engines: the fleet rows from a snapshot, the feed's words, escaping of
crafted values, sign-in and its redirects, CSRF and Origin refusals, and the rollback form's checks,
through Starlette's in-process client over a real ServeState (a local git repository, a tokens file)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from deployer.serve import page_data
from deployer.serve.app import create_app
from deployer.serve.pages import _local_path
from deployer.serve.state import ServeSettings, ServeState

SCRIPT = "<script>window.pwned=1</script>"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # what chromium asks for
IMG = '"><img src=x onerror="window.pwned=2">'


def snapshot(health="passing", *, checks=None, lock=None, consul_error=None, sync=None, drift=False, state="healthy"):
    return {
        "generated": 1700000000.0, "commit": "a" * 40, "error": None,
        "sync": sync or {"ok": True, "error": None, "last_ok": 1700000000.0},
        "datacenters": [{"name": "test", "consul": "127.0.0.1:8500", "consul_error": consul_error, "nodes": [
            {"name": "n1", "target": "test/n1", "lock": lock, "services": [
                {"name": "web", "target": "test/n1/web", "image": "web:2", "running_image": "web:2",
                 "state": state, "detail": "", "drift": drift, "health": health,
                 "checks": checks if checks is not None else [{"name": "http", "status": health, "output": "ok"}],
                 "last_deploy": {"short": "abc1234", "commit": "abc1234" + "0" * 33}}]},
            {"name": "n2", "target": "test/n2", "lock": None, "services": []}]}],
    }


class FakeFleet:
    def __init__(self, snap):
        self.snap = snap

    def snapshot(self, wait=0):
        return self.snap


class FakeState:
    def __init__(self, snap, root="/nonexistent"):
        self.fleet = FakeFleet(snap)
        self.root = Path(root)

        class Sync:
            def status(self):
                return {"ok": None}

        self.sync = Sync()


# --- the fleet rows -------------------------------------------------------------------------------


def test_fleet_rows_carry_health_lock_drift_and_the_node_without_services():
    lock = {"held": True, "manual": True, "holder": {"who": "bob", "host": "ci", "reason": "db migration"},
            "error": None}
    view = page_data.fleet_view(FakeState(snapshot("critical", lock=lock, drift=True,
                                                   checks=[{"name": "http", "status": "critical", "output": "503"}])))
    (dc,) = view["datacenters"]
    web, empty = dc["rows"]
    assert (web["key"], web["image"], web["running"], web["commit"], web["health"], web["health_class"]) == \
        ("test/n1/web", "web:2", "web:2", "abc1234", "critical", "critical")
    assert web["lock"] == "manual lock by bob@ci: db migration" and web["drift"] == "drifted"
    assert web["checks"] == "http: 503" and web["href"] == "/services/test/n1/web"
    assert (empty["key"], empty["service"]) == ("test/n2", None)
    assert view["head"] == "a" * 12 and view["sync_error"] == ""


def test_an_unknown_health_word_a_consul_error_and_a_failed_pull_show_as_such():
    snap = snapshot("bogus", consul_error="Consul at 127.0.0.1:8500: connection refused",
                    sync={"ok": False, "error": "git fetch failed: no route", "last_ok": None})
    view = page_data.fleet_view(FakeState(snap))
    web = view["datacenters"][0]["rows"][0]
    assert (web["health"], web["health_class"]) == ("unknown", "unknown")
    assert view["datacenters"][0]["consul_error"].endswith("connection refused")
    assert view["sync_error"] == "git fetch failed: no route"


def test_a_lock_that_cannot_be_read_is_unknown_with_the_reason_beside():
    row = page_data.fleet_view(FakeState(snapshot(lock={"held": False, "error": "Consul down"})))["datacenters"][0]
    assert (row["rows"][0]["lock"], row["rows"][0]["lock_error"]) == ("unknown", "Consul down")


def test_feed_lines_name_the_outcome_and_the_fields_in_order():
    assert page_data.describe({"type": "rollback", "ok": True, "targets": ["a/b/c"], "commit": "abc", "who": "alice",
                               "reason": "down"}) == "ok · targets a/b/c · commit abc · who alice · reason down"
    assert page_data.describe({"type": "lock", "ok": False, "target": "a/b", "error": "held"}) == \
        "failed · target a/b · error held"
    assert page_data.describe({"type": "sync", "ok": True, "error": None}) == "ok"
    assert page_data.describe({"type": "alert", "kind": "health", "state": "critical",
                               "text": "test: service web is down"}) == "state critical · test: service web is down"
    assert page_data.describe({"type": "drift", "node": "test/n1", "state": "drifted"}) == \
        "state drifted · node test/n1"


def test_job_view_shows_the_commit_or_the_error():
    job = {"id": "x-1", "kind": "rollback", "params": {"targets": ["a/b/c"], "to": "f" * 40}, "who": "alice",
           "reason": "r", "state": "ok", "lines": ["one"], "result": {"commit": "c" * 40}, "error": None}
    view = page_data.job_view(job)
    assert (view["result"], view["targets"], view["author"], view["state_class"]) == \
        ("commit " + "c" * 12, "a/b/c", "alice", "ok")
    assert page_data.job_view({**job, "state": "failed", "error": "node locked"})["result"] == "node locked"


@pytest.mark.parametrize("text, expected", [
    ("/", "/"), ("/services/a/b/c", "/services/a/b/c"), ("/jobs/1?x=2", "/jobs/1?x=2"),
    ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("javascript:alert(1)", "/"), ("relative", "/"),
])
def test_after_sign_in_only_a_path_on_this_site(text, expected):
    assert _local_path(text) == expected


# --- the application, in process -------------------------------------------------------------------


def _git(root: Path, *args: str, message_env: dict | None = None) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def app_state(tmp_path):
    root = tmp_path / "repo"
    node = root / "datacenters" / "test" / "n1"
    node.mkdir(parents=True)
    (node / "node.yml").write_text("docker: unix:///nonexistent.sock\n")
    compose = node / "docker-compose.yml"
    compose.write_text("services:\n  web:\n    image: web:1\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "initial infrastructure")
    compose.write_text("services:\n  web:\n    image: web:2\n")
    _git(root, "commit", "-q", "-am", f"deploy web:2 {SCRIPT} {IMG}")
    state = ServeState(ServeSettings(root=root, tokens=tmp_path / "tokens.json", consul=False))
    token = state.tokens.add("alice", "read,deploy")
    reader = state.tokens.add("carol", "read")
    snap = snapshot("critical", checks=[{"name": f"check {SCRIPT}", "status": "critical", "output": IMG}])
    state.fleet.snapshot = lambda wait=0: {**snap, "sync": state.sync.status()}
    submitted = []

    class Job:
        id = "j-1"

    def submit(kind, params, identity, reason):
        submitted.append((kind, params, identity.name, reason))
        return Job()

    state.jobs.submit = submit
    app = create_app(state, start=False)
    return {"state": state, "app": app, "token": token, "reader": reader, "submitted": submitted, "root": root,
            "old": _git(root, "rev-parse", "HEAD~1")}


def signed_in(app_state, token_key="token") -> TestClient:
    client = TestClient(app_state["app"], base_url="http://testserver", headers={"Accept": BROWSER})
    done = client.post("/login", data={"token": app_state[token_key], "next": "/services/test/n1/web"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/services/test/n1/web"
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return client


PAGES = ("/", "/activity", "/services/test/n1/web", f"/services/test/n1/web/rollback?to={'0' * 40}", "/jobs/x")


def test_pages_without_a_session_send_a_browser_to_sign_in_and_data_routes_answer_401(app_state):
    client = TestClient(app_state["app"], headers={"Accept": BROWSER})
    for path in PAGES:
        done = client.get(path, follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"].startswith("/login?next=/"), path
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?next=/"
    assert client.get("/fleet.json").status_code == 401
    assert client.get("/events").status_code == 401
    assert client.get("/static/dashboard.js").status_code == 200  # no data in it
    assert client.get("/login").status_code == 200


def test_a_client_that_is_not_a_browser_gets_the_apis_one_line_json_errors(app_state):
    client = TestClient(app_state["app"])
    for path in PAGES:
        done = client.get(path, follow_redirects=False)
        assert done.status_code == 401 and list(done.json()) == ["error"], path
    for path in ("/logout", "/services/test/n1/web/rollback", "/login"):
        done = client.post(path, data={"token": "dps_nope"}, follow_redirects=False)
        assert done.status_code == 401 and list(done.json()) == ["error"], path


def test_a_wrong_token_does_not_sign_in(app_state):
    client = TestClient(app_state["app"], headers={"Accept": BROWSER})
    done = client.post("/login", data={"token": "dps_nope"}, follow_redirects=False)
    assert done.status_code == 401 and "That token is not valid." in done.text and "set-cookie" not in done.headers


def test_crafted_values_are_escaped_and_the_page_forbids_inline_script(app_state):
    client = signed_in(app_state)
    page = client.get("/services/test/n1/web")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert SCRIPT not in page.text and IMG not in page.text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page.text
    assert "&#34;&gt;&lt;img src=x onerror=&#34;window.pwned=2&#34;&gt;" in page.text
    # no script element but the page's own file
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/dashboard.js">']
    fleet = client.get("/")
    # the failing check's name and output, in the health cell's title
    assert SCRIPT not in fleet.text and IMG not in fleet.text
    assert 'title="check &lt;script&gt;window.pwned=1&lt;/script&gt;: &#34;&gt;&lt;img' in fleet.text


def test_the_static_script_writes_text_only():
    text = (Path(page_data.__file__).parent / "static" / "dashboard.js").read_text()
    script = "\n".join(line for line in text.splitlines() if not line.strip().startswith("//"))  # code, not comments
    assert "textContent" in script
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.write" not in script and "eval(" not in script


def test_rollback_form_posts_without_or_with_a_wrong_token_or_from_another_origin_are_refused(app_state):
    client = signed_in(app_state)
    form = client.get(f"/services/test/n1/web/rollback?to={app_state['old']}")
    assert form.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    fields = {"to": app_state["old"], "reason": "web:2 is down", "confirm": "yes"}
    url = "/services/test/n1/web/rollback"
    assert client.post(url, data=fields, follow_redirects=False).status_code == 403
    assert client.post(url, data={**fields, "csrf_token": "wrong"}, follow_redirects=False).status_code == 403
    other = client.post(url, data={**fields, "csrf_token": csrf}, headers={"Origin": "http://evil.example"},
                        follow_redirects=False)
    assert other.status_code == 403 and "cross-origin" in other.text
    assert app_state["submitted"] == []
    done = client.post(url, data={**fields, "csrf_token": csrf}, headers={"Origin": "http://testserver"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/jobs/j-1"
    assert app_state["submitted"] == [("rollback", {"targets": ["test/n1/web"], "to": app_state["old"]}, "alice",
                                       "web:2 is down")]


@pytest.mark.parametrize("change, status, words", [
    ({"reason": "  "}, 400, "Give a reason"),
    ({"confirm": ""}, 400, "Tick the box"),
    ({"reason": "x" * 2001}, 400, "longer than 2000"),
    ({"to": "0" * 40}, 400, "is not a version of test/n1/web"),
    ({"to": "HEAD"}, 400, "is not a version"),
])
def test_rollback_form_checks_reason_confirmation_and_version(app_state, change, status, words):
    client = signed_in(app_state)
    form = client.get(f"/services/test/n1/web/rollback?to={app_state['old']}")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    fields = {"to": app_state["old"], "reason": "why", "confirm": "yes", "csrf_token": csrf, **change}
    done = client.post("/services/test/n1/web/rollback", data=fields, follow_redirects=False)
    assert done.status_code == status and words in done.text
    assert app_state["submitted"] == []


def test_the_current_version_cannot_be_rolled_back_to_and_read_only_tokens_see_no_action(app_state):
    client = signed_in(app_state)
    head = _git(app_state["root"], "rev-parse", "HEAD")
    assert client.get(f"/services/test/n1/web/rollback?to={head}").status_code == 400
    reader = signed_in(app_state, "reader")
    page = reader.get("/services/test/n1/web")
    assert page.status_code == 200 and "Roll back to this version" not in page.text
    refused = reader.get(f"/services/test/n1/web/rollback?to={app_state['old']}")
    assert refused.status_code == 403 and "lacks the &#39;deploy&#39; scope" in refused.text


def test_unknown_service_and_job_are_404_pages(app_state):
    client = signed_in(app_state)
    assert client.get("/services/test/n1/nope").status_code == 404
    assert client.get("/services/test/n1/%3Cscript%3E").status_code == 404
    assert client.get("/jobs/nope").status_code == 404


def test_sign_out_needs_the_csrf_token(app_state):
    client = signed_in(app_state)
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    page = client.get("/")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303



# --- the feed's deploy log, read again only when the fleet's commit moves -------------------------


def _deploy_commit(root: Path, image: str) -> str:
    (root / "f").write_text(image)
    subprocess.run(["git", "-C", str(root), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q",
                    "-m", f"deploy test/n1/web: {image}", "-m",
                    f"Deployer-Action: deploy\nDeployer-Target: test/n1/web\nDeployer-Image: {image}"], check=True)
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_feed_reads_the_deploy_log_once_per_fleet_commit(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    first = _deploy_commit(tmp_path, "web:1")
    snap = snapshot()
    snap["commit"] = first
    state = FakeState(snap, root=tmp_path)
    cache = page_data.DeployLogCache()
    assert [e.image for e in cache.entries(state, 30)] == ["web:1"]
    second = _deploy_commit(tmp_path, "web:2")
    # the snapshot still names the first commit: the kept entries, no git log
    assert [e.image for e in cache.entries(state, 30)] == ["web:1"]
    snap["commit"] = second
    assert [e.image for e in cache.entries(state, 30)] == ["web:2", "web:1"]
    # another limit is another read
    assert [e.image for e in cache.entries(state, 1)] == ["web:2"]
