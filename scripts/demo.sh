#!/usr/bin/env bash
# The main job on the embedded default: the local Docker engine as the node,
# the example infrastructure in a git repository of its own. Deploys a
# version, deploys a newer one, rolls back, shows history and status.
#
# Uses the Docker engine at /var/run/docker.sock; when none answers there it
# starts dockerd for the demo and stops it (by PID) at the end. Containers the
# demo created are removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SOCK=/var/run/docker.sock
WORK=$(mktemp -d /tmp/deployer-demo.XXXXXX)
REPO="$WORK/infra"
DOCKERD_PID=""

engine_up() { python3 -c "import docker,sys; docker.DockerClient(base_url='unix://$SOCK', timeout=2).ping()" 2>/dev/null; }

cleanup() {
    status=$?
    if [ "${KEEP:-0}" != 1 ] && [ -d "$REPO" ]; then
        python3 - "$SOCK" <<'EOF' || true
import sys, docker
client = docker.DockerClient(base_url="unix://" + sys.argv[1])
for c in client.containers.list(all=True, filters={"label": "deployer.dc=local"}):
    c.remove(force=True)
for n in client.networks.list(filters={"label": "deployer.dc=local"}):
    n.remove()
EOF
    fi
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT

if ! engine_up; then
    echo "# no Docker engine answers at $SOCK: starting dockerd for this demo"
    dockerd --host "unix://$SOCK" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 150); do engine_up && break; sleep 0.1; done
    engine_up || { echo "dockerd did not start:"; tail -20 "$WORK/dockerd.log"; exit 1; }
fi

run() { echo; printf '$'; printf ' %q' "$@"; echo; "$@"; }

export DEPLOYER_REPO="$REPO"
run deployer init "$REPO" --example
run deployer validate
run deployer ls local
# The example writes sensor:1.0, worker:1.4 and app:1.0: plan shows what is
# missing on the engine, apply starts it (apply never commits: the repo already says so).
run deployer plan local || true
run deployer apply local
run deployer status local
run deployer deploy worker:1.5 local/local -m "squares twice as fast"
run deployer deploy worker:1.6 local/local
run deployer rollback local/local/worker -m "1.6 logs too much"
run deployer history
run deployer status local
run git -C "$REPO" log --format='%h %s' -5
echo
echo "demo finished: the repository was $REPO (removed on exit; KEEP=1 keeps it and the containers)"
