"""deployer serve's pure parts: tokens and scopes, sessions and CSRF, the failed-auth limit, webhook
signatures and replays, request validation, the fleet model from a captured Consul agent, the event
broker and its SSE encoding; and the application in-process (Starlette's test client, no network)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from deployer.errors import ApiError, ServeConfigError, TokenFileError, TokenNameError
from deployer.ops.locks import LockStatus
from deployer.ops.results import StatusRow
from deployer.serve import auth, fleet, validate, webhook
from deployer.serve.events import EventBroker, sse

FIXTURES = Path(__file__).parent / "fixtures" / "serve"


# -- tokens --------------------------------------------------------------------------------


def test_a_token_is_shown_once_and_stored_as_its_sha256(tmp_path):
    store = auth.TokenStore(tmp_path / "cfg" / "tokens.json")
    token = store.add("ci-bot", "deploy,read")
    assert token.startswith("dps_") and len(token) == 4 + 43
    text = store.path.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert json.loads(text)["tokens"][0]["scopes"] == ["read", "deploy"]  # in SCOPES order
    identity = store.verify(token)
    assert identity == auth.Identity("ci-bot", ("read", "deploy"))
    assert identity.author == "ci-bot <ci-bot@deployer-serve>"
    assert store.verify(token + "x") is None and store.verify("") is None
    assert store.add("admin", "admin") != token


def test_scopes_admin_allows_everything_others_only_themselves():
    reader = auth.Identity("r", ("read",))
    assert reader.allows("read") and not reader.allows("deploy") and not reader.allows("lock")
    assert all(auth.Identity("a", ("admin",)).allows(s) for s in auth.SCOPES)
    assert auth.parse_scopes("lock, read") == ("read", "lock")
    for bad, message in (("", "give one or more"), ("read,,deploy", "give one or more"),
                         ("write", "unknown scope 'write'")):
        with pytest.raises(TokenNameError, match=message):
            auth.parse_scopes(bad)


def test_token_names_and_removal(tmp_path):
    store = auth.TokenStore(tmp_path / "tokens.json")
    token = store.add("a.b-c_1", "read")
    with pytest.raises(TokenNameError, match="exists"):
        store.add("a.b-c_1", "read")
    for bad in ("", "-x", "has space", "x" * 65, "a<b>"):
        with pytest.raises(TokenNameError, match="use 1-64 letters"):
            store.add(bad, "read")
    assert store.verify_name("a.b-c_1")
    store.remove("a.b-c_1")
    assert store.verify(token) is None and not store.verify_name("a.b-c_1")
    with pytest.raises(TokenNameError, match="no token named"):
        store.remove("a.b-c_1")


def test_a_tokens_file_others_can_read_or_that_is_not_ours_is_refused(tmp_path):
    store = auth.TokenStore(tmp_path / "tokens.json")
    store.add("x", "read")
    os.chmod(store.path, 0o644)
    with pytest.raises(TokenFileError, match=r"readable or writable by others \(mode 0644\): chmod 600"):
        store.entries()
    store.path.write_text('{"tokens": [{"name": "x"}]}')
    os.chmod(store.path, 0o600)
    with pytest.raises(TokenFileError, match="not a tokens file"):
        auth.TokenStore(store.path).entries()
    assert auth.TokenStore(tmp_path / "none.json").entries() == []


def test_the_store_reads_the_file_again_when_it_changes(tmp_path):
    serving = auth.TokenStore(tmp_path / "tokens.json")
    assert serving.entries() == []
    token = auth.TokenStore(tmp_path / "tokens.json").add("late", "read")  # another process: token add
    assert serving.verify(token).name == "late"


def test_default_tokens_path_follows_xdg():
    assert auth.default_tokens_path({"XDG_CONFIG_HOME": "/c"}) == Path("/c/deployer/tokens.json")


# -- the failed-auth limit ---------------------------------------------------------------------


def test_rate_limit_counts_failures_in_a_window():
    limiter = auth.RateLimiter(limit=3, window=60)
    for t in (0, 1, 2):
        assert limiter.retry_after("a", now=t) is None
        limiter.failed("a", now=t)
    assert limiter.retry_after("a", now=3) == pytest.approx(57)
    assert limiter.retry_after("b", now=3) is None  # another address
    assert limiter.retry_after("a", now=60.5) is None  # the first failure left the window


# -- webhooks ------------------------------------------------------------------------------------


def test_signature_is_githubs_hmac_sha256():
    secret, body = b"It's a Secret to Everybody", b"Hello, World!"
    # the example of GitHub's documentation on validating webhook deliveries
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert webhook.sign(secret, body) == expected
    assert webhook.signature_ok(secret, body, expected)
    assert not webhook.signature_ok(secret, body + b" ", expected)
    assert not webhook.signature_ok(b"other", body, expected)
    assert not webhook.signature_ok(secret, body, None)
    assert not webhook.signature_ok(secret, body, expected.replace("sha256=", "sha1="))


def _config(tmp_path, text):
    path = tmp_path / "serve.yml"
    path.write_text(text)
    return path


def test_hook_config_read_and_refused(tmp_path):
    (tmp_path / "s").write_text("0123456789abcdef-secret\n")
    hooks = webhook.read_config(_config(tmp_path, f"hooks:\n  web:\n    target: prod/web1/web\n"
                                                  f"    image: reg:5000/web\n    secret_file: {tmp_path / 's'}\n"))
    assert hooks["web"] == webhook.Hook("web", "prod/web1/web", "reg:5000/web", b"0123456789abcdef-secret")
    for text, message in (
        ("hooks:\n  web:\n    target: a\n    image: x\n    secret: short\n", "at least 16 bytes"),
        ("hooks:\n  web:\n    target: a\n    image: x\n", "exactly one of secret, secret_file"),
        ("hooks:\n  web:\n    image: x\n    secret: 0123456789abcdefg\n", "hooks.web.target: required"),
        ("hooks:\n  web:\n    target: a\n    image: UPPER\n    secret: 0123456789abcdefg\n", "hooks.web.image"),
        ("hooks:\n  web:\n    target: a\n    image: x\n    secret: 0123456789abcdefg\n    when: push\n",
         "hooks.web.when: unknown key"),
        ("alerts: {}\n", "alerts: unknown key"),
        ("hooks: [\n", "not YAML"),
    ):
        with pytest.raises(ServeConfigError, match=message):
            webhook.read_config(_config(tmp_path, text))


def test_hook_image_from_the_payload():
    hook = webhook.Hook("web", "prod/web1/web", "reg:5000/web", b"s" * 16)
    assert hook.image_for({"tag": "1.5"}) == "reg:5000/web:1.5"
    assert hook.image_for({"image": "reg:5000/web:2"}) == "reg:5000/web:2"
    with pytest.raises(ApiError, match="deploys reg:5000/web, not reg:5000/evil") as caught:
        hook.image_for({"image": "reg:5000/evil:1"})
    assert caught.value.status == 403
    with pytest.raises(ApiError, match="needs an image or a tag"):
        hook.image_for({})
    assert webhook.Hook("w", "t", "reg/web:stable", b"s" * 16).image_for({}) == "reg/web:stable"


def test_a_delivery_is_accepted_once_even_across_restarts(tmp_path):
    hooks = {"web": webhook.Hook("web", "t", "reg/web", b"0123456789abcdef")}
    body = b'{"tag": "1"}'
    headers = {"x-hub-signature-256": webhook.sign(b"0123456789abcdef", body), "x-github-delivery": "d1"}
    receivers = webhook.Receivers(hooks, tmp_path)
    assert receivers.accept("web", headers, body).name == "web"
    with pytest.raises(ApiError, match="received before") as caught:
        receivers.accept("web", headers, body)
    assert caught.value.status == 409
    with pytest.raises(ApiError, match="received before"):
        webhook.Receivers(hooks, tmp_path).accept("web", headers, body)  # a new process reads the ids
    assert stat.S_IMODE((tmp_path / "webhook-deliveries.json").stat().st_mode) == 0o600
    for name, hdrs, status in (("web", {**headers, "x-github-delivery": ""}, 400),
                               ("nope", {**headers, "x-github-delivery": "d2"}, 401),
                               ("web", {**headers, "x-github-delivery": "d3", "x-hub-signature-256": "sha256=00"}, 401)):
        with pytest.raises(ApiError) as caught:
            receivers.accept(name, hdrs, body)
        assert caught.value.status == status


# -- request bodies -----------------------------------------------------------------------------


def test_deploy_request():
    assert validate.deploy_request({"image": "web:2", "targets": "prod/web1", "reason": " ship it "}) == \
        {"image": "web:2", "targets": ["prod/web1"], "reason": "ship it"}
    for body, message in (
        ([], "must be a JSON object, not list"),
        (None, "not null"),
        ({"targets": ["a"], "reason": "r"}, "image: required"),
        ({"image": "Web:2", "targets": ["a"], "reason": "r"}, "image: "),
        ({"image": "web:2", "targets": [], "reason": "r"}, "targets: must be a non-empty list"),
        ({"image": "web:2", "targets": ["a b"], "reason": "r"}, r"targets\[0\]"),
        ({"image": "web:2", "targets": ["a"]}, "reason: required"),
        ({"image": "web:2", "targets": ["a"], "reason": "  "}, "reason: must be a non-empty string"),
        ({"image": "web:2", "targets": ["a"], "reason": "a\x1b[31m"}, "control characters"),
        ({"image": "web:2", "targets": ["a"], "reason": "r", "force": True}, "force: unknown field"),
    ):
        with pytest.raises(ApiError, match=message) as caught:
            validate.deploy_request(body)
        assert caught.value.status == 400


def test_rollback_and_lock_requests():
    assert validate.rollback_request({"commit": "abc123", "reason": "bad"}) == {"commit": "abc123", "reason": "bad"}
    assert validate.rollback_request({"targets": ["p/w/web"], "reason": "r"})["targets"] == ["p/w/web"]
    with pytest.raises(ApiError, match="give targets"):
        validate.rollback_request({"reason": "r"})
    with pytest.raises(ApiError, match="hexadecimal"):
        validate.rollback_request({"commit": "HEAD~1", "reason": "r"})
    assert validate.lock_request({"target": "p/w1", "reason": "db"}) == {"target": "p/w1", "action": "acquire",
                                                                         "reason": "db"}
    assert validate.lock_request({"target": "p/w1", "action": "release"})["reason"] == ""
    with pytest.raises(ApiError, match="reason: required"):
        validate.lock_request({"target": "p/w1"})
    with pytest.raises(ApiError, match="action: must be acquire or release"):
        validate.lock_request({"target": "p/w1", "action": "steal"})


def test_decode_json_says_where_it_is_malformed():
    assert validate.decode_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ApiError, match="malformed JSON: Expecting ',' delimiter at line 2 column 1"):
        validate.decode_json(b'{"a": 1\n"b": 2}')
    with pytest.raises(ApiError, match="empty"):
        validate.decode_json(b"  ")
    with pytest.raises(ApiError, match="not UTF-8"):
        validate.decode_json(b'{"a": "\xff"}')


# -- the fleet model ------------------------------------------------------------------------------


def test_consul_checks_by_target_from_a_captured_agent():
    agent = json.loads((FIXTURES / "consul_agent.json").read_text())
    checks = fleet.consul_checks(agent["services"], agent["checks"])
    assert sorted(checks) == ["prod/web1/api", "prod/web1/web", "prod/web2/web"]  # not the foreign "other"
    assert fleet.worst_health(c["status"] for c in checks["prod/web1/web"]) == "passing"
    assert fleet.worst_health(c["status"] for c in checks["prod/web2/web"]) == "critical"
    assert "connection refused" in checks["prod/web2/web"][0]["output"]
    assert fleet.worst_health(c["status"] for c in checks["prod/web1/api"]) == "critical"  # maintenance
    assert fleet.worst_health([]) == "unknown" and fleet.worst_health(["warning", "passing"]) == "warning"


def test_fleet_model_joins_status_locks_health_and_deploys():
    agent = json.loads((FIXTURES / "consul_agent.json").read_text())
    layout = [("prod", "127.0.0.1:8500", [("web1", ["api", "web"]), ("web2", ["web"])]),
              ("dev", None, [("dev1", ["web"])])]
    rows = [StatusRow("prod/web1/web", "web:2", "web1-web", "web:2", "healthy", True),
            StatusRow("prod/web1/api", "api:1", None, None, "missing", False, "no container"),
            StatusRow("prod/web2/web", "web:2", "web2-web", "web:1", "drifted", False, "image: web:1 -> web:2"),
            StatusRow("dev/dev1/web", "web:3", None, None, "unreachable", False, "cannot connect")]
    locks = [LockStatus("prod/web1", "consul", True, {"who": "oncall", "reason": "db", "manual": True}),
             LockStatus("prod/web2", "consul", False, {}), LockStatus("dev/dev1", "engine", False, {}, error="x")]

    class Entry:
        def __init__(self, commit, targets, image):
            self.commit, self.short, self.time, self.author, self.action = commit, commit[:7], "t", "ci-bot", "deploy"
            self.targets, self.image, self.previous_image, self.reason = targets, image, None, "why"

    deploys = fleet.last_deploys([Entry("bbbbbbbbb", ["prod/web1/web"], "web:2"),
                                  Entry("aaaaaaaaa", ["prod/web1/web", "prod/web2/web"], "web:1")])
    health = {"prod": fleet.consul_checks(agent["services"], agent["checks"]), "dev": None}
    model = fleet.fleet_model(layout, rows, locks, health, deploys)
    prod, dev = model
    web1, web2 = prod["nodes"]
    assert [s["name"] for s in web1["services"]] == ["api", "web"]
    api_svc, web_svc = web1["services"]
    assert web_svc["health"] == "passing" and web_svc["drift"] is False and web_svc["last_deploy"]["short"] == "bbbbbbb"
    assert api_svc["state"] == "missing" and api_svc["health"] == "critical" and api_svc["drift"] is True
    assert web1["lock"]["holder"]["who"] == "oncall" and web1["lock"]["manual"] is True
    assert web2["lock"] is None and web2["services"][0]["last_deploy"]["commit"] == "aaaaaaaaa"
    assert web2["services"][0]["health"] == "critical" and web2["services"][0]["running_image"] == "web:1"
    assert dev["nodes"][0]["lock"]["error"] == "x" and dev["nodes"][0]["services"][0]["health"] == "unknown"
    assert fleet.summary(model) == {"services": 4, "drifted": 3, "critical": 2, "locked": 1}
    # Consul unreachable: every service of that dc is unknown, the error is on the dc
    model = fleet.fleet_model(layout, rows, locks, {"prod": "Consul at x: connection refused"}, deploys)
    assert model[0]["consul_error"] == "Consul at x: connection refused"
    assert {s["health"] for n in model[0]["nodes"] for s in n["services"]} == {"unknown"}


# -- events ----------------------------------------------------------------------------------------


def test_sse_is_one_data_line_of_json():
    text = sse({"type": "job", "t": 1.0, "id": 7, "line": "a\nb <script>"}).decode()
    assert text == 'id: 7\nevent: job\ndata: {"type":"job","t":1.0,"id":7,"line":"a\\nb <script>"}\n\n'


def test_broker_delivers_in_order_filters_and_replays_since():
    broker = EventBroker(keep=10)
    heard = []
    broker.listen(heard.append)
    broker.publish("job", line="one")

    async def main():
        sub = broker.subscribe(["deploy"], since=0)
        everything = broker.subscribe(None, since=1)
        broker.publish("job", line="two")
        broker.publish("deploy", ok=True)
        got = [await sub.get(1)]
        assert await sub.get(0.05) is None
        all_ = [await everything.get(1), await everything.get(1)]
        sub.close()
        everything.close()
        return got, all_

    got, all_ = asyncio.run(main())
    assert [e["type"] for e in got] == ["deploy"]
    assert [e["id"] for e in all_] == [2, 3]
    assert [e["id"] for e in heard] == [1, 2, 3]
    assert [e["type"] for e in broker.recent(["job"])] == ["job", "job"] and broker.subscribers == 0


# -- the application in-process ------------------------------------------------------------------------


@pytest.fixture
def app_client(tmp_path):
    from starlette.testclient import TestClient

    from deployer.serve.app import create_app
    from deployer.serve.state import ServeSettings, ServeState

    (tmp_path / "repo").mkdir()
    state = ServeState(ServeSettings(root=tmp_path / "repo", tokens=tmp_path / "tokens.json", max_body=1000))
    tokens = {n: state.tokens.add(n, s) for n, s in (("r", "read"), ("d", "read,deploy"))}
    state.fleet._snapshot = {"generated": 1.0, "datacenters": [], "summary": fleet.summary([]), "error": None}
    app = create_app(state, start=False)
    with TestClient(app, base_url="http://testserver") as client:
        yield client, state, tokens


def test_app_errors_are_one_json_line(app_client):
    client, state, tokens = app_client
    r = client.get("/api/v1/status")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.text == '{"error": "no token: send \'Authorization: Bearer TOKEN\' or sign in"}\n'
    ok = client.get("/api/v1/status", headers={"Authorization": f"Bearer {tokens['r']}"})
    assert ok.status_code == 200 and ok.json()["jobs"] == {"running": None, "queued": 0}
    r = client.post("/api/v1/deploy", content=b"x" * 1001, headers={"Authorization": f"Bearer {tokens['d']}"})
    assert r.status_code == 413 and r.json() == {"error": "the body is over 1000 bytes"}
    r = client.post("/api/v1/deploy", content=b"{", headers={"Authorization": f"Bearer {tokens['d']}"})
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON")
    r = client.get("/api/v1/jobs/nope", headers={"Authorization": f"Bearer {tokens['r']}"})
    assert r.status_code == 404 and "no job 'nope'" in r.json()["error"]
    assert client.get("/nowhere").status_code == 404
    r = client.get("/api/v1/status", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]


def test_session_cookie_and_csrf(app_client):
    from starlette.requests import Request

    client, state, tokens = app_client

    def request(method="POST", cookies="", headers=()):
        raw = [(b"host", b"testserver"), *[(k.encode(), v.encode()) for k, v in headers]]
        if cookies:
            raw.append((b"cookie", cookies.encode()))
        scope = {"type": "http", "method": method, "path": "/", "headers": raw, "query_string": b"",
                 "client": ("127.0.0.1", 1), "app": client.app, "scheme": "http", "server": ("testserver", 80)}
        return Request(scope)

    session = auth.sign_in(request(), tokens["d"])
    cookie = f"{auth.SESSION_COOKIE}={session.id}"
    assert auth.require(request("GET", cookie), "read").via == "session"
    with pytest.raises(ApiError, match="CSRF") as caught:
        auth.require(request("POST", cookie), "deploy")
    assert caught.value.status == 403
    good = (("x-csrf-token", session.csrf),)
    assert auth.require(request("POST", cookie, good), "deploy").name == "d"
    assert auth.require(request("POST", cookie), "deploy", csrf_value=session.csrf).name == "d"
    with pytest.raises(ApiError, match="cross-origin"):
        auth.require(request("POST", cookie, (*good, ("origin", "http://evil.example"))), "deploy")
    assert auth.require(request("POST", cookie, (*good, ("origin", "http://testserver"))), "deploy")
    assert auth.csrf_token(request("GET", cookie)) == session.csrf
    state.tokens.remove("d")  # the token's removal ends its sessions
    with pytest.raises(ApiError, match="removed"):
        auth.require(request("GET", cookie), "read")
    with pytest.raises(ApiError, match="unknown token"):
        auth.sign_in(request(), "dps_nope")

    from starlette.responses import Response
    response = Response()
    auth.set_session_cookie(response, request(), state.sessions.create(auth.Identity("r", ("read",))))
    header = response.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header and "path=/" in header and "secure" not in header


def test_the_openapi_document_names_every_api_route_and_only_those(app_client):
    client, state, tokens = app_client
    doc = client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {tokens['r']}"}).json()
    assert doc["openapi"] == "3.1.0"
    routes = {(r.path, m.lower()) for r in client.app.routes if r.path.startswith("/api/")
              for m in r.methods - {"HEAD"}}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == routes
    assert doc["paths"]["/api/v1/deploy"]["post"]["security"] == [{"bearer": ["deploy"]}]
