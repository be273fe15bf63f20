"""`deployer validate` (``loader.check``) on hostile files: a port range of every port, a 20 MB scalar.

Each case is a repository with one node, validated in a child process (so a
case that hangs is stopped at --timeout and reported as such). Prints the
seconds per case and what validate said. The deployer imported is the one on
PYTHONPATH if that is set, else this checkout: run it once on each to compare,

    python3 bench/bench_validate.py                          # this checkout
    PYTHONPATH=../before python3 bench/bench_validate.py     # another checkout (e.g. the code before a change)

Target: every case under 2 s (the issue measured 132 s for the port range and
more than 10 s for the scalar).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(ROOT))

WEB = "services:\n  web:\n    image: nginx:1\n"
CASES = {
    "ports 1-65535:1-65535": WEB + '    ports: ["1-65535:1-65535"]\n',
    "20 MB scalar": WEB + "    labels:\n      x: " + "a" * 20_000_000 + "\n",
    "20 MB scalar and an unsupported key (read again with lines)": WEB + "    labels:\n      x: " + "a" * 20_000_000
    + "\n    foo: 1\n",
    "ports 1-16384 twice (the largest ranges allowed, clashing)": WEB
    + '    ports: ["1-16384:1-16384"]\n  db:\n    image: nginx:1\n    ports: ["1-16384:1-16384"]\n',
    "flow nesting 20,000 deep": "services: " + "[" * 20_000 + "]" * 20_000 + "\n",
}


def make_repo(base: Path, text: str) -> Path:
    node = base / "datacenters" / "dc" / "n1"
    node.mkdir(parents=True)
    (node / "node.yml").write_text("docker: unix:///var/run/docker.sock\n")
    (node / "docker-compose.yml").write_text(text)
    return base


def child(root: str) -> None:
    """Validate ``root`` and print JSON: seconds, problems, the deployer's path."""
    import deployer
    from deployer.config.loader import check

    start = time.perf_counter()
    _, problems = check(root)
    elapsed = time.perf_counter() - start
    first = problems[0].render() if problems else "ok"
    print(json.dumps({"seconds": elapsed, "problems": len(problems), "first": first[:160],
                      "deployer": str(Path(deployer.__file__).parent)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a case counts as hung")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    env = dict(os.environ)
    if not env.get("PYTHONPATH"):
        env["PYTHONPATH"] = str(ROOT)
    print(f"{'case':60} {'seconds':>9}  result")
    for name, text in CASES.items():
        if args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            root = make_repo(Path(tmp), text)
            try:
                done = subprocess.run([sys.executable, __file__, "--child", str(root)], env=env, text=True,
                                      capture_output=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{name:60} {'>' + format(args.timeout, '.0f'):>9}  still running, stopped", flush=True)
                continue
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{name:60} {'-':>9}  crashed (exit {done.returncode}): {last[:100]}", flush=True)
                continue
            result = json.loads(done.stdout)
            print(f"{name:60} {result['seconds']:9.3f}  {result['problems']} problems: {result['first']}", flush=True)
    print(f"(deployer from {env['PYTHONPATH']})")


if __name__ == "__main__":
    main()
