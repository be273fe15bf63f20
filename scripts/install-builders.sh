#!/bin/sh
# Install what the builders, the image builder and their tests need (Debian 12, as root):
#   docker.io        the engine builder containers run in (dockerd is started by whoever needs it)
#   mmdebstrap       bootstraps the Debian base image (builders/base/make-base.sh)
#   docker-registry  distribution 2.8, the registry the tests and demos push to
#   openssl          the registry's CA and server certificate
#   iproute2, iptables, util-linux (nsenter)   a private dockerd in a network namespace
#   git              image versions are git tags and commits
# No registry is reachable from here: every base image is made locally from
# Debian's mirror, so nothing else is pulled. Idempotent; apt runs only when
# something is missing.
set -eu

packages="docker.io mmdebstrap docker-registry openssl iproute2 iptables util-linux git ca-certificates"
missing=
for p in $packages; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-builders: need root to install:$missing" >&2
        exit 1
    fi
    echo "install-builders: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

for tool in dockerd mmdebstrap docker-registry openssl ip iptables nsenter git; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-builders: $tool still missing" >&2; exit 1; }
done
echo "install-builders: ok ($(dockerd --version | cut -d, -f1), mmdebstrap $(mmdebstrap --version | cut -d' ' -f2), $(docker-registry --version 2>&1 | awk '{print $NF}'))"
