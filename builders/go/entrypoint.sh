#!/bin/sh
# Build every main package under /src into /out as static binaries.
#   /src    the source, mounted read-only
#   /out    where the binaries go (the caller collects them)
#   /cache  GOCACHE and GOMODCACHE, a named volume kept between builds
# Progress goes to stdout; compiler errors go to stderr and the exit status is non-zero.
# Modules: no module proxy is reachable, so GOPROXY=off by default; vendor/ is used
# when present (go's own rule). Pass GOPROXY=... to allow downloads.
set -eu

[ -f /src/go.mod ] || { echo "deployer-build: /src/go.mod not found: not a Go module" >&2; exit 2; }
[ -d /out ] && [ -w /out ] || { echo "deployer-build: /out is not a writable directory" >&2; exit 2; }
mkdir -p "$GOCACHE" "$GOMODCACHE" "$GOPATH"

cd /src
echo "deployer-build: $(go version), CGO_ENABLED=$CGO_ENABLED, GOFLAGS=$GOFLAGS"
# With a directory as -o, go writes one executable per main package and only
# compiles (and discards) the others.
go build -ldflags="-s -w" -o /out/ ./...

count=0
for f in /out/*; do
    [ -f "$f" ] && [ -x "$f" ] && count=$((count + 1)) && echo "deployer-build: built ${f#/out/} ($(wc -c < "$f") bytes)"
done
if [ "$count" -eq 0 ]; then
    echo "deployer-build: no main package under /src: nothing to build" >&2
    exit 3
fi
if [ -n "${OUT_UID:-}" ]; then
    chown -R "$OUT_UID:${OUT_GID:-$OUT_UID}" /out
fi
