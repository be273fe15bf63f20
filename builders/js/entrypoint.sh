#!/bin/sh
# Build the web front end in /src with its own build script; hand its dist/ to /out.
#   /src    the source, mounted read-only (copied to a scratch dir: npm writes node_modules/ in-tree)
#   /out    the contents of the build's dist/ directory
#   /cache  npm's cache (npm_config_cache=/cache/npm), a named volume kept between builds
# Steps: `npm ci` (exactly what package-lock.json says, devDependencies included:
# webpack is one), then `npm run build`. Progress goes to stdout. On failure the
# first line on stderr says what failed, in one line ("npm ci: package-lock.json does
# not match package.json: Missing: ...", "npm run build failed: ERROR in ./src/x.js
# 8:18 Module parse failed: ..."), then the tool's whole output; the exit status is
# non-zero: 2 not a JS app, 4 npm ci failed, 5 the build script failed, 3 no dist/.
set -eu

die() { code=$1; shift; echo "deployer-build: $*" >&2; exit "$code"; }

[ -f /src/package.json ] || die 2 "/src/package.json not found: not a JS app"
[ -d /out ] && [ -w /out ] || die 2 "/out is not a writable directory"
node -e 'const p = require("/src/package.json"); process.exit(p.scripts && typeof p.scripts.build === "string" ? 0 : 1)' \
    2>/dev/null || die 2 "/src/package.json has no \"build\" script (scripts.build runs the bundler, e.g. \"webpack --mode production\")"
[ -f /src/package-lock.json ] || [ -f /src/npm-shrinkwrap.json ] \
    || die 2 "/src has no package-lock.json: npm ci installs exactly what the lockfile says (run npm install and commit package-lock.json)"
mkdir -p "$npm_config_cache"

work=$(mktemp -d)
log=$(mktemp)
(cd /src && tar --exclude=./.git --exclude=./node_modules --exclude=./dist -cf - .) | tar -xf - -C "$work"
cd "$work"
echo "deployer-build: node $(node --version), npm $(npm --version), cache $npm_config_cache"

# npm ci: from the lockfile only, offline when the cache has everything.
if ! npm ci --include=dev --prefer-offline --no-audit --no-fund >"$log" 2>&1; then
    if grep -q "can only install packages when your package.json and package-lock.json" "$log"; then
        first=$(grep -E "^npm ERR! (Missing|Invalid): " "$log" | head -1 | sed 's/^npm ERR! //')
        count=$(grep -c -E "^npm ERR! (Missing|Invalid): " "$log" || true)
        more=""; [ "$count" -gt 1 ] && more=" (and $((count - 1)) more)"
        echo "npm ci: package-lock.json does not match package.json: ${first:-see npm's output}$more (run npm install, commit the lockfile)" >&2
    else
        first=$(grep -E "^npm ERR! " "$log" | grep -v -E "^npm ERR! (code|errno|syscall) |A complete log of this run|^npm ERR! *$" | head -1 | sed 's/^npm ERR! //')
        echo "npm ci failed: ${first:-see npm's output}" >&2
    fi
    cat "$log" >&2
    exit 4
fi
cat "$log"

# The app's build script (webpack in the sample); its output is the compiler's.
if ! npm run build >"$log" 2>&1; then
    first=$(grep -E -A1 "^(ERROR|Error|error)\b" "$log" | grep -v -E "^--$|^ *$" | head -2 | tr '\n' ' ' | sed 's/ *$//')
    [ -n "$first" ] || first=$(grep -v -E "^(> |npm ERR! | *$)" "$log" | head -1)
    echo "npm run build failed: ${first:-see the build's output}" >&2
    cat "$log" >&2
    exit 5
fi
cat "$log"

[ -d dist ] || die 3 "npm run build wrote no dist/ directory (the builder hands dist/ to the image)"
[ -n "$(ls -A dist)" ] || die 3 "npm run build left dist/ empty"
cp -R dist/. /out/
find /out -type f | sed 's|^/out/|deployer-build: built |'
if [ -n "${OUT_UID:-}" ]; then
    chown -R "$OUT_UID:${OUT_GID:-$OUT_UID}" /out
fi
