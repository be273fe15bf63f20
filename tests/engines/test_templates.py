"""deployer.discovery.templates: render, check, swap, reload, the config file, and the watching
runner against a real Consul dev agent and a real nginx (127.0.0.1 only)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from deployer.discovery.catalog import Instance, StaticCatalog
from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.errors import CheckFailed, ConfigError, ReloadFailed, TemplateError
from deployer.discovery.template_config import ConsulSettings, TemplateSpec, WatchConfig, load_config
from deployer.discovery.template_runner import Runner, run_once
from deployer.discovery.templates import check, reload, render, swap, upstream_name

from tests.support.consul import Backend, ConsulAgent
from tests.support.nginx import NginxServer
from tests.support.waiting import wait_until

NGINX_TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "nginx.conf.j2"


# --- render -----------------------------------------------------------------------------


def nginx_vars(server: NginxServer, tag: str | None = None) -> dict:
    out = {"listen_address": "127.0.0.1", "listen_port": server.port, "listen_port_key": "test/nginx/port"}
    if tag:
        out["tag"] = tag
    return out


def test_nginx_template_renders_a_whole_config_that_nginx_accepts(tmp_path):
    catalog = StaticCatalog(
        [
            Instance("web", "web-1", "n1", "127.0.0.1", 8081),
            Instance("web", "web-2", "n2", "::1", 8082),
            Instance("api.v2", "api-1", "n1", "10.0.0.1", 80, status="critical"),
        ]
    )
    server = NginxServer(tmp_path / "nginx")
    text = render(NGINX_TEMPLATE, catalog, nginx_vars(server))
    assert f"upstream {upstream_name('web')} {{" in text
    assert "server 127.0.0.1:8081 " in text and "server [::1]:8082 " in text
    assert "keepalive 16;" in text and "proxy_next_upstream error timeout http_502;" in text
    assert f"listen 127.0.0.1:{server.port} default_server;" in text
    assert "upstream svc_api_v2" not in text  # no passing instance: no (empty) upstream...
    assert "location /api.v2/ {\n            return 503;" in text  # ...and a 503 instead
    server.conf.write_text(text)
    check(server.conf, server.check_command)  # standalone with its prefix


def test_listen_port_comes_from_kv_and_is_checked():
    cat = StaticCatalog([], kv={"test/nginx/port": "9099"})
    text = render(NGINX_TEMPLATE, cat, {"listen_port_key": "test/nginx/port"})
    assert "listen 9099 default_server;" in text
    cat.replace([], kv={"test/nginx/port": "80; evil"})
    with pytest.raises(TemplateError, match=r"nginx.conf.j2:\d+: port: '80; evil' is not a port"):
        render(NGINX_TEMPLATE, cat, {"listen_port_key": "test/nginx/port"})


def test_syntax_error_names_file_and_line(tmp_path):
    tpl = tmp_path / "bad.j2"
    tpl.write_text("line one\nline two\n{% for x in services() %}\nno end\n")
    with pytest.raises(TemplateError) as info:
        render(tpl, StaticCatalog())
    assert info.value.path == str(tpl) and info.value.line == 4
    assert info.value.one_line().startswith(f"{tpl}:4: syntax error:")


def test_render_error_names_file_and_line_also_in_includes(tmp_path):
    (tmp_path / "main.j2").write_text("a\n{{ vars.port }}\n")
    with pytest.raises(TemplateError, match=r"main.j2:2: UndefinedError: .*'port'"):
        render(tmp_path / "main.j2", StaticCatalog())
    (tmp_path / "outer.j2").write_text("x\ny\n{% include 'inner.j2' %}\n")
    (tmp_path / "inner.j2").write_text("1\n2\n{{ key('missing/key') }}\n")
    with pytest.raises(TemplateError) as info:
        render(tmp_path / "outer.j2", StaticCatalog())
    assert info.value.path == str(tmp_path / "inner.j2") and info.value.line == 3
    assert "key 'missing/key' does not exist" in info.value.message


def test_sandbox_refuses_python_internals(tmp_path):
    tpl = tmp_path / "evil.j2"
    tpl.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(TemplateError, match="evil.j2:1: unsafe operation"):
        render(tpl, StaticCatalog())


def test_template_functions_and_filters(tmp_path):
    cat = StaticCatalog(
        [
            Instance("web", "w1", "n1", "10.0.0.1", 80, ("blue",)),
            Instance("web", "w2", "n1", "10.0.0.2", 80, ("green",), status="warning"),
        ],
        kv={"k": "v"},
    )
    tpl = tmp_path / "t.j2"
    tpl.write_text(
        "{% for name, tags in services().items() %}{{ name }}={{ tags | join(',') }}\n{% endfor %}"
        "{{ service('web') | map(attribute='id') | join(',') }}\n"
        "{{ service('web', passing=False) | map(attribute='id') | join(',') }}\n"
        "{{ service('web', 'green', passing=False) | map(attribute='status') | join(',') }}\n"
        "{{ key('k') }} {{ key('nope', 'dflt') }} {{ 'web' | upstream_name }} {{ 'fd00::1' | endpoint(8080) }}\n"
    )
    assert render(tpl, cat).splitlines() == ["web=blue,green", "w1", "w1,w2", "warning", "v dflt svc_web [fd00::1]:8080"]
    assert upstream_name("api.v2") != upstream_name("api-v2") != upstream_name("api_v2")
    tpl.write_text("{{ service('x; }') }}\n")
    with pytest.raises(TemplateError, match="unsafe service name"):
        render(tpl, cat)


# --- check, swap, reload ------------------------------------------------------------------


def test_swap_is_atomic_and_only_when_bytes_change(tmp_path):
    dest = tmp_path / "sub" / "app.conf"
    assert swap(dest, "one\n") is True
    assert dest.read_text() == "one\n" and stat.S_IMODE(dest.stat().st_mode) == 0o644
    dest.chmod(0o600)
    inode = dest.stat().st_ino
    assert swap(dest, "one\n") is False and dest.stat().st_ino == inode  # untouched
    assert swap(dest, "two\n") is True
    assert dest.read_text() == "two\n" and dest.stat().st_ino != inode  # renamed over, not rewritten
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600  # mode kept
    assert sorted(os.listdir(dest.parent)) == ["app.conf"]  # no temp file left


def test_check_failure_is_one_line_with_stderr(tmp_path):
    cand = tmp_path / "cand"
    cand.write_text("x")
    check(cand, ["sh", "-c", 'test -s "$0"', "{file}"])
    with pytest.raises(CheckFailed) as info:
        check(cand, "sh -c 'echo \"bad thing\nin $0\" >&2; exit 3' {file}", destination="/etc/app.conf")
    line = info.value.one_line()
    assert "exit status 3: bad thing in /etc/app.conf (candidate)" in line and "\n" not in line
    with pytest.raises(CheckFailed, match="command not found"):
        check(cand, "/nonexistent/validator {file}")
    with pytest.raises(CheckFailed, match="timed out"):
        check(cand, "sleep 5", timeout=0.2)
    reload(["true"])
    with pytest.raises(ReloadFailed, match="exit status 1"):
        reload("false")


def test_load_config_and_its_errors(tmp_path):
    cfg = tmp_path / "watch.yml"
    cfg.write_text(
        "consul:\n  address: 127.0.0.1:8500\n  blocking_wait: 30s\n  retry: {backoff: 100ms, max_backoff: 5s}\n"
        "wait: {min: 1s, max: 4s}\nsettle: 7s\n"
        "templates:\n  - source: nginx.conf.j2\n    destination: out/nginx.conf\n"
        "    check: nginx -t -q -e stderr -p /srv/nginx -c {file}\n    reload: [nginx, -s, reload]\n"
        "    vars: {listen_port: 8080}\n"
    )
    c = load_config(cfg)
    assert c.consul.address == "127.0.0.1:8500" and c.consul.blocking_wait == 30 and c.consul.backoff == 0.1
    assert (c.wait_min, c.wait_max, c.settle) == (1, 4, 7)
    spec = c.templates[0]
    assert spec.source == tmp_path / "nginx.conf.j2" and spec.destination == tmp_path / "out" / "nginx.conf"
    assert spec.reload == ["nginx", "-s", "reload"] and spec.vars == {"listen_port": 8080}

    cfg.write_text("consul: null\nwait: 2s\ntemplates:\n  - {source: a.j2, destination: a}\n")
    c = load_config(cfg)
    assert c.consul is None and (c.wait_min, c.wait_max) == (2, 8)
    with pytest.raises(ConfigError, match="no Consul address"):
        Runner(c)

    cases = {
        "templates:\n  - source: a.j2\n    destination: a\n    chekc: true\n": (4, "unknown key 'chekc'"),
        "wait: {min: 5s, max: 1s}\ntemplates: [{source: a, destination: b}]\n": (1, "wait.max"),
        "settle: soon\ntemplates: [{source: a, destination: b}]\n": (1, "invalid settle"),
        "templates:\n  - {source: a, destination: b}\n  - {source: c, destination: b}\n": (3, "also written"),
        "templates: []\n": (1, "non-empty list"),
        "consul: {}\ntemplates: [{source: a, destination: b}]\n": (None, "address is required"),
        "templates:\n  - {source: a, destination: b\n": (None, "invalid YAML"),
    }
    for text, (line, message) in cases.items():
        cfg.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        assert message in info.value.message, text
        if line is not None:
            assert info.value.line == line, text
        assert info.value.path == str(cfg)


def test_a_pass_writes_nothing_when_any_candidate_fails_its_check(tmp_path):
    (tmp_path / "a.j2").write_text("a={{ service('web') | length }}\n")
    (tmp_path / "b.j2").write_text("b={{ service('web') | length }}\n")
    specs = [
        TemplateSpec(tmp_path / "a.j2", tmp_path / "a.conf", check="true {file}", reload=["sh", "-c", 'echo r >> "$0"', str(tmp_path / "reloads")]),
        TemplateSpec(tmp_path / "b.j2", tmp_path / "b.conf", check=["grep", "-q", "b=1", "{file}"]),
    ]
    catalog = StaticCatalog([Instance("web", "w1", "n", "10.0.0.1", 80)])
    config = WatchConfig(templates=specs)
    assert run_once(config, catalog) == [tmp_path / "a.conf", tmp_path / "b.conf"]
    catalog.replace([Instance("web", "w1", "n", "10.0.0.1", 80), Instance("web", "w2", "n", "10.0.0.2", 80)])
    with pytest.raises(CheckFailed, match="b.conf"):
        run_once(config, catalog)
    assert (tmp_path / "a.conf").read_text() == "a=1\n"  # a passed its check, but b failed: neither moved
    assert (tmp_path / "reloads").read_text() == "r\n"  # reloaded once, after the first pass only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.conf", "a.j2", "b.conf", "b.j2", "reloads"]


def test_watch_a_catalog_without_blocking_queries(tmp_path):
    (tmp_path / "t.j2").write_text("{% for i in service('web') %}{{ i.endpoint }}\n{% endfor %}")
    catalog = StaticCatalog([Instance("web", "w1", "n", "10.0.0.1", 80)])
    config = WatchConfig([TemplateSpec(tmp_path / "t.j2", tmp_path / "t.conf")], wait_min=0.05, wait_max=0.2,
                         settle=0, poll_interval=0.05)
    with Watching(Runner(config, catalog)) as w:
        w.wait_for("written")
        catalog.replace([Instance("web", "w2", "n", "10.0.0.2", 81)])
        w.wait_for("written", count=2)
    assert (tmp_path / "t.conf").read_text() == "10.0.0.2:81\n"


def test_a_failed_reload_is_retried_with_backoff(tmp_path):
    (tmp_path / "t.j2").write_text("{{ service('web') | length }}\n")
    flag = tmp_path / "nginx-is-up"
    reload_cmd = ["sh", "-c", 'echo try >> "$0.tries"; test -e "$0"', str(flag)]
    catalog = StaticCatalog([Instance("web", "w1", "n", "10.0.0.1", 80)])
    config = WatchConfig([TemplateSpec(tmp_path / "t.j2", tmp_path / "t.conf", reload=reload_cmd)],
                         wait_min=0.05, wait_max=0.2, settle=0, poll_interval=0.05)
    runner = Runner(config, catalog)
    with Watching(runner) as w:
        w.wait_for("written")
        wait_until(lambda: len(w.of("failed")) >= 2, what="reload retried")
        assert "reload" in w.of("failed")[0][2] and "exit status 1" in w.of("failed")[0][2]
        flag.touch()
        w.wait_for("reloaded")
    assert len(w.of("written")) == 1  # the file went live once; only the reload was retried


# --- watching a real Consul with a real nginx ------------------------------------------------


class Watching:
    """Runs ``runner.watch`` in a thread; records events (with the file as written)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.events: list[tuple[float, str, str, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=runner.watch, args=(self.stop,), daemon=True)
        runner.on_event = self._record

    def _record(self, kind: str, detail: str) -> None:
        content = Path(detail).read_text() if kind == "written" else None
        self.events.append((time.monotonic(), kind, detail, content))

    def of(self, kind: str) -> list[tuple[float, str, str, str | None]]:
        return [e for e in self.events if e[1] == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0):
        return wait_until(lambda: len(self.of(kind)) >= count and self.of(kind)[count - 1], timeout, what=f"{count} {kind}")

    def __enter__(self) -> "Watching":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def site(tmp_path, consul_agent):
    """An nginx whose config is rendered from (a copy of) the shipped template by a Runner."""
    template = tmp_path / "nginx.conf.j2"
    shutil.copy(NGINX_TEMPLATE, template)
    server = NginxServer(tmp_path / "nginx")
    tag = f"t{os.urandom(3).hex()}"

    def config(consul=consul_agent, **kw) -> WatchConfig:
        spec = TemplateSpec(template, server.conf, check=server.check_command, reload=server.reload_command,
                            vars=nginx_vars(server, tag))
        kw.setdefault("wait_min", 0.3)
        kw.setdefault("wait_max", 1.5)
        kw.setdefault("settle", 2.0)
        return WatchConfig([spec], ConsulSettings(consul.address, blocking_wait=5, backoff=0.05, max_backoff=0.5), **kw)

    def start(consul=consul_agent):
        """First render without reload, then start nginx on it."""
        first = config(consul)
        first.templates[0].reload = None
        Runner(first).run_once()
        server.start()

    ns = type("Site", (), {})()
    ns.template, ns.server, ns.tag, ns.config, ns.start = template, server, tag, config, start
    ns.catalog = ConsulCatalog(consul_agent.address)
    yield ns
    server.stop()


def served_by(server: NginxServer, path: str, n: int = 6) -> set[str]:
    names = set()
    for _ in range(n):
        status, body = server.get(path)
        names.add(body.split()[0] if status == 200 else str(status))
    return names


def test_nginx_serves_through_the_rendered_upstream(site):
    a, b = Backend("alpha"), Backend("beta")
    svc = f"{site.tag}-web"
    try:
        for backend in (a, b):
            site.catalog.register_instance(svc, f"{svc}-{backend.name}", "127.0.0.1", backend.port, tags=[site.tag],
                                           http_check=backend.health_url, interval="1s")
        site.catalog.register_instance(f"{site.tag}-idle", f"{site.tag}-idle-1", "127.0.0.1", 9, tags=[site.tag],
                                       ttl="60s")  # critical until a TTL pass: no upstream, 503
        wait_until(lambda: len(site.catalog.instances(svc)) == 2, what="both instances passing")
        site.start()
        assert served_by(site.server, f"/{svc}/") == {"alpha", "beta"}
        assert site.server.get(f"/{svc}/x/y")[1] in ("alpha /x/y\n", "beta /x/y\n")  # prefix stripped
        assert site.server.get(f"/{site.tag}-idle/")[0] == 503
        assert site.server.get("/_deployer/health") == (200, "ok\n")
        assert site.server.get("/nothing-here/")[0] == 404
    finally:
        for sid in (f"{svc}-alpha", f"{svc}-beta", f"{site.tag}-idle-1"):
            site.catalog.deregister(sid)
        a.close()
        b.close()


def test_watch_follows_health_and_reloads_within_the_quiescence_window(site):
    a, b = Backend("alpha"), Backend("beta")
    svc = f"{site.tag}-web"
    try:
        for backend in (a, b):
            site.catalog.register_instance(svc, f"{svc}-{backend.name}", "127.0.0.1", backend.port, tags=[site.tag],
                                           http_check=backend.health_url, interval="1s")
        wait_until(lambda: len(site.catalog.instances(svc)) == 2)
        site.start()
        config = site.config()
        with Watching(Runner(config)) as w:
            time.sleep(0.5)
            assert not w.of("written") and not w.of("reloaded")  # same bytes: nothing to do
            a.healthy = False
            wait_until(lambda: len(site.catalog.instances(svc)) == 1, what="alpha critical in Consul")
            seen = time.monotonic()
            _, _, _, content = w.wait_for("written")
            reloaded_at = w.wait_for("reloaded")[0]
            assert reloaded_at - seen <= config.wait_max + 0.5  # within the quiescence window (+ slack)
            assert f":{b.port} " in content and f":{a.port} " not in content
            wait_until(lambda: served_by(site.server, f"/{svc}/") == {"beta"}, what="traffic only to beta")

            b.healthy = False  # no instance left: no upstream, the location answers 503
            _, _, _, content = w.wait_for("written", count=2)
            assert f"upstream {upstream_name(svc)}" not in content and "return 503;" in content
            wait_until(lambda: site.server.get(f"/{svc}/")[0] == 503, what="503")

            a.healthy = b.healthy = True
            w.wait_for("written", count=3)
            wait_until(lambda: f":{a.port} " in site.server.conf.read_text() and f":{b.port} " in site.server.conf.read_text())
            wait_until(lambda: served_by(site.server, f"/{svc}/") == {"alpha", "beta"}, what="both again")
        assert site.server.reloads() == len(w.of("reloaded")) >= 3
    finally:
        for backend in (a, b):
            site.catalog.deregister(f"{svc}-{backend.name}")
            backend.close()


def test_a_flapping_service_causes_few_reloads(site, consul_agent):
    svc = f"{site.tag}-flap"
    c = consul_agent.client()
    steady, flappy = Backend("steady"), Backend("flappy")
    try:
        for backend in (steady, flappy):
            site.catalog.register_instance(svc, f"{svc}-{backend.name}", "127.0.0.1", backend.port, tags=[site.tag],
                                           ttl="60s")
            c.agent.check.ttl_pass(f"service:{svc}-{backend.name}")
        site.start()
        config = site.config(wait_min=0.4, wait_max=2.0)
        runner = Runner(config)
        with Watching(runner) as w:
            time.sleep(0.3)
            for n in range(31):  # 31 health changes in about 1.5 s, ending critical
                (c.agent.check.ttl_fail if n % 2 == 0 else c.agent.check.ttl_pass)(f"service:{svc}-flappy")
                time.sleep(0.05)
            w.wait_for("reloaded")
            time.sleep(config.wait_max + 0.5)
        assert 1 <= site.server.reloads() <= 2, w.events
        assert runner.stats["renders"] <= 4, runner.stats
        text = site.server.conf.read_text()
        assert f":{steady.port} " in text and f":{flappy.port} " not in text
        assert served_by(site.server, f"/{svc}/") == {"steady"}
    finally:
        for backend in (steady, flappy):
            site.catalog.deregister(f"{svc}-{backend.name}")
            backend.close()


def test_template_errors_keep_the_last_good_file_and_nginx_untouched(site):
    backend = Backend("solo")
    svc = f"{site.tag}-web"
    try:
        site.catalog.register_instance(svc, f"{svc}-1", "127.0.0.1", backend.port, tags=[site.tag])
        site.start()
        good = site.server.conf.read_text()
        original = site.template.read_text()
        def edit(text):  # as editors do: write a new file, rename it over the old one
            tmp = site.template.with_suffix(".new")
            tmp.write_text(text)
            os.replace(tmp, site.template)

        runner = Runner(site.config())
        with Watching(runner) as w:
            wait_until(lambda: runner.stats["renders"] >= 1, what="first pass")
            # 1. a syntax error in the template
            edit(original + "{% if %}\n")
            _, _, message, _ = w.wait_for("failed")
            assert f"{site.template}:" in message and "syntax error" in message
            # 2. a template that renders an invalid directive: nginx -t rejects the candidate
            edit(original.replace("server_name _;", "server_name _;\n        bogus_directive on;"))
            _, _, message, _ = w.wait_for("failed", count=2)
            assert "unknown directive \"bogus_directive\"" in message and f"{site.server.conf} (candidate)" in message
            time.sleep(0.3)
            assert site.server.conf.read_text() == good and site.server.reloads() == 0
            assert not w.of("written") and site.server.get(f"/{svc}/")[0] == 200
            assert [p.name for p in site.server.conf.parent.glob(".nginx.conf.*")] == []  # candidates cleaned up
            # 3. fixed, and the data changes: rendered, checked, swapped, reloaded
            edit(original)
            site.catalog.register_instance(svc, f"{svc}-2", "127.0.0.1", backend.port, tags=[site.tag])
            w.wait_for("reloaded")
        assert site.server.conf.read_text().count(f"127.0.0.1:{backend.port} ") == 2
    finally:
        site.catalog.deregister(f"{svc}-1")
        site.catalog.deregister(f"{svc}-2")
        backend.close()


def test_crafted_names_and_addresses_never_reach_the_file(site, consul_agent):
    c = consul_agent.client()
    backend = Backend("good")
    good = f"{site.tag}-good"
    evil_name = f"x; }} server {{ listen 81; }} {site.tag}"
    try:
        c.agent.service.register(evil_name, service_id=f"{site.tag}-e1", address="127.0.0.1", port=backend.port,
                                 tags=[site.tag])
        c.agent.service.register(good, service_id=f"{site.tag}-e2", address="1.2.3.4; evil", port=80, tags=[site.tag])
        c.agent.service.register(good, service_id=f"{site.tag}-e3", address="127.0.0.1", port=backend.port,
                                 tags=[site.tag, "a;b"])
        c.agent.service.register(good, service_id=f"{site.tag}-ok", address="127.0.0.1", port=backend.port,
                                 tags=[site.tag])
        site.start()  # run_once includes nginx -t of the candidate
        text = site.server.conf.read_text()
        for needle in ("listen 81", "evil", "x;", "a;b", f"{site.tag}-e3"):
            assert needle not in text
        assert text.count(f"127.0.0.1:{backend.port} ") == 1 and f"# deployer-test {site.tag}-ok" in text
        assert site.server.get(f"/{good}/")[1] == "good /\n"
    finally:
        for sid in ("e1", "e2", "e3", "ok"):
            c.agent.service.deregister(f"{site.tag}-{sid}")
        backend.close()


def test_consul_restart_never_writes_an_empty_upstream(site, caplog):
    alpha, beta = Backend("alpha"), Backend("beta")
    svc = f"{site.tag}-web"
    with ConsulAgent(node="restart-node") as agent:
        catalog = ConsulCatalog(agent.address)

        def register(*backends):
            for backend in backends:
                catalog.register_instance(svc, f"{svc}-{backend.name}", "127.0.0.1", backend.port, tags=[site.tag])

        register(alpha, beta)
        site.start(agent)
        config = site.config(agent, settle=3.0)
        try:
            with Watching(Runner(config)) as w:
                # 1. Consul crashes and comes back empty; the registrations follow one by one
                #    (as the agent re-syncs or registrator re-registers): nothing may be written,
                #    neither the empty service nor the half-registered one.
                time.sleep(0.3)
                agent.kill()
                time.sleep(1.0)
                assert site.server.get(f"/{svc}/")[0] == 200  # nginx untouched meanwhile
                agent.start()
                w.wait_for("deferred")
                time.sleep(0.5)
                register(alpha)
                time.sleep(config.wait_min + 0.4)
                register(beta)
                time.sleep(config.wait_max + 0.3)
                assert not w.of("written") and site.server.reloads() == 0, [(e[1], e[2], e[3]) for e in w.events]
                assert "connection lost (retrying with backoff)" in caplog.text  # it did notice
                assert {e[1] for e in w.events} == {"deferred"}

                # 2. Consul comes back empty and the service really is gone: written only once the
                #    settle window has passed (and then without its upstream and location).
                agent.kill()
                agent.start()
                back = time.monotonic()
                at, _, _, content = w.wait_for("written", timeout=config.settle + 5)
                assert at - back >= config.settle - 0.5
                assert f"upstream {upstream_name(svc)}" not in content and f"location /{svc}/" not in content
                w.wait_for("reloaded")
                wait_until(lambda: site.server.get(f"/{svc}/")[0] == 404)  # gone from the catalog: not routed
        finally:
            alpha.close()
            beta.close()


def test_consul_down_at_start_then_up(site):
    agent = ConsulAgent(node="late-node")  # ports chosen, not started yet
    config = site.config(agent, settle=0.5)
    runner = Runner(config)
    try:
        with Watching(runner) as w:
            wait_until(lambda: len(w.of("unavailable")) >= 3, what="retries")
            assert f"Consul at {agent.address}" in w.of("unavailable")[0][2]
            gaps = [b[0] - a[0] for a, b in zip(w.of("unavailable"), w.of("unavailable")[1:])]
            assert gaps[-1] > gaps[0]  # backing off
            assert not site.server.conf.exists()
            agent.start()
            ConsulCatalog(agent.address).register_instance(f"{site.tag}-web", "late-1", "127.0.0.1", 9, tags=[site.tag])
            w.wait_for("written", timeout=10)
            wait_until(lambda: "server 127.0.0.1:9 " in site.server.conf.read_text(), what="instance rendered")
    finally:
        agent.close()
