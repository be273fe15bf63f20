#!/bin/sh
# Install Consul 1.8.7 (Debian 11 "bullseye" package, MPL-2.0) as /usr/local/bin/consul.
#
# Idempotent: does nothing when /usr/local/bin/consul already runs. Leaves the
# system's apt configuration alone: bullseye's package index and the .deb are
# fetched into a private apt directory (CONSUL_APT_DIR, default
# /var/cache/deployer-consul-apt), signed by Debian's archive keyring.
# Needs root (writes /usr/local/bin).
set -eu

DEST=${CONSUL_DEST:-/usr/local/bin/consul}
APT_DIR=${CONSUL_APT_DIR:-/var/cache/deployer-consul-apt}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

if [ -x "$DEST" ] && "$DEST" version >/dev/null 2>&1; then
    echo "consul already installed: $("$DEST" version | head -n 1) at $DEST"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-consul.sh: must run as root (writes $DEST)" >&2
    exit 1
fi
if [ ! -r "$KEYRING" ]; then
    echo "install-consul.sh: $KEYRING missing (install debian-archive-keyring)" >&2
    exit 1
fi

mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/download"
echo "deb [signed-by=$KEYRING] $MIRROR bullseye main" > "$APT_DIR/sources.list"
# An empty status file: the private apt must not see (or touch) the system's dpkg state.
: > "$APT_DIR/status"

set -- \
    -o "Dir::Etc::sourcelist=$APT_DIR/sources.list" \
    -o "Dir::Etc::sourceparts=/nonexistent" \
    -o "Dir::State::Lists=$APT_DIR/lists" \
    -o "Dir::State::status=$APT_DIR/status" \
    -o "Dir::Cache=$APT_DIR/cache" \
    -o "APT::Architecture=$(dpkg --print-architecture)"

apt-get "$@" -q update
cd "$APT_DIR/download"
rm -f consul_*.deb
# apt downloads as the unprivileged _apt user when it exists; let it write here.
if id _apt >/dev/null 2>&1; then chown _apt "$APT_DIR/download"; fi
apt-get "$@" -q download consul
DEB=$(ls consul_*.deb | head -n 1)
rm -rf root
dpkg-deb -x "$DEB" root

TMP="$DEST.tmp.$$"
install -m 0755 root/usr/bin/consul "$TMP"
mv -f "$TMP" "$DEST"
rm -rf root
echo "installed $("$DEST" version | head -n 1) at $DEST (from $DEB)"
