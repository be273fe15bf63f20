#!/bin/sh
# Build the Python project in /src into wheels in /out.
#   /src    the source, mounted read-only (copied to a scratch dir: setuptools writes build/ in-tree)
#   /out    the project's wheel and one wheel per dependency
#   /cache  pip's cache (PIP_CACHE_DIR), a named volume kept between builds
# Build backends and dependencies come from PyPI (pip's build isolation);
# pip's own messages go to stdout, errors to stderr, non-zero exit on failure.
set -eu

if [ ! -f /src/pyproject.toml ] && [ ! -f /src/setup.py ] && [ ! -f /src/setup.cfg ]; then
    echo "deployer-build: /src has no pyproject.toml, setup.py or setup.cfg: not a Python project" >&2
    exit 2
fi
[ -d /out ] && [ -w /out ] || { echo "deployer-build: /out is not a writable directory" >&2; exit 2; }
mkdir -p "$PIP_CACHE_DIR"

work=$(mktemp -d)
(cd /src && tar --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
     --exclude='*.egg-info' --exclude=__pycache__ -cf - .) | tar -xf - -C "$work"
cd "$work"
echo "deployer-build: $(python3 --version), $(python3 -m pip --version | cut -d' ' -f1-2)"
python3 -m pip wheel --wheel-dir /out .

count=$(find /out -maxdepth 1 -name '*.whl' | wc -l)
if [ "$count" -eq 0 ]; then
    echo "deployer-build: pip produced no wheel" >&2
    exit 3
fi
for f in /out/*.whl; do echo "deployer-build: built ${f#/out/}"; done
if [ -n "${OUT_UID:-}" ]; then
    chown -R "$OUT_UID:${OUT_GID:-$OUT_UID}" /out
fi
