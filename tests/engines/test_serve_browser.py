"""The dashboard in a real browser: a real `deployer serve` process on a loopback port over a clone of a
real git remote, a real Consul dev agent, a real Docker node, and Debian's headless chromium driven by
Selenium (tests/support/browser.py). Screenshots of the steps go to the artifacts folder
($DEPLOYER_TEST_ARTIFACTS or tests/artifacts/<test>/); docs/serve.md shows some of them.

* sign in, see the fleet, stop a service's container and see its health cell turn red (Consul's check
  fails -> serve's health watch -> a status event -> the cell), roll back from the page (confirm,
  reason) and find the new commit in the page's history and in `git log` of the remote;
* values from commit messages, the rollback's reason and Consul's checks (a check registered on the
  service with a crafted name and output) are shown as text: no script of theirs runs;
* CSRF: a form post without the token, with a wrong one, or from another origin (also from a page on
  another origin in the browser) is refused with 403 and nothing changes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By

from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.registration import agent_services, deregister, owned
from tests.support.consul import ConsulAgent, free_port
from tests.support.repos import (CONSUL_WEB_LABELS, WEB_PUBLISHED, git,
                                 make_repo, managed, remove_node_containers, unique_node)
from tests.support import waiting

WEB1, WEB2 = "deployer-test/web:1", "deployer-test/web:2"
SCRIPT = "<script>window.pwnedScript=1;alert('script')</script>"
IMG = "\"><img src=x onerror=\"window.pwnedImg=1;alert('img')\">"
PAYLOAD = f"{SCRIPT} {IMG}"
TOKEN_NAME = "alice"

COMPOSE = WEB_PUBLISHED + CONSUL_WEB_LABELS


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    return waiting.wait_until(predicate, timeout, interval, what)


class ServeProcess:
    """`deployer serve` as a real process on a free loopback port; stopped by its PID."""

    def __init__(self, clone: Path, tokens: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [sys.executable, "-m", "deployer", "--repo", str(clone), "serve", "--listen", f"127.0.0.1:{self.port}",
                "--tokens", str(tokens), "--no-alerts", *extra]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        http = requests.Session()
        http.trust_env = False

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"deployer serve exited {self.proc.returncode}: {self.tail()}")
            try:
                return http.get(f"{self.url}/login", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(up, 120, 0.1, "deployer serve to answer")  # a loaded machine can take long
        except BaseException:
            self.stop()
            raise

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def deployer(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "deployer", "--repo", str(root), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"deployer {args}: {done.stdout}{done.stderr}"
    return done


@contextmanager
def make_site(engine, consul, tmp_path, *serve_args: str):
    """A remote with one node in dc `test` (Consul on), deployed twice (web:1, then web:2 with a crafted
    message), a clone that `deployer serve` runs over, a token; yields a dict; stops and removes it all."""
    node = unique_node()
    name = f"s{os.urandom(3).hex()}-web"
    files = {f"datacenters/test/{node}/node.yml": f"docker: {engine.unix_url}\naddress: {engine.address}\n",
             "datacenters/test/datacenter.yml": f"consul: {consul.address}\n"}
    seed, _ = make_repo(tmp_path / "seed", engine.unix_url, COMPOSE.format(image=WEB1, name=name), node=node,
                        extra_files=files)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(seed, "push", "-q", str(remote), "main")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    tokens = tmp_path / "config" / "tokens.json"
    catalog = ConsulCatalog(consul.address)
    serve: ServeProcess | None = None
    client = engine.client()
    try:
        deployer(clone, "deploy", WEB1, f"test/{node}", "--settle", "0.2")
        deployer(clone, "deploy", WEB2, f"test/{node}", "--settle", "0.2", "-m", f"release notes {PAYLOAD}")
        token = deployer(clone, "token", "add", TOKEN_NAME, "--scope", "read,deploy", "--tokens", str(tokens)
                         ).stdout.strip()
        # status read again only every minute: a red cell within seconds can only come from Consul's watch
        serve = ServeProcess(clone, tokens, tmp_path / "serve.log", "--status-interval", "60s", *serve_args)
        yield {"node": node, "target": f"test/{node}/web", "remote": remote, "clone": clone, "token": token,
               "serve": serve, "url": serve.url, "client": client, "catalog": catalog, "consul": consul,
               "tmp": tmp_path}
    finally:
        if serve is not None:
            serve.stop()
        remove_node_containers(client, node)
        if consul.proc is not None:
            for sid, entry in agent_services(catalog).items():
                if owned(entry, "test", node):
                    deregister(catalog, sid)
        client.close()


@pytest.fixture
def site(engine, consul_agent, tmp_path):
    with make_site(engine, consul_agent, tmp_path) as made:
        yield made


def remote_log(remote: Path, fmt: str = "%H") -> list[str]:
    out = subprocess.run(["git", "--git-dir", str(remote), "log", f"--format={fmt}%x00"], capture_output=True,
                         text=True, check=True).stdout
    return [e.strip("\n") for e in out.split("\0") if e.strip()]


def api(site) -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    http.headers["Authorization"] = f"Bearer {site['token']}"
    return http


def sign_in(b, url: str, token: str) -> None:
    d = b.driver
    b.get(f"{url}/")
    assert "/login" in d.current_url
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.ID, "sign-in").click()
    b.wait_for(lambda: d.find_element(By.ID, "live").text == "live", 30, what="the event stream to connect")


def cell(b, key: str, field: str):
    for row in b.driver.find_elements(By.CSS_SELECTOR, "tr[data-key]"):
        if row.get_attribute("data-key") == key:
            return row.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]')
    raise AssertionError(f"no row {key}")


def no_script_ran(b) -> None:
    d = b.driver
    assert b.alert_text() is None
    assert d.execute_script("return [typeof window.pwnedScript, typeof window.pwnedImg, typeof window.pwnedReason]"
                            ) == ["undefined"] * 3
    # the payload's <img> was never made an element
    assert d.find_elements(By.CSS_SELECTOR, "main img") == []


@pytest.mark.timeout(900)  # several minutes on a machine with a load average near 70
def test_sign_in_see_a_service_turn_red_and_roll_back_from_the_page(site, browser):
    b, d, url, target = browser, browser.driver, site["url"], site["target"]
    b.get(f"{url}/login")
    b.screenshot("sign-in")
    sign_in(b, url, site["token"])
    assert d.find_element(By.CSS_SELECTOR, ".who b").text == TOKEN_NAME
    b.wait_for(lambda: cell(b, target, "health").text == "passing", 45, what="the service passing in Consul")
    assert cell(b, target, "image").text == WEB2 and cell(b, target, "running").text == WEB2
    b.screenshot("fleet")

    # a crafted Consul check on the service: its name and output are text on the service page
    sid = next(s for s, e in agent_services(site["catalog"]).items() if owned(e, "test", site["node"]))
    c = site["consul"].client()
    # registered critical, then passed with its output: a change of status reaches the catalog (and so
    # serve's health watch) at once, while Consul syncs a change of output alone only every
    # check_update_interval (5 minutes), so a check registered passing could be read before its output
    c.agent.check.register(f"notes {SCRIPT}", check_id=f"{sid}-crafted", service_id=sid,
                           check={"TTL": "10m", "Status": "critical"})
    c.agent.check.ttl_pass(f"{sid}-crafted", notes=f"crafted {IMG}")

    def crafted_check_read():
        row = next(r for r in api(site).get(f"{url}/fleet.json").json()["rows"] if r["key"] == target)
        return {"name": f"notes {SCRIPT}", "status": "passing", "output": f"crafted {IMG}"} in row["checks_list"]

    wait_until(crafted_check_read, 15, 0.1, "serve to read the crafted check")
    b.wait_for(lambda: cell(b, target, "health").text == "passing", 15, what="the page passing again")

    # stop the container: Consul's HTTP check fails, the cell turns red without a reload
    (container,) = [x for x in managed(site["client"], site["node"]) if x.status == "running"]
    container.stop(timeout=2)
    stopped = time.monotonic()
    b.wait_for(lambda: cell(b, target, "health").text == "critical", 20, 0.02, what="the health cell to turn red")
    red = time.monotonic() - stopped
    assert "health-critical" in cell(b, target, "health").get_attribute("class")
    b.screenshot("fleet-critical")
    timing = b.artifacts / "timing.json"
    timing.write_text(json.dumps({"container_stopped_to_red_cell_s": round(red, 3)}) + "\n")
    print(f"\ncontainer stopped -> cell red: {red:.2f}s")
    assert red < 10, f"the cell turned red {red:.1f}s after the container stopped"

    # the service page: history with the crafted message, the crafted check, as text
    d.find_element(By.CSS_SELECTOR, f'a[href="/services/{target}"]').click()
    b.wait_for(lambda: d.find_element(By.ID, "service-name").text == "web", what="the service page")
    rows = d.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, ".image").text for r in rows] == [WEB2, WEB1]
    assert PAYLOAD in rows[0].find_element(By.CSS_SELECTOR, ".message").text
    names = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#checks .check-name")]
    outputs = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#checks .check-output")]
    assert f"notes {SCRIPT}" in names and any(f"crafted {IMG}" in o for o in outputs)
    no_script_ran(b)
    b.screenshot("service-history")

    # roll back to web:1 from the page: the confirmation, a reason, the box
    rows[1].find_element(By.CSS_SELECTOR, "a.rollback").click()
    b.wait_for(lambda: d.find_element(By.ID, "to-image").text == WEB1, what="the confirmation page")
    reason = f"web:2 is down {SCRIPT}"
    d.find_element(By.ID, "reason").send_keys(reason)
    d.find_element(By.ID, "confirm").click()
    b.screenshot("rollback-confirm")
    before = remote_log(site["remote"])
    d.find_element(By.ID, "do-rollback").click()
    b.wait_for(lambda: "/jobs/" in d.current_url, what="the job page")
    first_state = d.find_element(By.ID, "job-state").text
    b.wait_for(lambda: d.find_element(By.ID, "job-state").text in ("ok", "failed"), 90, what="the rollback to end")
    lines = d.find_element(By.ID, "job-lines").text
    assert d.find_element(By.ID, "job-state").text == "ok", lines
    if first_state in ("queued", "running"):  # the page came before the end: the rest of the lines streamed in
        assert int(d.find_element(By.ID, "job-lines").get_attribute("data-streamed") or 0) > 0
    b.wait_for(lambda: d.find_element(By.ID, "job-result").text.startswith("commit "), 30, what="the commit")
    b.screenshot("rollback-job")

    # the new commit: in the remote's log (author = the token, the reason in the message) and on the page
    after = remote_log(site["remote"])
    assert after[1:] == before and len(after) == len(before) + 1
    (entry,) = remote_log(site["remote"], "%an%n%B")[:1]
    assert entry.splitlines()[0] == TOKEN_NAME and reason in entry
    assert d.find_element(By.ID, "job-result").text == f"commit {after[0][:12]}"
    d.find_element(By.ID, "back").click()
    b.wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#history tbody tr")[0].get_attribute("data-commit")
               == after[0], 30, what="the rollback's commit on the service page")
    top = d.find_elements(By.CSS_SELECTOR, "#history tbody tr")[0]
    assert top.find_element(By.CSS_SELECTOR, ".image").text == WEB1
    assert top.find_element(By.CSS_SELECTOR, ".author").text == TOKEN_NAME
    assert reason in top.find_element(By.CSS_SELECTOR, ".message").text
    no_script_ran(b)
    b.screenshot("service-after-rollback")

    # the fleet: web:1 runs and passes again; the feed has the rollback, its reason as text
    d.find_element(By.LINK_TEXT, "Fleet").click()
    b.wait_for(lambda: cell(b, target, "health").text == "passing" and cell(b, target, "running").text == WEB1, 30,
               what="web:1 passing")
    feed = d.find_element(By.ID, "activity").text
    assert "rollback" in feed and reason in feed
    no_script_ran(b)
    b.screenshot("fleet-after-rollback")
    assert [c.labels["deployer.image"] for c in managed(site["client"], site["node"])] == [WEB1]


class Evil:
    """A page on another origin (another port) whose form posts to the dashboard by itself."""

    def __init__(self, action: str, fields: dict[str, str]):
        inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        body = (f'<html><body><form id="f" method="post" action="{action}">{inputs}</form>'
                '<script>document.getElementById("f").submit()</script></body></html>').encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(900)  # several minutes on a machine with a load average near 70
def test_form_posts_without_the_csrf_token_or_from_another_origin_are_refused(site, browser):
    url, target = site["url"], site["target"]
    http = requests.Session()
    http.trust_env = False
    # no session: the pages send you to sign in, the data routes answer 401, a post changes nothing
    page = http.get(f"{url}/", allow_redirects=False, headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
    assert http.get(f"{url}/", allow_redirects=False).status_code == 401  # not a browser: the API's answer
    assert http.get(f"{url}/fleet.json").status_code == 401
    assert http.get(f"{url}/events").status_code == 401
    # signing in from another origin is refused
    assert http.post(f"{url}/login", data={"token": site["token"]}, headers={"Origin": "http://evil.example"},
                     allow_redirects=False).status_code == 403
    signed = http.post(f"{url}/login", data={"token": site["token"]}, allow_redirects=False)
    assert signed.status_code == 303 and "deployer_session" in http.cookies
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie

    versions = http.get(f"{url}/services/{target}")
    assert versions.status_code == 200 and "default-src 'none'" in versions.headers["content-security-policy"]
    old = re.findall(r'data-commit="([0-9a-f]{40})"', versions.text)[1]  # web:1's commit
    form = http.get(f"{url}/services/{target}/rollback", params={"to": old})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    fields = {"to": old, "reason": "forged", "confirm": "yes"}
    post = f"{url}/services/{target}/rollback"
    head = remote_log(site["remote"])
    clone_head = git(site["clone"], "rev-parse", "HEAD")

    bearer = api(site)

    def unchanged():
        assert bearer.get(f"{url}/api/v1/jobs").json()["jobs"] == []  # no job was queued
        assert remote_log(site["remote"]) == head and git(site["clone"], "rev-parse", "HEAD") == clone_head
        assert [c.labels["deployer.image"] for c in managed(site["client"], site["node"])] == [WEB2]

    for data, headers, why in (
            (fields, {}, "no token"),
            ({**fields, "csrf_token": "wrong"}, {}, "a wrong token"),
            ({**fields, "csrf_token": csrf}, {"Origin": "http://evil.example"}, "another origin")):
        refused = http.post(post, data=data, headers=headers, allow_redirects=False)
        assert refused.status_code == 403, (why, refused.status_code, refused.text[:300])
        unchanged()
    # sign out needs the token too
    assert http.post(f"{url}/logout", data={}, allow_redirects=False).status_code == 403

    # in the browser: signed in, then a page on another origin posts the form (the cookie goes along:
    # same site, another port): refused by its Origin and its missing token
    b, d = browser, browser.driver
    sign_in(b, url, site["token"])
    evil = Evil(post, {**fields, "csrf_token": "guessed"})
    try:
        b.get(evil.url)
        b.wait_for(lambda: d.current_url.startswith(url), 30, what="the forged post")
        b.wait_for(lambda: d.find_element(By.TAG_NAME, "h1").text == "403", 30, what="the refusal")
        assert "CSRF" in d.find_element(By.ID, "error-message").text or "origin" in \
            d.find_element(By.ID, "error-message").text
        b.screenshot("csrf-refused")
    finally:
        evil.close()
    time.sleep(1)  # a job would have been queued at once: give it the time to show
    unchanged()

    # the same form, from the page itself, with its token: accepted (the refusals were not a broken route)
    done = http.post(post, data={**fields, "csrf_token": csrf, "reason": "a real one"}, allow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/jobs/")
    job = done.headers["location"].rsplit("/", 1)[1]
    final = wait_until(lambda: (r := bearer.get(f"{url}/api/v1/jobs/{job}").json()).get("state") in ("ok", "failed")
                       and r, 90, 0.2, "the accepted rollback to end")
    assert final["state"] == "ok", final
    assert len(remote_log(site["remote"])) == len(head) + 1


@pytest.mark.timeout(900)  # several minutes on a machine with a load average near 70
def test_the_page_says_when_the_remote_is_unreachable_and_when_consul_is_down(engine, tmp_path, browser):
    b, d = browser, browser.driver
    consul = ConsulAgent(node="serve-page-faults")
    try:
        consul.start(timeout=90)  # a leader within 1 s here, far more on a loaded machine
    except BaseException:
        consul.close()
        raise
    with closing(consul), make_site(engine, consul, tmp_path, "--sync-interval", "1s") as site:
        url, target = site["url"], site["target"]
        sign_in(b, url, site["token"])
        b.wait_for(lambda: cell(b, target, "health").text == "passing", 45, what="the service passing")
        banner = d.find_element(By.ID, "sync-error")
        assert not banner.is_displayed()

        # the remote goes away: the next pull fails, the page says so; nothing in the clone is lost
        head = git(site["clone"], "rev-parse", "HEAD")
        away = site["remote"].with_name("remote-away.git")
        site["remote"].rename(away)
        b.wait_for(lambda: banner.is_displayed(), 30, what="the sync error on the page")
        assert "Repository sync failed" in banner.text and "remote.git" in banner.text
        b.screenshot("remote-unreachable")
        assert git(site["clone"], "rev-parse", "HEAD") == head and git(site["clone"], "status", "--porcelain") == ""
        away.rename(site["remote"])
        b.wait_for(lambda: not banner.is_displayed(), 30, what="the sync error to clear")

        # Consul dies: health is unknown and the datacenter says why; it comes back: the note goes
        consul.kill()
        killed = time.monotonic()
        b.wait_for(lambda: cell(b, target, "health").text == "unknown", 20, 0.02, what="health unknown")
        unknown = time.monotonic() - killed
        note = d.find_element(By.CSS_SELECTOR, 'section[data-dc="test"] [data-dc-field="consul"]')
        assert note.is_displayed() and consul.address in note.text
        b.screenshot("consul-down")
        print(f"\nConsul killed -> health unknown on the page: {unknown:.2f}s")
        (b.artifacts / "timing.json").write_text(json.dumps({"consul_killed_to_unknown_s": round(unknown, 3)}) + "\n")
        consul.start(timeout=90)
        b.wait_for(lambda: not note.is_displayed(), 30, what="the Consul note to go")
        b.screenshot("consul-back")
