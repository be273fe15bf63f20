"""The compose keys that are one engine argument each (config.compose_host), and the other keys issue 10 added:
each checked, each built into the container spec, and docker-py takes the arguments (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.config.compose_host import HOST_KEYS, blkio_config, devices, gpus, sysctls, ulimits
from deployer.config.compose_keys import parse_command
from deployer.spec import inherit_anonymous_volumes
from deployer.values import BadValue
from tests.support.compose import api_client, one_problem, spec_of

ROOT = Path("/repo")

KEYS = """
services:
  web:
    image: web:1
    stdin_open: true
    tty: true
    domainname: example.org
    mac_address: "02:42:ac:11:00:99"
    platform: linux/amd64
    pid: host
    ipc: shareable
    uts: host
    userns_mode: host
    cgroup: private
    cgroup_parent: /deployer
    runtime: runc
    isolation: default
    pids_limit: 100
    oom_score_adj: -500
    oom_kill_disable: true
    mem_swappiness: 10
    mem_limit: 512m
    mem_reservation: 64m
    memswap_limit: 1g
    cpu_shares: 512
    cpu_period: 100000
    cpu_quota: 50000
    cpu_rt_period: 1s
    cpu_rt_runtime: 950
    cpuset: "0-1"
    group_add: [audio, 1001]
    dns_search: example.org
    dns_opt: [ndots:2]
    security_opt: ["no-new-privileges:true"]
    device_cgroup_rules: ["c 1:3 mr"]
    storage_opt: {size: 1G}
    sysctls: [net.core.somaxconn=1024]
    ulimits:
      nproc: 65535
      nofile: {soft: 20000, hard: 40000}
    devices: ["/dev/null:/dev/mynull:r", {source: /dev/zero}]
    blkio_config:
      weight: 300
      device_read_bps: [{path: /dev/sda, rate: 12mb}]
      device_write_iops: [{path: /dev/sda, rate: 30}]
    pull_policy: missing
    attach: false
  side:
    image: side:1
    pid: "service:web"
    ipc: "service:web"
"""


def test_every_key_becomes_its_engine_argument():
    spec = spec_of(KEYS, "web", ROOT)
    assert {k: spec.create[k] for k in ("stdin_open", "tty", "domainname", "mac_address", "platform")} == {
        "stdin_open": True, "tty": True, "domainname": "example.org", "mac_address": "02:42:ac:11:00:99",
        "platform": "linux/amd64"}  # fmt: skip
    host = {k: v for k, v in spec.host.items() if k != "network_mode"}
    assert host == {
        "pid_mode": "host", "ipc_mode": "shareable", "uts_mode": "host", "userns_mode": "host", "cgroupns": "private",
        "cgroup_parent": "/deployer", "runtime": "runc", "isolation": "default", "pids_limit": 100,
        "oom_score_adj": -500, "oom_kill_disable": True, "mem_swappiness": 10, "mem_limit": 512 * 2**20, "mem_reservation": 64 * 2**20,
        "memswap_limit": 2**30, "cpu_shares": 512, "cpu_period": 100000, "cpu_quota": 50000,
        "cpu_rt_period": 1_000_000, "cpu_rt_runtime": 950, "cpuset_cpus": "0-1", "group_add": ["audio", "1001"],
        "dns_search": ["example.org"], "dns_opt": ["ndots:2"], "security_opt": ["no-new-privileges:true"],
        "device_cgroup_rules": ["c 1:3 mr"], "storage_opt": {"size": "1G"},
        "sysctls": {"net.core.somaxconn": "1024"},
        "ulimits": [{"Name": "nofile", "Soft": 20000, "Hard": 40000}, {"Name": "nproc", "Soft": 65535, "Hard": 65535}],
        "devices": ["/dev/null:/dev/mynull:r", "/dev/zero:/dev/zero:rwm"],
        "blkio_weight": 300, "device_read_bps": [{"Path": "/dev/sda", "Rate": 12 * 2**20}],
        "device_write_iops": [{"Path": "/dev/sda", "Rate": 30}],
    }  # fmt: skip
    side = spec_of(KEYS, "side", ROOT)
    assert (side.host["pid_mode"], side.host["ipc_mode"]) == ("container:n1-web", "container:n1-web")


def test_docker_py_takes_the_arguments():
    spec = spec_of(KEYS, "web", ROOT)
    hc = api_client().create_host_config(**spec.host)
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 20000, "Hard": 40000},
                             {"Name": "nproc", "Soft": 65535, "Hard": 65535}]
    assert hc["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "r"},
                             {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/zero", "CgroupPermissions": "rwm"}]
    assert (hc["PidMode"], hc["IpcMode"], hc["UTSMode"], hc["CgroupnsMode"]) == ("host", "shareable", "host", "private")
    assert (hc["PidsLimit"], hc["OomScoreAdj"], hc["CpuShares"], hc["CpusetCpus"]) == (100, -500, 512, "0-1")
    assert hc["BlkioDeviceReadBps"] == [{"Path": "/dev/sda", "Rate": 12 * 2**20}]
    assert hc["Sysctls"] == {"net.core.somaxconn": "1024"}
    config = api_client().create_container_config(
        "web:1", None, **{k: v for k, v in spec.create.items() if k != "platform"}, host_config=hc)
    assert (config["Tty"], config["OpenStdin"], config["Domainname"]) == (True, True, "example.org")


def test_key_table_parsers_refuse_bad_values():
    def refused(parse, value):
        with pytest.raises(BadValue) as info:
            parse(value)
        return str(info.value)

    assert refused(HOST_KEYS["oom_score_adj"][2], 2000) == "must be between -1000 and 1000, not 2000"
    assert refused(HOST_KEYS["pid"][2], "private") == (
        "invalid pid mode 'private': use host, service:<name> or container:<name>")
    assert refused(HOST_KEYS["tty"][2], "yes") == "must be true or false, not a string"
    assert refused(HOST_KEYS["mac_address"][2], "02:42") == (
        "invalid MAC address '02:42': write six hex pairs like 02:42:ac:11:00:02")
    assert refused(HOST_KEYS["uts"][2], "private") == "must be host, not 'private'"
    assert refused(HOST_KEYS["isolation"][2], "hyperv") == "must be default, not 'hyperv'"
    assert refused(HOST_KEYS["cpuset"][2], "a") == "invalid CPU set 'a': write CPUs like 0-3 or 0,1"
    assert refused(HOST_KEYS["group_add"][2], "audio") == "must be a list, not a string"
    assert refused(ulimits, {"nofile": {"soft": 2, "hard": 1}}) == "nofile: the soft limit 2 is above the hard limit 1"
    assert refused(ulimits, {"nofile": {"soft": 2}}) == "nofile: write a number, or a mapping with exactly 'soft' and 'hard'"
    assert refused(devices, ["dev/x"]) == "[0]: the device paths must be absolute, not 'dev/x'"
    assert refused(devices, ["vendor.com/gpu=all"]).startswith("[0]: CDI device names need API 1.44")
    assert refused(devices, ["/dev/x:/dev/y:rwx"]) == "[0]: invalid permissions 'rwx': use a combination of r, w and m"
    assert refused(sysctls, ["a"]) == "invalid entry 'a': write 'name=value'"
    assert refused(blkio_config, {"weight": 5}) == "weight: must be between 10 and 1000, not 5"
    assert refused(blkio_config, {"speed": 5}).startswith("unsupported key 'speed'")
    assert gpus("all") == [{"driver": "", "count": -1, "device_ids": None, "capabilities": [["gpu"]], "options": {}}]
    assert gpus([{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["compute"]}]) == [
        {"driver": "nvidia", "count": 0, "device_ids": ["0"], "capabilities": [["compute", "gpu"]], "options": {}}]
    hc = api_client().create_host_config(device_requests=gpus("all"))
    assert hc["DeviceRequests"] == [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                     "Options": {}}]  # fmt: skip


def test_bad_values_are_reported_at_their_line():
    assert one_problem("services:\n  w:\n    image: x\n    oom_score_adj: 5000\n") == (
        "datacenters/dc1/n1/docker-compose.yml:4: services.w.oom_score_adj: must be between -1000 and 1000, not 5000")
    assert one_problem("services:\n  w:\n    image: x\n    pid: service:nope\n").endswith(
        "services.w.pid: unknown service 'nope' (services in this file: w)")
    assert one_problem("services:\n  w:\n    image: x\n    pull_policy: always\n") == (
        "datacenters/dc1/n1/docker-compose.yml:4: services.w.pull_policy: pull_policy 'always' is not supported: "
        "the deployer pulls an image only when the node lacks it (missing); to run a new image, deploy a new tag "
        "or a digest")


@pytest.mark.parametrize("key, why", [
    ("annotations", "container annotations need Docker API 1.43; the engines here speak 1.41"),
    ("links", "services on a shared network reach each other by service name (add an alias under networks)"),
    ("volumes_from", "name the volume and mount it in both services"),
    ("credential_spec", "credential specs are for Windows containers"),
    ("use_api_socket", "it mounts the Docker socket"),
])  # fmt: skip
def test_refused_keys_say_why(key, why):
    assert why in one_problem(f"services:\n  w:\n    image: x\n    {key}: [a]\n")


# --------------------------------------------------------------------------
# The divergences of issue 10, each at the spec


def test_a_string_command_with_a_shell_operator_is_refused():
    for text, op in (("httpd -f && echo x", "&&"), ("a | b", "|"), ("a; b", ";"), ("echo x > f", ">"),
                     ("a 2>&1", ">&"), ("run & wait", "&"), ("echo hi # note", "#")):
        with pytest.raises(BadValue) as info:
            parse_command(text)
        assert str(info.value).startswith(f"{text!r} has {op!r} outside quotes"), text
        assert "write a list of arguments, or ['sh', '-c'," in str(info.value)
    # quoted, they are arguments like any other
    assert parse_command("sh -c 'httpd -f && echo x'") == ["sh", "-c", "httpd -f && echo x"]
    assert parse_command('echo "a|b" x#y') == ["echo", "a|b", "x#y"]
    problem = one_problem("services:\n  w:\n    image: x\n    entrypoint: httpd -f && echo x\n")
    assert problem.startswith("datacenters/dc1/n1/docker-compose.yml:4: services.w.entrypoint: ")


def test_extra_hosts_ipv6_in_brackets_reach_the_engine_bare():
    spec = spec_of("""
        services:
          w:
            image: x
            extra_hosts: ["v6:[::2]", "v4=10.0.0.1", "gw:host-gateway"]
          m:
            image: x
            extra_hosts: {many: ["10.0.0.7", "[fd00::7]"]}
    """, "w", ROOT)
    assert spec.host["extra_hosts"] == ["gw:host-gateway", "v4:10.0.0.1", "v6:::2"]
    assert spec_of("services:\n  m:\n    image: x\n    extra_hosts: {many: ['10.0.0.7', '[fd00::7]']}\n",
                   "m", ROOT).host["extra_hosts"] == ["many:10.0.0.7", "many:fd00::7"]


def test_long_tmpfs_read_only_and_mode_and_volume_options():
    spec = spec_of("""
        services:
          w:
            image: x
            volumes:
              - {type: tmpfs, target: /scratch, read_only: true, tmpfs: {size: 1m}}
              - /anon
              - {type: bind, source: /srv, target: /srv, bind: {propagation: rslave, selinux: z}}
              - {type: bind, source: /etc/app, target: /app, bind: {create_host_path: false}}
              - {type: volume, source: data, target: /data, volume: {nocopy: true}}
        volumes:
          data:
    """, "w", ROOT)
    assert spec.host["binds"] == ["n1_data:/data:rw,nocopy", "/srv:/srv:rw,z,rslave"]
    assert spec.host["mounts"] == [
        {"Type": "volume", "Source": "", "Target": "/anon", "ReadOnly": False, "VolumeOptions": {}},
        {"Type": "bind", "Source": "/etc/app", "Target": "/app", "ReadOnly": False, "BindOptions": {}},
        {"Type": "tmpfs", "Target": "/scratch", "ReadOnly": True, "TmpfsOptions": {"SizeBytes": 2**20}},
    ]
    assert api_client().create_host_config(**spec.host)["Mounts"] == spec.host["mounts"]


def test_networks_ipv6_link_local_priority_driver_opts():
    spec = spec_of("""
        services:
          w:
            image: x
            networks:
              a: {priority: 1}
              b:
                priority: 10
                ipv6_address: "fd00::10"
                link_local_ips: ["169.254.1.1"]
                driver_opts: {com.example.opt: 1}
        networks:
          a:
          b: {external: true}
    """, "w", ROOT)
    assert [n for n, _ in spec.networks] == ["b", "n1_a"]  # the highest priority is attached at create
    assert spec.host["network_mode"] == "b"
    assert spec.endpoints == {"b": {"ipv6_address": "fd00::10", "link_local_ips": ["169.254.1.1"],
                                    "driver_opt": {"com.example.opt": "1"}}}  # fmt: skip
    assert api_client().create_endpoint_config(**spec.endpoints["b"])["IPAMConfig"] == {
        "IPv6Address": "fd00::10", "LinkLocalIPs": ["169.254.1.1"]}
    assert "mac_address" in one_problem("services:\n  w:\n    image: x\n    networks: {a: {mac_address: x}}\n"
                                        "networks:\n  a:\n")


def test_anonymous_volumes_are_carried_over_as_compose_does():
    host = {"mounts": [{"Type": "volume", "Source": "", "Target": "/anon", "ReadOnly": False}],
            "binds": ["n1_data:/data:rw"]}  # fmt: skip
    old = [{"Type": "volume", "Name": "a" * 64, "Destination": "/anon", "RW": True},
           {"Type": "volume", "Name": "b" * 64, "Destination": "/image-vol", "RW": True},
           {"Type": "volume", "Name": "n1_data", "Destination": "/data", "RW": True},
           {"Type": "bind", "Source": "/x", "Destination": "/x", "RW": True}]  # fmt: skip
    carried = inherit_anonymous_volumes(host, old, {"/image-vol": {}, "/data": {}})
    assert carried["mounts"] == [
        {"Type": "volume", "Source": "a" * 64, "Target": "/anon", "ReadOnly": False},
        {"Type": "volume", "Source": "b" * 64, "Target": "/image-vol", "ReadOnly": False},
    ]
    assert carried["binds"] == host["binds"] and host["mounts"][0]["Source"] == ""  # the spec is not touched
    assert inherit_anonymous_volumes(host, [], None) is host


def test_lifecycle_hooks_become_exec_arguments():
    spec = spec_of("""
        services:
          w:
            image: x
            post_start:
              - command: ["sh", "-c", "echo up > /tmp/up"]
                user: root
                privileged: false
                working_dir: /tmp
                environment: {STAGE: post}
              - command: touch /tmp/second
            pre_stop:
              - command: ["sh", "-c", "echo down"]
                environment: [STAGE=pre]
    """, "w", ROOT)
    assert spec.post_start == [
        {"cmd": ["sh", "-c", "echo up > /tmp/up"], "user": "root", "privileged": False, "workdir": "/tmp",
         "environment": ["STAGE=post"]},
        {"cmd": ["touch", "/tmp/second"]},
    ]
    assert spec.pre_stop == [{"cmd": ["sh", "-c", "echo down"], "environment": ["STAGE=pre"]}]
    assert "post_start" in spec.config_json() and spec_of("services:\n  w: {image: x}\n", "w", ROOT).post_start == []


@pytest.mark.parametrize("hooks, message", [
    ("{command: x}", "must be a list of hooks (mappings with 'command'), not a mapping"),
    ("[{user: root}]", "[0]: missing required key 'command'"),
    ("[{command: x, tty: true}]", "[0]: unsupported key 'tty': use command, environment, privileged, user, working_dir"),
    ("[{command: 'a && b'}]", "[0].command: 'a && b' has '&&' outside quotes"),
    ("[{command: [x], environment: [FOO]}]", "[0].environment: 'FOO' has no value: write FOO=value"),
    ("[{command: [x], privileged: maybe}]", "[0].privileged: must be true or false, not a string"),
])  # fmt: skip
def test_bad_hooks(hooks, message):
    problem = one_problem(f"services:\n  w:\n    image: x\n    post_start: {hooks}\n")
    assert problem.startswith(f"datacenters/dc1/n1/docker-compose.yml:4: services.w.post_start: {message}"), problem


def test_keys_the_engine_refuses_together_are_refused_by_validate():
    assert one_problem("services:\n  w:\n    image: x\n    uts: host\n    hostname: h\n").endswith(
        "services.w.uts: uts: host shares the node's host name, so hostname cannot be set (the engine refuses both)")
    assert one_problem("services:\n  w:\n    image: x\n    network_mode: host\n    mac_address: '02:42:ac:11:00:02'\n"
                       ).endswith("services.w.mac_address: a MAC address cannot be set with network_mode 'host' "
                                  "(the engine refuses both)")
    assert one_problem("services:\n  w:\n    image: x\n    memswap_limit: 1g\n").endswith(
        "services.w.memswap_limit: memswap_limit needs mem_limit (the engine refuses a swap limit without a memory limit)")
    assert one_problem("services:\n  w:\n    image: x\n    mem_limit: 2g\n    memswap_limit: 1g\n").endswith(
        "services.w.memswap_limit: memswap_limit is memory plus swap, so it cannot be below mem_limit")
    assert spec_of("services:\n  w:\n    image: x\n    mem_limit: 1g\n    memswap_limit: -1\n", "w",
                   ROOT).host["memswap_limit"] == -1


def test_a_hooks_environment_is_redacted_in_the_recorded_config():
    spec = spec_of("services:\n  w:\n    image: x\n    post_start:\n      - command: [x]\n"
                   "        environment: {TOKEN: s3cret-value}\n", "w", ROOT)
    assert spec.post_start[0]["environment"] == ["TOKEN=s3cret-value"]  # what the exec gets
    recorded = spec.config_json()
    assert "s3cret-value" not in recorded and '"TOKEN=sha256:' in recorded
    before = spec.config_hash()
    spec.post_start[0]["environment"] = ["TOKEN=other"]
    assert spec.config_hash() != before  # a changed value still changes the container
