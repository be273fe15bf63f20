"""Capture what a real Consul agent answers for deployer registrations: tests/unit/fixtures/serve/consul_agent.json.

    PYTHONPATH=. python3 -m tests.support.capture_serve_fixtures

Starts a dev agent (tests/support/consul.py), registers three instances the way
``discovery.registration.register`` does (meta deployer-dc/-node/-service):
one whose TCP check reaches a listening port (passing), one whose port is
closed (critical), one in maintenance; plus a service the deployer does not
own. Waits until the checks have run, saves ``/v1/agent/services`` and
``/v1/agent/checks`` as the agent gave them.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from deployer.discovery.consul_catalog import ConsulCatalog
from deployer.discovery.registration import Registration, agent_checks, agent_services, maintenance, register
from tests.support.consul import ConsulAgent, free_port

OUT = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "serve" / "consul_agent.json"


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    open_port, closed_port = listener.getsockname()[1], free_port()
    with ConsulAgent() as agent:
        catalog = ConsulCatalog(agent.address)
        meta = lambda node, svc: {"deployer": "deployer", "deployer-dc": "prod", "deployer-node": node,  # noqa: E731
                                  "deployer-container": "c0ffee" * 10, "deployer-service": svc}
        for rid, name, node, svc, port in (("web1:aaaa:80", "web", "web1", "web", open_port),
                                           ("web2:bbbb:80", "web", "web2", "web", closed_port),
                                           ("web1:cccc:9000", "api", "web1", "api", open_port)):
            register(catalog, Registration(rid, name, "127.0.0.1", port, 80, ("v1",), meta(node, svc),
                                           {"tcp": f"127.0.0.1:{port}", "interval": "1s", "timeout": "1s",
                                            "name": "deployer tcp check"}, 10.0, 0.0))
        maintenance(catalog, "web1:cccc:9000", "planned upgrade")
        catalog.call("register", lambda c: c.agent.service.register("other", service_id="other-1", port=1))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            checks = agent_checks(catalog)
            states = {c["ServiceID"]: c["Status"] for c in checks.values() if c["Name"] == "deployer tcp check"}
            if states.get("web1:aaaa:80") == "passing" and states.get("web2:bbbb:80") == "critical":
                break
            time.sleep(0.3)
        data = {"services": agent_services(catalog), "checks": agent_checks(catalog)}
    listener.close()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
