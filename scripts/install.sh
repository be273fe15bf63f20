#!/usr/bin/env bash
# Install what deployer and its test suite need, on Debian 12, as root.
#
# Idempotent: apt runs only when a package is missing (then `apt-get update`
# and `apt-get install` of just the missing ones); the Python package is
# (re)installed editable with its test extra every time, which is quick when
# nothing changed. Services are never started by the install: dockerd, sshd,
# nginx and the registry are run by the tests themselves.
#
#   ./scripts/install.sh && python3 -m pytest -q
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (installs Debian packages; the tests need root too)" >&2
    exit 1
fi

# --- Debian packages ---------------------------------------------------------
PACKAGES=(
    docker.io           # dockerd 20.10 + containerd + runc + tini; /usr/bin/docker CLI
    docker-registry     # a private registry for tests and demos
    nginx
    openssh-server      # sshd per test node (and ssh-keygen)
    busybox-static      # /bin/busybox: the FROM-scratch test images
    iproute2            # ip netns / link / addr
    iptables
    openssl             # test CA and certificates
    git
    python3-pip
    procps              # pgrep, used by the tests
    mmdebstrap          # the Debian base image the builders start from
    debian-archive-keyring
    chromium            # the headless browser the dashboard's page tests drive (never downloaded)
    chromium-driver     # /usr/bin/chromedriver, which Selenium (the test extra) talks to
)

# >>> MORE SYSTEM DEPENDENCIES: add them here ---------------------------------
# Debian 12 packages: append to PACKAGES above. Anything that is not a
# bookworm package gets its own idempotent step below this line.
# <<< MORE SYSTEM DEPENDENCIES ------------------------------------------------

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install.sh: installing ${missing[*]}"
    # keep package scripts from starting dockerd, sshd, nginx, the registry
    POLICY=/usr/sbin/policy-rc.d
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$POLICY"
        chmod 0755 "$POLICY"
        trap 'rm -f "$POLICY"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "install.sh: Debian packages already installed"
fi

# --- the Python package and its test extra ------------------------------------
PIP_FLAGS=(--root-user-action=ignore --disable-pip-version-check)
# Debian's own python3 refuses pip installs (PEP 668) without this flag
if python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    PIP_FLAGS+=(--break-system-packages)
fi
python3 -m pip install "${PIP_FLAGS[@]}" -e '.[test]'
# An editable install compiles nothing, and with PYTHONDONTWRITEBYTECODE set (these machines set it)
# no run writes a .pyc either: every command would compile the package's modules again (0.1-0.2 s
# of CPU per run, bench/bench_peers.py). Compile them once (a module changed later has a stale .pyc,
# which Python ignores: that module alone is compiled again on each run).
python3 -m compileall -q deployer >/dev/null

# --- not in Debian 12 ----------------------------------------------------------
# Consul 1.8.7 from Debian 11's archive (MPL-2.0), without touching apt's setup.
./scripts/install-consul.sh
