#!/bin/sh
# Build the Debian bookworm base image every builder starts FROM.
#
#   make-base.sh NAME              mmdebstrap | docker import - NAME   (uses DOCKER_HOST)
#   make-base.sh --output FILE     only write the root filesystem tarball to FILE
#
# No registry is reachable here, so the base is made from Debian's mirror:
# a minbase bootstrap (about 20 s) with apt pointed at bookworm and its security
# updates. Environment: MIRROR (default http://deb.debian.org/debian), SUITE
# (default bookworm), INCLUDE (extra packages, comma separated).
set -eu

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
INCLUDE=${INCLUDE:-ca-certificates}

usage() { echo "usage: $0 NAME | --output FILE" >&2; exit 2; }

[ $# -ge 1 ] || usage
output=
name=
case "$1" in
    --output|-o) [ $# -eq 2 ] || usage; output=$2 ;;
    -h|--help) usage ;;
    *) [ $# -eq 1 ] || usage; name=$1 ;;
esac

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "$0: mmdebstrap is not installed (apt-get install mmdebstrap, or scripts/install-builders.sh)" >&2
    exit 1
fi

sources="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main"

# The customize hook keeps the image small and apt quiet inside containers.
bootstrap() {
    mmdebstrap --quiet --format=tar --variant=minbase --include="$INCLUDE" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        --customize-hook='printf "APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n" > "$1"/etc/apt/apt.conf.d/90deployer' \
        --customize-hook='echo deployer-base > "$1"/etc/hostname' \
        "$SUITE" "$1" - <<SOURCES
$sources
SOURCES
}

if [ -n "$output" ]; then
    tmp="$output.part.$$"
    trap 'rm -f "$tmp"' EXIT
    bootstrap "$tmp"
    mv "$tmp" "$output"
    trap - EXIT
else
    bootstrap - | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$name"
fi
