"""The compose keys of issue 10 on a real engine: what `docker inspect` says and what a probe inside sees.

One service uses most of the keys that are one engine argument each, long-syntax tmpfs with read_only,
a bracketed IPv6 extra host and an anonymous volume; it is applied with `deployer apply`, then inspected,
probed (mounts, /etc/hosts, ulimits, sysctls), changed and applied again (the anonymous volume and what
was written to it are carried over to the replacement, as docker compose does).
"""

from __future__ import annotations

from contextlib import closing

import pytest

from tests.support.repos import cli, git, make_repo, managed, remove_node_containers

IMAGE = "deployer-test/web:1"

COMPOSE = """\
services:
  keys:
    image: {image}
    init: true
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    labels: {{round: "{round}"}}
    stdin_open: true
    tty: true
    domainname: example.org
    hostname: keys
    ipc: shareable
    pids_limit: 64
    oom_score_adj: 300
    mem_limit: 256m
    mem_reservation: 64m
    cpu_shares: 512
    cpuset: "0"
    cpu_period: 100000
    cpu_quota: 50000
    group_add: ["1234"]
    dns_search: [example.org]
    dns_opt: ["ndots:2"]
    security_opt: ["no-new-privileges:true"]
    sysctls: {{net.core.somaxconn: 1024}}
    ulimits:
      nofile: {{soft: 2000, hard: 4000}}
    devices: ["/dev/null:/dev/mynull:rw"]
    extra_hosts: ["v6:[::2]", "v4=10.1.2.3"]
    volumes:
      - /data
      - type: tmpfs
        target: /scratch
        read_only: true
        tmpfs: {{size: 1m}}
"""


@pytest.fixture
def keys_node(engine, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, COMPOSE.format(image=IMAGE, round=1))
    yield root, node
    with closing(engine.client()) as client:
        remove_node_containers(client, node)
        for vol in client.volumes.list(filters={"dangling": True}):
            vol.remove(force=True)


def _container(client, node: str):
    found = [c for c in managed(client, node) if c.labels.get("deployer.service") == "keys"]
    assert len(found) == 1, found
    return found[0]


def _sh(container, script: str) -> str:
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out
    return out.decode()


def test_keys_reach_the_engine_and_the_container(engine, keys_node):
    root, node = keys_node
    result = cli(root, "apply", "--settle", "0.5")
    assert result.exit_code == 0, result.output
    with closing(engine.client()) as client:
        container = _container(client, node)
        attrs = client.api.inspect_container(container.id)
        config, host = attrs["Config"], attrs["HostConfig"]
        assert (config["Tty"], config["OpenStdin"], config["Domainname"], config["Hostname"]) == (
            True, True, "example.org", "keys")
        assert host["IpcMode"] == "shareable"
        assert (host["PidsLimit"], host["OomScoreAdj"], host["CpuShares"], host["CpusetCpus"]) == (64, 300, 512, "0")
        assert (host["CpuPeriod"], host["CpuQuota"]) == (100000, 50000)
        assert (host["Memory"], host["MemoryReservation"]) == (256 * 2**20, 64 * 2**20)
        assert host["GroupAdd"] == ["1234"]
        assert (host["DnsSearch"], host["DnsOptions"]) == (["example.org"], ["ndots:2"])
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
        assert host["Ulimits"] == [{"Name": "nofile", "Soft": 2000, "Hard": 4000}]
        assert host["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull",
                                    "CgroupPermissions": "rw"}]
        assert sorted(host["ExtraHosts"]) == ["v4:10.1.2.3", "v6:::2"]  # the brackets dropped: the engine took it
        tmpfs = [m for m in host["Mounts"] if m["Type"] == "tmpfs"]
        assert tmpfs == [{"Type": "tmpfs", "Target": "/scratch", "ReadOnly": True,
                          "TmpfsOptions": {"SizeBytes": 2**20}}]
        anon = [m for m in attrs["Mounts"] if m["Type"] == "volume" and m["Destination"] == "/data"]
        assert len(anon) == 1 and len(anon[0]["Name"]) == 64, attrs["Mounts"]

        # what the process inside sees
        mounts = _sh(container, "cat /proc/mounts")
        scratch = next(line for line in mounts.splitlines() if line.split()[1] == "/scratch")
        assert scratch.split()[3].split(",")[0] == "ro", scratch  # read_only honoured (it was dropped before)
        assert "size=1024k" in scratch, scratch
        assert _sh(container, "touch /scratch/x 2>&1; echo $?").strip().endswith("1")
        hosts = _sh(container, "cat /etc/hosts")
        assert any(line.split() == ["::2", "v6"] for line in hosts.splitlines()), hosts
        limits = _sh(container, "cat /proc/1/limits")  # the container's own process, not an exec's
        assert next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3:5] == [
            "2000", "4000"], limits
        assert _sh(container, "cat /proc/sys/net/core/somaxconn").strip() == "1024"
        assert _sh(container, "id -G").split()[-1] == "1234"
        assert "ndots:2" in _sh(container, "cat /etc/resolv.conf")
        _sh(container, "echo kept > /data/file")
        first_id, volume = container.id, anon[0]["Name"]

    # a changed service is replaced: the new container gets the old one's anonymous volume
    (root / "datacenters" / "test" / node / "docker-compose.yml").write_text(COMPOSE.format(image=IMAGE, round=2))
    git(root, "commit", "-qam", "round 2")
    result = cli(root, "apply", "--settle", "0.5")
    assert result.exit_code == 0, result.output
    with closing(engine.client()) as client:
        container = _container(client, node)
        assert container.id != first_id
        attrs = client.api.inspect_container(container.id)
        anon = [m for m in attrs["Mounts"] if m["Destination"] == "/data"]
        assert [m["Name"] for m in anon] == [volume]
        assert _sh(container, "cat /data/file").strip() == "kept"
        # and the plan sees nothing to do: the carried-over volume is not a change of the spec
        plan = cli(root, "plan", f"test/{node}")
        assert plan.exit_code == 0, plan.output


def test_refused_keys_leave_the_engine_untouched(engine, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url,
                           "services:\n  w:\n    image: deployer-test/web:1\n    command: httpd -f && echo x\n"
                           "    ports: [{target: 80, published: 18080, mode: ingress}]\n")
    result = cli(root, "apply")
    assert result.exit_code == 3, result.output
    assert "services.w.command: 'httpd -f && echo x' has '&&' outside quotes" in result.output
    assert "(and 1 more problems; run 'deployer validate')" in result.output
    checked = cli(root, "validate")
    assert checked.exit_code == 3
    assert "services.w.ports[0]: mode ingress is Swarm's routing mesh" in checked.output
    with closing(engine.client()) as client:
        assert managed(client, node) == []


HOOKED = """\
services:
  hooked:
    image: {image}
    init: true
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    labels: {{round: "{round}"}}
    volumes: ["marks:/marks"]
    post_start:
      - command: ["sh", "-c", "echo post $$STAGE {round} >> /marks/log; {post_exit}"]
        environment: {{STAGE: started}}
    pre_stop:
      - command: ["sh", "-c", "echo pre {round} >> /marks/log; {pre_exit}"]
volumes:
  marks:
"""


def _hooked(root, node, round_: int, post_exit: str = "true", pre_exit: str = "true") -> None:
    path = root / "datacenters" / "test" / node / "docker-compose.yml"
    path.write_text(HOOKED.format(image=IMAGE, round=round_, post_exit=post_exit, pre_exit=pre_exit))
    git(root, "commit", "-qam", f"round {round_}")


def test_post_start_and_pre_stop_hooks_run_in_the_containers(engine, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url,
                           HOOKED.format(image=IMAGE, round=1, post_exit="true", pre_exit="true"))
    try:
        assert cli(root, "apply", "--settle", "0.5").exit_code == 0
        _hooked(root, node, 2)
        result = cli(root, "apply", "--settle", "0.5")
        assert result.exit_code == 0, result.output
        with closing(engine.client()) as client:
            first = _container_named(client, node, "hooked")
            # round 2's post_start ran in the new container, then round 2's pre_stop in the old one
            assert _sh(first, "cat /marks/log").splitlines() == ["post started 1", "post started 2", "pre 2"]

            # a post_start hook that fails fails the new container: the old one keeps running
            _hooked(root, node, 3, post_exit="exit 3")
            result = cli(root, "apply", "--settle", "0.5")
            assert result.exit_code == 1, result.output
            assert "post_start hook 1 (sh -c echo post $STAGE 3 >> /marks/log; exit 3) exited with code 3" \
                in result.output
            assert _container_named(client, node, "hooked").id == first.id

            # a pre_stop hook that fails aborts the stop: the old container keeps running, the new one is gone
            _hooked(root, node, 4, pre_exit="exit 4")
            result = cli(root, "apply", "--settle", "0.5")
            assert result.exit_code == 1, result.output
            assert "pre_stop hook 1 (sh -c echo pre 4 >> /marks/log; exit 4) exited with code 4; the stop is aborted" \
                in result.output
            assert _container_named(client, node, "hooked").id == first.id
            assert _sh(first, "cat /marks/log").splitlines()[-2:] == ["post started 4", "pre 4"]
    finally:
        with closing(engine.client()) as client:
            remove_node_containers(client, node)
            for vol in client.volumes.list(filters={"label": f"deployer.node={node}"}):
                vol.remove(force=True)


def _container_named(client, node: str, service: str):
    found = [c for c in managed(client, node) if c.labels.get("deployer.service") == service]
    assert len(found) == 1, [c.name for c in found]
    return found[0]


def test_network_priority_and_endpoint_settings(engine, tmp_path):
    root, node = make_repo(tmp_path / "infra", engine.unix_url, f"""\
services:
  net:
    image: {IMAGE}
    init: true
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    networks:
      alpha:
        priority: 1
        link_local_ips: ["169.254.10.1"]
      beta:
        priority: 10
        link_local_ips: ["169.254.10.2"]
networks:
  alpha:
  beta:
""")
    try:
        result = cli(root, "apply", "--settle", "0.5")
        assert result.exit_code == 0, result.output
        with closing(engine.client()) as client:
            attrs = client.api.inspect_container(_container_named(client, node, "net").id)
            beta, alpha = f"{node}_beta", f"{node}_alpha"
            assert attrs["HostConfig"]["NetworkMode"] == beta  # the highest priority is attached at create
            nets = attrs["NetworkSettings"]["Networks"]
            # one endpoint made at create (beta), one by connecting afterwards (alpha): both carry the settings
            assert nets[beta]["IPAMConfig"]["LinkLocalIPs"] == ["169.254.10.2"]
            assert nets[alpha]["IPAMConfig"]["LinkLocalIPs"] == ["169.254.10.1"]
            assert cli(root, "plan", f"test/{node}").exit_code == 0
    finally:
        with closing(engine.client()) as client:
            remove_node_containers(client, node)


def test_a_failed_pre_stop_takes_back_what_discovery_was_told(engine, tmp_path):
    """Start-first with a pre_stop hook: the old container is announced retiring before its hook runs; when
    the hook fails the new one (already announced healthy) is taken back and the old one announced again."""
    from deployer.config import loader
    from deployer.config.compose_spec import container_spec, node_resources
    from deployer.engine.apply import Hooks, SwapOptions
    from deployer.engine.session import EngineSession
    from deployer.errors import HealthCheckFailed

    root, node = make_repo(tmp_path / "infra", engine.unix_url,
                           HOOKED.format(image=IMAGE, round=1, post_exit="true", pre_exit="true"))
    calls: list[tuple[str, str]] = []
    hooks = Hooks(healthy=lambda spec, c: calls.append(("healthy", c.id)),
                  retiring=lambda c: calls.append(("retiring", c.id)),
                  restored=lambda c: calls.append(("restored", c.id)))

    def apply_once() -> None:
        target = loader.load_node(root, "test", node)
        spec = container_spec(target, target.services["hooked"], root)
        with EngineSession(target, root) as session:
            applier = session.applier(SwapOptions(settle=0.3), hooks=hooks)
            applier.ensure_resources(*node_resources(target))
            change = session.plan([spec])[0]
            applier.apply(change, session.state)

    try:
        apply_once()
        with closing(engine.client()) as client:
            old = _container_named(client, node, "hooked").id
        _hooked(root, node, 2, pre_exit="exit 4")
        calls.clear()
        with pytest.raises(HealthCheckFailed, match="pre_stop hook 1 .* exited with code 4; the stop is aborted"):
            apply_once()
        kinds = [k for k, _ in calls]
        assert kinds == ["healthy", "retiring", "retiring", "restored"], calls
        new = calls[0][1]
        assert calls[1] == ("retiring", old) and calls[2] == ("retiring", new) and calls[3] == ("restored", old)
        with closing(engine.client()) as client:
            assert _container_named(client, node, "hooked").id == old
    finally:
        with closing(engine.client()) as client:
            remove_node_containers(client, node)
            for vol in client.volumes.list(filters={"label": f"deployer.node={node}"}):
                vol.remove(force=True)
