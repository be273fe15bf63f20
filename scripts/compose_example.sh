#!/usr/bin/env bash
# The worked example of docs/compose.md: compose files as a team writes them.
#
# One datacenter, two nodes, one shared web server definition (common/web.yml)
# that both nodes extend; a committed .env and node.yml variables feeding the
# image and the environment; a file of the repository shipped to the node
# (configs: on edge1, a relative bind mount on edge2); a 3-replica service on
# edge1, registered in Consul replica by replica, and an nginx config rendered
# from the catalog with templates/nginx.conf.j2 listing the 3 replicas.
#
# Both nodes are the same Docker engine under two node names: containers are
# <node>-<service>[-i] and networks <node>_<name>, so they do not clash.
#
# Uses the Docker engine at $DOCKER_SOCK (default /var/run/docker.sock); when
# none answers there it starts dockerd for the run and stops it (by PID) at the
# end. NODE_ADDRESS (default 127.0.0.1) is where Consul and nginx reach the
# containers' published ports. With Consul (/usr/local/bin/consul) and nginx
# installed, it starts a dev Consul agent and an nginx of its own on free ports
# (stopped by PID at the end); without them it says so and shows config and
# status only. Containers and networks of the datacenter (label
# deployer.dc=$DC) are removed at the end unless KEEP=1 (which keeps them and
# the repository; Consul, nginx and a dockerd the run started are stopped anyway).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
NODE_ADDRESS=${NODE_ADDRESS:-127.0.0.1}
DC=${DC:-example}
WORK=$(mktemp -d /tmp/deployer-compose-example.XXXXXX)
REPO="$WORK/infra"
DOCKERD_PID="" CONSUL_PID="" NGINX_PID=""
# curl talks to our own Consul and nginx, never through a proxy
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

engine_up() { python3 -c "import docker,sys; docker.DockerClient(base_url='unix://$SOCK', timeout=2).ping()" 2>/dev/null; }
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
stop_pid() {
    [ -n "$1" ] || return 0
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}

cleanup() {
    status=$?
    stop_pid "$NGINX_PID"
    if [ "${KEEP:-0}" != 1 ] && [ -d "$REPO" ]; then
        python3 - "$SOCK" "$DC" <<'EOF' || true
import sys, docker
client = docker.DockerClient(base_url="unix://" + sys.argv[1])
label = {"label": "deployer.dc=" + sys.argv[2]}
for c in client.containers.list(all=True, filters=label):
    c.remove(force=True)
for n in client.networks.list(filters=label):
    n.remove()
EOF
    fi
    stop_pid "$CONSUL_PID"
    stop_pid "$DOCKERD_PID"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT

if ! engine_up; then
    echo "# no Docker engine answers at $SOCK: starting dockerd for this run"
    dockerd --host "unix://$SOCK" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 150); do engine_up && break; sleep 0.1; done
    engine_up || { echo "dockerd did not start:"; tail -20 "$WORK/dockerd.log"; exit 1; }
fi

# The deployer of this checkout, whatever is installed elsewhere.
deployer() { PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python3 -m deployer "$@"; }
run() { echo; printf '$'; printf ' %q' "$@"; echo; "$@"; }
show() { echo; echo "\$ cat $1"; cat "$REPO/$1"; }

# Local images only: hello:1 and hello:2 (busybox httpd serving "hello <version>").
echo "# building the sample images on the engine (no registry needed)"
PYTHONPATH="$ROOT" python3 -m deployer.build.samples "unix://$SOCK" >/dev/null 2>"$WORK/build.log" \
    || { cat "$WORK/build.log"; exit 1; }

WITH_CONSUL=1
for tool in consul nginx; do
    command -v "$tool" >/dev/null || { WITH_CONSUL=0; echo "# $tool is not installed (scripts/install.sh installs it): no Consul, no nginx; config and status only"; }
done
if [ "$WITH_CONSUL" = 1 ]; then
    CONSUL_PORT=$(free_port)
    args=(agent -dev -node "deployer-example" -bind 127.0.0.1 -client 127.0.0.1 -http-port "$CONSUL_PORT"
          -dns-port -1 -grpc-port -1 -serf-lan-port "$(free_port)" -serf-wan-port "$(free_port)"
          -server-port "$(free_port)" -log-level warn)
    consul "${args[@]}" >"$WORK/consul.log" 2>&1 &
    CONSUL_PID=$!
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/status/leader" | grep -q ':' && break; sleep 0.1
    done
    curl -sf "http://127.0.0.1:$CONSUL_PORT/v1/status/leader" | grep -q ':' \
        || { echo "consul did not elect itself:"; tail -20 "$WORK/consul.log"; exit 1; }
    echo "# a dev Consul agent answers at 127.0.0.1:$CONSUL_PORT"
fi

# ---------------------------------------------------------------- the repository
mkdir -p "$REPO/common" "$REPO/datacenters/$DC/edge1" "$REPO/datacenters/$DC/edge2"
cd "$REPO"
cat >common/web.yml <<'EOF'
# One web server definition for every site: image, health check, Consul
# registration. Each node extends it and writes only what differs.
services:
  web:
    image: ${WEB_IMAGE}:${WEB_VERSION}
    init: true                       # busybox httpd ignores SIGTERM as PID 1
    ports: ["80"]                    # an ephemeral host port: replicas, start-first
    environment:
      SITE: ${SITE}
      NODE_ADDRESS: ${NODE_ADDRESS}
    healthcheck:
      test: ["CMD", "test", "-f", "/www/index.html"]
      interval: 200ms
      timeout: 2s
      retries: 3
    labels:
      deployer.consul.name: ${SITE}  # one Consul service (and nginx upstream) per site
      deployer.consul.check: "http:/"
      deployer.consul.interval: 1s
      deployer.drain: 500ms
EOF
{
    echo "variables:"
    echo "  WEB_IMAGE: hello               # what every node of the datacenter runs"
    if [ "$WITH_CONSUL" = 1 ]; then echo "consul: 127.0.0.1:$CONSUL_PORT"; fi
} >"datacenters/$DC/datacenter.yml"
for node in edge1 edge2; do
    cat >"datacenters/$DC/$node/node.yml" <<EOF
docker: unix://$SOCK
address: $NODE_ADDRESS
variables:
  NODE_ADDRESS: $NODE_ADDRESS     # a fact of the machine: nothing overrides it
EOF
done
cat >"datacenters/$DC/edge1/.env" <<'EOF'
# what edge1 runs
SITE=shop
WEB_VERSION=1
EOF
cat >"datacenters/$DC/edge1/docker-compose.yml" <<'EOF'
services:
  web:
    extends: {file: ../../../common/web.yml, service: web}
    configs:
      - source: site
        target: /www/site.txt
    deploy:
      replicas: 3
      update_config: {parallelism: 1, order: start-first}
configs:
  site:
    file: ./site.txt
EOF
echo "shop: 10% off everything" >"datacenters/$DC/edge1/site.txt"
cat >"datacenters/$DC/edge2/.env" <<'EOF'
# what edge2 runs
SITE=blog
WEB_VERSION=2
EOF
cat >"datacenters/$DC/edge2/docker-compose.yml" <<'EOF'
services:
  web:
    extends: {file: ../../../common/web.yml, service: web}
    volumes:
      - ./site.txt:/www/site.txt:ro
EOF
echo "blog: hello from edge2" >"datacenters/$DC/edge2/site.txt"
git init -q -b main
git add -A
git commit -q -m "compose example: a shared web definition, two nodes"
cd "$ROOT"
export DEPLOYER_REPO="$REPO"

echo
echo "# the repository ($REPO)"
(cd "$REPO" && git ls-files | sed 's/^/  /')
show common/web.yml
show "datacenters/$DC/datacenter.yml"
show "datacenters/$DC/edge1/node.yml"
show "datacenters/$DC/edge1/.env"
show "datacenters/$DC/edge1/docker-compose.yml"
show "datacenters/$DC/edge2/.env"
show "datacenters/$DC/edge2/docker-compose.yml"

run deployer validate
run deployer config "$DC/edge1"
run deployer config "$DC/edge2"
run deployer plan "$DC" || echo "# exit $? (2: changes pending)"
run deployer apply "$DC"
run deployer status "$DC"

# nginx's files live in $NGINX (a temp dir); commands show that name.
render() {
    mkdir -p "$NGINX/logs"
    local check="nginx -t -q -e stderr -p $NGINX -c {file}"
    local reload="nginx -s reload -e stderr -p $NGINX -c $NGINX/nginx.conf"
    local extra=() shown="" old_workers=""
    [ -z "$NGINX_PID" ] || old_workers=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
    if [ -n "$NGINX_PID" ]; then extra=(--reload "$reload"); shown=" --reload 'nginx -s reload -p \$NGINX -c \$NGINX/nginx.conf'"; fi
    echo
    echo "\$ deployer render templates/nginx.conf.j2 --out \$NGINX/nginx.conf --dc $DC --var listen_port=$NGINX_PORT --var listen_address=127.0.0.1 --check 'nginx -t -q -e stderr -p \$NGINX -c {file}'$shown"
    deployer render templates/nginx.conf.j2 --out "$NGINX/nginx.conf" --dc "$DC" \
        --var listen_port="$NGINX_PORT" --var listen_address=127.0.0.1 --check "$check" "${extra[@]}" \
        | sed "s|$NGINX|\$NGINX|g"
    echo
    echo "\$ awk '/upstream /,/}/' \$NGINX/nginx.conf    # the rendered upstreams"
    awk '/^ *upstream /,/^ *}/' "$NGINX/nginx.conf"
    # 'nginx -s reload' only signals the master; until the old worker has left,
    # it may still take a request (and send it to the old upstreams): wait for that
    [ -n "$NGINX_PID" ] || return 0
    local left pid
    for _ in $(seq 100); do
        left=0
        for pid in $old_workers; do if kill -0 "$pid" 2>/dev/null; then left=1; fi; done
        if [ "$left" = 0 ] && pgrep -P "$NGINX_PID" >/dev/null; then break; fi
        sleep 0.1
    done
}
if [ "$WITH_CONSUL" = 1 ]; then
    NGINX_PORT=$(free_port) NGINX="$WORK/nginx"
    render
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e stderr -g 'daemon off;' 2>"$WORK/nginx.log" &
    NGINX_PID=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$NGINX_PORT/_deployer/health" >/dev/null && break; sleep 0.1; done
    run curl -s "http://127.0.0.1:$NGINX_PORT/shop/site.txt"
    run curl -s "http://127.0.0.1:$NGINX_PORT/blog/"
fi

# A change to the shipped file is a change of the container: plan names the file.
echo
echo "\$ echo 'shop: 20% off everything' > datacenters/$DC/edge1/site.txt; git commit -qam 'shop: 20% off'"
echo "shop: 20% off everything" >"$REPO/datacenters/$DC/edge1/site.txt"
git -C "$REPO" commit -q -am "shop: 20% off"
run deployer plan "$DC/edge1" || echo "# exit $? (2: changes pending)"
run deployer apply "$DC/edge1"
if [ "$WITH_CONSUL" = 1 ]; then
    # a one-off render; 'deployer templates watch' does this on every catalog change
    render
    run curl -s "http://127.0.0.1:$NGINX_PORT/shop/site.txt"
fi

run deployer scale "$DC/edge1/web" 2 -m "two shop servers are enough at night"
run deployer status "$DC"
if [ "$WITH_CONSUL" = 1 ]; then
    render
fi
cd "$REPO"
run git log --format='%h %s' -3
run git show --format= HEAD -- "datacenters/$DC/edge1/docker-compose.yml"
echo
if [ "${KEEP:-0}" = 1 ]; then
    echo "example finished: kept $REPO and the containers (Consul, nginx and a dockerd this run started are stopped)"
else
    echo "example finished: the repository was $REPO (removed on exit; KEEP=1 keeps it and the containers)"
fi
