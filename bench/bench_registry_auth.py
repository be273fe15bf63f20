"""A registry check (`GET /v2/NAME/tags/list`) anonymous vs with htpasswd vs with the token flow.

Real registries (Debian's docker-registry over TLS on 127.0.0.1, tests/support/registry.py)
and the tests' token server (tests/support/token_issuer.py); credentials from a
DOCKER_CONFIG ``auths`` file. Each registry function opens one client, so a check
pays its 401 (and, for tokens, a token fetch); a long-lived client sends the token
it holds for the scope. Prints medians and ratios to the anonymous check measured
in the same run.

    python3 bench/bench_registry_auth.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer.build import registry as R  # noqa: E402
from tests.support.registry import RegistryServer, htpasswd_auth, token_auth, write_htpasswd  # noqa: E402
from tests.support.token_issuer import ISSUER, SERVICE, TokenIssuer  # noqa: E402


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    rounds = parser.parse_args().rounds
    work = Path(tempfile.mkdtemp(prefix="bench-registry-auth-"))
    config = work / "docker"
    config.mkdir()
    os.environ["DOCKER_CONFIG"] = str(config)

    def login(host: str, user: str, password: str) -> None:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        (config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))

    results: dict[str, float] = {}
    fetches = 0
    try:
        with RegistryServer("127.0.0.1", trust_in_certs_d=False) as reg:
            results["anonymous"] = median_ms(lambda: R.tags(reg.address, "app", ca=reg.ca), rounds)
        htpasswd = write_htpasswd(work / "htpasswd", {"alice": "pw"})
        with RegistryServer("127.0.0.1", trust_in_certs_d=False, auth=htpasswd_auth(htpasswd)) as reg:
            login(reg.address, "alice", "pw")
            results["htpasswd"] = median_ms(lambda: R.tags(reg.address, "app", ca=reg.ca), rounds)
        with TokenIssuer("127.0.0.1", {"bob": "pw"}) as issuer, \
                RegistryServer("127.0.0.1", trust_in_certs_d=False,
                               auth=token_auth(issuer.realm, SERVICE, ISSUER, issuer.cert_path)) as reg:
            login(reg.address, "bob", "pw")
            results["token, one client per check"] = median_ms(lambda: R.tags(reg.address, "app", ca=reg.ca), rounds)
            client = R._Registry(reg.address, reg.ca, R.DEFAULT_TIMEOUT)
            try:
                client.get("/v2/app/tags/list")
                results["token, held by one client"] = median_ms(lambda: client.get("/v2/app/tags/list"), rounds)
                fetches = client.auth.fetches
            finally:
                client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["anonymous"]
    for name, ms in results.items():
        print(f"{name:30s} {ms:7.2f} ms   x{ms / base:.2f}")
    print(f"tokens fetched by the long-lived client over {rounds + 1} checks: {fetches}")


if __name__ == "__main__":
    main()
